"""The estimators of ``pyro_skipvae.diagnostics`` (latent, nll, estimate, elbo, classify)
checked against closed forms and their documented contracts.

float64 throughout. Data are synthetic (small Gaussian tensors, labelled so). Where a
computation is deterministic given the draws (an exact posterior makes every importance
weight equal; a nearly deterministic encoder makes the mixture terms known) the check is
exact; where it is Monte Carlo, the tolerance is 4 standard errors of the estimator, as in
tests/test_diagnostics.py.
"""

import logging
import math
import re
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import marginal, posterior

from pyro_skipvae.diagnostics import (
    Posteriors,
    active_units,
    aggregate_posterior_kl,
    aggregate_posterior_terms,
    classification_accuracy,
    expected_kl,
    importance_sample,
    importance_weighted_nll,
    kl_per_dimension,
    minibatch_mutual_information,
    mutual_information,
    pareto_k,
    posterior_mean_variance,
)
from pyro_skipvae.diagnostics.classify import describe
from pyro_skipvae.diagnostics.elbo import (
    OUTPUT_BUDGET,
    elbo_terms,
    evaluate_elbo,
    evaluation_batch_size,
)
from pyro_skipvae.diagnostics.estimate import Estimate, mean_and_se
from pyro_skipvae.diagnostics.nll import (
    MIN_SAMPLES_FOR_PARETO,
    PARETO_K_THRESHOLD,
    ImportanceSamplingResult,
    pareto_k_summary,
)
from pyro_skipvae.errors import ConfigError, DataError
from pyro_skipvae.sites import data_plate

pytestmark = pytest.mark.usefixtures("float64")


# ---------------------------------------------------------------- synthetic pieces
def linear_guide(A, c, s, calls=None):
    """q(z|x) = N(A x + c, diag s²); records the chunk sizes it is called with."""

    def guide(x, **kwargs):
        if calls is not None:
            calls.append(x.shape[0])
        with data_plate(x):
            return pyro.sample("z", dist.Normal(x @ A.T + c, s).to_event(1))

    return guide


def affine_normal(loc, scale):
    """N(loc, scale²) as a TransformedDistribution: same law, but no registered KL, no
    analytic mean and no analytic entropy (forces the Monte-Carlo code paths)."""
    base = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc))
    return dist.TransformedDistribution(base, [dist.transforms.AffineTransform(loc, scale)])


def transformed_guide(A, c, s):
    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample(
                "z", affine_normal(x @ A.T + c, s.expand(x.shape[0], -1)).to_event(1)
            )

    return guide


def std_normal_model(latent_dim, calls=None):
    def model(x, **kwargs):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1))
            if calls is not None:
                calls.append(tuple(z.shape))

    return model


def linear_model(W, b, sigma, calls=None):
    """z ~ N(0, I), x | z ~ N(W z + b, σ² I); broadcasts over leading particle dims."""

    def model(x, **kwargs):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(torch.zeros(W.shape[1]), 1.0).to_event(1))
            if calls is not None:
                calls.append(tuple(z.shape))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    return model


@pytest.fixture
def lg():
    """Synthetic linear-Gaussian model with its exact posterior and marginal likelihood."""
    g = torch.Generator().manual_seed(11)
    W = torch.randn(3, 2, generator=g)
    b = torch.randn(3, generator=g)
    sigma = 0.7
    x = torch.randn(12, 3, generator=g) * 1.5
    post_mean, post_cov = posterior(W, b, sigma)
    return W, b, sigma, x, post_mean(x), post_cov, marginal(W, b, sigma).log_prob(x)


def exact_posterior_guide(W, b, sigma, post_cov, calls=None, needs_kwarg=False):
    def guide(x, scale=None, **kwargs):
        if needs_kwarg:
            assert scale == 1.0, "guide_kwargs were not passed"
        if calls is not None:
            calls.append(x.shape[0])
        mean = (x - b) @ W @ post_cov / sigma**2
        with data_plate(x):
            return pyro.sample("z", dist.MultivariateNormal(mean, post_cov))

    return guide


# ---------------------------------------------------------------- Estimate, mean_and_se
def test_mean_and_se_closed_form():
    terms = torch.tensor([1.0, 2.0, 4.0, 9.0], requires_grad=True)
    e = mean_and_se(terms, estimator="full-set", log_n=1.5)
    assert type(e) is Estimate and float(e) == 4.0
    sd = math.sqrt(((1 - 4) ** 2 + (2 - 4) ** 2 + 0 + (9 - 4) ** 2) / 3)  # N − 1
    assert e.se == pytest.approx(sd / 2, rel=1e-14)
    assert e.estimator == "full-set"
    assert e.info == {"num_points": 4, "log_n": 1.5}
    assert torch.equal(e.per_datapoint, terms.detach()) and not e.per_datapoint.requires_grad
    # the default estimator name is empty
    assert mean_and_se(torch.tensor([1.0, 3.0])).estimator == ""
    # two points already have a standard error, one has none
    assert mean_and_se(torch.tensor([1.0, 3.0])).se == pytest.approx(math.sqrt(2) / math.sqrt(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no degrees-of-freedom warning: no std is taken
        single = mean_and_se(torch.tensor([5.0]))
    assert float(single) == 5.0 and math.isnan(single.se) and single.info["num_points"] == 1


def test_mean_and_se_accumulates_in_float64():
    terms = torch.full((10_000,), 0.1, dtype=torch.float32) + torch.linspace(0, 1e-3, 10_000)
    e = mean_and_se(terms)
    assert float(e) == pytest.approx(terms.double().mean().item(), rel=1e-15, abs=0)
    assert e.se == pytest.approx(terms.double().std().item() / 100, rel=1e-12)


def test_estimate_repr_lists_every_info_item():
    e = Estimate(1.5, 0.25, estimator="x", a=1, b="two")
    assert repr(e) == "Estimate(1.5, se=0.25, estimator='x', a=1, b='two')"
    assert math.isnan(Estimate(1.0).se) and Estimate(1.0).estimator == ""


# ---------------------------------------------------------------- elbo
class _Shape:
    def __init__(self, *shape):
        self.param_shape = shape


def test_evaluation_batch_size_contract():
    assert OUTPUT_BUDGET == 2**25
    assert evaluation_batch_size(_Shape(1, 28, 28), 500) == 500  # images keep their size
    # text: T × V outputs per sentence, 2**25 // (83 · 10002) = 40
    assert evaluation_batch_size(_Shape(83, 10_002), 500) == 40
    assert evaluation_batch_size(_Shape(83, 10_002), 500, multiple_of=16) == 32
    assert evaluation_batch_size(_Shape(83, 10_002), 500, multiple_of=64) == 64  # never below
    assert evaluation_batch_size(_Shape(10), 100, budget=50) == 5
    assert evaluation_batch_size(_Shape(10), 100, budget=59) == 5
    assert evaluation_batch_size(_Shape(10), 3, budget=60) == 3
    assert evaluation_batch_size(_Shape(10), 100, budget=5) == 1  # at least one datapoint
    assert evaluation_batch_size(_Shape(10), 7) == 7  # default multiple_of=1
    assert evaluation_batch_size(_Shape(10), 7, multiple_of=3) == 6
    assert evaluation_batch_size(_Shape(2**24), 7) == 2  # default budget


def test_elbo_is_log_likelihood_with_the_exact_posterior(lg):
    """q = p(z|x) and no analytic KL (MVN vs diagonal prior): every particle's
    log p(x|z) − (log q(z|x) − log p(z)) equals log p(x) exactly."""
    W, b, sigma, x, _, post_cov, log_px = lg
    model = linear_model(W, b, sigma)
    calls = []
    guide = exact_posterior_guide(W, b, sigma, post_cov, calls=calls, needs_kwarg=True)
    elbo, _ = elbo_terms(model, guide, x, guide_kwargs={"scale": 1.0})
    assert calls == [12]  # one particle by default
    torch.testing.assert_close(elbo, log_px, atol=1e-9, rtol=0)
    for particles in (1, 3):
        calls.clear()
        elbo, kl = elbo_terms(model, guide, x, num_particles=particles, guide_kwargs={"scale": 1.0})
        assert calls == [12] * particles
        assert elbo.shape == kl.shape == (12,)
        torch.testing.assert_close(elbo, log_px, atol=1e-9, rtol=0)
    # KL(q(z|x) ‖ p(z)) in closed form, estimated by the average of log q − log p over draws
    pyro.set_rng_seed(0)
    _, kl = elbo_terms(model, exact_posterior_guide(W, b, sigma, post_cov), x, num_particles=400)
    post_mean = (x - b) @ W @ post_cov / sigma**2
    exact_kl = 0.5 * (torch.trace(post_cov) + post_mean.pow(2).sum(-1) - 2 - torch.logdet(post_cov))
    # per particle log q − log p has variance ≲ 2 here; 400 particles, 12 points
    assert (kl - exact_kl).abs().max() < 4 * math.sqrt(2.0 / 400), kl - exact_kl


def test_elbo_with_analytic_kl_matches_closed_form(lg):
    """Diagonal Gaussian q, N(0, I) prior: the KL is analytic, exact per datapoint; the
    ELBO is E_q log p(x|z) − KL with E_q log p(x|z) in closed form."""
    W, b, sigma, x, _, _, _ = lg
    A = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, -0.3]])
    c, s = torch.tensor([0.1, -0.4]), torch.tensor([0.5, 0.3])
    mu = x @ A.T + c
    exact_kl = 0.5 * (s.pow(2).sum() + mu.pow(2).sum(-1) - 2 - s.pow(2).log().sum())
    resid = x - mu @ W.T - b
    exp_loglik = -1.5 * math.log(2 * math.pi * sigma**2) - (
        resid.pow(2).sum(-1) + (W.pow(2) * s.pow(2)).sum()
    ) / (2 * sigma**2)
    elbo, kl = elbo_terms(linear_model(W, b, sigma), linear_guide(A, c, s), x, num_particles=400)
    torch.testing.assert_close(kl, exact_kl, atol=1e-12, rtol=0)
    # Var of log p(x|z) per particle is below 70 for these points (checked by simulation):
    # each point within 4 se of its closed form, their mean within 4 se of the mean's
    diff = elbo - (exp_loglik - exact_kl)
    assert diff.abs().max() < 4 * math.sqrt(70 / 400), diff
    assert abs(diff.mean()) < 4 * math.sqrt(70 / 400 / 12), diff


def test_evaluate_elbo_batches_and_concatenates(lg):
    W, b, sigma, _, _, post_cov, _ = lg
    g = torch.Generator().manual_seed(3)
    x = torch.randn(503, 3, generator=g)
    log_px = marginal(W, b, sigma).log_prob(x)
    calls = []
    out = evaluate_elbo(
        linear_model(W, b, sigma), exact_posterior_guide(W, b, sigma, post_cov, calls=calls), x
    )
    assert calls == [500, 3]  # default batch_size 500, one particle
    assert set(out) == {"elbo", "kl", "elbo_per_datapoint", "kl_per_datapoint"}
    torch.testing.assert_close(out["elbo_per_datapoint"], log_px, atol=1e-9, rtol=0)
    assert out["elbo"] == pytest.approx(log_px.mean().item(), abs=1e-9)
    assert out["kl_per_datapoint"].shape == (503,)
    assert out["kl"] == pytest.approx(out["kl_per_datapoint"].mean().item(), rel=1e-12)
    calls.clear()
    out = evaluate_elbo(
        linear_model(W, b, sigma),
        exact_posterior_guide(W, b, sigma, post_cov, calls=calls),
        x[:10],
        batch_size=4,
        num_particles=2,
    )
    assert calls == [4, 4, 4, 4, 2, 2]
    torch.testing.assert_close(out["elbo_per_datapoint"], log_px[:10], atol=1e-9, rtol=0)


# ---------------------------------------------------------------- Posteriors
def test_posteriors_validate_their_arguments():
    guide = linear_guide(torch.eye(2), torch.zeros(2), torch.ones(2))
    x = torch.zeros(3, 2)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer, found 0"):
        Posteriors(guide, x, chunk_size=0)
    assert Posteriors(guide, x, chunk_size=1).chunk_size == 1
    assert Posteriors(guide, x).chunk_size == 500
    with pytest.raises(
        DataError, match=r"shape \(N, \.\.\.\) with N >= 1, found torch.Size\(\[0, 2\]\)"
    ):
        Posteriors(guide, torch.zeros(0, 2))
    with pytest.raises(DataError, match="found list"):
        Posteriors(guide, [[0.0, 1.0]])
    with pytest.raises(DataError, match=r"found torch.Size\(\[\]\)"):
        Posteriors(guide, torch.tensor(1.0))

    def flat_guide(x, **kwargs):  # no event dimension
        with data_plate(x):
            return pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))

    with pytest.raises(
        ConfigError,
        match=r"batch shape \(3,\) and one event dimension, found batch \(3,\) and event \(\)",
    ):
        Posteriors(flat_guide, x)

    def no_z(x, **kwargs):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ConfigError, match="the guide has no sample site 'z'"):
        Posteriors(no_z, x)


def test_posteriors_chunks_select_sample_and_densities():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g)
    A = torch.randn(2, 3, generator=g)
    c, s = torch.tensor([0.5, -0.5]), torch.tensor([0.3, 1.2])
    calls = []
    post = Posteriors(linear_guide(A, c, s, calls), x, chunk_size=3)
    assert calls == [3, 3, 1] and post.num_points == 7 and post.latent_dim == 2
    chunks = list(post.chunks())
    assert [len(xc) for xc, _, _ in chunks] == [3, 3, 1]
    assert torch.equal(torch.cat([xc for xc, _, _ in chunks]), x)
    assert all(t.nodes["z"]["fn"] is fn for _, fn, t in chunks)
    locs = x @ A.T + c
    # any range of a diagonal Gaussian q
    q = post.select(2, 6)
    assert q.batch_shape == (4,) and q.event_shape == (2,)
    torch.testing.assert_close(q.mean, locs[2:6])
    torch.testing.assert_close(q.variance, s.pow(2).expand(4, 2))
    # the fixed guide samples from the stored q
    tr = pyro.poutine.trace(post.guide(2, 6)).get_trace(x[2:6])
    assert tr.nodes["z"]["value"].shape == (4, 2)
    torch.testing.assert_close(tr.nodes["z"]["fn"].mean, locs[2:6])
    # samples: (S, N, D), rows drawn from their own q (mean over 4000 draws within 4 se)
    assert post.sample().shape == (1, 7, 2)  # one draw by default
    z = post.sample(4000)
    assert z.shape == (4000, 7, 2)
    assert ((z.mean(0) - locs).abs() < 4 * s / math.sqrt(4000)).all()
    zz = torch.randn(5, 7, 2, generator=g)
    exact = dist.Normal(locs, s).to_event(1).log_prob(zz)
    torch.testing.assert_close(post.log_prob(zz), exact)
    assert post.log_prob(zz).shape == (5, 7)
    model = std_normal_model(2)
    torch.testing.assert_close(
        post.prior_log_prob(model, zz), dist.Normal(0.0, 1.0).log_prob(zz).sum(-1)
    )
    torch.testing.assert_close(post.means(), locs)


def test_posteriors_priors_are_cached_per_model():
    x = torch.randn(5, 2)
    post = Posteriors(linear_guide(torch.eye(2), torch.zeros(2), torch.ones(2)), x, chunk_size=2)

    def shifted(x, **kwargs):
        with data_plate(x):
            pyro.sample("z", dist.Normal(torch.ones(2), 2.0).to_event(1))

    calls = []
    model = std_normal_model(2, calls)
    first = post.priors(model)
    assert len(first) == 3 and len(calls) == 3
    assert post.priors(model) is first and len(calls) == 3  # cached
    other = post.priors(shifted)
    assert [p.mean[0, 0].item() for p in other] == [1.0, 1.0, 1.0]
    assert [p.batch_shape for p in other] == [(2,), (2,), (1,)]

    def no_z(x, **kwargs):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ConfigError, match="the model has no sample site 'z'"):
        post.priors(no_z)


def test_non_gaussian_posteriors_select_whole_chunks_only():
    x = torch.randn(5, 2)
    A, c, s = torch.eye(2), torch.zeros(2), torch.tensor([0.5, 2.0])
    post = Posteriors(transformed_guide(A, c, s), x, chunk_size=2)
    assert post.select(2, 4) is post.fns[1]
    assert post.select(4, 5) is post.fns[2]
    with pytest.raises(
        NotImplementedError,
        match=r"rows \[1, 3\) are not one stored chunk \(chunk_size 2\) and this guide's Independent",
    ):
        post.select(1, 3)
    with pytest.raises(NotImplementedError):
        post.select(2, 3)  # starts at a chunk, ends inside it


class _CountingAffine(dist.TransformedDistribution):
    """An affine Normal (no analytic mean) that records the sample shapes asked for."""

    shapes = []

    def sample(self, sample_shape=torch.Size()):
        type(self).shapes.append(tuple(sample_shape))
        return super().sample(sample_shape)


def test_means_fall_back_to_64_monte_carlo_draws():
    x = torch.arange(4.0).reshape(2, 2)

    def guide(x, **kwargs):
        loc = x * 3
        base = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc))
        q = _CountingAffine(base, [dist.transforms.AffineTransform(loc, 1e-3)])
        with data_plate(x):
            return pyro.sample("z", q.to_event(1))

    post = Posteriors(guide, x)
    _CountingAffine.shapes.clear()
    means = post.means()
    assert _CountingAffine.shapes == [(64,)]
    torch.testing.assert_close(means, x * 3, atol=1e-3, rtol=0)
    _CountingAffine.shapes.clear()
    post.means(num_samples=5)
    assert _CountingAffine.shapes == [(5,)]


def _brute_mixture(locs, scales, z):
    comp = dist.Normal(locs.double(), scales.double()).to_event(1)
    return comp.log_prob(z.double().unsqueeze(-2)).logsumexp(-1) - math.log(locs.shape[0])


@pytest.mark.parametrize("transformed", [False, True])
def test_mixture_log_prob_is_the_exact_mixture(transformed, capsys):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 3, generator=g)
    A = torch.randn(2, 3, generator=g)
    c, s = torch.tensor([0.2, 0.1]), torch.tensor([0.4, 0.9])
    guide = transformed_guide(A, c, s) if transformed else linear_guide(A, c, s)
    post = Posteriors(guide, x, chunk_size=4)
    assert (post._gaussian is None) == transformed
    z = torch.randn(3, 401, 2, generator=g) * 2  # more z than one block of either path
    out = post.mixture_log_prob(z)
    assert out.shape == (3, 401) and out.dtype == torch.float64
    torch.testing.assert_close(out, _brute_mixture(x @ A.T + c, s.expand(9, 2), z))
    assert capsys.readouterr().err == ""  # no progress bar by default
    # z rows per block: chunk_size (4) for a generic q, at least MIXTURE_BLOCK (500) for
    # diagonal Gaussians; the progress bar counts the blocks of the 1203 rows
    post.mixture_log_prob(z, progress=True)
    blocks = 301 if transformed else 3
    err = capsys.readouterr().err
    assert re.search(rf"mixture q\(z\):.*\| 0/{blocks} \[", err)
    assert not err.endswith("\n")  # the bar is cleared when done, not left behind


def test_gaussian_mixture_is_accurate_for_float32_guides_with_small_scales():
    """The matrix-product form runs in float64 whatever the guide's precision: with σ = 1e-3
    the expanded quadratic has terms ~1e6 that cancel, hopeless in float32."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, generator=g).float()
    s = torch.tensor([1e-3, 2e-3], dtype=torch.float32)

    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", dist.Normal(x * 3, s).to_event(1))

    post = Posteriors(guide, x)
    z = (x * 3 + s * torch.randn(6, 2, generator=g).float()).unsqueeze(0)
    out = post.mixture_log_prob(z)
    assert out.dtype == torch.float32
    exact = _brute_mixture(x * 3, s.expand(6, 2), z)
    torch.testing.assert_close(out.double(), exact, atol=1e-3, rtol=0)


# ---------------------------------------------------------------- MI, aggregate KL
def test_full_set_terms_are_exact_given_the_draws():
    """With components far apart (σ = 1e-3, locations ≥ 1 apart), log q(z_{s,n}) =
    log q(z_{s,n}|x_n) − log N up to e^{-10⁵}: every MI term is exactly log N; the aggregate KL
    terms are log q(z|x_n) − log N − log p(z), all known given the draws."""
    x = torch.arange(6.0).unsqueeze(-1).expand(6, 2) * torch.tensor([1.0, -1.0])
    s = torch.tensor([1e-3, 1e-3])
    post = Posteriors(linear_guide(torch.eye(2), torch.zeros(2), s), x, chunk_size=4)
    model = std_normal_model(2)
    terms = aggregate_posterior_terms(model, post, num_samples=3)
    mi, agg = terms["mi"], terms["agg_kl"]
    assert float(mi) == pytest.approx(math.log(6), abs=1e-9) and mi.se < 1e-9
    assert mi.estimator == agg.estimator == "full-set"
    assert mi.info["num_samples"] == 3 and mi.info["log_n"] == pytest.approx(math.log(6))
    assert mi.info["num_points"] == 6 and mi.per_datapoint.shape == (6,)
    # KL per datapoint: E over the draws of log q(z|x_n) − log 6 − log p(z); z ≈ x_n
    exact = (
        -(s.log().sum() + math.log(2 * math.pi))  # log q(z|x) at its mean, minus ...
        - math.log(6)
        + 0.5 * x.pow(2).sum(-1)
        + math.log(2 * math.pi)
    )
    # the draws move log q(z|x) by −½Σ_d ε_d² (ε ~ N(0, 1)), log p(z) by O(σ|x|) ≈ 1e-2:
    # diff = −½ mean_s Σ_d ε² ≤ 0, with mean −1 and sd √12/6 per datapoint (S = 3, D = 2)
    diff = agg.per_datapoint - exact
    assert (diff < 0.05).all(), diff
    assert abs(diff.mean() + 1) < 4 * math.sqrt(12) / 6 / math.sqrt(6), diff
    assert agg.info["mc_se"] > 0 and math.isfinite(agg.se)


def test_monte_carlo_se_closed_form():
    """mc_se = √(Σ_n Var_s(t_{s,n}) / S) / N: a guide ignoring x has MI terms exactly 0 and KL
    terms log q(z) − log p(z) = ½(Σ z² − Σ (z−μ)²/σ²) − Σ log σ, known given the draws."""
    mu, sig = torch.tensor([0.5, -1.0]), torch.tensor([0.5, 2.0])

    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", dist.Normal(mu.expand(x.shape[0], 2), sig).to_event(1))

    x = torch.zeros(5, 1)
    post = Posteriors(guide, x)
    pyro.set_rng_seed(3)
    z = post.sample(4)
    pyro.set_rng_seed(3)
    terms = aggregate_posterior_terms(std_normal_model(2), post, num_samples=4)
    t = 0.5 * (z.pow(2).sum(-1) - ((z - mu) / sig).pow(2).sum(-1)) - sig.log().sum()
    mc_se = math.sqrt((t.var(0) / 4).sum().item()) / 5
    assert terms["agg_kl"].info["mc_se"] == pytest.approx(mc_se, rel=1e-10)
    torch.testing.assert_close(terms["agg_kl"].per_datapoint, t.mean(0))
    assert terms["agg_kl"].se == pytest.approx(t.mean(0).std().item() / math.sqrt(5), rel=1e-10)
    assert terms["mi"].info["mc_se"] == pytest.approx(0.0, abs=1e-12)
    # two draws per point are the fewest with a Monte-Carlo standard error
    assert aggregate_posterior_terms(None, post, num_samples=2)["mi"].info["mc_se"] < 1e-12
    assert math.isnan(aggregate_posterior_terms(None, post, num_samples=1)["mi"].info["mc_se"])


def test_wrappers_document_their_defaults_and_pass_their_settings(capsys):
    x = torch.randn(9, 2)
    calls = []
    guide = linear_guide(torch.eye(2), torch.zeros(2), torch.ones(2), calls)
    model = std_normal_model(2)
    mi = mutual_information(guide, x, chunk_size=4)
    assert calls == [4, 4, 1] and mi.info["num_samples"] == 2  # default S = 2
    calls.clear()
    kl = aggregate_posterior_kl(model, guide, x, chunk_size=5)
    assert calls == [5, 4] and kl.info["num_samples"] == 2
    assert mutual_information(guide, x, num_samples=4).info["num_samples"] == 4
    assert aggregate_posterior_kl(model, guide, x, num_samples=5).info["num_samples"] == 5
    assert aggregate_posterior_terms(None, guide, x).keys() == {"mi"}
    calls.clear()
    assert active_units(guide, x, chunk_size=2) == 2
    assert calls == [2, 2, 2, 2, 1]
    # quiet by default; progress bars on request
    assert capsys.readouterr().err == ""
    mutual_information(guide, x, progress=True)
    assert "mixture q(z)" in capsys.readouterr().err
    aggregate_posterior_kl(model, guide, x, progress=True)
    err = capsys.readouterr().err
    assert "encode" in err and "mixture q(z)" in err


def test_posteriors_must_match_the_data_passed():
    x = torch.randn(6, 2)
    guide = linear_guide(torch.eye(2), torch.zeros(2), torch.ones(2))
    post = Posteriors(guide, x)
    model = std_normal_model(2)
    kl = expected_kl(model, post)
    assert float(expected_kl(model, post, x)) == float(kl)
    assert float(expected_kl(model, post, x.clone())) == float(kl)  # equal data, other tensor
    with pytest.raises(
        DataError, match="these Posteriors were computed for other data than the data passed"
    ):
        expected_kl(model, post, x + 1)
    with pytest.raises(DataError, match="these Posteriors were computed for other data"):
        expected_kl(model, post, x[:3])
    with pytest.raises(
        DataError, match=r"pass the data \(or a Posteriors computed from it instead of the guide\)"
    ):
        expected_kl(model, guide)


def test_kl_per_dimension_needs_factorising_distributions():
    x = torch.randn(4, 2)

    def mvn_guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", dist.MultivariateNormal(x, torch.eye(2)))

    with pytest.raises(ConfigError, match="found MultivariateNormal and Independent"):
        kl_per_dimension(std_normal_model(2), mvn_guide, x)

    def mvn_prior(x, **kwargs):
        with data_plate(x):
            pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))

    guide = linear_guide(torch.eye(2), torch.zeros(2), torch.ones(2))
    with pytest.raises(ConfigError, match="found Independent and MultivariateNormal"):
        kl_per_dimension(mvn_prior, guide, x)


def test_monte_carlo_kls_are_unbiased_for_the_closed_form():
    """q(z|x) = N(μ, diag s²) written as an affine transform: no registered KL, so
    kl_per_dimension and expected_kl fall back to log q − log p over draws."""
    n = 4000
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(8))
    A, c, s = torch.eye(2) * 0.5, torch.tensor([0.3, -0.6]), torch.tensor([0.6, 1.5])
    guide = transformed_guide(A, c, s)
    model = std_normal_model(2)
    mu = x @ A.T + c
    per_dim_exact = 0.5 * (s.pow(2) + mu.pow(2) - 1) - s.log()
    per_dim = kl_per_dimension(model, guide, x, chunk_size=1000)
    assert per_dim.shape == (n, 2)
    diff = per_dim - per_dim_exact
    se = diff.std(0) / math.sqrt(n)
    assert (diff.mean(0).abs() < 4 * se).all(), (diff.mean(0), se)
    exact = per_dim_exact.sum(-1).mean()
    for k in (1, 5):
        kl = expected_kl(model, guide, x, num_samples=k)
        assert kl.estimator == "monte-carlo" and kl.info["num_samples"] == k
        assert abs(float(kl) - exact) < 4 * (
            kl.per_datapoint - per_dim_exact.sum(-1)
        ).std() / math.sqrt(n)
    # num_samples=5 averages 5 draws: its per-datapoint spread around the truth shrinks ~√5
    one = expected_kl(model, guide, x).per_datapoint - per_dim_exact.sum(-1)
    five = expected_kl(model, guide, x, num_samples=5).per_datapoint - per_dim_exact.sum(-1)
    assert 1.7 < (one.std() / five.std()).item() < 2.8
    analytic = expected_kl(model, linear_guide(A, c, s), x)
    assert analytic.estimator == "analytic" and analytic.info["num_samples"] is None
    assert float(analytic) == pytest.approx(exact.item(), rel=1e-12)


def test_posterior_mean_variance_and_active_units_boundaries():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.2]])
    guide = linear_guide(torch.eye(2), torch.zeros(2), torch.ones(2))
    var = posterior_mean_variance(guide, x)
    torch.testing.assert_close(var, torch.tensor([0.5, 0.02]), rtol=1e-15, atol=0)  # N − 1
    assert active_units(guide, x, threshold=0.5) == 0  # Var > δ, the limit itself is inactive
    assert active_units(guide, x, threshold=0.4999) == 1
    with pytest.raises(DataError, match="active units need at least 2 datapoints"):
        posterior_mean_variance(guide, x[:1])
    # default δ = 0.01: variances 0.0101 and 0.0099
    y = torch.tensor([[0.0, 0.0], [math.sqrt(0.0202), math.sqrt(0.0198)]])
    assert active_units(guide, y) == 1


def test_minibatch_mi_with_separated_posteriors_is_log_batch_size():
    """Nearly deterministic, far-apart posteriors: each term is −H − log q(z_i|x_i) + log|B|,
    with −H − log q(z|x) = ½ Σ_d (ε_d² − 1) (mean 0). With an affine-Normal guide the entropy
    is not analytic and the sampled log q(z|x) replaces it: the terms are log|B| exactly."""
    x = torch.arange(70.0).unsqueeze(-1).expand(70, 2).contiguous()
    s = torch.tensor([1e-3, 1e-3])
    sizes = torch.tensor([30.0] * 60 + [10.0] * 10)  # batches of 30, 30, 10
    exact = sizes.log()
    sampled = minibatch_mutual_information(
        transformed_guide(torch.eye(2), torch.zeros(2), s), x, batch_size=30
    )
    torch.testing.assert_close(sampled.per_datapoint, exact, atol=1e-9, rtol=0)
    assert sampled.estimator == "minibatch (He et al. 2019), batch 30"
    assert sampled.info["batch_size"] == 30 and sampled.info["cap"] == math.log(30)
    assert sampled.info["log_n"] == math.log(70)
    analytic = minibatch_mutual_information(
        linear_guide(torch.eye(2), torch.zeros(2), s), x, batch_size=30
    )
    diff = analytic.per_datapoint - exact
    assert abs(diff.mean()) < 4 * math.sqrt(2 / 2 / 70)  # Var ½Σ(ε²−1) = D/2 = 1
    assert diff.abs().max() > 1e-3  # the analytic entropy: single draws scatter
    # stored posteriors (any range of a Gaussian q) give the same batches
    post = Posteriors(linear_guide(torch.eye(2), torch.zeros(2), s), x, chunk_size=7)
    stored = minibatch_mutual_information(post, batch_size=30)
    assert abs((stored.per_datapoint - exact).mean()) < 4 * math.sqrt(1 / 70)
    # default batch size 50
    default = minibatch_mutual_information(transformed_guide(torch.eye(2), torch.zeros(2), s), x)
    assert default.info["batch_size"] == 50
    torch.testing.assert_close(
        default.per_datapoint, torch.tensor([50.0] * 50 + [20.0] * 20).log(), atol=1e-9, rtol=0
    )
    # batches of one: the mixture is the point's own q, the term is exactly 0
    ones = minibatch_mutual_information(
        transformed_guide(torch.eye(2), torch.zeros(2), s), x, batch_size=1
    )
    assert ones.per_datapoint.abs().max() < 1e-12
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, found 0"):
        minibatch_mutual_information(post, batch_size=0)


# ---------------------------------------------------------------- IW-NLL
def test_pareto_k_contract():
    g = torch.Generator().manual_seed(0)
    assert MIN_SAMPLES_FOR_PARETO == 20
    assert torch.isnan(pareto_k(torch.randn(2, 19, generator=g))).all()
    lw = torch.randn(4, 100, generator=g)
    lw[1] = 3.0  # an exact proposal: all weights equal
    lw[2] = 1e6 + 1e-6 * torch.arange(100.0)  # spread 9.9e-5 ≤ 1e-9 · 1e6: equal to precision
    k = pareto_k(lw)
    assert k.dtype == torch.float64 and k.shape == (4,)
    assert torch.isneginf(k[1]) and torch.isneginf(k[2])
    import arviz as az

    _, khat = az.psislw(lw[[0, 3]].numpy())
    torch.testing.assert_close(k[[0, 3]], torch.as_tensor(np.asarray(khat, dtype=np.float64)))
    assert torch.isfinite(k[[0, 3]]).all()
    # a small spread at a small scale is a real spread
    # "equal" means a spread ≤ 1e-9 · max(1, max |log w|): the limit itself is equal,
    # 1.5e-9 at a scale below 1 is a real spread
    edge = torch.zeros(2, 20)
    edge[0, 0] = 1e-9
    edge[1, 0] = 1.5e-9
    k_edge = pareto_k(edge)
    assert torch.isneginf(k_edge[0]) and not torch.isneginf(k_edge[1])
    torch.set_default_dtype(torch.float32)  # k̂ is float64 whatever the default dtype
    assert pareto_k(torch.zeros(3, 5)).dtype == torch.float64
    torch.set_default_dtype(torch.float64)
    assert torch.isneginf(pareto_k(torch.zeros(1, 20))).all()  # K = 20 is enough


def test_pareto_k_summary_contract(caplog):
    assert PARETO_K_THRESHOLD == 0.7
    k = torch.tensor([0.2, 0.5, 0.6, 0.7, 0.9, -math.inf])
    with caplog.at_level(logging.WARNING, logger="pyro_skipvae.diagnostics.nll"):
        summary = pareto_k_summary(k)
    warning = (
        "Pareto k̂ > 0.7 for 1 of 6 datapoints (16.7%): their importance-weighted NLL is "
        "unreliable (the weights' variance may be infinite); use more samples or a better "
        "proposal (e.g. refined local parameters)"
    )
    assert summary == {
        "threshold": 0.7,
        "num_points": 6,
        "num_above": 1,
        "share_above": 1 / 6,
        "share_above_0.5": 3 / 6,
        "max": 0.9,
        "warning": warning,
    }
    assert warning in caplog.messages
    caplog.clear()
    quiet = pareto_k_summary([0.3, 0.55], threshold=0.6)
    assert quiet["warning"] is None and quiet["num_above"] == 0 and quiet["max"] == 0.55
    assert quiet["share_above_0.5"] == 0.5 and quiet["threshold"] == 0.6
    assert pareto_k_summary([0.6], threshold=0.6)["num_above"] == 0  # the limit is not above
    assert not caplog.records
    exact = pareto_k_summary(torch.tensor([-math.inf, -math.inf]))
    assert exact["max"] is None and exact["num_above"] == 0 and exact["warning"] is None
    none = pareto_k_summary(torch.full((3,), math.nan))
    assert none == {
        "threshold": 0.7,
        "num_points": 3,
        "num_above": None,
        "share_above": None,
        "share_above_0.5": None,
        "max": None,
        "warning": "no Pareto k̂: fewer than 20 importance samples",
    }


def test_importance_sampling_result_estimate_and_summary():
    result = ImportanceSamplingResult(
        nll=torch.tensor([1.0, 2.0, 6.0]),
        pareto_k=torch.tensor([0.1, 0.8, 0.75]),
        ess=torch.ones(3),
        mc_var=torch.tensor([0.04, -0.01, 0.05]),
        log_weights=None,
        num_samples=7,
    )
    est = result.estimate()
    assert float(est) == 3.0 and est.se == pytest.approx(math.sqrt(7) / math.sqrt(3))
    assert est.info["mc_se"] == pytest.approx(0.1, rel=1e-12)  # √(0.04 + 0 + 0.05) / 3
    assert est.info["num_samples"] == 7 and est.info["num_points"] == 3
    assert est.estimator == "importance-weighted (K=7, proposal q(z|x))"
    torch.testing.assert_close(est.per_datapoint, result.nll)
    assert result.pareto_summary()["num_above"] == 2
    assert result.pareto_summary(threshold=0.78)["num_above"] == 1


def test_importance_sample_with_the_exact_posterior(lg):
    """Every weight equals p(x): NLL exact, ESS = K, Monte-Carlo variance 0, k̂ = −inf."""
    W, b, sigma, x, _, post_cov, log_px = lg
    guide_calls, model_calls = [], []
    model = linear_model(W, b, sigma, model_calls)
    guide = exact_posterior_guide(W, b, sigma, post_cov, calls=guide_calls, needs_kwarg=True)
    result = importance_sample(
        model,
        guide,
        x,
        num_samples=25,
        batch_size=5,
        particle_chunk=10,
        guide_kwargs={"scale": 1.0},
    )
    assert guide_calls == [5, 5, 2]
    assert [c[:2] for c in model_calls] == [(10, 5), (10, 5), (5, 5)] * 2 + [
        (10, 2),
        (10, 2),
        (5, 2),
    ]
    torch.testing.assert_close(result.nll, -log_px, atol=1e-9, rtol=0)
    assert result.log_weights.shape == (12, 25) and result.num_samples == 25
    torch.testing.assert_close(result.log_weights, log_px.unsqueeze(-1).expand(12, 25))
    torch.testing.assert_close(result.ess, torch.full((12,), 25.0))
    assert result.mc_var.abs().max() < 1e-12 and (result.mc_var >= 0).all()
    assert torch.isneginf(result.pareto_k).all()
    quick = importance_sample(
        model,
        guide,
        x,
        num_samples=25,
        keep_log_weights=False,
        pareto=False,
        guide_kwargs={"scale": 1.0},
    )
    assert quick.log_weights is None and torch.isnan(quick.pareto_k).all()
    assert quick.pareto_k.dtype == torch.float64 and quick.pareto_k.shape == (12,)


def test_importance_sample_weights_of_a_wider_proposal(lg):
    """ess and mc_var follow from the normalised weights; nll = −log mean w."""
    W, b, sigma, x, _, post_cov, log_px = lg
    result = importance_sample(
        linear_model(W, b, sigma),
        exact_posterior_guide(W, b, sigma, 2 * post_cov),
        x,
        num_samples=40,
    )
    lw = result.log_weights
    w = (lw - lw.logsumexp(-1, keepdim=True)).exp()
    torch.testing.assert_close(result.nll, -(lw.logsumexp(-1) - math.log(40)))
    torch.testing.assert_close(result.ess, 1 / w.pow(2).sum(-1))
    torch.testing.assert_close(result.mc_var, w.pow(2).sum(-1) - 1 / 40)
    assert (result.ess < 40).all() and (result.ess > 1).all()
    assert torch.isfinite(result.pareto_k).all()
    # the IW bound: E[NLL_K] ≥ −log p(x), close at K = 40 with this proposal
    assert (result.nll - (-log_px)).mean() > -4 * result.estimate().info["mc_se"]


def test_importance_sample_defaults_and_validation(lg, capsys):
    W, b, sigma, _, _, post_cov, _ = lg
    x = torch.randn(201, 3)
    guide_calls, model_calls = [], []
    model = linear_model(W, b, sigma, model_calls)
    guide = exact_posterior_guide(W, b, sigma, post_cov, calls=guide_calls)
    # default batch_size 100, particle_chunk 10,000 // 100 = 100
    result = importance_sample(model, guide, x, num_samples=150)
    assert guide_calls == [100, 100, 1]
    assert [c[0] for c in model_calls] == [100, 50] * 3
    assert result.nll.shape == (201,)
    # particle_chunk never below 1
    model_calls.clear()
    importance_sample(model, guide, x[:3], num_samples=2, batch_size=20_000)
    assert [c[0] for c in model_calls] == [1, 1]
    # importance_weighted_nll: K = 500 by default, the same batching, no bars
    guide_calls.clear()
    model_calls.clear()
    nll = importance_weighted_nll(model, guide, x[:4])
    assert nll.shape == (4,) and sum(c[0] for c in model_calls) == 500
    assert capsys.readouterr().err == ""
    guide_calls.clear()
    model_calls.clear()
    importance_weighted_nll(
        model, guide, x[:5], num_samples=6, batch_size=2, particle_chunk=4, progress=True
    )
    assert guide_calls == [2, 2, 1] and [c[0] for c in model_calls] == [4, 2] * 3
    assert "IW-NLL (K=6)" in capsys.readouterr().err
    for bad in (0, 2.0, "3"):
        with pytest.raises(
            ConfigError, match=f"num_samples must be a positive integer, found {bad!r}"
        ):
            importance_sample(model, guide, x, num_samples=bad)
    importance_sample(model, guide, x[:2], num_samples=1)  # the limit is accepted
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, found 0"):
        importance_sample(model, guide, x, num_samples=2, batch_size=0)
    importance_sample(model, guide, x[:2], num_samples=2, batch_size=1)


def test_importance_sample_reuses_stored_posteriors(lg):
    W, b, sigma, x, _, post_cov, log_px = lg
    calls = []
    guide = exact_posterior_guide(W, b, sigma, post_cov, calls=calls)
    post = Posteriors(guide, x, chunk_size=5)
    assert calls == [5, 5, 2]
    # a non-Gaussian q is stored per chunk, so the batches must be the chunks
    result = importance_sample(linear_model(W, b, sigma), post, num_samples=3, batch_size=5)
    assert calls == [5, 5, 2]  # the guide is not run again
    torch.testing.assert_close(result.nll, -log_px, atol=1e-9, rtol=0)


def test_model_must_broadcast_over_particles(lg):
    W, b, sigma, x, _, post_cov, _ = lg

    def flat_model(x, **kwargs):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc = (z @ W.T + b).unsqueeze(0)  # an extra leading dimension
            pyro.sample("x", dist.Normal(loc, sigma).to_event(1), obs=x)

    with pytest.raises(
        ConfigError,
        match=r"expected log-weights of shape \(4, 12\) \(particles × datapoints\); found \(1, 4, 12\)",
    ):
        importance_sample(
            flat_model,
            exact_posterior_guide(W, b, sigma, post_cov),
            x,
            num_samples=4,
            batch_size=12,
        )


# ---------------------------------------------------------------- classification
def _codes(n, seed=0):
    """Synthetic codes: class c sits near 4·e_c (three classes)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return torch.nn.functional.one_hot(y).double() * 4 + 0.1 * torch.randn(n, 3, generator=g), y


def test_classification_accuracy_contract():
    codes, y = _codes(90)
    test_y = y[60:].clone()
    test_y[:3] = (test_y[:3] + 1) % 3  # 3 of 30 test labels wrong: accuracy 0.9 exactly
    result = classification_accuracy(codes[:60], y[:60], codes[60:], test_y, classifiers=["knn"])
    assert set(result) == {"knn"}
    r = result["knn"]
    assert r["accuracy"] == pytest.approx(0.9)
    assert r["accuracy_se"] == pytest.approx(math.sqrt(0.9 * 0.1 / 30), rel=1e-12)
    assert r["num_train"] == 60 and r["num_test"] == 30
    assert r["classifier"] == describe("knn")
    # numpy arrays work as well as tensors; labels stay integers
    both = classification_accuracy(
        codes[:60].numpy(), y[:60].numpy(), codes[60:], y[60:], classifiers=("logistic", "knn")
    )
    assert list(both) == ["logistic", "knn"] and both["logistic"]["accuracy"] == 1.0
    assert both["logistic"]["accuracy_se"] == 0.0


def test_classification_accuracy_rejects_bad_inputs():
    codes, y = _codes(30)
    with pytest.raises(
        DataError, match="codes and labels differ in length: train 10 vs 9, test 30 vs 30"
    ):
        classification_accuracy(codes[:10], y[:9], codes, y)
    with pytest.raises(DataError, match="test 30 vs 29"):
        classification_accuracy(codes, y, codes, y[:29])
    one_class = torch.full((30,), 3)
    with pytest.raises(
        DataError, match=r"need at least 2 classes among the training labels, found \[3\]"
    ):
        classification_accuracy(codes, one_class, codes, y)
    # two classes are enough
    two = y % 2
    assert (
        classification_accuracy(codes, two, codes, two, classifiers=["knn"])["knn"]["num_train"]
        == 30
    )
    with pytest.raises(ConfigError):
        classification_accuracy(codes, y, codes, y, classifiers=["svm"])


def test_classifier_descriptions():
    assert describe("knn") == (
        "k-nearest neighbours (scikit-learn KNeighborsClassifier, k=5, Euclidean, uniform "
        "weights) on raw posterior means"
    )
    assert describe("logistic").startswith("multinomial logistic regression (scikit-learn")
