"""Where data sets are read from and where derived files are cached."""

import os
from pathlib import Path

from ..errors import DataError

DATA_DIR_ENV = "SKIPVAE_DATA_DIR"
CACHE_DIR_ENV = "SKIPVAE_CACHE_DIR"
# The project's checkout sits beside a shared data folder: <root>/../shared/data.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_data_dir(data_dir=None, *, expected: str = "") -> Path:
    """The data directory: ``data_dir``, else ``$SKIPVAE_DATA_DIR``, else
    ``../shared/data`` beside the project root (or the working directory) when it exists.

    :param str expected: what should be inside, for the error message.
    :raises DataError: if none of these exists.
    """
    candidates = [data_dir] if data_dir is not None else [os.environ.get(DATA_DIR_ENV)]
    if candidates[0] is None:
        candidates = [
            _PROJECT_ROOT.parent / "shared" / "data",
            Path.cwd().parent / "shared" / "data",
        ]
    for candidate in candidates:
        if candidate is not None and Path(candidate).is_dir():
            return Path(candidate)
    raise DataError(
        f"data directory not found (looked in: {', '.join(str(c) for c in candidates)}); "
        f"pass --data-dir DIR or set {DATA_DIR_ENV}{' to a folder holding ' + expected if expected else ''}"
    )


def cache_dir() -> Path:
    """A writable folder for decompressed files: ``$SKIPVAE_CACHE_DIR`` or
    ``~/.cache/pyro-skipvae``. The data directory itself is never written to (it may be
    read-only)."""
    path = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "pyro-skipvae")
    path.mkdir(parents=True, exist_ok=True)
    return path
