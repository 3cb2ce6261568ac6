"""Cells addressable one by one (issue 37, item 2): ``skipvae sweep GRID --list``,
``--cell I`` (or ``$SLURM_ARRAY_TASK_ID``) and ``--collect``; concurrent cells writing into
one sweep folder lose no row."""

import csv
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_sweep import DIAGNOSE, FIT

from pyro_skipvae.cli.main import cli
from pyro_skipvae.sweep import ROW_FILE, collect, grid_cells

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
