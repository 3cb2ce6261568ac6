"""Collapse diagnostics against closed forms (float64, fixed seeds, tolerances from MC error).

Tolerance rule used throughout: an estimator that is unbiased for a quantity and reports a
standard error ``se`` (the std of N independent per-datapoint terms / √N) is accepted within
4·se: under the CLT a correct implementation fails with probability ≈ 6e-5 per check, while
a bug that shifts the estimate by more than a few se (the usual size of a wrong term) fails.
All tests fix their seeds, so they are deterministic.
"""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import marginal, mvn_guide, posterior

from pyro_skipvae.diagnostics import (
    Posteriors,
    active_units,
    aggregate_posterior_kl,
    aggregate_posterior_terms,
    classification_accuracy,
    compare_table,
    expected_kl,
    format_table,
    importance_sample,
    importance_weighted_nll,
    kl_per_dimension,
    minibatch_mutual_information,
    mutual_information,
    nuts_posterior,
    pareto_k,
    plot_diagnostics,
)
from pyro_skipvae.diagnostics.netcdf import per_datapoint_dataset, write_netcdf
from pyro_skipvae.errors import ConfigError, DataError
from pyro_skipvae.models import Model
from pyro_skipvae.models.decoders import Decoder
from pyro_skipvae.models.likelihoods import Likelihood
from pyro_skipvae.models.priors import StandardNormalPrior
from pyro_skipvae.sites import data_plate

# float64 throughout; conftest also clears the param store and seeds every test.
pytestmark = pytest.mark.usefixtures("float64")


# ---------------------------------------------------------------- linear-Gaussian pieces
def linear_guide(A, c, s):
    """q(z|x) = N(A x + c, diag s²)."""

    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", dist.Normal(x @ A.T + c, s).to_event(1))

    return guide


def linear_model(W, b, sigma):
    """z ~ N(0, I), x | z ~ N(W z + b, σ² I); broadcasts over leading particle dims."""

    def model(x, **kwargs):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(torch.zeros(W.shape[1]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    return model


def gaussian_entropy(cov):
    d = cov.shape[-1]
    return 0.5 * torch.logdet(cov) + 0.5 * d * (1 + math.log(2 * math.pi))


def kl_to_standard_normal(mean, cov):
    return 0.5 * (torch.trace(cov) + mean @ mean - cov.shape[-1] - torch.logdet(cov))


@pytest.fixture
def lingauss():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(2, 3, generator=g) * 0.7
    c = torch.tensor([0.3, -0.2])
    s = torch.tensor([0.5, 0.8])
    m = torch.tensor([0.5, -1.0, 0.2])
    L = torch.randn(3, 3, generator=g) * 0.5 + torch.eye(3)
    C = L @ L.T
    return A, c, s, m, C


def sample_x(m, C, n, seed):
    g = torch.Generator().manual_seed(seed)
    return m + torch.randn(n, 3, generator=g) @ torch.linalg.cholesky(C).T


def empirical_mixture_entropy(locs, s, num_grid=220):
    """H(q_N) for q_N = (1/N) Σ N(locs_n, diag s²) in 2-D by a Riemann sum on a grid.

    For Gaussians and spacing h ≤ s/5 the Riemann sum's error is O(exp(−2π² s²/h²)),
    far below 1e-8, so this is exact for the tests' purposes.
    """
    lo = locs.min(0).values - 9 * s
    hi = locs.max(0).values + 9 * s
    h = ((hi - lo) / num_grid).min()
    assert (h <= s / 5).all(), "grid too coarse"
    axes = [torch.arange(lo[d], hi[d] + h, h) for d in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    comp = dist.Normal(locs, s).to_event(1)
    log_q = torch.cat([comp.log_prob(g.unsqueeze(-2)).logsumexp(-1) for g in grid.split(4096)])
    log_q = log_q - math.log(locs.shape[0])
    return -(log_q.exp() * log_q).sum() * h * h


# ---------------------------------------------------------------- MI and aggregate KL
def test_full_set_mi_and_agg_kl_match_exact_empirical_values(lingauss):
    """The full-set estimators are unbiased for the MI and aggregate KL of the empirical
    joint (x uniform over the N points): exact values by quadrature of H(q_N)."""
    A, c, s, m, C = lingauss
    x = sample_x(m, C, 300, seed=2)
    guide = linear_guide(A, c, s)
    model = linear_model(torch.zeros(3, 2), torch.zeros(3), 1.0)
    locs = x @ A.T + c
    h_mix = empirical_mixture_entropy(locs, s)
    exact_mi = h_mix - gaussian_entropy(torch.diag(s**2))
    # E_{q_N} log p(z) for p = N(0, I): −½ mean_n Σ_d (μ_nd² + s_d²) − log 2π
    cross = -0.5 * (locs.pow(2).sum(-1).mean() + s.pow(2).sum()) - math.log(2 * math.pi)
    exact_agg_kl = -h_mix - cross

    terms = aggregate_posterior_terms(model, guide, x, num_samples=20, chunk_size=64)
    mi, agg = terms["mi"], terms["agg_kl"]
    assert mi.info["log_n"] == pytest.approx(math.log(300))
    assert 0 < mi.se < 0.05 and 0 < agg.se < 0.05
    assert abs(mi - exact_mi) < 4 * mi.se, (float(mi), float(exact_mi), mi.se)
    assert abs(agg - exact_agg_kl) < 4 * agg.se, (float(agg), float(exact_agg_kl), agg.se)
    # the public wrappers give the same numbers for the same seed
    pyro.set_rng_seed(5)
    a = mutual_information(guide, x, num_samples=3)
    pyro.set_rng_seed(5)
    b = aggregate_posterior_terms(None, guide, x, num_samples=3)["mi"]
    assert float(a) == float(b)


def test_full_set_mi_and_agg_kl_approach_population_closed_forms(lingauss):
    """x ~ N(m, C) ⇒ q(z) = N(A m + c, A C Aᵀ + S), MI = ½ log det(A C Aᵀ + S) − ½ log det S.

    With N points the estimator targets the empirical mixture, whose MI and KL differ from
    the population values mainly through the sample mean and covariance of x; that spread
    σ_data is computed by a parametric bootstrap of the closed forms with resampled
    moments. The remaining kernel-density bias of the mixture's entropy is O(d/N) ≈ 1e-3,
    below σ_data ≈ 0.01 here. Tolerance: 4·√(se² + σ_data²).
    """
    A, c, s, m, C = lingauss
    n = 4000
    x = sample_x(m, C, n, seed=3)
    S = torch.diag(s**2)

    def closed_forms(mean, cov):
        agg_cov = A @ cov @ A.T + S
        mi = 0.5 * (torch.logdet(agg_cov) - torch.logdet(S))
        return mi, kl_to_standard_normal(A @ mean + c, agg_cov)

    pop_mi, pop_kl = closed_forms(m, C)
    boot = torch.stack(
        [
            torch.stack(closed_forms(xb.mean(0), torch.cov(xb.T)))
            for xb in (sample_x(m, C, n, seed=100 + b) for b in range(200))
        ]
    )
    sd_mi, sd_kl = boot.std(0)
    model = linear_model(torch.zeros(3, 2), torch.zeros(3), 1.0)
    terms = aggregate_posterior_terms(model, linear_guide(A, c, s), x, num_samples=2)
    mi, agg = terms["mi"], terms["agg_kl"]
    assert abs(mi - pop_mi) < 4 * math.hypot(mi.se, sd_mi), (
        float(mi),
        float(pop_mi),
        mi.se,
        float(sd_mi),
    )
    assert abs(agg - pop_kl) < 4 * math.hypot(agg.se, sd_kl), (
        float(agg),
        float(pop_kl),
        agg.se,
        float(sd_kl),
    )


def test_expected_kl_and_per_dimension_kl_match_closed_forms(lingauss):
    A, c, s, m, C = lingauss
    x = sample_x(m, C, 500, seed=4)
    model = linear_model(torch.zeros(3, 2), torch.zeros(3), 1.0)
    post = Posteriors(linear_guide(A, c, s), x, chunk_size=128)
    kl = expected_kl(model, post)
    assert kl.estimator == "analytic"
    locs = x @ A.T + c
    exact = 0.5 * (s.pow(2).sum() + locs.pow(2).sum(-1).mean() - 2 - torch.log(s.pow(2)).sum())
    assert float(kl) == pytest.approx(float(exact), rel=1e-10)
    per_dim = kl_per_dimension(model, post)
    assert per_dim.shape == (500, 2)
    assert torch.allclose(per_dim.sum(-1), kl.per_datapoint)


def test_monte_carlo_standard_error_matches_the_spread_of_repeated_estimates(lingauss):
    """mc_se is the error of the MI / aggregate-KL numbers for this evaluation set: the
    standard deviation of R = 40 independent re-estimates on the same data must match it.
    The sample sd of 40 draws is within ±35% of the true sd with probability > 0.999
    (relative sd 1/√(2·39) ≈ 0.11)."""
    A, c, s, m, C = lingauss
    x = sample_x(m, C, 300, seed=5)
    model = linear_model(torch.zeros(3, 2), torch.zeros(3), 1.0)
    post = Posteriors(linear_guide(A, c, s), x, chunk_size=100)
    estimates = []
    for seed in range(40):
        pyro.set_rng_seed(seed)
        terms = aggregate_posterior_terms(model, post, num_samples=2)
        estimates.append([float(terms["mi"]), float(terms["agg_kl"])])
    spread = torch.tensor(estimates).std(0)
    for i, key in enumerate(("mi", "agg_kl")):
        mc_se = terms[key].info["mc_se"]
        assert 0.65 < spread[i].item() / mc_se < 1.35, (key, spread[i].item(), mc_se)
    pyro.set_rng_seed(0)
    single = aggregate_posterior_terms(model, post, num_samples=1)
    assert math.isnan(single["mi"].info["mc_se"])  # one draw per point: no within-point spread


def test_guide_ignoring_x_has_zero_mi_and_no_active_units():
    x = torch.randn(200, 3)
    loc, scale = torch.tensor([0.4, -1.0]), torch.tensor([0.3, 2.0])

    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", dist.Normal(loc.expand(x.shape[0], 2), scale).to_event(1))

    model = linear_model(torch.zeros(3, 2), torch.zeros(3), 1.0)
    mi = mutual_information(guide, x, chunk_size=37)
    assert abs(float(mi)) < 1e-10 and mi.se < 1e-10
    assert active_units(guide, x) == 0
    # He et al.'s estimator uses the analytic entropy: zero only in expectation
    mb = minibatch_mutual_information(guide, x, batch_size=50)
    assert abs(float(mb)) < 4 * mb.se
    # then the whole expected KL is aggregate KL
    pyro.set_rng_seed(0)
    agg = aggregate_posterior_kl(model, guide, x, num_samples=10)
    kl = expected_kl(model, guide, x)
    assert abs(agg - kl) < 4 * agg.se


def test_active_units_threshold():
    x = torch.randn(500, 3)
    A = torch.diag(torch.tensor([1.0, 0.05, 0.2]))  # Var of means: 1, 0.0025, 0.04
    guide = linear_guide(A, torch.zeros(3), torch.ones(3))
    assert active_units(guide, x) == 2
    assert active_units(guide, x, threshold=0.02) == 2
    assert active_units(guide, x, threshold=0.1) == 1


def test_minibatch_mi_is_capped_at_log_batch_size():
    """A nearly deterministic encoder: full-set MI ≈ log N, minibatch MI ≈ log B ≤ cap."""
    x = torch.randn(400, 3)
    guide = linear_guide(torch.eye(3) * 10, torch.zeros(3), torch.full((3,), 1e-3))
    full = mutual_information(guide, x)
    mb = minibatch_mutual_information(guide, x, batch_size=32)
    assert float(full) == pytest.approx(math.log(400), abs=1e-6)
    # capped in expectation (the analytic entropy makes single draws scatter around it)
    assert float(mb) <= mb.info["cap"] + 4 * mb.se
    assert abs(float(mb) - math.log(32)) < 4 * mb.se + 0.05  # 0.05: the last batch has 16 points


def test_generic_and_gaussian_mixture_paths_agree():
    """The matrix-product fast path (Independent Normal) equals plain fn.log_prob."""
    x = torch.randn(90, 3)
    A = torch.randn(2, 3)

    def mvn_guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample(
                "z",
                dist.MultivariateNormal(x @ A.T, scale_tril=torch.diag(torch.tensor([0.1, 0.7]))),
            )

    fast = Posteriors(linear_guide(A, torch.zeros(2), torch.tensor([0.1, 0.7])), x, chunk_size=32)
    slow = Posteriors(mvn_guide, x, chunk_size=32)
    assert fast._gaussian is not None and slow._gaussian is None
    z = torch.randn(7, 90, 2)
    assert torch.allclose(fast.mixture_log_prob(z), slow.mixture_log_prob(z), atol=1e-10)
    with pytest.raises(NotImplementedError, match="re-chunked"):
        slow.select(0, 50)


def test_bad_guide_and_data_are_rejected():
    with pytest.raises(DataError):
        mutual_information(
            linear_guide(torch.eye(2), torch.zeros(2), torch.ones(2)), torch.zeros(0, 2)
        )

    def no_z(x, **kwargs):
        with data_plate(x):
            pyro.sample("w", dist.Normal(torch.zeros(len(x)), 1.0))

    with pytest.raises(ConfigError, match="site 'z'"):
        mutual_information(no_z, torch.zeros(4, 2))


# ---------------------------------------------------------------- IW-NLL
@pytest.fixture
def lg_model():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(4, 2, generator=g)
    b = torch.randn(4, generator=g)
    sigma = 0.6
    z = torch.randn(60, 2, generator=g)
    x = z @ W.T + b + sigma * torch.randn(60, 4, generator=g)
    post_mean, post_cov = posterior(W, b, sigma)
    return linear_model(W, b, sigma), x, post_mean, post_cov, -marginal(W, b, sigma).log_prob(x)


@pytest.mark.parametrize("num_samples", [1, 30])
def test_iw_nll_is_exact_with_the_exact_posterior(lg_model, num_samples):
    model, x, post_mean, post_cov, exact = lg_model
    result = importance_sample(
        model,
        mvn_guide(post_mean, post_cov),
        x,
        num_samples=num_samples,
        batch_size=60,
        particle_chunk=7,
    )
    assert result.nll.shape == (60,)
    assert torch.allclose(result.nll, exact, atol=1e-9)
    if num_samples >= 20:
        assert torch.isneginf(result.pareto_k).all()  # all weights equal: the proposal is exact
        assert result.pareto_summary()["warning"] is None
    else:
        assert torch.isnan(result.pareto_k).all()


def test_iw_nll_converges_with_a_wider_proposal(lg_model):
    """Proposal N(μ_post, (1.4)² Σ_post): the weights are bounded, k̂ < 0.7. The IW bias is
    ≈ Var(w)/(2K E[w]²) = mc_var/2 per datapoint (delta method), so after removing it the
    mean error is within 4 Monte-Carlo standard errors √(Σ mc_var)/N of zero."""
    model, x, post_mean, post_cov, exact = lg_model
    guide = mvn_guide(post_mean, 1.96 * post_cov)
    result = importance_sample(model, guide, x, num_samples=2000, batch_size=20)
    err = (result.nll - exact).mean() - result.mc_var.mean() / 2
    mc_se = result.mc_var.sum().sqrt() / len(x)
    assert abs(err) < 4 * mc_se, (float(err), float(mc_se))
    assert (result.pareto_k < 0.7).all()
    est = result.estimate()
    assert float(est) == pytest.approx(float(result.nll.mean()))
    assert est.info["mc_se"] == pytest.approx(float(mc_se))
    # one sample: the ELBO's bound, worse on average than K = 2000
    nll_1 = importance_weighted_nll(model, guide, x, num_samples=1)
    assert nll_1.mean() > result.nll.mean()


def test_pareto_k_flags_a_too_narrow_proposal(lg_model, caplog):
    """Proposal scale 0.3 × the posterior's: weights have infinite variance, k̂ > 0.7."""
    model, x, post_mean, post_cov, _ = lg_model
    result = importance_sample(model, mvn_guide(post_mean, 0.09 * post_cov), x, num_samples=500)
    summary = result.pareto_summary()
    assert summary["share_above"] > 0.5
    assert "unreliable" in summary["warning"]
    assert "Pareto" in caplog.text
    assert torch.isnan(pareto_k(torch.randn(3, 10))).all()


# ---------------------------------------------------------------- accuracy, report, plots
def test_classification_accuracy_names_its_classifiers():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    codes = torch.nn.functional.one_hot(y).double() * 5 + 0.1 * torch.randn(300, 3, generator=g)
    result = classification_accuracy(codes[:200], y[:200], codes[200:], y[200:])
    assert set(result) == {"logistic", "knn"}
    assert result["logistic"]["accuracy"] == 1.0 and result["knn"]["accuracy"] == 1.0
    assert "LogisticRegression" in result["logistic"]["classifier"]
    assert "k=5" in result["knn"]["classifier"]
    with pytest.raises(DataError):
        classification_accuracy(codes[:10], y[:9], codes, y)


def test_diagnose_report_outputs(tmp_path):
    from pyro_skipvae import SkipVAE

    torch.set_default_dtype(torch.float32)  # the image model's usual precision
    vae = SkipVAE((1, 6, 6), latent_dim=3, hidden_dims=(16,), seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((80, 1, 6, 6), 0.3), generator=g)
    labels = torch.arange(80) % 4
    result = vae.diagnose(
        x[:40],
        labels=labels[:40],
        train_data=x[40:],
        train_labels=labels[40:],
        num_samples=25,
        mi_batch_size=20,
        chunk_size=20,
    )
    m = result["metrics"]
    for key in ("elbo", "kl", "mi", "agg_kl", "au", "nll", "accuracy", "accuracy_knn", "log_n"):
        assert isinstance(m[key], int | float) and math.isfinite(m[key]), key
    for key in ("elbo", "kl", "mi", "agg_kl", "nll"):
        assert m[f"{key}_se"] >= 0
    assert 0 <= m["accuracy"] <= 1 and m["num_points"] == 40
    assert m["mi"] <= m["log_n"] + 1e-9
    json.dumps(m)
    assert "IW-NLL" in format_table(m)
    paths = plot_diagnostics(
        vae.model, x[:40], result, tmp_path / "plots", labels=labels[:40], embedding="pca"
    )
    assert {p.rsplit("/", 1)[1] for p in paths} == {
        "embedding.png",
        "kl_per_dim.png",
        "reconstructions.png",
        "samples.png",
        "traversals.png",
    }
    for p in paths:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    write_netcdf(per_datapoint_dataset(result), tmp_path / "d.nc")
    import xarray as xr

    with xr.open_dataset(tmp_path / "d.nc", engine="h5netcdf") as ds:
        assert ds["nll"].shape == (40,) and ds["posterior_mean"].shape == (40, 3)
    md, csv_text = compare_table([("a", m), ("b", m)])
    assert "| metric | a | b |" in md and csv_text.startswith("run,")


def test_consistency_checks_fail_on_impossible_numbers():
    from pyro_skipvae.diagnostics.diagnosis import consistency_checks

    good = {"mi": 2.0, "mi_se": 0.01, "kl": 5.0, "kl_se": 0.1, "agg_kl": 3.0, "agg_kl_se": 0.1}
    assert all(consistency_checks({**good, "log_n": math.log(100)}).values())
    # a mixture normalised over too few points puts MI above its ceiling
    assert not consistency_checks({**good, "log_n": 1.5})["mi_le_log_n"]
    assert not consistency_checks({**good, "log_n": 9.0, "kl": 1.0})["mi_le_kl"]
    assert not consistency_checks({**good, "log_n": 9.0, "agg_kl": -1.0})["agg_kl_ge_0"]


def test_an_estimate_survives_pickling_and_shows_its_parts():
    """Estimates cross process boundaries (torch.save of results, multiprocessing) whole."""
    import pickle

    from pyro_skipvae.diagnostics.estimate import Estimate

    terms = torch.tensor([1.0, 2.0, 4.0])
    e = Estimate(2.5, 0.1, estimator="full-set", per_datapoint=terms, log_n=9.21)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is Estimate and float(back) == 2.5 and back.se == 0.1
    assert back.estimator == "full-set" and back.info == {"log_n": 9.21}
    assert torch.equal(back.per_datapoint, terms)
    assert repr(e) == "Estimate(2.5, se=0.1, estimator='full-set', log_n=9.21)"


class LinearDecoder(Decoder):
    """A fixed linear map, so p(z | x) is Gaussian in closed form (synthetic check)."""

    def __init__(self, latent_dim, output_shape, *, skip=False, weight=None):
        super().__init__(latent_dim, output_shape, skip=skip)
        self.register_buffer("weight", weight)

    def forward(self, z, x=None):
        return z @ self.weight.T


class UnitNormalLikelihood(Likelihood):
    def forward(self, params, x=None):
        return self._event(dist.Normal(params, 0.5))


def test_nuts_finds_the_closed_form_posterior_of_a_linear_gaussian_model():
    torch.manual_seed(0)
    W = torch.randn(3, 2)
    model = Model(
        StandardNormalPrior(2), LinearDecoder(2, (3,), weight=W), UnitNormalLikelihood((3,))
    )
    x = torch.tensor([[1.0, -0.5, 2.0]])
    post_mean, cov = posterior(W, torch.zeros(3), 0.5)  # the unit-normal likelihood's s = 0.5
    mean = post_mean(x)[0]
    z = nuts_posterior(model, x, num_samples=500, warmup_steps=200)
    assert z.shape == (500, 2)
    # the seed makes the chain reproducible, and is used
    torch.testing.assert_close(nuts_posterior(model, x, num_samples=500, warmup_steps=200), z)
    assert not torch.equal(
        nuts_posterior(model, x, num_samples=20, warmup_steps=20, seed=1), z[:20]
    )
    with pytest.raises(DataError, match=r"one datapoint of shape \(1, ...\), found \(2, 3\)"):
        nuts_posterior(model, x.expand(2, 3))
    sd = cov.diagonal().sqrt()
    # NUTS draws are autocorrelated; 6 standard errors of 500 independent draws allow an
    # effective sample size down to ~150 and are still far tighter than any real error.
    assert torch.all((z.mean(0) - mean).abs() < 6 * sd / math.sqrt(500))
    assert torch.allclose(z.T.cov(), cov, atol=0.25 * cov.diagonal().max().item())
