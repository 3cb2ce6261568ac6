"""Atomic writes and checked reads of checkpoints and result files.

Every write goes to a temporary file in the destination's folder, is flushed to disk, then
renamed over the destination (``os.replace`` is atomic on POSIX), so a crash or ``kill -9``
leaves either the old file or the new one, never a torn one.
"""

import json
import os
import random
import secrets
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError


@contextmanager
def atomic_path(path):
    """Yield a temporary file name beside ``path``; when the block succeeds, flush the file
    to disk and rename it over ``path``. For writers that want a file name (netCDF, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
    # Created exclusively with open()'s mode 0666 less the umask (mkstemp would make it 0600,
    # which would then stick to results users share).
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write(path, write):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_save(obj, path) -> None:
    """``torch.save(obj, path)``, atomically."""
    try:
        _atomic_write(path, lambda f: torch.save(obj, f))
    except RuntimeError as e:
        # Ctrl-C in the middle of torch.save: its zip writer, closing the half-written
        # archive, raises "unexpected pos ..." in place of the KeyboardInterrupt. The old file
        # is untouched, so it is an interruption like any other (exit 130, not a crash).
        if isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path``, atomically."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8), atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load(path) -> dict:
    """Load a checkpoint written by :func:`atomic_save`.

    Only tensors and plain Python containers are unpickled (``weights_only=True``), so a
    checkpoint from an untrusted source cannot run code.

    :raises CheckpointError: if the file is missing, truncated or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a bad file
        raise CheckpointError(
            f"{path} is corrupt or not a pyro-skipvae checkpoint ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not a pyro-skipvae checkpoint (no 'format' key)")
    return state


def get_rng_state() -> dict:
    """The state of every global RNG a run draws from, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "random": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["random"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))


@contextmanager
def rng_restored():
    """Every global RNG put back on leaving the block (also on an exception): what a
    measurement draws inside it (e.g. z while tracing a guide) changes no draw of training,
    so a run measured this way trains exactly as one that is not, and as its resumption."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
