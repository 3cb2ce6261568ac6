"""Cells addressable one by one (issue 37, item 2): ``skipvae sweep GRID --list``,
``--cell I`` (or ``$SLURM_ARRAY_TASK_ID``) and ``--collect``; concurrent cells writing into
one sweep folder lose no row."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_sweep import DIAGNOSE, FIT

from pyro_skipvae import sweep as sweeps
from pyro_skipvae.cli.main import cli
from pyro_skipvae.sweep import (
    COLUMNS,
    ROW_FILE,
    available_cpus,
    collect,
    grid_cells,
    run_cell,
    run_sweep,
)

#: per-run timings, the only columns two runs of one cell may differ in
TIMINGS = {"seconds", "diagnose_seconds"}


def write_grid(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(
        json.dumps({"fit": FIT, "diagnose": DIAGNOSE, "grids": [{"axes": {"seed": [0, 1, 2]}}]})
    )
    return grid


def rows(out):
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(f)]


def test_list_prints_every_cell_with_its_commands(tmp_path):
    grid = write_grid(tmp_path)
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--list", "--out", "S"])
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.output.splitlines()]
    assert [(i, name) for i, name, _, _ in lines] == [
        ("0", "seed=0"), ("1", "seed=1"), ("2", "seed=2")
    ]  # fmt: skip
    index, name, fit, diagnose = lines[1]
    assert fit.startswith("skipvae fit ") and "--seed 1" in fit and "--out S/cells/seed=1" in fit
    assert diagnose.startswith("skipvae diagnose S/cells/seed=1 ") and "--no-plots" in diagnose


def test_a_cell_outside_the_grid_is_a_usage_error(tmp_path):
    grid = write_grid(tmp_path)
    result = CliRunner().invoke(
        cli, ["sweep", str(grid), "--out", str(tmp_path / "s"), "--cell", "3"]
    )
    assert result.exit_code == 2 and "from 0 to 2" in result.output and "found 3" in result.output


def test_collect_rebuilds_the_table_from_the_cells_rows(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "s"
    for cell, status in zip(grid_cells(grid)[:2], ("ok", "failed")):
        (out / "cells" / cell.name).mkdir(parents=True)
        row = {"cell": cell.name, "status": status, "grid": "", "seed": cell.fit["seed"]}
        (out / "cells" / cell.name / ROW_FILE).write_text(json.dumps(row))
    summary = collect(grid, out)
    assert (summary["ok"], summary["failed"], summary["missing"]) == (1, 1, 1)
    assert [(r["cell"], r["status"], r["seed"]) for r in rows(out)] == [
        ("seed=0", "ok", "0"),
        ("seed=1", "failed", "1"),
    ]


@pytest.mark.slow
def test_concurrent_cells_then_collect_equal_a_normal_sweep(tmp_path, data_dir):
    """Three cells as three concurrent processes (the way a job array runs them, the index
    from SLURM_ARRAY_TASK_ID), then --collect: the same rows and values as one sweep."""
    grid = write_grid(tmp_path)
    env = {**os.environ, "SKIPVAE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    sweep = [sys.executable, "-m", "pyro_skipvae.cli.main", "sweep", str(grid)]
    whole = subprocess.run([*sweep, "--out", str(tmp_path / "whole"), "--quiet"], env=env)
    assert whole.returncode == 0
    cells = [
        subprocess.Popen(
            [*sweep, "--out", str(tmp_path / "cells")],
            env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
        )
        for i in range(3)
    ]
    assert [p.wait() for p in cells] == [0, 0, 0]
    # every concurrent cell rebuilt the table: none lost another's row
    assert [r["cell"] for r in rows(tmp_path / "cells")] == ["seed=0", "seed=1", "seed=2"]
    (tmp_path / "cells" / "results.csv").unlink()
    collected = subprocess.run([*sweep, "--out", str(tmp_path / "cells"), "--collect"], env=env)
    assert collected.returncode == 0
    expected = rows(tmp_path / "whole")
    assert [r["status"] for r in expected] == ["ok"] * 3
    assert rows(tmp_path / "cells") == expected


# Stands in for `python -m pyro_skipvae.cli.main fit|diagnose ...` (as in
# test_sweep_interrupt.py): notes each start with its OMP_NUM_THREADS, and leaves the files
# `cell_results` reads.
FAKE_CELL = """#!{python}
import json, os, sys
from pathlib import Path

step = sys.argv[3]
folder = Path(sys.argv[sys.argv.index("--out") + 1] if step == "fit" else sys.argv[4])
with open(os.environ["FAKE_CELL_RECORD"], "a") as record:
    note = {{"step": step, "cell": folder.name, "threads": os.environ.get("OMP_NUM_THREADS")}}
    record.write(json.dumps(note) + "\\n")
if step == "fit":
    config = {{
        "model": {{"skip": True, "latent_dim": 2, "decoder": "mlp", "decoder_options": {{}}}},
        "train": {{"inference": "svi", "seed": 0}},
        "run": {{"dataset": "fake"}},
    }}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text(json.dumps({{"epoch": 1, "seconds": 0.1}}) + "\\n")
else:
    (folder / "diagnostics.json").write_text("{{}}")
"""


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    """``(python, started)``: a fake interpreter for the cells, and the steps it ran."""
    python, record = tmp_path / "python", tmp_path / "record.jsonl"
    python.write_text(FAKE_CELL.format(python=sys.executable))
    python.chmod(0o755)
    monkeypatch.setenv("FAKE_CELL_RECORD", str(record))

    def started():
        lines = record.read_text().splitlines() if record.exists() else []
        return [json.loads(line) for line in lines]

    return str(python), started


def write_old_results(out, statuses):
    """A sweep folder as sweeps wrote them before cells had a row.json: results.csv only."""
    (out / "cells").mkdir(parents=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for seed, status in enumerate(statuses):
            (out / "cells" / f"seed={seed}").mkdir()
            writer.writerow({"cell": f"seed={seed}", "status": status, "seed": seed})


def test_an_old_sweep_without_row_files_keeps_its_rows(tmp_path, fake_python):
    """collect and --cell on a folder holding only results.csv: no row is dropped, and an
    `ok` cell is not rerun (both used to read row.json files only)."""
    grid, out = write_grid(tmp_path), tmp_path / "s"
    write_old_results(out, ["ok", "ok", "failed"])
    before = rows(out)
    summary = collect(grid, out)
    assert (summary["ok"], summary["failed"], summary["missing"]) == (2, 1, 0)
    assert rows(out) == before
    python, started = fake_python
    assert run_cell(grid, out, 1, python=python)["status"] == "ok"
    assert started() == []  # ok in results.csv: not rerun
    assert rows(out) == before
    assert run_cell(grid, out, 2, python=python)["status"] == "ok"  # the failed one reruns
    assert [s["cell"] for s in started()] == ["seed=2", "seed=2"]
    assert [(r["cell"], r["status"]) for r in rows(out)] == [
        ("seed=0", "ok"), ("seed=1", "ok"), ("seed=2", "ok")
    ]  # fmt: skip


def test_collect_counts_interrupted_cells_apart_and_keeps_cells_not_in_the_grid(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "s"
    cells = {"seed=0": "ok", "seed=1": "interrupted", "seed=7": "ok"}  # seed=7: an old axis
    for name, status in cells.items():
        (out / "cells" / name).mkdir(parents=True)
        (out / "cells" / name / ROW_FILE).write_text(json.dumps({"cell": name, "status": status}))
    summary = collect(grid, out)
    assert {k: summary[k] for k in ("cells", "ok", "failed", "interrupted", "missing")} == {
        "cells": 3, "ok": 1, "failed": 0, "interrupted": 1, "missing": 1
    }  # fmt: skip
    assert summary["others"] == 1
    assert [(r["cell"], r["status"]) for r in rows(out)] == [
        ("seed=0", "ok"), ("seed=1", "interrupted"), ("seed=7", "ok")
    ]  # fmt: skip
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--out", str(out), "--collect"])
    assert result.exit_code == 0, result.output
    assert "1 ok, 0 failed, 1 interrupted, 1 not run (and 1 not in the grid)" in result.output


def test_cells_train_on_the_cores_they_were_given(tmp_path, fake_python, monkeypatch):
    """A cell gets $SLURM_CPUS_PER_TASK threads (--cpus-per-task), else the cores this
    process is pinned to, not 1 (run_cell) or every core of the machine (run_sweep)."""
    grid, out = write_grid(tmp_path), tmp_path / "s"
    python, started = fake_python
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert available_cpus() == 3
    run_cell(grid, out, 0, python=python)
    assert [s["threads"] for s in started()] == ["3", "3"]
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert available_cpus() == len(os.sched_getaffinity(0))
    run_sweep(grid, out, jobs=2, python=python)  # cells 1 and 2 left
    assert [s["threads"] for s in started()[2:]] == [str(max(1, available_cpus() // 2))] * 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    (out / "cells" / "seed=0" / ROW_FILE).write_text(json.dumps({"status": "failed"}))
    run_cell(grid, out, 0, python=python)
    assert [s["threads"] for s in started()[6:]] == ["4", "4"]


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None,
    reason="needs os.sched_getaffinity and taskset",
)
def test_a_sweep_pinned_to_one_core_gives_its_cells_one_thread(tmp_path, fake_python):
    """Under `taskset -c N`, with no SLURM, the cells' threads follow the affinity, not the
    machine's core count."""
    grid, out = write_grid(tmp_path), tmp_path / "s"
    python, started = fake_python
    unset = ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    code = "import sys; from pyro_skipvae.sweep import run_sweep; run_sweep(*sys.argv[1:3], python=sys.argv[3])"  # noqa: E501
    core = str(min(os.sched_getaffinity(0)))
    command = ["taskset", "-c", core, sys.executable, "-c", code, str(grid), str(out), python]
    subprocess.run(command, env=env, check=True)
    assert [s["threads"] for s in started()] == ["1"] * 6


@pytest.mark.parametrize("flags", [["--jobs", "2"], ["--mps", "on"]])
def test_cell_refuses_options_for_cells_side_by_side(tmp_path, flags):
    grid = write_grid(tmp_path)
    sweep = ["sweep", str(grid), "--out", str(tmp_path / "s"), *flags]
    result = CliRunner().invoke(cli, [*sweep, "--cell", "1"])
    assert (
        result.exit_code == 2
        and f"{' '.join(flags)} is for cells run side by side" in result.output
    )
    # a whole-sweep command inside an array task says where its cell came from
    result = CliRunner(env={"SLURM_ARRAY_TASK_ID": "1"}).invoke(cli, sweep)
    assert result.exit_code == 2
    assert (
        "from SLURM_ARRAY_TASK_ID=1" in result.output
        and "unset SLURM_ARRAY_TASK_ID" in result.output
    )
    assert not (tmp_path / "s").exists()


def test_a_cell_taken_from_the_array_task_id_is_announced(tmp_path, monkeypatch):
    grid, calls = write_grid(tmp_path), []

    def fake_run_cell(grid_file, out, index):
        calls.append(index)
        return {"cell": f"seed={index}", "status": "ok"}

    monkeypatch.setattr(sweeps, "run_cell", fake_run_cell)
    sweep = ["sweep", str(grid), "--out", str(tmp_path / "s")]
    result = CliRunner(env={"SLURM_ARRAY_TASK_ID": "2"}).invoke(cli, sweep)
    assert result.exit_code == 0, result.output
    assert calls == [2] and "running cell 2 only (from SLURM_ARRAY_TASK_ID=2)" in result.output
    result = CliRunner(env={"SLURM_ARRAY_TASK_ID": "2"}).invoke(cli, [*sweep, "--cell", "1"])
    assert calls == [2, 1] and "SLURM_ARRAY_TASK_ID" not in result.output
