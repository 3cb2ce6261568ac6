"""Child processes that stop together on Ctrl-C: what lets a sweep be interrupted cleanly.

A sweep runs its cells as child processes (``skipvae fit``, then ``skipvae diagnose``). While
a :class:`Children` is :meth:`~Children.watching` (in the main thread), SIGINT (Ctrl-C),
SIGTERM and SIGHUP (its terminal closed) no longer end the parent; instead:

1. the first signal stops new children from starting (:meth:`Children.start` returns
   ``None``) and sends each running child one SIGINT, so ``skipvae fit`` stops as on Ctrl-C
   (exit status 130, its last completed epoch's checkpoint intact) and a diagnose stops
   without writing a result;
2. every further signal sends the running children SIGTERM (they end at once; a fit's last
   checkpoint is still intact, since checkpoints are written atomically, and the run
   folder's lock is taken over as a dead process's);
3. the parent keeps waiting for its children either way, so none is orphaned and what
   outlives them (a sweep's CUDA MPS daemon) is stopped only after they have exited.

The children run in a session (and process group) of their own, so a Ctrl-C in the terminal
(which signals the whole foreground group) reaches them only through the parent, once: a
second SIGINT during a child's own clean-up could interrupt it. A signal the parent ignores
(``nohup`` ignores SIGHUP) stays ignored. ``stopped`` then tells the parent which signal came
(``None`` if none), and :class:`Interrupted` is what it raises once its children are gone.
"""

import contextlib
import logging
import signal
import subprocess
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: the signals that stop a sweep
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The work was stopped by ``signum`` after its children had exited; ``summary`` is what
    was done (the shell's exit status for it: ``128 + signum``, 130 for Ctrl-C)."""

    def __init__(self, signum: int, summary: dict):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.summary = summary


class Children:
    """The running child processes of one piece of work, and whether it was told to stop."""

    def __init__(self):
        self.stopped: int | None = None  # the first stopping signal's number
        self._signals = 0
        self._running: set[subprocess.Popen] = set()
        # re-entrant: the handler runs in the main thread, possibly inside itself
        self._lock = threading.RLock()
        self._own_group = False

    @contextlib.contextmanager
    def watching(self) -> Iterator["Children"]:
        """Handle SIGINT, SIGTERM and SIGHUP as the module docstring says for the block (only in
        the main thread, the only one that receives signals; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {
            signum: signal.signal(signum, self._handle)
            for signum in SIGNALS
            if signal.getsignal(signum) is not signal.SIG_IGN
        }
        self._own_group = True
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def start(self, command: list[str], **popen) -> subprocess.Popen | None:
        """Start ``command`` (``subprocess.Popen`` keywords; stdin is closed), or return
        ``None`` once the work was told to stop."""
        with self._lock:  # a signal cannot fall between the check and the start
            if self.stopped is not None:
                return None
            if self._own_group:
                popen["start_new_session"] = True  # not process_group=0: Python 3.10
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, **popen)
            self._running.add(process)
            if self.stopped is not None:  # a signal handled in this thread while it started
                process.send_signal(signal.SIGINT if self._signals == 1 else signal.SIGTERM)
        return process

    def wait(self, process: subprocess.Popen) -> int:
        """Wait for a child of :meth:`start` to exit; its exit status."""
        try:
            return process.wait()
        finally:
            with self._lock:
                self._running.discard(process)

    def _handle(self, signum, frame):
        with self._lock:
            self._signals += 1
            if self.stopped is None:
                self.stopped = signum
            forward = signal.SIGINT if self._signals == 1 else signal.SIGTERM
            running = list(self._running)
            for process in running:
                process.send_signal(forward)  # a no-op for one already reaped
        logger.warning(
            "%s: no new cell starts; %d running process(es) sent %s, waiting for them to exit%s",
            signal.Signals(signum).name,
            len(running),
            forward.name,
            " (signal again to terminate them)" if self._signals == 1 else "",
        )
