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
(``O_EXCL`` decides). The helper files this leaves (``.lock.takeover``, and
``.lock.clock``, the clock probe) are removed by the holder when it releases the lock, while
it still holds it: a takeover guard is only needed around a *stale* lock, and a live
holder's lock is not one, so whoever waits on the removed guard re-reads a lock that is not
the one it saw and leaves it alone.

**One holder per thread.** The lock is re-entrant within a thread, not across threads: a
second thread of the holder's process that locks the same folder fails like another process
would (the message says it is another thread of this process).

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
#: the lock's helper files: the clock probe (:func:`server_now`) and the takeover guard
CLOCK_FILE, TAKEOVER_FILE = f"{LOCK_FILE}.clock", f"{LOCK_FILE}.takeover"
#: seconds: the heartbeat's period and the age after which another host's lock is stale
HEARTBEAT, STALE_AFTER = 60.0, 600.0
#: how long a lock file may stay empty while its creator writes it (seconds)
WRITING_GRACE = 2.0

_held: dict[tuple[Path, int], int] = {}  # (lock file, thread id) held -> nesting depth
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


def _is_this_process(holder: dict) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def describe(holder: dict) -> str:
    if _is_this_process(holder):
        return (
            f"another thread of this process: {holder.get('purpose', 'a block')} (pid "
            f"{holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')})"
        )
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
    probe = folder / CLOCK_FILE
    try:
        # through the open file, not the name: the holder may remove the probe meanwhile
        with open(probe, "a") as f:
            os.utime(f.fileno())
            return os.fstat(f.fileno()).st_mtime
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
        with FileLock(path.parent / TAKEOVER_FILE, timeout=30):
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
        if _is_this_process(holder):
            advice = "one thread at a time writes into a run folder"
        else:
            advice = (
                "if that process is gone and was not recognised as such (e.g. on another "
                "host, within the stale time), remove the file"
            )
        raise RunLockedError(
            f"{folder} is in use by {describe(holder)}: expected no other writer, found its "
            f"lock {path}. Wait for it to finish; {advice}"
        )
    raise RunLockedError(f"could not lock {folder} within 60 s: {path} kept changing hands")


def release(run_dir, mine: dict) -> None:
    """Remove ``run_dir/.lock`` if it still holds ``mine`` (a takeover may have replaced it),
    and before it, while it is still held, the helper files a takeover or a clock probe
    left (see the module docstring for why that is safe)."""
    folder = Path(run_dir)
    path = folder / LOCK_FILE
    if read_holder(path) != mine:
        logger.warning("the lock %s no longer names this process; left as it is", path)
        return
    for helper in (CLOCK_FILE, TAKEOVER_FILE):
        try:
            (folder / helper).unlink(missing_ok=True)
        except OSError:  # e.g. a read-only mount: leaving them is harmless
            pass
    path.unlink(missing_ok=True)


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

    Re-entrant within a thread (``skipvae fit`` locks before opening ``train.log``, and
    :meth:`SkipVAE.fit <pyro_skipvae.SkipVAE.fit>` again inside); another thread of the same
    process is another writer and fails like one. A no-op when ``run_dir`` is None or
    ``enabled`` is False (the other ranks of a data-parallel run, which do not write). A
    folder the lock created is removed again if the block left it empty (a refused
    configuration writes nothing).

    :raises RunLockedError: another live process, or another thread of this one, holds the
        folder.
    """
    if run_dir is None or not enabled:
        yield
        return
    path = (Path(run_dir) / LOCK_FILE).resolve()
    key = (path, threading.get_ident())
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                if key in _held:  # an outer block that ended first has already released
                    _held[key] -= 1
        return
    created = not Path(run_dir).exists()
    mine = acquire(run_dir, purpose, stale_after=stale_after)
    with _held_guard:
        _held[key] = 1
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(path, stop, heartbeat), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with _held_guard:
            _held.pop(key, None)
        release(run_dir, mine)
        if created:
            # only once empty: never list and unlink, which could remove a lock another
            # process created since the release
            try:
                Path(run_dir).rmdir()
            except OSError:
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
