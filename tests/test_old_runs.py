"""Old run folders load, resume and diagnose unchanged (issue 24's compatibility constraint).

``tests/data/run_v0.1.0`` was written by ``skipvae fit`` at commit 4fb234a, before the
façade and the CLI were restructured (its README gives the command). These tests read it
with today's code; anything that writes works on a copy, and the last test checks that the
folder itself was never touched.
"""

import hashlib
import json
import math
import shutil
from pathlib import Path

import pyro
import pytest
import torch
from click.testing import CliRunner

from pyro_skipvae import SkipVAE
from pyro_skipvae.cli.main import cli
from pyro_skipvae.data import load_dataset
from pyro_skipvae.diagnostics import evaluate_elbo
from pyro_skipvae.modes import evaluating

OLD_RUN = Path(__file__).parent / "data" / "run_v0.1.0"
#: the flags that wrote the fixture (its README), less --out and --num-epochs
FIT_FLAGS = [
    "--dataset",
    "binarized-mnist",
    "--decoder",
    "mlp",
    "--latent-dim",
    "4",
    "--hidden-dims",
    "8",
    "--train-size",
    "200",
    "--val-size",
    "100",
    "--batch-size",
    "50",
    "--seed",
    "0",
    "--quiet",
]


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def untouched():
    """The fixture's files before the module's tests; checked again by the last test."""
    return _digests(OLD_RUN)


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _copy(tmp_path):
    return Path(shutil.copytree(OLD_RUN, tmp_path / "run"))


def test_fixture_is_a_complete_old_run(untouched):
    assert {"config.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "train.log"} <= set(
        untouched
    )
    config = json.loads((OLD_RUN / "config.json").read_text())
    assert config["format"] == 2 and config["train"]["num_epochs"] == 1
    assert [r["epoch"] for r in _records(OLD_RUN)] == [1]


def test_load_reproduces_the_recorded_validation_metrics(untouched, data_dir):
    """``SkipVAE.load`` rebuilds the model from config.json and best.pt and scores the same
    100 validation images as the old code did.

    * ``val_kl`` is the Gaussian KL in closed form, so it is reproduced to float rounding.
    * ``val_elbo`` is one Monte-Carlo draw of z per image, averaged over N = 100 images, at an
      RNG state only the old process knew, so that check is statistical: R repeated one-draw
      passes give each image's ELBO variance σ_i², hence the standard error of a one-draw
      mean, sqrt(Σ σ_i²) / N; the reference (the mean of the R passes) carries that error
      divided by sqrt(R). The record must lie within 5 combined standard errors (a false
      alarm with probability below 1e-6). This model is barely trained (one epoch, β < 1)
      and its decoder is sensitive to z, so the tolerance is wide (about 13 nats).
    * The sharp check: ``reference.json`` holds the old code's seeded ``evaluate`` of the
      loaded model (its README); today's code must give the same numbers.

    Float32 sums may round differently under another thread count than the fixture's one
    thread; 1e-5 relative is far above that rounding and far below any real change.
    """
    vae = SkipVAE.load(OLD_RUN)
    config = json.loads((OLD_RUN / "config.json").read_text())
    # settings added after the fixture was written come back at their defaults
    added_since = {"precision": "32"}
    assert json.loads(json.dumps(vae.config.__dict__)) == {**config["model"], **added_since}
    val = load_dataset("binarized-mnist", data_dir=data_dir, train_size=200, val_size=100).val
    assert val.shape == (100, 1, 28, 28)
    recorded = _records(OLD_RUN)[0]

    pyro.set_rng_seed(0)
    seeded = vae.evaluate(val, batch_size=100)
    reference = json.loads((OLD_RUN / "reference.json").read_text())["evaluate_seed0_batch100"]
    assert seeded == pytest.approx(reference, rel=1e-5)
    assert seeded["kl"] == pytest.approx(recorded["val_kl"], rel=1e-5)

    repeats = 50
    with evaluating(vae.model, vae.guide):
        draws = torch.stack(
            [
                evaluate_elbo(vae.model, vae.guide, val, batch_size=100)["elbo_per_datapoint"]
                for _ in range(repeats)
            ]
        ).double()
    one_draw_se = draws.var(0).sum().sqrt().item() / val.shape[0]
    tolerance = 5 * one_draw_se * math.sqrt(1 + 1 / repeats)
    assert abs(recorded["val_elbo"] - draws.mean().item()) < tolerance


def test_resume_continues_the_old_history(untouched, data_dir, tmp_path):
    """``skipvae fit --resume`` on a copy continues the old run for a second epoch, exactly
    as an uninterrupted two-epoch run of today's code does (so today's first epoch is also
    the old one)."""
    resumed, fresh = _copy(tmp_path), tmp_path / "fresh"
    for out, extra in ((resumed, ["--resume"]), (fresh, [])):
        args = ["fit", *FIT_FLAGS, "--data-dir", str(data_dir), "--num-epochs", "2"]
        result = CliRunner().invoke(cli, [*args, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
    old, records = _records(OLD_RUN), _records(resumed)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0] == old[0]  # the old epoch is carried over, not recomputed
    assert set(records[1]) == set(old[0]) | {"val_au"}  # val_au: recorded since 0.1.0
    assert records[1]["selected"] in (1, 2)
    saved, now = (json.loads((d / "config.json").read_text()) for d in (OLD_RUN, resumed))
    saved["train"]["num_epochs"] = 2
    # settings added since 0.1.0 are written at their defaults (what the old run meant)
    saved["train"]["init_from"] = None
    saved["model"]["precision"] = "32"
    saved["train"]["lr_decay_patience"] = 2
    assert now == saved
    assert torch.load(resumed / "checkpoint.pt", weights_only=False)["epoch"] == 2
    # Float32 sums may round differently under another thread count than the fixture's
    # one thread; 1e-5 relative is far above that rounding and far below any real change.
    for a, b in zip(records, _records(fresh), strict=True):
        a.pop("seconds"), b.pop("seconds")
        if "val_au" not in a:  # the old epoch, carried over
            b.pop("val_au")
        assert a == pytest.approx(b, rel=1e-5)


#: the keys of diagnostics.json as the old code wrote them for this run (and these options)
DIAGNOSTICS_KEYS = {
    *("agg_kl", "agg_kl_mc_se", "agg_kl_se", "au", "au_threshold", "binarization_seed"),
    *("binarize", "checks", "dataset", "decoder", "elbo", "elbo_se", "estimators"),
    *("inference", "kl", "kl_per_dim", "kl_se", "latent_dim", "log_n", "max_length", "mi"),
    *("mi_mc_se", "mi_minibatch", "mi_minibatch_cap", "mi_minibatch_se", "mi_se", "netcdf"),
    *("nll", "nll_mc_se", "nll_num_points", "nll_num_samples", "nll_se", "num_points"),
    *("num_refine_steps", "pareto_k_max", "pareto_k_share_above", "pareto_k_share_above_0_5"),
    *("pareto_k_threshold", "pareto_warning", "posterior_mean_variance", "refinement"),
    *("run_dir", "seconds", "seed", "skip", "split", "trained_on"),
}


def test_diagnose_the_old_run(untouched, data_dir, tmp_path):
    """``skipvae diagnose`` reads the old folder (a copy) and writes diagnostics.json with
    every key the old code wrote (new keys may be added; none may go)."""
    run = _copy(tmp_path)
    args = ["diagnose", str(run), "--split", "val", "--eval-size", "100", "--num-samples", "10"]
    options = ["--nll-size", "20", "--data-dir", str(data_dir), "--no-plots", "--quiet"]
    result = CliRunner().invoke(cli, [*args, *options])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "diagnostics.json").read_text())
    assert DIAGNOSTICS_KEYS <= set(metrics)
    assert {"agg_kl_ge_0", "mi_le_kl", "mi_le_log_n"} <= set(metrics["checks"])
    assert {"agg_kl", "au", "elbo", "kl", "mi", "nll"} <= set(metrics["estimators"])
    for key in ("elbo", "kl", "mi", "agg_kl", "au", "nll"):
        assert isinstance(metrics[key], int | float) and math.isfinite(metrics[key]), key
    assert metrics["num_points"] == 100 and metrics["nll_num_points"] == 20
    assert metrics["latent_dim"] == 4 and len(metrics["kl_per_dim"]) == 4
    assert (run / "diagnostics.nc").exists()


def test_the_old_run_was_never_written(untouched):
    assert _digests(OLD_RUN) == untouched
