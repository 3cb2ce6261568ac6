"""`skipvae sweep` on a tiny real-MNIST grid: rows, resume of an interrupted cell, skips of
finished ones, a failed cell recorded without stopping the sweep."""

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyro_skipvae.cli.main import cli
from pyro_skipvae.config_files import read_mapping
from pyro_skipvae.errors import ConfigError
from pyro_skipvae.sweep import COLUMNS, command_arguments, expand_grid

FIT = {
    "dataset": "mnist",
    "train_size": 300,
    "val_size": 100,
    "hidden_dims": [32],
    "latent_dim": 3,
    "num_epochs": 2,
    "kl_warmup_epochs": 1,
}
DIAGNOSE = {"eval_size": 100, "num_samples": 20, "classifier_train_size": 300, "no_plots": True}


def test_grids_expand_to_unique_named_cells():
    spec = {
        "fit": {"latent_dim": 32, "hidden_dims": [8]},
        "grids": [
            {"name": "latent", "axes": {"skip": [True, False], "latent_dim": [2, 32]}},
            {"name": "depth", "axes": {"skip": [True, False], "hidden_dims": [[8], [8, 8]]}},
        ],
    }
    cells = expand_grid(spec)
    # (skip, latent 32, hidden [8]) is in both grids: it runs once
    assert len(cells) == 6
    names = [c.name for c in cells]
    assert "latent_dim=2_skip=true" in names and "hidden_dims=8,8_skip=false" in names
    assert len(set(names)) == 6
    assert command_arguments({"latent_dim": 3, "skip": False, "decoder_options": {"k": [3, 5]}}) == [
        "--latent-dim", "3", "--no-skip", "--decoder-option", "k=[3, 5]",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="expected a non-empty list"):
        expand_grid({"grids": [{"axes": {"seed": 3}}]})


def test_a_cell_can_point_at_the_matching_cell_of_another_grid():
    spec = {
        "fit": {"inference": "semi-amortized", "init_from": "runs/a/cells/seed={seed}_skip={skip}"},
        "grids": [{"axes": {"seed": [0, 1], "skip": [True, False], "hidden_dims": [[8, 8]]}}],
    }
    cells = expand_grid(spec)
    assert {c.name: c.fit["init_from"] for c in cells} == {
        f"hidden_dims=8,8_seed={seed}_skip={skip}": f"runs/a/cells/seed={seed}_skip={skip}"
        for seed in (0, 1)
        for skip in ("true", "false")
    }
    assert (
        expand_grid(
            {
                "fit": {"init_from": "{hidden_dims}/{inference}"},
                "grids": [{"axes": {"hidden_dims": [[8, 8]], "inference": ["svi"]}}],
            }
        )[0].fit["init_from"]
        == "8,8/svi"
    )
    with pytest.raises(ConfigError, match=r"fit.init_from: 'x/\{latent\}' has a placeholder"):
        expand_grid({"fit": {"init_from": "x/{latent}"}})
    with pytest.raises(ConfigError, match="unknown grid key"):
        expand_grid({"axis": {}})


def rows(out):
    with open(out / "results.csv", newline="") as f:
        return {r["cell"]: r for r in csv.DictReader(f)}


def test_a_real_sweep_resumes_and_records_failures(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SKIPVAE_DATA_DIR", str(data_dir))
    grid = tmp_path / "grid.json"
    grid.write_text(
        json.dumps(
            {
                "fit": FIT,
                "diagnose": DIAGNOSE,
                "grids": [{"axes": {"skip": [True, False]}}, {"axes": {"latent_dim": [0]}}],
            }
        )
    )
    out = tmp_path / "sweep"
    # An interrupted cell: its fit got through one of two epochs before the sweep started.
    interrupted = out / "cells" / "skip=false"
    result = CliRunner().invoke(
        cli,
        [
            "fit",
            *command_arguments({**FIT, "num_epochs": 1, "skip": False}),
            "--out",
            str(interrupted),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    first_epoch = (interrupted / "metrics.jsonl").read_text().splitlines()[0]

    result = CliRunner().invoke(cli, ["sweep", str(grid), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 cells: 2 run, 0 already done, 1 failed" in result.output
    table = rows(out)
    assert list(next(iter(table.values()))) == COLUMNS
    ok = {k: r for k, r in table.items() if r["status"] == "ok"}
    assert set(ok) == {"skip=true", "skip=false"}
    for row in ok.values():
        assert row["epochs"] == "2" and row["dataset"] == "mnist" and row["latent_dim"] == "3"
        assert float(row["mi"]) <= float(row["log_n"]) + 1e-9 and row["mi_le_kl"] == "True"
        assert int(row["au"]) <= 3 and row["au_le_latent_dim"] == "True"
        assert float(row["test_nll"]) > 0 and row["inference"] == "amortized"
    assert {ok["skip=true"]["skip"], ok["skip=false"]["skip"]} == {"True", "False"}
    # the interrupted cell resumed from its checkpoint: epoch 1 is the one it had
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == first_epoch
    assert "--resume" in (interrupted / "log.txt").read_text()
    failed = table["latent_dim=0"]
    assert failed["status"] == "failed" and "latent-dim" in failed["error"]

    # a second invocation recomputes nothing that finished, and retries the failure
    stamp = (out / "cells" / "skip=true" / "diagnostics.json").stat().st_mtime_ns
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--out", str(out), "--quiet"])
    assert "3 cells: 0 run, 2 already done, 1 failed" in result.output
    assert (out / "cells" / "skip=true" / "diagnostics.json").stat().st_mtime_ns == stamp


GRIDS = sorted((Path(__file__).parent.parent / "benchmarks" / "grids").glob("*.yaml"))


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.name)
def test_the_committed_grids_use_only_real_options(grid):
    # Every cell's fit and diagnose arguments parse as the CLI's own (a typo in a grid file
    # would otherwise fail only hours into a sweep).
    from pyro_skipvae.cli.main import diagnose, fit

    cells = expand_grid(read_mapping(grid))
    assert cells
    for cell in cells:
        fit.make_context("fit", [*command_arguments(cell.fit), "--out", "run"])
        diagnose.make_context("diagnose", ["run", *command_arguments(cell.diagnose)])
