"""CUDA MPS for sweeps (pyro_skipvae.mps), against a fake ``nvidia-cuda-mps-control``.

The fake behaves like the control program as the module uses it: ``-d`` starts a background
"daemon" (a sleeping process named like the real one, its id in the pipe folder's
``nvidia-cuda-mps-control.pid``) and returns (or, with ``FAKE_MPS_SLOW_START``, returns that
many seconds later); without ``-d`` it reads one command on stdin
and answers ``get_server_list`` / ``quit`` only if a daemon lives in ``$CUDA_MPS_PIPE_DIRECTORY``
(``quit`` ends it). Every call is recorded with its pipe and log folders, so the tests see
which daemon was started and which one was told to quit. No GPU is needed.
"""

import contextlib
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from pyro_skipvae import mps
from pyro_skipvae.children import Interrupted
from pyro_skipvae.errors import ConfigError, MPSError
from pyro_skipvae.sweep import run_sweep

FAKE_CONTROL = r"""#!/bin/bash
record="$FAKE_MPS_RECORD"
pidfile="$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
if [ "$1" = "-d" ]; then
  if [ -n "$FAKE_MPS_HANG" ]; then
    echo "start-hung pipe=$CUDA_MPS_PIPE_DIRECTORY" >> "$record"
    exec sleep 3
  fi
  if [ -n "$FAKE_MPS_FAIL" ]; then
    echo "start-failed pipe=$CUDA_MPS_PIPE_DIRECTORY" >> "$record"
    echo "fake: cannot start the daemon"
    exit 1
  fi
  (exec -a nvidia-cuda-mps-control sleep 300) > /dev/null 2>&1 < /dev/null &
  echo $! > "$pidfile"
  echo "daemon started" > "$CUDA_MPS_LOG_DIRECTORY/control.log"
  echo "start argv=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY pid=$!" >> "$record"
  if [ -n "$FAKE_MPS_SLOW_START" ]; then  # the daemon runs, `-d` has not returned yet
    exec sleep "$FAKE_MPS_SLOW_START"
  fi
  exit 0
fi
read -r command
echo "$command argv=$* pipe=$CUDA_MPS_PIPE_DIRECTORY" >> "$record"
if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2> /dev/null; }; then
  echo "Cannot find MPS control daemon process" >&2
  exit 1
fi
case "$command" in
  quit) kill "$(cat "$pidfile")"; exit 0 ;;
  get_server_list) exit 0 ;;
  *) exit 1 ;;
esac
"""

# Stands in for the cell's Python: records the MPS variables it was given, fails like a CLI.
FAKE_PYTHON = r"""#!/bin/bash
echo "{\"pipe\": \"${CUDA_MPS_PIPE_DIRECTORY:-}\", \"log\": \"${CUDA_MPS_LOG_DIRECTORY:-}\", \"command\": \"$3\"}" >> "$FAKE_CHILD_RECORD"
echo "error: fake cell"
exit 1
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def calls(record: Path) -> list[dict]:
    """The fake's record, one dict per call: ``{"command": ..., "pipe": ..., ...}``."""
    if not record.exists():
        return []
    out = []
    for line in record.read_text().splitlines():
        command, *fields = line.split(" ")
        out.append({"command": command, **dict(f.split("=", 1) for f in fields if "=" in f)})
    return out


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake control program first on PATH; its record file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / mps.CONTROL, FAKE_CONTROL)
    record = tmp_path / "record.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_RECORD", str(record))
    for name in mps.ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # no system-wide daemon, whatever this machine has
    monkeypatch.setattr(mps, "DEFAULT_PIPE_DIRECTORY", str(tmp_path / "no-system-daemon"))
    yield record
    for call in calls(record):  # a failed test must not leave a fake daemon behind
        pid = int(call.get("pid", 0))
        if pid and mps._alive(pid):
            os.kill(pid, signal.SIGTERM)


def test_a_private_daemon_is_started_given_to_children_and_quit(fake, tmp_path):
    with mps.daemon(keep_logs=tmp_path / "kept") as env:
        assert set(env) == set(mps.ENV_VARIABLES)
        pipe, log = env["CUDA_MPS_PIPE_DIRECTORY"], env["CUDA_MPS_LOG_DIRECTORY"]
        # fresh folders of their own, private to this user, not the system-wide default
        assert pipe != log and mps.DEFAULT_PIPE_DIRECTORY not in (pipe, log)
        for folder in (pipe, log):
            assert os.path.isdir(folder) and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        start, ready = calls(fake)
        assert start["command"] == "start" and start["argv"] == "-d"
        assert (start["pipe"], start["log"]) == (pipe, log)
        # it waited for the daemon to answer through the same pipe folder
        assert ready == {"command": "get_server_list", "argv": "", "pipe": pipe}
        pid = int(start["pid"])
        assert mps._alive(pid)
    quit_call = calls(fake)[-1]
    assert quit_call == {"command": "quit", "argv": "", "pipe": pipe}
    assert not mps._alive(pid)
    assert not os.path.exists(pipe) and not os.path.exists(log)
    assert (tmp_path / "kept" / "control.log").read_text() == "daemon started\n"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_daemon_is_quit_when_the_block_raises(fake, error):
    with pytest.raises(error):
        with mps.daemon() as env:
            raise error("the sweep failed")
    start, quit_call = calls(fake)[0], calls(fake)[-1]
    assert quit_call["command"] == "quit" and quit_call["pipe"] == env["CUDA_MPS_PIPE_DIRECTORY"]
    assert not mps._alive(int(start["pid"]))
    assert not any(os.path.exists(v) for v in env.values())


def test_a_daemon_that_fails_to_start_is_a_clear_error(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_FAIL", "1")
    with pytest.raises(MPSError, match="exited with status 1: fake: cannot start the daemon"):
        with mps.daemon():
            pytest.fail("the block must not run")
    (failed,) = calls(fake)  # and no `quit` for a daemon that never started
    assert failed["command"] == "start-failed" and not os.path.exists(failed["pipe"])


def test_a_daemon_that_hangs_on_start_is_a_clear_error(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_HANG", "1")
    with pytest.raises(MPSError, match="expected `.*nvidia-cuda-mps-control -d` to start"):
        with mps.daemon(timeout=0.5):
            pytest.fail("the block must not run")
    hung, *rest = calls(fake)  # whatever it left behind is told to quit, and its folder goes
    assert hung["command"] == "start-hung" and not os.path.exists(hung["pipe"])
    assert [c["command"] for c in rest] == ["quit"] and rest[0]["pipe"] == hung["pipe"]


def interrupt_main_thread_when(record: Path, command: str, count: int = 1):
    """From a helper thread: SIGINT to the main thread (where a Ctrl-C lands) once the fake's
    record holds ``count`` calls of ``command``."""

    def send():
        deadline = time.monotonic() + 20
        while sum(c["command"] == command for c in calls(record)) < count:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_while_the_daemon_starts_still_quits_it(fake, monkeypatch):
    # `-d` has forked the daemon but not returned when Ctrl-C comes: the daemon it left
    # behind is told to quit through its pipe folder, and both folders go (issue 35, item 5)
    monkeypatch.setenv("FAKE_MPS_SLOW_START", "10")
    sender = interrupt_main_thread_when(fake, "start")
    with pytest.raises(KeyboardInterrupt):
        with mps.daemon(timeout=20):
            pytest.fail("the block must not run")
    sender.join()
    start, *rest = calls(fake)
    assert start["command"] == "start" and [c["command"] for c in rest] == ["quit"]
    assert rest[0]["pipe"] == start["pipe"]
    assert not mps._alive(int(start["pid"])) and not os.path.exists(start["pipe"])
    assert not os.path.exists(start["log"])


@pytest.mark.parametrize("error", [None, RuntimeError])
def test_logs_that_cannot_be_kept_neither_leave_folders_nor_hide_the_error(
    fake, tmp_path, caplog, error
):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="pyro_skipvae.mps"):
        with pytest.raises(error) if error else contextlib.nullcontext():
            with mps.daemon(keep_logs=blocked) as env:
                if error:
                    raise error("why the block ended")
    # the block's own exception (not the copy's), the daemon quit, both folders removed
    assert f"logs could not be copied to {blocked}" in caplog.text
    start, quit_call = calls(fake)[0], calls(fake)[-1]
    assert quit_call["command"] == "quit" and not mps._alive(int(start["pid"]))
    assert not any(os.path.exists(v) for v in env.values())


def test_on_requires_the_control_program(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    for name in mps.ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mps, "DEFAULT_PIPE_DIRECTORY", str(tmp_path / "none"))
    with pytest.raises(MPSError, match="expected nvidia-cuda-mps-control on PATH, found none"):
        with mps.for_processes("on", processes=4, cuda=True):
            pytest.fail("the block must not run")
    with mps.for_processes("auto", processes=4, cuda=True) as env:  # auto: falls back
        assert env == {}


@pytest.mark.parametrize(
    "processes, cuda, mode",
    [(1, True, "auto"), (2, False, "auto"), (4, True, "off")],
    ids=["one-process", "cpu-cells", "off"],
)
def test_auto_and_off_leave_it_alone_where_it_cannot_help(fake, processes, cuda, mode):
    with mps.for_processes(mode, processes=processes, cuda=cuda) as env:
        assert env == {}
    assert calls(fake) == []


def test_auto_starts_it_for_cuda_processes_and_falls_back_with_a_log(fake, monkeypatch, caplog):
    with mps.for_processes("auto", processes=2, cuda=True) as env:
        assert calls(fake)[0]["pipe"] == env["CUDA_MPS_PIPE_DIRECTORY"]
    assert calls(fake)[-1]["command"] == "quit"
    fake.unlink()
    monkeypatch.setenv("FAKE_MPS_FAIL", "1")
    with caplog.at_level(logging.WARNING, logger="pyro_skipvae.mps"):
        with mps.for_processes("auto", processes=2, cuda=True) as env:
            assert env == {}
    assert "running without MPS" in caplog.text and "cannot start" in caplog.text
    with pytest.raises(MPSError):  # 'on' does not fall back
        with mps.for_processes("on", processes=2, cuda=True):
            pass


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_daemon_the_user_runs_already_is_respected(fake, monkeypatch, tmp_path, mode):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "users-own"))
    with mps.for_processes(mode, processes=4, cuda=True) as env:
        assert env == {}  # the children inherit the user's variable
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY")
    system = tmp_path / "system"
    system.mkdir()
    (system / "control").touch()
    monkeypatch.setattr(mps, "DEFAULT_PIPE_DIRECTORY", str(system))
    with mps.for_processes(mode, processes=4, cuda=True) as env:
        assert env == {}  # every CUDA process joins the system-wide daemon by default
    assert calls(fake) == []


def test_an_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="expected one of auto, on, off, found 'yes'"):
        with mps.for_processes("yes", processes=2, cuda=True):
            pass


# ---------------------------------------------------------------------------- the sweep
def sweep(tmp_path, monkeypatch, fit, **options):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"fit": fit, "grids": [{"axes": {"seed": [0, 1, 2]}}]}))
    python = executable(tmp_path / "python", FAKE_PYTHON)
    children = tmp_path / "children.jsonl"
    monkeypatch.setenv("FAKE_CHILD_RECORD", str(children))
    summary = run_sweep(grid, tmp_path / "out", python=str(python), **options)
    assert summary["failed"] == 3  # the fake cells fail by design
    return [json.loads(line) for line in children.read_text().splitlines()]


def test_a_cuda_sweep_runs_its_cells_as_clients_of_its_own_daemon(fake, tmp_path, monkeypatch):
    children = sweep(tmp_path, monkeypatch, {"device": "cuda"}, jobs=2)
    start = calls(fake)[0]
    assert start["command"] == "start"
    assert len(children) == 3 and all(c["command"] == "fit" for c in children)
    assert all((c["pipe"], c["log"]) == (start["pipe"], start["log"]) for c in children)
    assert calls(fake)[-1] == {"command": "quit", "argv": "", "pipe": start["pipe"]}
    assert not os.path.exists(start["pipe"]) and not mps._alive(int(start["pid"]))
    assert (tmp_path / "out" / "mps-logs" / "control.log").exists()


@pytest.mark.parametrize(
    "fit, options",
    [
        ({}, {"jobs": 2}),
        ({"device": "cuda"}, {"jobs": 1}),
        ({"device": "cuda"}, {"jobs": 2, "mps": "off"}),
    ],
    ids=["cpu-cells", "one-job", "off"],
)
def test_other_sweeps_are_unaffected(fake, tmp_path, monkeypatch, fit, options):
    children = sweep(tmp_path, monkeypatch, fit, **options)
    assert calls(fake) == [] and len(children) == 3
    assert all(c["pipe"] == "" and c["log"] == "" for c in children)
    assert not (tmp_path / "out" / "mps-logs").exists()


def test_a_sweep_with_mps_on_and_no_control_program_stops_before_any_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setattr(mps, "DEFAULT_PIPE_DIRECTORY", str(tmp_path / "none"))
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"fit": {"device": "cuda"}, "grids": [{"axes": {"seed": [0]}}]}))
    with pytest.raises(MPSError, match="on PATH"):
        run_sweep(grid, tmp_path / "out", jobs=2, mps="on")
    assert not (tmp_path / "out" / "cells").exists() or not any(
        (tmp_path / "out" / "cells").iterdir()
    )
    with pytest.raises(ConfigError, match="mps: expected one of auto, on, off"):
        run_sweep(grid, tmp_path / "out", mps=True)


def test_skipvae_sweep_mps_on_without_the_control_program_fails_clearly(tmp_path, monkeypatch):
    """`skipvae sweep --mps on` reaches run_sweep(mps="on"): the library's MPSError is printed
    and the command exits 1 before any cell runs."""
    from click.testing import CliRunner

    from pyro_skipvae.cli.main import cli

    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setattr(mps, "DEFAULT_PIPE_DIRECTORY", str(tmp_path / "none"))
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"fit": {"device": "cuda"}, "grids": [{"axes": {"seed": [0]}}]}))
    out = tmp_path / "out"
    args = ["sweep", str(grid), "--out", str(out), "--jobs", "2", "--quiet", "--mps", "on"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "nvidia-cuda-mps-control" in result.output and "on PATH" in result.output
    assert not (out / "cells").exists() or not any((out / "cells").iterdir())
    result = CliRunner().invoke(cli, [*args[:-1], "maybe"])
    assert result.exit_code == 2 and "'maybe' is not one of 'auto', 'on', 'off'" in result.output


# A cell that runs until SIGINT, recording its start and its exit in the fake's record.
SLOW_CELL = r"""#!/bin/bash
echo "cell-start pipe=${CUDA_MPS_PIPE_DIRECTORY:-} cellpid=$$" >> "$FAKE_MPS_RECORD"
trap 'kill $!; echo "cell-exit pipe=${CUDA_MPS_PIPE_DIRECTORY:-} cellpid=$$" >> "$FAKE_MPS_RECORD"; exit 130' INT
sleep 60 &
wait $!
"""


def test_ctrl_c_keeps_the_daemon_until_the_cells_have_exited(fake, tmp_path):
    """Issue 35, item 2: the cells are stopped and waited for; only then is the daemon told
    to quit (not torn down under live clients); the third cell never starts."""
    grid = tmp_path / "grid.json"
    grid.write_text(
        json.dumps({"fit": {"device": "cuda"}, "grids": [{"axes": {"seed": [0, 1, 2]}}]})
    )
    python = executable(tmp_path / "python", SLOW_CELL)
    sender = interrupt_main_thread_when(fake, "cell-start", count=2)
    with pytest.raises(Interrupted):
        run_sweep(grid, tmp_path / "out", jobs=2, python=str(python))
    sender.join()
    record = calls(fake)
    assert [c["command"] for c in record] == [
        "start", "get_server_list", "cell-start", "cell-start", "cell-exit", "cell-exit", "quit",
    ]  # fmt: skip
    pipe = record[0]["pipe"]
    assert all(c["pipe"] == pipe for c in record[2:])  # the cells were the daemon's clients
    assert not any(os.path.exists(f"/proc/{c['cellpid']}") for c in record[2:6])
    assert not os.path.exists(pipe) and not mps._alive(int(record[0]["pid"]))
