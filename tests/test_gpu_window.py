"""benchmarks/gpu_window.py at a tiny size on the CPU: a window trains both cells, diagnoses
them and writes their rows; a second window resumes from the run folders."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_window.py"


@pytest.fixture(scope="module")
def gpu_window():
    spec = importlib.util.spec_from_file_location("gpu_window", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_window_trains_diagnoses_and_a_second_resumes(
    gpu_window, data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("SKIPVAE_DATA_DIR", str(data_dir))
    options = ["--out", str(tmp_path), "--tiny", "--device", "cpu", "--diagnose-s", "60"]
    rows = gpu_window.main([*options, "--budget-s", "300", "--max-epochs", "1"])
    assert sorted(r["cell"] for r in rows) == ["skip=false", "skip=true"]
    for row in rows:
        assert row["status"] == "ok" and row["epochs"] == 1 and row["decoder"] == "pixelcnn"
        assert row["skip"] == (row["cell"] == "skip=true") and row["num_layers"] == 2
        assert 0 < row["test_nll"] and row["accuracy"] is not None
        metrics = json.loads((tmp_path / "cells" / row["cell"] / "diagnostics.json").read_text())
        assert metrics["nll_num_points"] == 20 and metrics["accuracy_dataset"] == "mnist"
    rows = gpu_window.main([*options, "--budget-s", "300", "--max-epochs", "2"])
    assert [r["epochs"] for r in rows] == [2, 2], "the second window resumed to epoch 2"
    with open(tmp_path / "results.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert sorted(r["cell"] for r in written) == ["skip=false", "skip=true"]
    assert {r["epochs"] for r in written} == {"2"}
    log = (tmp_path / "log.txt").read_text()
    assert log.count("--resume") == 2, "each cell resumed once, in the second window"


def test_a_failing_fit_stops_the_window_instead_of_looping(gpu_window, tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPVAE_DATA_DIR", str(tmp_path / "no-data"))
    rows = gpu_window.main(
        [
            "--out",
            str(tmp_path),
            "--tiny",
            "--device",
            "cpu",
            "--budget-s",
            "60",
            "--diagnose-s",
            "10",
        ]
    )
    assert rows == []
    assert (tmp_path / "log.txt").read_text().count("$ ") == 1
