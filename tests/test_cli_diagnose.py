"""`skipvae diagnose` and `skipvae compare` on a tiny real-MNIST run (made once per module)."""

import csv
import io
import json
import math

import pytest
from click.testing import CliRunner

from pyro_skipvae.cli.main import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = CliRunner().invoke(
        cli,
        [
            "fit",
            "--train-size",
            "500",
            "--val-size",
            "200",
            "--num-epochs",
            "1",
            "--hidden-dims",
            "64,64",
            "--latent-dim",
            "8",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


DIAGNOSE = [
    "--eval-size",
    "150",
    "--num-samples",
    "20",
    "--classifier-train-size",
    "300",
    "--embedding",
    "pca",
    "--quiet",
]


def test_diagnose_writes_json_netcdf_and_plots(run_dir):
    result = CliRunner().invoke(cli, ["diagnose", str(run_dir), *DIAGNOSE])
    assert result.exit_code == 0, result.output
    assert "MI I_q(x;z)" in result.output and "LogisticRegression" in result.output
    metrics = json.loads((run_dir / "diagnostics.json").read_text())
    for key in ("elbo", "kl", "mi", "agg_kl", "au", "nll", "accuracy", "accuracy_knn"):
        assert isinstance(metrics[key], int | float) and math.isfinite(metrics[key]), key
    for key in ("elbo", "kl", "mi", "agg_kl", "nll", "accuracy", "accuracy_knn"):
        assert metrics[f"{key}_se"] >= 0
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["accuracy_knn"] <= 1
    assert metrics["split"] == "test" and metrics["num_points"] == 150
    assert (
        metrics["log_n"] == pytest.approx(math.log(150))
        and metrics["mi"] <= metrics["log_n"] + 1e-6
    )
    assert "full-set" in metrics["estimators"]["mi"] and "K=20" in metrics["estimators"]["nll"]
    assert (run_dir / "diagnostics.nc").stat().st_size > 0
    pngs = sorted(p.name for p in (run_dir / "diagnostics_plots").glob("*.png"))
    assert pngs == [
        "embedding.png",
        "kl_per_dim.png",
        "reconstructions.png",
        "samples.png",
        "traversals.png",
    ]


def test_diagnose_val_split_with_refinement_and_compare(run_dir, tmp_path):
    runner = CliRunner()
    a, b = tmp_path / "amortized.json", tmp_path / "refined.json"
    result = runner.invoke(
        cli, ["diagnose", str(run_dir), "--split", "val", "--out", str(a), "--no-plots", *DIAGNOSE]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli,
        [
            "diagnose",
            str(run_dir),
            "--split",
            "val",
            "--refine-steps",
            "3",
            "--out",
            str(b),
            "--no-plots",
            *DIAGNOSE,
        ],
    )
    assert result.exit_code == 0, result.output
    refined = json.loads(b.read_text())
    assert (
        refined["inference"] == "semi-amortized" and refined["refinement"]["num_refine_steps"] == 3
    )
    assert (tmp_path / "refined.nc").exists()
    result = runner.invoke(
        cli,
        [
            "compare",
            str(a),
            str(b),
            "--names",
            "amortized,refined",
            "--out",
            str(tmp_path / "table"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| metric | amortized | refined |" in result.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
    assert [r["run"] for r in rows] == ["amortized", "refined"]
    assert float(rows[0]["mi"]) == pytest.approx(json.loads(a.read_text())["mi"])


def test_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["diagnose", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "best.pt" in result.output
    result = runner.invoke(cli, ["compare", str(tmp_path)])
    assert result.exit_code == 1 and "skipvae diagnose" in result.output
    result = runner.invoke(cli, ["diagnose", str(tmp_path), "--split", "train"])
    assert result.exit_code == 2


def test_semi_amortized_run_is_diagnosed_with_its_own_refinement(tmp_path):
    """Default: the run's K, step size, momentum, clip, coordinates and batch size from
    config.json; --num-refine-steps 0: the amortized encoder."""
    out = tmp_path / "sa"
    fit = [
        "fit",
        "--train-size",
        "300",
        "--val-size",
        "100",
        "--num-epochs",
        "1",
        "--hidden-dims",
        "32",
        "--latent-dim",
        "4",
        "--batch-size",
        "25",
        "--quiet",
        "--inference",
        "semi-amortized",
        "--sa-mode",
        "kl",
        "--num-refine-steps",
        "3",
        "--refine-lr",
        "0.7",
        "--refine-momentum",
        "0.2",
        "--refine-max-grad-norm",
        "2",
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli, fit)
    assert result.exit_code == 0, result.output
    assert "refined validation ELBO" in result.output and "amortization gap" in result.output
    quick = ["--eval-size", "60", "--num-samples", "0", "--no-plots", "--quiet"]
    result = CliRunner().invoke(cli, ["diagnose", str(out), *quick])
    assert result.exit_code == 0, result.output
    own = json.loads((out / "diagnostics.json").read_text())
    assert own["inference"] == "semi-amortized" and own["num_refine_steps"] == 3
    assert own["refinement"] == {
        "num_refine_steps": 3,
        "refine_lr": 0.7,
        "refine_momentum": 0.2,
        "refine_max_grad_norm": 2.0,
        "refine_coordinates": "log-variance",
        "refine_kl": "analytic",
        "refine_batch_size": 25,
        "mode": "kl",
    }
    amortized = tmp_path / "amortized.json"
    result = CliRunner().invoke(
        cli, ["diagnose", str(out), "--num-refine-steps", "0", "--out", str(amortized), *quick]
    )
    assert result.exit_code == 0, result.output
    plain = json.loads(amortized.read_text())
    assert plain["inference"] == "amortized" and plain["refinement"] is None
    # how q is evaluated is one thing, how the model was trained another: both are recorded
    assert own["trained_with"] == plain["trained_with"] == "semi-amortized"
    assert own["guide"] == plain["guide"] == "normal"
    assert own["guide_options"] == plain["guide_options"] == {}
    # the training's seed, not the diagnosis's (which draws the IW-NLL subset)
    assert own["train_seed"] == plain["train_seed"] == 3 and own["seed"] == 0
    assert own["elbo"] > plain["elbo"], "refinement must raise the bound on the same images"


def test_nll_on_a_seeded_random_subset(run_dir, tmp_path):
    """--nll-size scores the IW-NLL on that many points drawn with --seed; the others are NaN
    in the netCDF, and the reported NLL is the mean over the scored points."""
    import xarray as xr

    out = tmp_path / "subset.json"
    args = [
        "diagnose",
        str(run_dir),
        *DIAGNOSE,
        "--nll-size",
        "40",
        "--no-plots",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "on 40 random points" in result.output
    metrics = json.loads(out.read_text())
    assert metrics["nll_num_points"] == 40 and metrics["num_points"] == 150
    with xr.open_dataset(out.with_suffix(".nc")) as ds:
        nll = ds["nll"].values
        elbo = ds["elbo"].values
    scored = ~(nll != nll)
    assert scored.sum() == 40 and not (elbo != elbo).any()
    assert metrics["nll"] == pytest.approx(nll[scored].mean(), rel=1e-6)
    # the same seed picks the same points; another seed other points
    again = tmp_path / "again.json"
    CliRunner().invoke(cli, [*args[:-1], str(again)])
    with xr.open_dataset(again.with_suffix(".nc")) as ds:
        assert ((ds["nll"].values == ds["nll"].values) == scored).all()
    other = tmp_path / "other.json"
    CliRunner().invoke(cli, [*args[:-1], str(other), "--seed", "1"])
    with xr.open_dataset(other.with_suffix(".nc")) as ds:
        assert ((ds["nll"].values == ds["nll"].values) != scored).any()


def test_accuracy_on_a_labelled_twin_data_set(tmp_path):
    """A model of the unlabelled static binarised MNIST gets posterior-mean accuracy from
    labelled MNIST with --accuracy-dataset; without it, no accuracy."""
    run = tmp_path / "bmnist"
    fit = ["fit", "--dataset", "binarized-mnist", "--train-size", "500", "--val-size", "100"]
    fit += ["--num-epochs", "1", "--hidden-dims", "32", "--latent-dim", "4"]
    result = CliRunner().invoke(cli, [*fit, "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    base = ["diagnose", str(run), "--eval-size", "200", "--num-samples", "0", "--no-plots"]
    base += ["--classifier-train-size", "300", "--quiet"]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 0, result.output
    assert "accuracy" not in json.loads((run / "diagnostics.json").read_text())
    result = CliRunner().invoke(cli, [*base, "--accuracy-dataset", "mnist"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "diagnostics.json").read_text())
    assert metrics["accuracy_dataset"] == "mnist" and metrics["classifier_num_train"] == 300
    assert 0.2 < metrics["accuracy"] <= 1 and 0.2 < metrics["accuracy_knn"] <= 1
    assert "mnist training points" in metrics["estimators"]["accuracy"]
    assert "full-set" in metrics["estimators"]["mi"], "the other estimators are kept"
    result = CliRunner().invoke(cli, [*base, "--accuracy-dataset", "ptb"])
    assert result.exit_code != 0
