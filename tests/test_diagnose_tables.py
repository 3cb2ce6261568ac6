"""diagnose() and what surrounds it: the arithmetic (estimate.ratio_and_se,
diagnosis.consistency_checks), the text tables (tables: _cell, format_table, compare_table),
the netCDF outputs (netcdf), diagnose's plumbing (each option reaches the estimator it
configures, checked by recording stand-ins) and plots.decode / plots.prior_sample.

Metric dicts here are synthetic numbers chosen to be exact in binary floating point, so
that boundaries ("within 3 standard errors") can be tested at the limit itself.
"""

import csv
import io
import logging
import math
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import marginal, mvn_guide, posterior

from pyro_skipvae.diagnostics import diagnosis, plots
from pyro_skipvae.diagnostics.diagnosis import consistency_checks, diagnose
from pyro_skipvae.diagnostics.estimate import ratio_and_se
from pyro_skipvae.diagnostics.latent import Posteriors
from pyro_skipvae.diagnostics.netcdf import per_datapoint_dataset, write_netcdf
from pyro_skipvae.diagnostics.tables import _cell, compare_table, format_table
from pyro_skipvae.sites import data_plate


# ---------------------------------------------------------------- ratio_and_se
def test_ratio_and_se_closed_form():
    """R = Σv/Σc and se = √(N/(N−1) Σ r²)/Σc with r = v − R c, worked by hand."""
    values = torch.tensor([1.0, 2.0, 6.0])
    counts = [1, 1, 2]  # a list is accepted, as the docstring's "counts" may be any array
    ratio, se = ratio_and_se(values, counts)
    assert ratio == 2.25  # 9 / 4
    # residuals: 1 − 2.25, 2 − 2.25, 6 − 4.5 = −1.25, −0.25, 1.5; Σ r² = 3.875
    assert se == pytest.approx(math.sqrt(3 / 2 * 3.875) / 4, rel=1e-12)


def test_ratio_and_se_two_points_is_the_smallest_set_with_an_error():
    ratio, se = ratio_and_se(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))
    # R = 2, residuals ∓1, √(2/1 · 2) / 2 = 1
    assert (ratio, se) == (2.0, 1.0)
    ratio, se = ratio_and_se(torch.tensor([5.0]), torch.tensor([4.0]))
    assert ratio == 1.25 and math.isnan(se)


def test_ratio_and_se_is_double_precision():
    values = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float32) / 3
    ratio, _ = ratio_and_se(values, torch.ones(3, dtype=torch.int64))
    assert ratio == pytest.approx(7 / 9, rel=1e-7)
    assert isinstance(ratio, float)


# ---------------------------------------------------------------- consistency_checks
def test_consistency_checks_names_its_three_inequalities():
    m = {"mi": 1.0, "kl": 2.0, "agg_kl": 1.0, "log_n": 3.0}
    assert consistency_checks(m) == {"mi_le_log_n": True, "mi_le_kl": True, "agg_kl_ge_0": True}
    assert all(type(v) is bool for v in consistency_checks(m).values())


def test_mi_le_log_n_allows_exactly_three_standard_errors_by_default():
    base = {"kl": 100.0, "agg_kl": 1.0, "log_n": 1.0, "mi_se": 0.5, "kl_se": 8.0}
    assert consistency_checks({**base, "mi": 2.5})["mi_le_log_n"]  # log N + 3 · 0.5
    assert not consistency_checks({**base, "mi": 2.75})["mi_le_log_n"]  # 3.5 se above
    assert consistency_checks({**base, "mi": 2.75}, num_se=3.5)["mi_le_log_n"]


def test_mi_le_kl_uses_the_combined_standard_error_of_mi_and_kl():
    # hypot(0.75, 1.0) = 1.25, so the allowance is 3 · 1.25 = 3.75 above KL = 1
    base = {"kl": 1.0, "agg_kl": 1.0, "log_n": 50.0, "mi_se": 0.75, "kl_se": 1.0}
    assert consistency_checks({**base, "mi": 4.75})["mi_le_kl"]
    assert not consistency_checks({**base, "mi": 4.875})["mi_le_kl"]


def test_agg_kl_ge_0_allows_exactly_three_standard_errors_below_zero():
    base = {"mi": 0.0, "kl": 1.0, "log_n": 2.0, "agg_kl_se": 0.5, "mi_se": 4.0}
    assert consistency_checks({**base, "agg_kl": -1.5})["agg_kl_ge_0"]
    assert not consistency_checks({**base, "agg_kl": -1.75})["agg_kl_ge_0"]


@pytest.mark.parametrize("se", [None, math.nan, math.inf])
def test_missing_or_non_finite_standard_errors_count_as_zero(se):
    m = {"mi": 2.0, "kl": 2.0, "agg_kl": 0.0, "log_n": 2.0}
    if se is not None:
        m.update(mi_se=se, kl_se=se, agg_kl_se=se)
    assert all(consistency_checks(m).values())  # every inequality holds with equality
    nudged = {**m, "mi": 2.0 + 1e-9, "agg_kl": -1e-9}
    assert consistency_checks(nudged) == {
        "mi_le_log_n": False,
        "mi_le_kl": False,
        "agg_kl_ge_0": False,
    }


# ---------------------------------------------------------------- _cell
def test_cell_formats_value_and_standard_error():
    m = {"nll": 85.12345, "nll_se": 0.5, "kl": 3.14159, "elbo": -1.0, "elbo_se": math.nan}
    assert _cell(m, "nll") == "85.12 ± 0.50"  # two digits by default
    assert _cell(m, "nll", digits=3) == "85.123 ± 0.500"
    assert _cell(m, "kl") == "3.14"  # no standard error known
    assert _cell(m, "elbo") == "-1.00"  # a nan standard error is not shown
    assert _cell({"kl": 1.0, "kl_se": None}, "kl") == "1.00"
    assert _cell(m, "mi") == "–"  # missing
    assert _cell({"mi": None}, "mi") == "–"


def test_cell_active_units_out_of_latent_dim():
    assert _cell({"au": 3, "latent_dim": 8}, "au") == "3 / 8"
    assert _cell({"au": 3}, "au") == "3 / ?"


def test_cell_shares_are_percentages():
    m = {"accuracy": 0.8765, "accuracy_se": 0.0123, "accuracy_knn": 0.5}
    assert _cell(m, "accuracy") == "87.65 ± 1.23"
    assert _cell(m, "accuracy_knn") == "50.00"
    assert _cell({"pareto_k_share_above": 0.25}, "pareto_k_share_above") == "25.00"
    share = {"pareto_k_share_above": 0.125, "pareto_k_share_above_se": 0.0625}
    assert _cell(share, "pareto_k_share_above") == "12.50 ± 6.25"


# ---------------------------------------------------------------- format_table
def test_format_table_rows_in_table_order_aligned_with_the_warning_last():
    m = {
        "au": 3,
        "latent_dim": 8,
        "kl": 5.0,
        "nll": 90.0,
        "nll_se": 0.5,
        "pareto_warning": "k-hat > 0.7 for 10% of points",
    }
    assert format_table(m) == (
        "IW-NLL (nats)                     90.00 ± 0.50\n"
        "KL = E_x KL(q(z|x)||p(z)) (nats)  5.00\n"
        "active units (dims)               3 / 8\n"
        "warning: k-hat > 0.7 for 10% of points"
    )


def test_format_table_without_warning():
    assert format_table({"elbo": -2.0, "pareto_warning": ""}) == "ELBO (nats)  -2.00"
    assert format_table({"elbo": -2.0}) == "ELBO (nats)  -2.00"


# ---------------------------------------------------------------- compare_table
def test_compare_table_markdown_and_csv():
    a = {"nll": 90.0, "nll_se": 0.5, "au": 3, "latent_dim": 8, "split": "val", "num_points": 100}
    b = {
        "nll": 91.25,
        "kl": 4.0,
        "kl_se": None,
        "accuracy": 0.5,
        "accuracy_se": 0.01,
        "num_points": 50,
        "refine_steps": 0,
    }
    md, csv_text = compare_table([("a", a), ("b", b)])
    assert md == (
        "| metric | a | b |\n"
        "|---|---|---|\n"
        "| IW-NLL (nats) | 90.00 ± 0.50 | 91.25 |\n"
        "| KL = E_x KL(q(z|x)||p(z)) (nats) | – | 4.00 |\n"
        "| active units (dims) | 3 / 8 | – |\n"
        "| accuracy, logistic regression (%) | – | 50.00 ± 1.00 |\n"
        "| split | val | – |\n"
        "| num_points | 100 | 50 |\n"
        "| refine_steps | – | 0 |\n"
    )
    rows = list(csv.reader(io.StringIO(csv_text)))
    assert rows == [
        ["run", "nll", "nll_se", "kl", "kl_se", "au", "accuracy", "accuracy_se"]
        + ["split", "num_points", "refine_steps"],
        ["a", "90.0", "0.5", "", "", "3", "", "", "val", "100", ""],
        ["b", "91.25", "", "4.0", "", "", "0.5", "0.01", "", "50", "0"],
    ]


def test_compare_table_shows_nll_num_samples_when_any_run_has_it():
    md, csv_text = compare_table([("x", {"nll": 1.0, "nll_num_samples": 500})])
    assert md.splitlines()[-1] == "| nll_num_samples | 500 |"
    assert list(csv.reader(io.StringIO(csv_text))) == [
        ["run", "nll", "nll_num_samples"],
        ["x", "1.0", "500"],
    ]


# ---------------------------------------------------------------- netCDF
def _result():
    """A synthetic diagnose() result: 3 datapoints, 2 latent dims, 4 particles."""
    mean = torch.arange(6.0).reshape(3, 2).requires_grad_()
    return {
        "per_datapoint": {
            "nll": torch.tensor([1.0, 2.0, 3.0]),
            "posterior_mean": mean,
            "log_weights": torch.zeros(3, 4),
        },
        "metrics": {
            "nll": 2.0,
            "num_points": 3,
            "pareto_warning": "",
            "pareto_k_max": 0.25,
            "checks": {"mi_le_kl": True},
            "kl_per_dim": [0.5, 0.25],
            "estimators": {"nll": "IW"},
            "flag": True,
        },
    }


def test_per_datapoint_dataset_dimensions_values_and_attrs():
    ds = per_datapoint_dataset(_result(), attrs={"split": "val"})
    assert ds["nll"].dims == ("datapoint",)
    assert ds["posterior_mean"].dims == ("datapoint", "latent_dim")
    assert ds["log_weights"].dims == ("datapoint", "particle")
    assert ds["posterior_mean"].values.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert ds["nll"].values.tolist() == [1.0, 2.0, 3.0]
    assert dict(ds.sizes) == {"datapoint": 3, "latent_dim": 2, "particle": 4}
    # plain numbers and strings only: no bools, dicts or lists
    assert ds.attrs == {
        "nll": 2.0,
        "num_points": 3,
        "pareto_warning": "",
        "pareto_k_max": 0.25,
        "split": "val",
    }
    assert "split" not in per_datapoint_dataset(_result()).attrs


def test_a_two_dimensional_log_weights_only_by_name():
    result = _result()
    result["per_datapoint"] = {"other": torch.zeros(3, 4)}
    assert per_datapoint_dataset(result)["other"].dims == ("datapoint", "latent_dim")


def test_write_netcdf_writes_hdf5_atomically(tmp_path):
    import xarray as xr

    path = tmp_path / "sub" / "d.nc"
    # whatever engine the user's xarray prefers, the file is netCDF4 written by h5netcdf
    with xr.set_options(netcdf_engine_order=("scipy", "h5netcdf", "netcdf4")):
        write_netcdf(per_datapoint_dataset(_result()), path)
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["d.nc"]  # no temporary file left
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["posterior_mean"].values.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
        assert ds.attrs["num_points"] == 3


# ---------------------------------------------------------------- diagnose's plumbing
def linear_guide(A, c, s):
    """q(z|x) = N(A x + c, diag s²)."""

    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", dist.Normal(x @ A.T + c, s).to_event(1))

    return guide


def linear_model(W, b, sigma):
    """z ~ N(0, I), x | z ~ N(W z + b, σ² I)."""

    def model(x, **kwargs):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(torch.zeros(W.shape[1]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    return model


@pytest.fixture
def pair(float64):
    """A linear-Gaussian model and guide (2 latent dims) on 12 synthetic points in R³."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 3, generator=g)
    W = torch.randn(3, 2, generator=g)
    model = linear_model(W, torch.zeros(3), 0.5)
    guide = linear_guide(A, torch.zeros(2), torch.tensor([0.5, 0.8]))
    x = torch.randn(22, 3, generator=g)
    return model, guide, x[:12], x[12:]


@pytest.fixture
def spies(monkeypatch):
    """Record the arguments of the estimators diagnose looks up in its module."""
    calls = {}

    def spy(name):
        real = getattr(diagnosis, name)

        def wrapper(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            if name == "importance_sample":
                kwargs = {**kwargs, "pareto": False}  # k̂ (ArviZ) is not under test: skip it
            return real(*args, **kwargs)

        monkeypatch.setattr(diagnosis, name, wrapper)

    for name in (
        "aggregate_posterior_terms",
        "minibatch_mutual_information",
        "importance_sample",
        "posterior_mean_variance",
    ):
        spy(name)

    class RecordingPosteriors(Posteriors):
        def __init__(self, guide, data, **kwargs):
            calls.setdefault("Posteriors", []).append(((guide, data), kwargs))
            super().__init__(guide, data, **kwargs)

    monkeypatch.setattr(diagnosis, "Posteriors", RecordingPosteriors)

    def fake_accuracy(train_codes, train_labels, codes, labels, *, classifiers=None):
        calls.setdefault("classification_accuracy", []).append(
            ((train_codes, train_labels, codes, labels), {"classifiers": classifiers})
        )
        return {
            "logistic": {
                "accuracy": 0.75,
                "accuracy_se": 0.125,
                "classifier": "LR",
                "num_train": 10,
            },
            "knn": {"accuracy": 0.5, "accuracy_se": 0.25, "classifier": "5-NN", "num_train": 10},
        }

    monkeypatch.setattr(diagnosis, "classification_accuracy", fake_accuracy)
    return calls


def test_diagnose_passes_each_option_to_its_estimator(pair, spies):
    model, guide, x, x_train = pair
    labels, train_labels = torch.arange(12) % 2, torch.arange(10) % 2
    result = diagnose(
        model,
        guide,
        x,
        labels=labels,
        train_data=x_train,
        train_labels=train_labels,
        num_samples=7,
        mi_num_samples=3,
        au_threshold=0.2,
        mi_batch_size=4,
        chunk_size=5,
        iw_batch_size=6,
        particle_chunk=2,
        classifiers=["knn", "logistic"],
        keep_log_weights=True,
        seed=3,
    )
    (enc_args, enc_kw), (train_args, train_kw) = spies["Posteriors"]
    assert enc_args[1] is x and enc_kw["chunk_size"] == 5
    assert train_args[1] is x_train and train_kw["chunk_size"] == 5
    post = spies["aggregate_posterior_terms"][0][0][1]
    assert isinstance(post, Posteriors) and post.data is x
    assert spies["aggregate_posterior_terms"][0][1]["num_samples"] == 3
    assert spies["minibatch_mutual_information"][0][1] == {"batch_size": 4}
    iw = spies["importance_sample"][0][1]
    assert (iw["num_samples"], iw["batch_size"], iw["particle_chunk"]) == (7, 6, 2)
    assert iw["keep_log_weights"] is True

    (train_codes, tl, codes, lab), kw = spies["classification_accuracy"][0]
    assert kw == {"classifiers": ["knn", "logistic"]}
    assert train_codes.shape == (10, 2) and tl is train_labels and lab is labels
    assert codes is result["codes"]

    m, per = result["metrics"], result["per_datapoint"]
    assert (m["num_points"], m["latent_dim"], m["seed"]) == (12, 2, 3)
    assert m["log_n"] == math.log(12)
    assert m["nll_num_samples"] == 7 and per["log_weights"].shape == (12, 7)
    variances = result["posterior_mean_variance"]
    assert m["au_threshold"] == 0.2 and m["au"] == int((variances > 0.2).sum())
    assert "> 0.2 (Burda" in m["estimators"]["au"]
    assert "3 z draw(s) per point" in m["estimators"]["mi"]
    assert "capped at log 4 = 1.386" in m["estimators"]["mi_minibatch"]
    # classifier "logistic" reports as accuracy, the others as accuracy_<name>
    assert (m["accuracy"], m["accuracy_se"]) == (0.75, 0.125)
    assert (m["accuracy_knn"], m["accuracy_knn_se"]) == (0.5, 0.25)
    assert m["estimators"]["accuracy_knn"] == "5-NN; fitted on 10 training points"
    assert m["classifier_num_train"] == 10
    assert per["label"] is labels
    assert m["checks"] == consistency_checks(m)


def test_diagnose_defaults(pair, spies):
    """Documented defaults: chunk_size 100 (also the IW batch), K = 500, 2 MI draws,
    minibatch MI at 50, δ = 0.01, no log-weights kept, seed 0."""
    model, guide, x, _ = pair
    result = diagnose(model, guide, x)
    assert spies["Posteriors"][0][1]["chunk_size"] == 100
    assert spies["aggregate_posterior_terms"][0][1]["num_samples"] == 2
    assert spies["minibatch_mutual_information"][0][1] == {"batch_size": 50}
    iw = spies["importance_sample"][0][1]
    assert (iw["num_samples"], iw["batch_size"], iw["particle_chunk"]) == (500, 100, None)
    assert iw["keep_log_weights"] is False
    m = result["metrics"]
    assert (m["nll_num_samples"], m["au_threshold"], m["seed"]) == (500, 0.01, 0)
    assert "log_weights" not in result["per_datapoint"]
    assert "classification_accuracy" not in spies and "accuracy" not in m
    assert result["codes"].shape == (12, 2) and result["kl_per_dim"].shape == (2,)


def test_diagnose_zero_skips_nll_and_minibatch_mi(pair, spies):
    model, guide, x, _ = pair
    m = diagnose(model, guide, x, num_samples=0, mi_batch_size=0)["metrics"]
    assert "importance_sample" not in spies and "minibatch_mutual_information" not in spies
    assert not {"nll", "nll_se", "pareto_k_max", "mi_minibatch"} & set(m)
    assert {"nll", "mi_minibatch"}.isdisjoint(m["estimators"])


def test_diagnose_per_token_metrics(pair):
    model, guide, x, _ = pair
    tokens = torch.tensor([3, 4, 5, 6] * 3)
    result = diagnose(model, guide, x, num_samples=5, num_tokens=tokens)
    m, per = result["metrics"], result["per_datapoint"]
    assert m["num_tokens"] == 54 and per["num_tokens"].dtype == torch.float64
    elbo_rate = per["elbo"].double().sum().item() / 54
    nll_rate = per["nll"].double().sum().item() / 54
    assert m["elbo_per_token"] == pytest.approx(elbo_rate, rel=1e-12)
    assert m["nll_per_token"] == pytest.approx(nll_rate, rel=1e-12)
    assert m["ppl_bound"] == pytest.approx(math.exp(-elbo_rate), rel=1e-12)
    assert m["iw_ppl"] == pytest.approx(math.exp(nll_rate), rel=1e-12)
    _, elbo_se = ratio_and_se(per["elbo"], tokens)
    _, nll_se = ratio_and_se(per["nll"], tokens)
    assert m["elbo_per_token_se"] == pytest.approx(elbo_se, rel=1e-12)
    assert m["ppl_bound_se"] == pytest.approx(m["ppl_bound"] * elbo_se, rel=1e-12)
    assert m["iw_ppl_se"] == pytest.approx(m["iw_ppl"] * nll_se, rel=1e-12)
    assert {"ppl_bound", "iw_ppl"} <= set(m["estimators"])
    # without the IW-NLL only the bound is reported
    m0 = diagnose(model, guide, x, num_samples=0, num_tokens=tokens)["metrics"]
    assert "ppl_bound" in m0 and "iw_ppl" not in m0 and "iw_ppl" not in m0["estimators"]


def test_diagnose_with_posteriors_cannot_encode_train_data(pair, spies, caplog):
    model, guide, x, x_train = pair
    post = diagnosis.Posteriors(guide, x, chunk_size=4)  # the recording stand-in's class
    labels = torch.arange(12) % 2
    with caplog.at_level(logging.WARNING, logger=diagnosis.__name__):
        result = diagnose(
            model, post, x, labels=labels, train_data=x_train, train_labels=labels[:10],
            num_samples=0, mi_batch_size=4,
        )  # fmt: skip
    assert "pass a guide, not Posteriors" in caplog.text
    assert "classification_accuracy" not in spies and "accuracy" not in result["metrics"]
    assert spies["aggregate_posterior_terms"][0][0][1] is post
    assert result["per_datapoint"]["label"] is labels


# ---------------------------------------------------------------- decode, prior_sample
def test_decode_is_the_mean_of_p_x_given_the_codes(float64):
    W, b = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]]), torch.tensor([0.5, 0.0, -1.0])
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [0.0, 0.0]])
    x_like = torch.zeros(4, 3)  # only its shape matters
    assert torch.equal(plots.decode(linear_model(W, b, 0.5), z, x_like), z @ W.T + b)


def test_decode_samples_from_an_autoregressive_decoder():
    """Teacher forcing would ignore z, so decode asks the decoder to draw x instead."""

    class Decoder:
        autoregressive = True

        def sample(self, z, likelihood):
            self.seen = (z, likelihood)
            return "drawn"

    class ARModel:
        decoder, likelihood = Decoder(), object()

    model, z = ARModel(), torch.zeros(2, 3)
    assert plots.decode(model, z, torch.zeros(2, 5)) == "drawn"
    assert model.decoder.seen[0] is z and model.decoder.seen[1] is model.likelihood


def test_prior_sample_draws_one_code_per_row_from_the_model_prior(float64):
    def model(x, **kwargs):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(torch.tensor([5.0, -3.0]), 1e-6).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    z = plots.prior_sample(model, torch.zeros(7, 1))
    assert z.shape == (7, 2)
    assert torch.allclose(z, torch.tensor([5.0, -3.0]).expand(7, 2), atol=1e-4)


# ---------------------------------------------------------------- the table of metrics
def test_diagnose_runs_the_metrics_table_in_order(pair, monkeypatch):
    """diagnose composes its estimators from METRICS: each entry runs once, in table order,
    on one shared Diagnosis (the same stored q for every metric)."""
    model, guide, x, x_train = pair
    seen = []

    def recording(name, metric):
        def run(d):
            seen.append((name, d))
            metric(d)

        return run

    table = {name: recording(name, fn) for name, fn in diagnosis.METRICS.items()}
    monkeypatch.setattr(diagnosis, "METRICS", table)
    labels = torch.arange(12) % 2
    diagnose(model, guide, x, labels=labels, train_data=x_train, train_labels=labels[:10],
             num_samples=3, num_tokens=torch.full((12,), 2), classifiers=["knn"])  # fmt: skip
    assert [name for name, _ in seen] == [
        "elbo_kl", "mi_agg_kl", "checks", "mi_minibatch", "au", "nll", "per_token", "accuracy",
    ]  # fmt: skip
    assert len({id(d) for _, d in seen}) == 1 and seen[0][1].post.data is x


def test_a_new_metric_is_one_entry_and_leaves_the_others_unchanged(pair):
    """A metric added to the table reads what the ones before it wrote and adds its own
    number and estimator; every other metric is what it was without it (same seed)."""
    model, guide, x, _ = pair

    def mean_posterior_scale(d):
        d.metrics["posterior_scale_mean"] = float(d.per_datapoint["posterior_scale"].mean())
        d.estimators["posterior_scale_mean"] = "mean over data and dimensions of q's σ"

    plain = diagnose(model, guide, x, num_samples=4)
    extended = diagnose(
        model, guide, x, num_samples=4,
        metrics={**diagnosis.METRICS, "scale": mean_posterior_scale},
    )  # fmt: skip
    m = extended["metrics"]
    # the linear guide's σ is (0.5, 0.8) for every datapoint
    assert m["posterior_scale_mean"] == pytest.approx(0.65, rel=1e-12)
    assert "q's σ" in m["estimators"]["posterior_scale_mean"]
    for key, value in plain["metrics"].items():
        if key not in ("seconds", "estimators"):
            assert m[key] == value, key
    assert plain["metrics"]["estimators"].items() <= m["estimators"].items()
    assert list(m).index("posterior_scale_mean") == list(m).index("estimators") - 1


def test_a_table_without_a_metric_reports_none_of_its_keys(pair):
    model, guide, x, _ = pair
    result = diagnose(model, guide, x, metrics={"elbo_kl": diagnosis.METRICS["elbo_kl"]})
    m = result["metrics"]
    assert {"elbo", "kl", "kl_per_dim"} <= set(m) and not {"mi", "au", "nll", "checks"} & set(m)
    assert result["codes"] is None and result["posterior_mean_variance"] is None
    assert result["kl_per_dim"].shape == (2,)
    assert set(m["seconds"]) == {"encode", "elbo_kl"}


def test_metric_keys_keep_the_order_diagnostics_json_has_always_had(pair):
    """diagnostics.json and the netCDF file list the metrics in the order diagnose adds them;
    the order from before the metrics became a table (issue 24) is kept."""
    model, guide, x, x_train = pair
    labels = torch.arange(12) % 2
    result = diagnose(model, guide, x, labels=labels, train_data=x_train,
                      train_labels=labels[:10], num_samples=3, nll_size=6,
                      num_tokens=torch.full((12,), 2), classifiers=["logistic"])  # fmt: skip
    assert list(result["metrics"]) == [
        "num_points", "latent_dim", "log_n", "seed", "elbo", "elbo_se", "kl", "kl_se",
        "kl_per_dim", "mi", "mi_se", "mi_mc_se", "agg_kl", "agg_kl_se", "agg_kl_mc_se",
        "checks", "mi_minibatch", "mi_minibatch_se", "mi_minibatch_cap", "au", "au_threshold",
        "posterior_mean_variance", "nll", "nll_se", "nll_mc_se", "nll_num_samples",
        "nll_num_points", "pareto_k_share_above", "pareto_k_share_above_0_5", "pareto_k_max",
        "pareto_k_threshold", "pareto_warning", "num_tokens", "elbo_per_token",
        "elbo_per_token_se", "ppl_bound", "ppl_bound_se", "nll_per_token", "nll_per_token_se",
        "iw_ppl", "iw_ppl_se", "accuracy", "accuracy_se", "classifier_num_train",
        "estimators", "seconds",
    ]  # fmt: skip
    assert list(result["per_datapoint"]) == [
        "elbo", "kl", "kl_per_dim", "mi", "agg_kl", "posterior_mean", "posterior_scale", "nll",
        "pareto_k", "ess", "nll_mc_var", "num_tokens", "label",
    ]  # fmt: skip
    assert list(result["metrics"]["estimators"]) == [
        "elbo", "kl", "mi", "agg_kl", "mi_minibatch", "au", "nll", "ppl_bound", "iw_ppl",
        "accuracy",
    ]  # fmt: skip
    assert list(result["metrics"]["seconds"]) == [
        "encode", "elbo_kl", "mi_agg_kl", "nll", "accuracy"
    ]  # fmt: skip


# ---------------------------------------------------------------- the old module
#: every name diagnostics/report.py defined before it was split by job (issue 24)
OLD_REPORT_NAMES = {
    "CLASSIFIERS", "TABLE_ROWS", "_cell", "_spread", "accuracy_metrics", "compare_table",
    "consistency_checks", "decode", "diagnose", "format_table", "per_datapoint_dataset",
    "plot_diagnostics", "prior_sample", "ratio_and_se", "write_netcdf",
}  # fmt: skip


def test_the_old_report_module_forwards_every_name_it_had():
    from pyro_skipvae.diagnostics import report

    assert set(report.MOVED) == OLD_REPORT_NAMES
    assert OLD_REPORT_NAMES <= set(dir(report))


@pytest.mark.parametrize("name", sorted(OLD_REPORT_NAMES))
def test_an_old_report_name_warns_and_is_the_object_at_its_new_home(name):
    import importlib

    from pyro_skipvae.diagnostics import report

    home = importlib.import_module(f"pyro_skipvae.diagnostics.{report.MOVED[name]}")
    with pytest.warns(
        DeprecationWarning, match=f"report.{name} moved: import it from {home.__name__}"
    ):
        old = getattr(report, name)
    assert old is getattr(home, name)


def test_from_import_of_the_old_module_warns_and_unknown_names_still_fail():
    with pytest.warns(DeprecationWarning, match="or pyro_skipvae.diagnostics$"):
        from pyro_skipvae.diagnostics.report import diagnose as old_diagnose
    assert old_diagnose is diagnose
    with pytest.raises(ImportError, match="no_such_name"):
        from pyro_skipvae.diagnostics.report import no_such_name  # noqa: F401


def test_the_package_itself_never_imports_the_old_module():
    """Only users' old imports warn: importing the library, its evaluation, report and CLI
    modules does not touch diagnostics.report."""
    import subprocess
    import sys

    code = (
        "import sys, pyro_skipvae, pyro_skipvae.evaluation, pyro_skipvae.report, "
        "pyro_skipvae.cli.main; assert 'pyro_skipvae.diagnostics.report' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- what each metric reports
def test_every_reported_number_is_a_finite_number_and_every_estimator_is_described(pair):
    """diagnostics.json holds numbers, not placeholders: each metric's standard errors,
    Monte-Carlo parts and k̂ summaries are finite floats, and each reported metric names its
    estimator."""
    model, guide, x, x_train = pair
    labels = torch.arange(12) % 2
    m = diagnose(model, guide, x, labels=labels, train_data=x_train, train_labels=labels[:10],
                 num_samples=200, nll_size=8, mi_batch_size=4,
                 num_tokens=torch.full((12,), 3))["metrics"]  # fmt: skip
    for key in (
        "elbo", "elbo_se", "kl", "kl_se", "mi", "mi_se", "mi_mc_se", "agg_kl", "agg_kl_se",
        "agg_kl_mc_se", "mi_minibatch", "mi_minibatch_se", "nll", "nll_se", "nll_mc_se",
        "pareto_k_share_above", "pareto_k_share_above_0_5", "pareto_k_max", "ppl_bound",
        "iw_ppl", "accuracy", "accuracy_knn",
    ):  # fmt: skip
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert m["mi_minibatch_cap"] == pytest.approx(math.log(4))
    assert 0.0 <= m["pareto_k_share_above_0_5"] <= 1.0 and m["nll_num_points"] == 8
    assert isinstance(m["pareto_warning"], (str, type(None)))  # None: no warning
    described = {
        "elbo": "minus the KL below",
        "kl": "KL(q(z|x)||p(z))",
        "mi": "ceiling log N",
        "agg_kl": "same mixture and draws as mi",
        "mi_minibatch": "capped at log 4",
        "au": "Burda",
        "nll": "Pareto k-hat",
        "ppl_bound": "not BOS",
        "iw_ppl": "Σ IW-NLL / Σ tokens",
        "accuracy": "fitted on 10 training points",
    }
    for key, words in described.items():
        assert words in m["estimators"][key], key


def test_per_dimension_lists_are_the_tensors_rounded_to_six_decimals(pair):
    """The JSON lists (kl_per_dim, posterior_mean_variance) round to 10⁻⁶ for compactness;
    the tensors beside them keep full precision."""
    model, guide, x, _ = pair
    result = diagnose(model, guide, x, num_samples=0)
    m = result["metrics"]
    for key, tensor in (
        ("kl_per_dim", result["kl_per_dim"]),
        ("posterior_mean_variance", result["posterior_mean_variance"]),
    ):
        values = m[key]
        assert len(values) == 2 and all(isinstance(v, float) for v in values), key
        assert values == pytest.approx(tensor.tolist(), abs=5e-7), key
        assert all(round(v, 6) == v for v in values), key
        assert any(round(v, 5) != v for v in values), key  # not rounded coarser


def test_a_unit_is_active_only_strictly_above_the_threshold(pair):
    """AU counts Var_x E_q[z_d|x] > δ: a dimension whose variance equals δ is not active."""
    model, guide, x, _ = pair
    variances = diagnose(model, guide, x, num_samples=0)["posterior_mean_variance"]
    low, high = sorted(variances.tolist())
    assert diagnose(model, guide, x, num_samples=0, au_threshold=low)["metrics"]["au"] == 1
    assert diagnose(model, guide, x, num_samples=0, au_threshold=high)["metrics"]["au"] == 0


def test_the_nll_subset_depends_only_on_the_seed_and_its_size(pair):
    """nll_size points drawn without replacement by a generator seeded with ``seed``: the
    same rows whatever else the diagnosis computes (so runs diagnosed with different options
    are scored on the same images), other rows for another seed."""
    model, guide, x, _ = pair

    def scored_rows(**options):
        per = diagnose(model, guide, x, num_samples=5, nll_size=5, **options)["per_datapoint"]
        return (~torch.isnan(per["nll"])).nonzero().flatten()

    rows = scored_rows(seed=3)
    expected = torch.randperm(12, generator=torch.Generator().manual_seed(3))[:5].sort().values
    assert torch.equal(rows, expected)
    assert torch.equal(scored_rows(seed=3, mi_num_samples=5, mi_batch_size=0), rows)
    only_nll = {"nll": diagnosis.METRICS["nll"]}
    assert torch.equal(scored_rows(seed=3, metrics=only_nll), rows)
    assert not torch.equal(scored_rows(seed=4), rows)


def test_the_nll_subset_of_a_guide_that_cannot_be_re_cut_is_encoded_again(float64):
    """A guide whose stored q cannot be re-cut (a MultivariateNormal) scores its subset by
    encoding those rows again. With the exact posterior as proposal every weight is p(x), so
    the IW-NLL of each scored row is the closed-form −log p(x) (up to rounding)."""
    g = torch.Generator().manual_seed(0)
    W, b, sigma = torch.randn(3, 2, generator=g), torch.tensor([0.5, 0.0, -1.0]), 0.5
    x = torch.randn(12, 3, generator=g)
    model, guide = linear_model(W, b, sigma), mvn_guide(*posterior(W, b, sigma))
    result = diagnose(model, guide, x, num_samples=4, nll_size=5, seed=1,
                      metrics={"nll": diagnosis.METRICS["nll"]})  # fmt: skip
    per = result["per_datapoint"]
    rows = torch.randperm(12, generator=torch.Generator().manual_seed(1))[:5].sort().values
    assert torch.equal((~torch.isnan(per["nll"])).nonzero().flatten(), rows)
    exact = -marginal(W, b, sigma).log_prob(x[rows])
    assert torch.allclose(per["nll"][rows], exact, atol=1e-9)
    assert result["metrics"]["nll_num_points"] == 5


def test_per_datapoint_values_of_an_nll_subset_keep_their_shape_and_dtype():
    """The rows outside the subset are NaN; the (N, K) log-weights keep their K columns and
    each tensor its dtype (the IW-NLL's are double even in single precision)."""
    g = torch.Generator().manual_seed(0)
    model = linear_model(torch.randn(3, 2, generator=g), torch.zeros(3), 0.5)
    guide = linear_guide(torch.randn(2, 3, generator=g), torch.zeros(2), torch.tensor([0.5, 0.8]))
    x = torch.randn(12, 3, generator=g)
    per = diagnose(model, guide, x, num_samples=100, nll_size=4,
                   keep_log_weights=True)["per_datapoint"]  # fmt: skip
    full = diagnose(model, guide, x, num_samples=100, keep_log_weights=True)["per_datapoint"]
    assert per["log_weights"].shape == (12, 100)
    assert int(torch.isnan(per["log_weights"]).all(-1).sum()) == 8
    assert per["nll"].dtype == torch.float64
    for key in ("nll", "pareto_k", "ess", "nll_mc_var", "log_weights"):
        assert per[key].dtype == full[key].dtype, key
        assert int(torch.isnan(per[key].reshape(12, -1)).all(-1).sum()) == 8, key


def test_accuracy_needs_both_the_training_data_and_their_labels(pair):
    """Labels of the evaluated data alone are kept per datapoint; without training labels
    (or training data) no classifier is fitted and nothing fails."""
    model, guide, x, x_train = pair
    labels = torch.arange(12) % 2
    for train in ({"train_data": x_train}, {"train_labels": labels[:10]}):
        result = diagnose(model, guide, x, labels=labels, num_samples=0, **train)
        m = result["metrics"]
        assert "accuracy" not in m and "accuracy" not in m["seconds"]
        assert result["per_datapoint"]["label"] is labels


def test_progress_shows_a_bar_for_each_long_pass(pair, capsys):
    """progress=True: bars for encoding the data, the subset and the classifiers' training
    data, the mixture q(z) pass and the IW-NLL; progress=False: none."""
    model, guide, x, x_train = pair
    labels = torch.arange(12) % 2
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    reference = mvn_guide(*posterior(W, torch.zeros(3), 0.5))
    for guide_ in (guide, reference):  # the second encodes its nll subset again
        diagnose(model, guide_, x, labels=labels, train_data=x_train, train_labels=labels[:10],
                 num_samples=3, nll_size=6, mi_batch_size=0, chunk_size=4,
                 progress=True, classifiers=["knn"])  # fmt: skip
        err = capsys.readouterr().err
        assert "mixture q(z)" in err and "IW-NLL (K=3)" in err
        assert err.count("encode:   0%") == (2 if guide_ is guide else 3)
    diagnose(model, guide, x, num_samples=3, progress=False)
    assert capsys.readouterr().err == ""


def test_seconds_are_wall_times_to_the_hundredth(pair):
    model, guide, x, _ = pair
    tic = time.perf_counter()
    seconds = diagnose(model, guide, x, num_samples=3)["metrics"]["seconds"]
    elapsed = time.perf_counter() - tic
    assert set(seconds) == {"encode", "elbo_kl", "mi_agg_kl", "nll"}
    assert all(round(v, 2) == v and v >= 0 for v in seconds.values())
    assert sum(seconds.values()) <= elapsed + 0.05
