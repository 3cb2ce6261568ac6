"""Ctrl-C during a sweep (issue 35, item 2): no further cell starts, the running cells get one
SIGINT and are waited for, they are recorded as ``interrupted`` (not ``ok``), the sweep raises
``Interrupted`` (the CLI exits 130), and running it again resumes them.

The fast tests run real child processes of a fake cell program (a few lines of Python that
train "epochs" of 0.1 s and stop at SIGINT as ``skipvae fit`` does); the slow one runs the
real ``skipvae sweep`` on tiny MNIST cells and interrupts it with ``os.kill``.
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyro_skipvae.children import Children, Interrupted
from pyro_skipvae.sweep import run_cell, run_sweep

# Stands in for `python -m pyro_skipvae.cli.main fit|diagnose ...`: records its start, its
# process group and every SIGINT/SIGTERM; a fit writes config.json and "trains" FAKE_EPOCHS epochs of 0.1 s and, on
# SIGINT, exits 130 as `skipvae fit` does (unless FAKE_IGNORE_SIGINT: then only SIGTERM ends
# it); a finished cell leaves the files `cell_results` reads.
FAKE_CELL = """#!{python}
import json, os, signal, sys, time
from pathlib import Path

step = sys.argv[3]
folder = Path(sys.argv[sys.argv.index("--out") + 1] if step == "fit" else sys.argv[4])
record = open(os.environ["FAKE_CELL_RECORD"], "a", buffering=1)

def note(event, **fields):
    fields.update(event=event, step=step, cell=folder.name, pid=os.getpid())
    record.write(json.dumps(fields) + "\\n")

def on_signal(signum, frame):
    note(signal.Signals(signum).name)
    if signum == signal.SIGTERM or not os.environ.get("FAKE_IGNORE_SIGINT"):
        note("exit")
        sys.exit(130)

signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)
note("start", resume="--resume" in sys.argv, group=os.getpgid(0))
if step == "fit":  # config.json first, as a real fit writes it
    config = {{
        "model": {{"skip": True, "latent_dim": 2, "decoder": "mlp", "decoder_options": {{}}}},
        "train": {{"inference": "svi", "seed": 0}},
        "run": {{"dataset": "fake"}},
    }}
    (folder / "config.json").write_text(json.dumps(config))
    for epoch in range(int(os.environ.get("FAKE_EPOCHS", "10"))):
        time.sleep(0.1)
    (folder / "metrics.jsonl").write_text(json.dumps({{"epoch": 1, "seconds": 0.1}}) + "\\n")
else:
    (folder / "diagnostics.json").write_text("{{}}")
note("exit")
"""


def events(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def rows(out: Path) -> dict[str, dict]:
    with open(out / "results.csv", newline="") as f:
        return {r["cell"]: r for r in csv.DictReader(f)}


def signal_when(record: Path, started: int, signals=(signal.SIGINT,)):
    """From a helper thread: once ``started`` fits have started, send the main thread (the
    sweep's; where a terminal's Ctrl-C lands) each of ``signals``, each after the running
    fits have noted the previous one."""

    def send():
        deadline = time.monotonic() + 20
        while sum(e["event"] == "start" for e in events(record)) < started:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        for i, signum in enumerate(signals):
            signal.pthread_kill(threading.main_thread().ident, signum)
            while time.monotonic() < deadline and (
                sum(e["event"] in ("SIGINT", "SIGTERM") for e in events(record)) < started * (i + 1)
            ):
                time.sleep(0.02)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def fake_sweep(tmp_path, monkeypatch):
    """A 6-cell grid of the fake cell; ``(grid, out, python, record)``."""
    python = tmp_path / "python"
    python.write_text(FAKE_CELL.format(python=sys.executable))
    python.chmod(0o755)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_CELL_RECORD", str(record))
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"grids": [{"axes": {"seed": [0, 1, 2, 3, 4, 5]}}]}))
    return grid, tmp_path / "out", str(python), record


def test_ctrl_c_stops_the_sweep_and_a_rerun_resumes_it(fake_sweep):
    grid, out, python, record = fake_sweep
    handler = signal.getsignal(signal.SIGINT)
    sender = signal_when(record, started=2)
    started = time.monotonic()
    with pytest.raises(Interrupted) as stopped:
        run_sweep(grid, out, jobs=2, python=python, mps="off")
    sender.join()
    assert time.monotonic() - started < 5  # not after all 6 cells' 1 s fits
    assert stopped.value.signum == signal.SIGINT and stopped.value.summary["interrupted"] == 2
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back
    # two cells had started; the other four never did (no folder, no row)
    first = events(record)
    fits = {e["pid"]: e for e in first if e["event"] == "start"}
    assert len(fits) == 2 and all(e["step"] == "fit" for e in fits.values())
    interrupted = {e["cell"] for e in fits.values()}
    assert {p.name for p in (out / "cells").iterdir()} == interrupted
    # each got exactly one SIGINT (in a group of its own: a terminal's Ctrl-C reaches it
    # only through the sweep) and had exited when the sweep returned
    for pid, start in fits.items():
        assert start["group"] != os.getpgid(0)
        assert [e["event"] for e in first if e["pid"] == pid] == ["start", "SIGINT", "exit"]
        assert not alive(pid)
    table = rows(out)
    assert set(table) == interrupted
    assert all(r["status"] == "interrupted" and "SIGINT" in r["error"] for r in table.values())
    for name in interrupted:
        assert (
            json.loads((out / "cells" / name / "row.json").read_text())["status"] == "interrupted"
        )

    summary = run_sweep(grid, out, jobs=2, python=python, mps="off")
    assert (summary["ok"], summary["failed"], summary["interrupted"]) == (6, 0, 0)
    assert all(r["status"] == "ok" for r in rows(out).values()) and len(rows(out)) == 6
    again = [
        e for e in events(record)[len(first) :] if e["event"] == "start" and e["step"] == "fit"
    ]
    assert len(again) == 6
    # only the two interrupted cells had a run to resume
    assert {e["cell"] for e in again if e["resume"]} == interrupted


def test_a_second_ctrl_c_terminates_the_children_and_still_waits(fake_sweep, monkeypatch):
    grid, out, python, record = fake_sweep
    monkeypatch.setenv("FAKE_IGNORE_SIGINT", "1")  # a cell that does not stop at SIGINT
    sender = signal_when(record, started=2, signals=(signal.SIGINT, signal.SIGINT))
    with pytest.raises(Interrupted):
        run_sweep(grid, out, jobs=2, python=python, mps="off")
    sender.join()
    fits = [e for e in events(record) if e["event"] == "start"]
    assert len(fits) == 2
    for fit in fits:
        steps = [e["event"] for e in events(record) if e["pid"] == fit["pid"]]
        assert steps == ["start", "SIGINT", "SIGTERM", "exit"]
        assert not alive(fit["pid"])
    assert {r["status"] for r in rows(out).values()} == {"interrupted"}


def test_sigterm_stops_a_single_cell_run_as_well(fake_sweep):
    grid, out, python, record = fake_sweep
    sender = signal_when(record, started=1, signals=(signal.SIGTERM,))
    with pytest.raises(Interrupted) as stopped:
        run_cell(grid, out, 3, python=python)
    sender.join()
    assert stopped.value.signum == signal.SIGTERM and 128 + stopped.value.signum == 143
    (start, *rest) = events(record)
    # the child is asked to stop as on Ctrl-C (SIGINT: a clean stop), whatever the sweep got
    assert [e["event"] for e in rest] == ["SIGINT", "exit"] and not alive(start["pid"])
    assert rows(out)["seed=3"]["status"] == "interrupted"
    assert run_cell(grid, out, 3, python=python)["status"] == "ok"
    assert events(record)[-4]["resume"] is True  # start, exit of the fit; then the diagnose


def test_signals_are_handled_only_while_watching_and_ignored_ones_stay_ignored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        children = Children()
        with children.watching():
            assert signal.getsignal(signal.SIGINT) == children._handle
            assert signal.getsignal(signal.SIGTERM) == children._handle
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
        assert children.stopped is None
    finally:
        signal.signal(signal.SIGHUP, before[signal.SIGHUP])


def test_ctrl_c_while_a_checkpoint_is_written_is_an_interruption(tmp_path, monkeypatch):
    """A cell's fit that gets SIGINT while it saves a checkpoint stops as on any Ctrl-C
    (KeyboardInterrupt: exit 130), not with torch's "unexpected pos" RuntimeError, and the
    previous checkpoint is intact (seen on a real interrupted sweep)."""
    import torch

    from pyro_skipvae import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.atomic_save({"w": torch.zeros(3)}, path)
    before = path.read_bytes()
    save = torch.save

    class Interrupted3rdWrite(io.RawIOBase):
        def __init__(self, file):
            self.file, self.writes = file, 0

        def writable(self):
            return True

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.file.write(data)

    monkeypatch.setattr(torch, "save", lambda obj, f: save(obj, Interrupted3rdWrite(f)))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"w": torch.ones(1000)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


# ------------------------------------------------------------------------- the real thing
@pytest.mark.slow
def test_ctrl_c_on_a_real_sweep_exits_130_and_the_rerun_resumes(tmp_path, data_dir):
    """`skipvae sweep --jobs 2` over 6 tiny MNIST cells, SIGINT once two fits have written
    an epoch: exit 130, no child left, 2 of 6 cells started and recorded as interrupted with
    their epochs kept; the same command then finishes all 6, resuming those 2."""
    fit = {"dataset": "mnist", "train_size": 200, "val_size": 100, "hidden_dims": [16]}
    fit.update(latent_dim=2, kl_warmup_epochs=1, num_epochs=200)  # longer than the test waits
    grid = tmp_path / "grid.json"
    grid.write_text(
        json.dumps(
            {
                "fit": fit,
                "diagnose": {"eval_size": 50, "num_samples": 5, "no_plots": True},
                "grids": [{"axes": {"seed": [0, 1, 2, 3, 4, 5]}}],
            }
        )
    )
    out = tmp_path / "out"
    env = {**os.environ, "SKIPVAE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pyro_skipvae.cli.main", "sweep", str(grid)]
    command += ["--out", str(out), "--jobs", "2", "--quiet"]
    sweep = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    trained = lambda: [p for p in (out / "cells").glob("*/metrics.jsonl") if p.read_text()]  # noqa: E731
    deadline = time.monotonic() + 120
    while len(trained()) < 2 and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.1)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    assert "interrupted" in stderr and "run the same command again" in stderr
    started = {p.name for p in (out / "cells").iterdir()}
    assert len(started) == 2
    leftovers = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(out).encode() in _read(p)]
    assert leftovers == []  # no cell's process outlived the sweep
    table = rows(out)
    assert {r["status"] for r in table.values()} == {"interrupted"} and set(table) == started
    epochs = {
        n: len((out / "cells" / n / "metrics.jsonl").read_text().splitlines()) for n in started
    }
    assert all(e >= 1 for e in epochs.values())
    for name in started:
        log = (out / "cells" / name / "log.txt").read_text()
        assert "error: interrupted; the last completed epoch's checkpoint is intact" in log, log

    # the rerun: one epoch each (a resume may lower num_epochs: the two keep the epochs they
    # have, the four new cells train one)
    grid.write_text(grid.read_text().replace('"num_epochs": 200', '"num_epochs": 1'))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert {r["status"] for r in rows(out).values()} == {"ok"} and len(rows(out)) == 6
    for name in started:
        assert "--resume" in (out / "cells" / name / "log.txt").read_text()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
