"""CUDA MPS for runs that share one GPU: a private control daemon, started and stopped here.

Without MPS, processes that use one GPU each hold their own CUDA context and the GPU
time-slices between the contexts: kernels of two processes never run at the same time. With
the Multi-Process Service, the processes are clients of one MPS server that holds a single
context, so small kernels of several processes (a batch-50 PixelCNN step launches hundreds
of them, each far too small to fill an H200) run side by side on the GPU.

What this module relies on is NVIDIA's documented interface: the manual page of
``nvidia-cuda-mps-control`` (e.g. https://man.archlinux.org/man/nvidia-cuda-mps-control.1.en)
and the MPS guide's "Environment Variables" section
(https://docs.nvidia.com/deploy/topics/topic_5_2_2.html, part of
https://docs.nvidia.com/deploy/mps/):

- ``nvidia-cuda-mps-control -d`` starts the control daemon in the background. A CUDA program
  whose driver finds the daemon when CUDA is first initialised asks it for an MPS server and
  runs as its client; if it finds none, it runs as it would without MPS.
- The daemon, its server and its clients meet through named pipes and sockets in
  ``CUDA_MPS_PIPE_DIRECTORY`` (default ``/tmp/nvidia-mps``), which must be the same for all
  of them; ``CUDA_MPS_LOG_DIRECTORY`` is where the daemon writes its logs. The guide
  recommends a local folder such as ``/tmp`` and, for a per-user daemon, a folder that no
  other user shares.
- ``nvidia-cuda-mps-control`` without ``-d`` is the control client: it reads commands on
  stdin. ``get_server_list`` answers only when a daemon listens on the pipe folder;
  ``quit`` shuts the daemon and its servers down.

Not from the documentation but from what daemons are seen to do: the daemon leaves its
process id in ``<pipe folder>/nvidia-cuda-mps-control.pid``. It is used only to wait for the
daemon after ``quit`` (and to end it if it outlives the wait, after checking that the process
is still an ``nvidia-cuda-mps-control``); without the file, ``quit`` alone is trusted.

:func:`daemon` therefore starts a *private* daemon: both folders are fresh temporary
folders (mode 0700, from :func:`tempfile.mkdtemp`), so it can neither join nor disturb a
system-wide daemon or another user's, and only the child processes given its environment
(:func:`daemon` yields it) become its clients. The daemon is told to quit, waited for and its
folders removed when the block ends, also when the block raises or is interrupted.

Caveat (from the same guide): the clients of one MPS server share its fate; a fatal GPU fault
in one can end the others. A sweep records such cells as failed and reruns them next time.
"""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, MPSError

logger = logging.getLogger(__name__)

#: the control program of NVIDIA's driver, looked up on ``PATH``
CONTROL = "nvidia-cuda-mps-control"
#: the environment variables that make a CUDA process a client of a given daemon
ENV_VARIABLES = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
#: where a system-wide daemon listens when ``CUDA_MPS_PIPE_DIRECTORY`` is unset
DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
#: the modes of :func:`for_processes`
MODES = ("auto", "on", "off")


def available(binary: str = CONTROL) -> str | None:
    """The path of the MPS control program on ``PATH``, or ``None``."""
    return shutil.which(binary)


def running_daemon(environ=None) -> str | None:
    """Why child processes already reach an MPS daemon without us, or ``None``.

    ``CUDA_MPS_PIPE_DIRECTORY`` set by the user names the daemon they meant; the control pipe
    in the default folder is a system-wide daemon that every CUDA process joins by default.
    Starting a second daemon for the same GPU beside either would compete with it.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        return f"CUDA_MPS_PIPE_DIRECTORY={environ['CUDA_MPS_PIPE_DIRECTORY']} is set"
    if os.path.exists(os.path.join(DEFAULT_PIPE_DIRECTORY, "control")):
        return f"a system-wide MPS daemon listens in {DEFAULT_PIPE_DIRECTORY}"
    return None


def _control(binary, env, command, timeout):
    """Send one command to the daemon of ``env``'s pipe directory; the completed process."""
    return subprocess.run(
        [binary],
        input=command + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def daemon(
    *, binary: str | None = None, timeout: float = 30.0, keep_logs=None
) -> Iterator[dict[str, str]]:
    """Start a private MPS control daemon for the block; yield the environment variables that
    make a child process its client (``CUDA_MPS_PIPE_DIRECTORY``, ``CUDA_MPS_LOG_DIRECTORY``).

    On the way out (normally, on an exception or on ``KeyboardInterrupt``, also one that
    comes while ``-d`` is still starting it) the daemon gets ``quit`` through the same pipe
    directory, is waited for up to ``timeout`` seconds (by the process id it leaves in its pipe
    directory, when it leaves one; terminated if it outlives the wait), its logs are copied to
    ``keep_logs``, and both temporary folders are removed. Each of these steps runs even if an
    earlier one fails, and none hides the exception that ended the block.

    :param str binary: the control program (default: ``nvidia-cuda-mps-control`` on ``PATH``).
    :param float timeout: seconds allowed for the daemon to start answering, and to stop.
    :param keep_logs: a folder to copy the daemon's logs into before they are removed
        (default: not kept).
    :raises MPSError: if the program is missing, fails to start, or does not answer.

    Example::

        with daemon() as mps_env:
            subprocess.run(command, env={**os.environ, **mps_env})
    """
    binary = binary or available()
    if not binary:
        raise MPSError(f"CUDA MPS: expected {CONTROL} on PATH, found none")
    # Both folders private to this daemon: nothing else can join it, and it joins nothing.
    # Short paths on purpose: the pipe folder holds UNIX sockets (108-byte path limit).
    pipe = tempfile.mkdtemp(prefix="skipvae-mps-pipe-")
    logs = tempfile.mkdtemp(prefix="skipvae-mps-log-")
    variables = {"CUDA_MPS_PIPE_DIRECTORY": pipe, "CUDA_MPS_LOG_DIRECTORY": logs}
    env = {**os.environ, **variables}
    started = False  # whether a daemon may be running: then it gets `quit`
    try:
        with tempfile.TemporaryFile("w+") as output:
            # Output to a file, not a pipe: the daemon keeps running after `-d` returns and
            # would hold a pipe open. `-d` forks the daemon before it returns: stopped on the way
            # (a timeout, Ctrl-C), it may have left one behind, so from here on it gets `quit`.
            started = True
            try:
                done = subprocess.run(
                    [binary, "-d"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                started = isinstance(e, subprocess.TimeoutExpired)  # OSError: nothing ran
                raise MPSError(f"CUDA MPS: expected `{binary} -d` to start, found {e}") from e
            output.seek(0)
            said = output.read().strip()
        if done.returncode != 0:
            started = False  # it said it did not start one
            raise MPSError(
                f"CUDA MPS: expected `{binary} -d` to start the daemon, it exited with status "
                f"{done.returncode}: {said[-500:] or 'no output'}"
            )
        _wait_until_answering(binary, env, timeout)
        logger.info("CUDA MPS control daemon started (pipe directory %s)", pipe)
        yield variables
    finally:
        try:
            if started:
                _stop(binary, env, pipe, timeout)
        finally:
            try:
                _keep_logs(logs, keep_logs)
            finally:
                shutil.rmtree(pipe, ignore_errors=True)
                shutil.rmtree(logs, ignore_errors=True)


def _keep_logs(logs, keep_logs):
    """Copy the daemon's logs to ``keep_logs`` (if given); a failure is logged, not raised:
    the logs are a record, and raising here would hide why the block ended."""
    if keep_logs is None or not os.path.isdir(logs):
        return
    try:
        shutil.copytree(logs, keep_logs, dirs_exist_ok=True)
    except OSError as e:  # shutil.Error is one
        logger.warning("CUDA MPS: the daemon's logs could not be copied to %s: %s", keep_logs, e)


def _wait_until_answering(binary, env, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = _control(binary, env, "get_server_list", timeout)
            said = (answer.stdout + answer.stderr).strip()[-500:]
            if answer.returncode == 0:
                return
        except subprocess.TimeoutExpired:
            said = f"`get_server_list` did not return within {timeout:g} s"
        if time.monotonic() > deadline:
            raise MPSError(
                f"CUDA MPS: expected the daemon to answer within {timeout:g} s, found "
                f"{said or 'no answer'}"
            )
        time.sleep(0.05)


def _daemon_pid(pipe) -> int | None:
    # The daemon leaves its process id in its pipe folder; without one we can only trust
    # `quit`. A stale or unreadable file is treated as no file.
    path = Path(pipe, "nvidia-cuda-mps-control.pid")
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid) -> bool:
    """Whether ``pid`` is still an MPS control daemon (a process id can be reused once the
    daemon has gone; the command line tells ours from a stranger)."""
    try:
        return CONTROL.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _stop(binary, env, pipe, timeout):
    """``quit`` through the daemon's own pipe folder, then wait for it to go."""
    pid = _daemon_pid(pipe)
    try:
        answer = _control(binary, env, "quit", timeout)
        if answer.returncode != 0:
            logger.warning(
                "CUDA MPS: `quit` exited with status %d: %s",
                answer.returncode,
                (answer.stdout + answer.stderr).strip()[-500:],
            )
    except subprocess.TimeoutExpired:
        logger.warning("CUDA MPS: `quit` did not return within %g s", timeout)
    except OSError as e:  # the control program itself could not run: still wait and end it
        logger.warning("CUDA MPS: `quit` could not be sent: %s", e)
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        # only the process whose id our own daemon wrote into our own private folder
        logger.warning("CUDA MPS: the daemon (pid %d) outlived `quit`; terminating it", pid)
        with contextlib.suppress(ProcessLookupError):  # it went just now
            os.kill(pid, signal.SIGTERM)


@contextlib.contextmanager
def for_processes(
    mode="auto", *, processes: int, cuda: bool, keep_logs=None
) -> Iterator[dict[str, str]]:
    """The MPS environment for ``processes`` child processes run side by side: a private
    daemon (:func:`daemon`) when ``mode`` asks for one, else nothing to add (``{}``).

    - ``"off"``: never.
    - ``"auto"``: only when it can help and is there: ``processes > 1``, every process uses
      CUDA (``cuda``), the control program is on ``PATH``, and no daemon is reachable
      already (:func:`running_daemon`: then the children join that one). Otherwise it says
      why in the log and adds nothing; a daemon that fails to start is logged and skipped.
    - ``"on"``: always, unless a daemon is reachable already (then that one is used);
      :class:`~pyro_skipvae.errors.MPSError` if it cannot be started.

    :param keep_logs: passed to :func:`daemon`.
    :raises ConfigError: for a mode not in :data:`MODES`.
    """
    if mode not in MODES:
        raise ConfigError(f"mps: expected one of {', '.join(MODES)}, found {mode!r}")
    reason = None
    if mode == "off":
        reason = "mps is off"
    elif running_daemon():
        reason = running_daemon() + ": the child processes join that daemon"
    elif mode == "auto":
        if processes <= 1:
            reason = "one process at a time"
        elif not cuda:
            reason = "not every process uses a CUDA device"
        elif not available():
            reason = f"{CONTROL} is not on PATH"
    if reason is not None:
        logger.info("CUDA MPS not started: %s", reason)
        yield {}
        return
    if mode == "on":
        with daemon(keep_logs=keep_logs) as variables:
            yield variables
        return
    stack = contextlib.ExitStack()
    try:
        variables = stack.enter_context(daemon(keep_logs=keep_logs))
    except MPSError as e:  # 'auto': the runs still work without MPS, only slower
        logger.warning("%s; running without MPS", e)
        variables = {}
    with stack:
        yield variables
