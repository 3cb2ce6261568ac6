"""benchmarks/gpu_window.py at a tiny size on the CPU: a window trains the cells (the PixelCNN
pair, or text cells), diagnoses them and writes their rows; a second window resumes from the
run folders; a text cell that ends by its own rule is not trained again."""

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


def test_the_text_study_has_the_amortized_and_the_semi_amortized_pair(gpu_window):
    args = gpu_window.argparse.Namespace(
        tiny=False,
        sa_mode="stop-gradient",
        num_refine_steps=5,
        min_learning_rate=0.03,
        nll_size=2000,
    )
    study = gpu_window.ptb(args)
    assert list(study.cells) == ["skip=true", "skip=false", "sa_skip=true", "sa_skip=false"]
    fit = " ".join(study.fit)
    for option in ("--min-learning-rate 0.03", "--lr-decay plateau", "--optimizer sgd"):
        assert option in fit
    assert "--decoder-option=hidden_dim=256" in fit and "--latent-dim 64" in fit
    semi = " ".join(study.cells["sa_skip=false"])
    assert (
        semi == "--no-skip --inference semi-amortized --sa-mode stop-gradient --num-refine-steps 5"
    )
    assert "--num-samples 500" in " ".join(study.diagnose)


# ~50 s on a quiet core (two windows of two text cells, trained and diagnosed): with -m slow;
# the default suite keeps the text study's own-rule test below, which runs a text cell too.
@pytest.mark.slow
def test_text_cells_train_diagnose_and_resume(gpu_window, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPVAE_DATA_DIR", str(data_dir))
    options = ["--study", "ptb", "--out", str(tmp_path), "--tiny", "--device", "cpu"]
    options += ["--cells", "skip=false", "sa_skip=true", "--sa-mode", "stop-gradient"]
    options += ["--num-refine-steps", "1", "--diagnose-s", "60", "--budget-s", "300"]
    rows = gpu_window.main([*options, "--max-epochs", "1"])
    assert [r["cell"] for r in rows] == ["skip=false", "sa_skip=true"]
    for row in rows:
        assert row["status"] == "ok" and row["epochs"] == 1 and row["dataset"] == "ptb"
        assert row["skip"] == (row["cell"] == "sa_skip=true") and row["decoder"] == "lstm"
        assert 0 < row["test_nll"] and 1 < row["iw_ppl"] and 1 < row["ppl_bound"]
    assert [r["inference"] for r in rows] == ["amortized", "semi-amortized/stop-gradient"]
    config = json.loads((tmp_path / "cells" / "sa_skip=true" / "config.json").read_text())
    assert config["train"]["min_learning_rate"] == 0.03
    assert config["train"]["inference_options"]["num_refine_steps"] == 1
    rows = gpu_window.main([*options, "--max-epochs", "2"])
    assert [r["epochs"] for r in rows] == [2, 2], "the second window resumed to epoch 2"
    with open(tmp_path / "results.csv", newline="") as f:
        assert {r["cell"]: r["epochs"] for r in csv.DictReader(f)} == {
            "skip=false": "2",
            "sa_skip=true": "2",
        }
    assert (tmp_path / "log.txt").read_text().count("--resume") == 2


def test_a_text_cell_ended_by_its_own_rule_is_not_trained_again(
    gpu_window, data_dir, tmp_path, monkeypatch
):
    # Early stopping with patience 1 and no warm-up: the tiny model (seed 0) stops after
    # epoch 2, long before the 8 epochs allowed.
    monkeypatch.setenv("SKIPVAE_DATA_DIR", str(data_dir))
    options = ["--study", "ptb", "--out", str(tmp_path), "--tiny", "--device", "cpu"]
    options += ["--cells", "skip=true", "--max-epochs", "8", "--diagnose-s", "60"]
    options += ["--fit-flag=--kl-warmup-epochs=0", "--fit-flag=--early-stopping-patience=1"]
    rows = gpu_window.main([*options, "--budget-s", "300"])
    state = json.loads((tmp_path / "window.json").read_text())
    ended = state["finished"].get("skip=true")
    assert ended is not None and ended < 8, "the cell ended by its own rule"
    assert [(r["cell"], r["epochs"]) for r in rows] == [("skip=true", ended)]
    log = (tmp_path / "log.txt").read_text()
    # a fit per epoch, and one more that resumed, found the run finished and trained nothing
    assert log.count(" fit ") == ended + 1 and log.count(" diagnose ") == 1
    assert f"ended by its own rule after epoch {ended}" in log
    config = json.loads((tmp_path / "cells" / "skip=true" / "config.json").read_text())
    assert config["train"]["early_stopping_patience"] == 1, "--fit-flag overrides the recipe"
    rows = gpu_window.main([*options, "--budget-s", "120"])
    assert [(r["cell"], r["epochs"]) for r in rows] == [("skip=true", ended)]
    log = (tmp_path / "log.txt").read_text()
    assert log.count(" fit ") == ended + 1, "a later window does not call fit for it again"
    assert log.count(" diagnose ") == 1, "nor diagnose it again"
