"""An exclusive lock on a run folder, for as long as one process writes into it.

``with locked("runs/a", "fit"):`` creates ``runs/a/.lock`` with ``O_CREAT | O_EXCL`` (atomic on
local file systems and on NFSv3 and later) holding who holds it (host, pid, the process's
start time, since when, what for). A second writer finds the file and fails at once with
:class:`~pyro_skipvae.errors.RunLockedError` naming the holder. The holder removes the file
when the block ends, also on an exception or Ctrl-C.

**A lock left by a killed process** (``kill -9``, a node lost) is recognised and taken over:

* on the holder's own host, when its pid is gone or now belongs to a process started at
  another time (pid reuse);
* from another host, where the pid cannot be asked, when the file's modification time is
  older than ``stale_after`` seconds (default 600). The holder touches the file every
  ``heartbeat`` seconds (default 60) from a daemon thread, and the age is measured against
  the file server's clock (a probe file touched beside it), so clocks that differ between
  hosts do not matter.

The takeover itself runs under a :class:`filelock.FileLock` on ``.lock.takeover`` and
re-reads the lock file before removing it, so two processes that both saw the same stale
lock do not remove each other's fresh one. Only one of them then creates the new lock
(``O_EXCL`` decides).

**Limits, honestly.** ``flock`` (what :class:`filelock.FileLock` uses) is not reliable
between hosts on every network file system, so the takeover guard is only certain among
processes of one host; the exclusive create that decides who holds the lock is. A holder
whose heartbeat stops for longer than ``stale_after`` while it still runs (a suspended job,
a file server unreachable for ten minutes) can be taken over from another host; choose
``stale_after`` above the longest such pause. The lock guards against two *pyro-skipvae*
writers; it does not stop other programs from writing into the folder.
"""

import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .errors import RunLockedError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
#: seconds: the heartbeat's period and the age after which another host's lock is stale
HEARTBEAT, STALE_AFTER = 60.0, 600.0
#: how long a lock file may stay empty while its creator writes it (seconds)
WRITING_GRACE = 2.0

_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth
_held_guard = threading.Lock()


def holder_info(purpose: str) -> dict:
    """What the lock file says about this process."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": process_start(os.getpid()),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "purpose": purpose,
        "token": secrets.token_hex(8),
    }


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or
    None where it cannot be read; it tells a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces; the fields after it are plain
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_holder(path) -> dict | None:
    """The holder a lock file names, or None if it is missing, empty or unreadable."""
    try:
        holder = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe(holder: dict) -> str:
    return (
        f"{holder.get('purpose', 'a process')} (pid {holder.get('pid')} on host "
        f"{holder.get('host')}, since {holder.get('since')})"
    )


def is_stale(path, holder: dict | None, *, stale_after: float = STALE_AFTER) -> bool:
    """Whether the lock ``path`` (naming ``holder``) was left by a process that is gone: on
    this host, its pid is dead or reused; elsewhere (or when the file names no holder), its
    heartbeat is older than ``stale_after`` seconds by the file server's clock."""
    if holder is not None and holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        started = holder.get("started")
        return started is not None and process_start(pid) not in (None, started)
    try:
        modified = os.stat(path).st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: try again
    grace = stale_after if holder is not None else max(WRITING_GRACE, 0.0)
    return server_now(Path(path).parent) - modified > grace


def server_now(folder: Path) -> float:
    """The current time by the clock that stamps files in ``folder`` (on NFS the server's:
    ``utime`` without times asks it to use its own)."""
    probe = folder / f"{LOCK_FILE}.clock"
    try:
        with open(probe, "a"):
            pass
        os.utime(probe)
        return os.stat(probe).st_mtime
    except OSError:
        return time.time()


def _create(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(holder, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(path: Path, seen: dict | None, stale_after: float) -> None:
    """Remove the stale lock ``path`` if it still names ``seen`` (under a takeover guard)."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(f"{path}.takeover", timeout=30):
            now = read_holder(path)
            if now != seen or not is_stale(path, now, stale_after=stale_after):
                return  # taken over or refreshed by someone else meanwhile
            logger.warning("taking over the lock %s left by %s", path, describe(seen or {}))
            path.unlink(missing_ok=True)
    except Timeout:
        return


def acquire(run_dir, purpose: str, *, stale_after: float = STALE_AFTER) -> dict:
    """Create ``run_dir/.lock`` for this process and return what it holds.

    :raises RunLockedError: another live process holds it (the message names it).
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    mine = holder_info(purpose)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _create(path, mine):
            return mine
        holder = read_holder(path)
        if holder is None and not is_stale(path, None, stale_after=stale_after):
            time.sleep(0.05)  # its creator is still writing it
            continue
        if is_stale(path, holder, stale_after=stale_after):
            _take_over(path, holder, stale_after)
            continue
        raise RunLockedError(
            f"{folder} is in use by {describe(holder)}: expected no other writer, found its "
            f"lock {path}. Wait for it to finish; if that process is gone and was not "
            "recognised as such (e.g. on another host, within the stale time), remove the file"
        )
    raise RunLockedError(f"could not lock {folder} within 60 s: {path} kept changing hands")


def release(run_dir, mine: dict) -> None:
    """Remove ``run_dir/.lock`` if it still holds ``mine`` (a takeover may have replaced it)."""
    path = Path(run_dir) / LOCK_FILE
    if read_holder(path) == mine:
        path.unlink(missing_ok=True)
    else:
        logger.warning("the lock %s no longer names this process; left as it is", path)


@contextmanager
def locked(
    run_dir,
    purpose: str,
    *,
    enabled: bool = True,
    heartbeat: float = HEARTBEAT,
    stale_after: float = STALE_AFTER,
) -> Iterator[None]:
    """Hold the run folder's lock while the block runs (see the module docstring).

    Re-entrant within a process (``skipvae fit`` locks before opening ``train.log``, and
    :meth:`SkipVAE.fit <pyro_skipvae.SkipVAE.fit>` again inside); a no-op when ``run_dir`` is
    None or ``enabled`` is False (the other ranks of a data-parallel run, which do not write).

    :raises RunLockedError: another live process holds the folder.
    """
    if run_dir is None or not enabled:
        yield
        return
    key = (Path(run_dir) / LOCK_FILE).resolve()
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    # a block that fails before writing anything (a refused configuration) leaves no folder
    created = not Path(run_dir).exists()
    mine = acquire(run_dir, purpose, stale_after=stale_after)
    with _held_guard:
        _held[key] = 1
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(key, stop, heartbeat), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with _held_guard:
            del _held[key]
        release(run_dir, mine)
        if created:
            _remove_if_only_lock_files(Path(run_dir))


def _remove_if_only_lock_files(folder: Path) -> None:
    """Remove ``folder`` if nothing but the lock's own files is in it."""
    try:
        files = list(folder.iterdir())
        if all(f.name.startswith(LOCK_FILE) and f.is_file() for f in files):
            for f in files:
                f.unlink(missing_ok=True)
            folder.rmdir()
    except OSError:  # another process wrote there meanwhile: keep it
        pass


def _beat(path: Path, stop: threading.Event, period: float) -> None:
    while not stop.wait(period):
        try:
            os.utime(path)
        except OSError:
            pass  # a missing file is the holder's to notice; keep the thread quiet


def holding_lock(purpose: str, *, enabled: Callable[[], bool] = lambda: True):
    """Decorate a function called with ``run_dir=``: it runs inside :func:`locked` on that
    folder (nothing is locked for ``run_dir=None``, or when ``enabled()`` is False)."""

    def decorate(function):
        @functools.wraps(function)
        def with_lock(*args, run_dir=None, **kwargs):
            with locked(run_dir, purpose, enabled=enabled()):
                return function(*args, run_dir=run_dir, **kwargs)

        return with_lock

    return decorate
