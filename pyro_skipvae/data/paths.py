"""Where data sets are read from and where derived files are cached.

The data folder is, in this order: the ``data_dir`` argument (``--data-dir``), else
``$SKIPVAE_DATA_DIR`` (either one is used alone: an explicit choice is never second-guessed),
else the first of these that holds the files a data set needs:

1. ``../shared/data`` beside the repository, when pyro-skipvae runs from a clone (an
   editable install, or the working directory inside the clone);
2. the user data folder, ``$XDG_DATA_HOME/pyro-skipvae`` or ``~/.local/share/pyro-skipvae``,
   where ``--download`` puts the files it fetches.

The data folder is only ever read; decompressed copies go to the cache folder.
"""

import os
from pathlib import Path

from ..errors import DataError

DATA_DIR_ENV = "SKIPVAE_DATA_DIR"
CACHE_DIR_ENV = "SKIPVAE_CACHE_DIR"


def _clone_data_dirs() -> list[Path]:
    """``../shared/data`` beside the clone the package or the working directory sits in."""
    roots = [Path(__file__).resolve().parents[2], *[Path.cwd(), *Path.cwd().parents][:3]]
    found = []
    for root in roots:
        if (root / "pyro_skipvae").is_dir() and (root / "setup.cfg").is_file():
            candidate = root.parent / "shared" / "data"
            if candidate not in found:
                found.append(candidate)
    return found


def user_data_dir() -> Path:
    """``$XDG_DATA_HOME/pyro-skipvae``, else ``~/.local/share/pyro-skipvae`` (not created)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "pyro-skipvae"


def data_dir_candidates(data_dir=None) -> list[Path]:
    """The folders searched for data, in order (see the module docstring)."""
    explicit = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if explicit:
        return [Path(explicit)]
    return [*_clone_data_dirs(), user_data_dir()]


def resolve_data_dir(data_dir=None, *, expected: str = "") -> Path:
    """The data directory: the first candidate (:func:`data_dir_candidates`) that holds
    ``expected`` (a path or glob pattern relative to it), or simply exists when ``expected``
    is empty.

    :raises DataError: if none does; the message names every folder searched and what was
        expected there.
    """
    candidates = data_dir_candidates(data_dir)
    for candidate in candidates:
        if not candidate.is_dir():
            continue
        if not expected or any(candidate.glob(expected)):
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    what = f" holding {expected}" if expected else ""
    raise DataError(
        f"no data directory{what} found (searched: {searched}); pass --data-dir DIR or set "
        f"{DATA_DIR_ENV} to a folder{what}"
    )


def cache_dir() -> Path:
    """A writable folder for decompressed files: ``$SKIPVAE_CACHE_DIR`` or
    ``~/.cache/pyro-skipvae``. The data directory itself is never written to (it may be
    read-only)."""
    path = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "pyro-skipvae")
    path.mkdir(parents=True, exist_ok=True)
    return path
