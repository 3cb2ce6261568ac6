"""The extra built-ins, checked against closed forms: VampPrior against its mixture by hand,
the flow prior and flow guide against the change-of-variables formula and by quadrature
(their densities integrate to one), the discretized logistic mixture against scipy's logistic
CDF and by enumeration of its grid; then each trains and is diagnosed on real MNIST."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.kl import kl_divergence
from scipy import stats

from pyro_skipvae import ConfigError, DataError, Guide, SkipVAE
from pyro_skipvae.guides import FlowGuide, MLPEncoder
from pyro_skipvae.infer import SemiAmortizedSVI
from pyro_skipvae.models.likelihoods import (
    DiscretizedLogisticLikelihood,
    DiscretizedLogisticMixture,
)
from pyro_skipvae.models.priors import FlowPrior, VampPrior


def grid_2d(half_width=9.0, n=601):
    """A square grid of ℝ² and the area of one cell (trapezoid weights folded in)."""
    t = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    w = torch.ones(n, dtype=torch.float64)
    w[0] = w[-1] = 0.5
    weights = (w[:, None] * w[None, :]).reshape(-1) * (t[1] - t[0]) ** 2
    return zz, weights


@pytest.mark.usefixtures("float64")
def test_vamp_prior_is_the_mixture_of_the_encoder_at_its_pseudo_inputs():
    encoder = MLPEncoder((1, 4, 4), 3, hidden_dims=(8,))
    prior = VampPrior(3, num_pseudo=7)
    with pytest.raises(ConfigError, match="has no encoder"):
        prior((2,))
    prior.attach_encoder(encoder)
    z = torch.randn(5, 3)
    loc, log_var = encoder(prior.pseudo_inputs)
    by_hand = torch.stack(
        [dist.Normal(loc[k], (0.5 * log_var[k]).exp()).log_prob(z).sum(-1) for k in range(7)]
    ).logsumexp(0) - math.log(7)
    assert torch.allclose(prior((5,)).log_prob(z), by_hand, rtol=1e-12)
    assert prior.pseudo_inputs.shape == (7, 1, 4, 4)
    assert 0 < prior.pseudo_inputs.min() and prior.pseudo_inputs.max() < 1
    # the encoder is a reference, not a submodule: its weights are saved with the guide only
    assert set(prior.state_dict()) == {"pseudo_logits"}
    with pytest.raises(ConfigError, match="latent_dim"):
        VampPrior(4).attach_encoder(encoder)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("flow", ["affine", "spline"])
def test_flow_prior_density_is_the_change_of_variables_and_integrates_to_one(flow):
    prior = FlowPrior(2, flow=flow, num_flows=2, hidden_dims=(8,))
    with torch.no_grad():  # move the flows away from their near-identity start
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = torch.randn(4, 2)

    def f(v):  # z → u, the density direction
        for layer in prior.flows:
            v = layer(v)
        return v

    for i in range(4):
        jacobian = torch.autograd.functional.jacobian(f, z[i])
        expected = dist.Normal(0.0, 1.0).log_prob(f(z[i])).sum() + jacobian.det().abs().log()
        assert prior((1,)).log_prob(z[i : i + 1]).item() == pytest.approx(expected.item(), rel=1e-9)
    zz, weights = grid_2d()
    with torch.no_grad():
        mass = (prior((zz.shape[0],)).log_prob(zz).exp() * weights).sum()
    assert mass.item() == pytest.approx(1.0, abs=2e-3)  # grid and truncation error


@pytest.mark.usefixtures("float64")
def test_flow_guide_density_integrates_to_one_and_its_kl_between_two_qs_is_the_bases():
    guide = FlowGuide(MLPEncoder((3,), 2, hidden_dims=(4,)), num_flows=2, hidden_dims=(8,))
    with torch.no_grad():
        for p in guide.flows.parameters():
            p.add_(0.3 * torch.randn_like(p))
    loc, log_var = torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.5, 0.3]])
    q = guide.distribution(loc, log_var)
    zz, weights = grid_2d()
    with torch.no_grad():
        mass = (q.expand((zz.shape[0],)).log_prob(zz).exp() * weights).sum().item()
    # This q has heavy tails: the grid's mass must equal the share of draws inside the box.
    inside = (q.sample((100000,)).abs() <= 9.0).all(-1).double().mean().item()
    assert mass == pytest.approx(inside, abs=4 * math.sqrt(inside * (1 - inside) / 1e5) + 1e-3)
    q1 = guide.distribution(loc + 0.2, log_var - 0.1)
    bases = kl_divergence(
        dist.Normal(loc, (0.5 * log_var).exp()).to_event(1),
        dist.Normal(loc + 0.2, (0.5 * (log_var - 0.1)).exp()).to_event(1),
    )
    assert torch.allclose(kl_divergence(q, q1), bases)
    z = q.sample((20000,))  # Monte-Carlo check of the same identity (the flow cancels)
    mc = (q.log_prob(z) - q1.log_prob(z)).detach()
    assert abs(mc.mean() - bases).item() < 4 * mc.std().item() / math.sqrt(20000)


@pytest.mark.parametrize("num_components", [1, 3])
def test_discretized_logistic_against_scipy_and_by_enumeration(num_components):
    g = torch.Generator().manual_seed(num_components)
    shape = (4, num_components)
    logits, locs = torch.randn(shape, generator=g), torch.rand(shape, generator=g)
    log_scales = torch.randn(shape, generator=g) - 2.5
    d = DiscretizedLogisticMixture(logits.double(), locs.double(), log_scales.double())
    grid = np.arange(256) / 255.0
    lo, hi = grid - 0.5 / 255, grid + 0.5 / 255
    lo[0], hi[-1] = -np.inf, np.inf
    weights = torch.softmax(logits.double(), -1).numpy()
    expected = sum(
        weights[:, k, None]
        * (
            stats.logistic.cdf(hi[None], locs[:, k, None].double(), log_scales[:, k, None].exp())
            - stats.logistic.cdf(lo[None], locs[:, k, None].double(), log_scales[:, k, None].exp())
        )
        for k in range(num_components)
    )  # (4, 256)
    values = torch.tensor(grid).unsqueeze(-1).expand(256, 4)
    probs = d.log_prob(values).exp().T.numpy()
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-10)
    assert np.allclose(probs, expected, rtol=1e-6, atol=1e-10)
    assert np.allclose(d.mean.numpy(), (expected * grid).sum(-1), rtol=1e-6)
    draws = d.sample((40000,))
    assert torch.all(draws * 255 == (draws * 255).round())
    counts = (
        np.stack(
            [
                np.bincount((draws[:, i] * 255).round().long().numpy(), minlength=256)
                for i in range(4)
            ]
        )
        / 40000
    )
    # each bin's frequency within 5 binomial standard errors of its probability
    assert np.all(
        np.abs(counts - expected) <= 5 * np.sqrt(expected * (1 - expected) / 40000) + 1e-4
    )


def test_discretized_logistic_likelihood_checks_the_grid():
    likelihood = DiscretizedLogisticLikelihood((1, 2, 2))
    assert likelihood.param_shape == (1, 2, 2, 3)
    likelihood.validate(torch.tensor([[[[0.0, 1.0], [3 / 255, 128 / 255]]]]))
    with pytest.raises(DataError, match="grid"):
        likelihood.validate(torch.tensor([[[[0.0, 0.5], [0.2, 1.0]]]]))
    with pytest.raises(ConfigError, match="num_components"):
        DiscretizedLogisticLikelihood((1, 2, 2), num_components=0)


COMPONENTS = {
    "vamp prior": dict(prior="vamp", prior_options={"num_pseudo": 20}),
    "flow prior": dict(prior="flow", prior_options={"flow": "spline"}),
    "flow guide": dict(guide="flow"),
    "discretized logistic": dict(likelihood="discretized-logistic"),
}


@pytest.mark.parametrize("name", COMPONENTS)
def test_each_component_trains_and_is_diagnosed_on_real_mnist(name, mnist, tiny_options, tmp_path):
    grey = name == "discretized logistic"
    vae = SkipVAE(mnist.data_shape, **tiny_options, **COMPONENTS[name], seed=0)
    binarization = "none" if grey else "dynamic"
    history = vae.fit(
        mnist.train,
        val=mnist.val,
        num_epochs=2,
        binarize=binarization,
        elbo="mean-field",
        num_particles=2,
        run_dir=tmp_path / "run",
    )
    assert all(math.isfinite(r["val_elbo"]) for r in history)
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]
    loaded = SkipVAE.load(tmp_path / "run")
    val = mnist.val[:100] if grey else (mnist.val[:100] > 0.5).float()
    scores = []
    for v in (vae, loaded):  # the same draws: the reloaded model is the same model
        pyro.set_rng_seed(1)
        scores.append(v.evaluate(val)["elbo"])
    assert scores[1] == pytest.approx(scores[0], abs=1e-3)
    result = loaded.diagnose(val, num_samples=20, mi_batch_size=None)
    metrics = result["metrics"]
    assert all(metrics["checks"].values()), metrics["checks"]
    assert metrics["kl"] >= 0 and metrics["mi"] <= metrics["log_n"] + 1e-6
    # only factorising q and p have a per-dimension KL
    assert (result["kl_per_dim"] is None) == (name != "discretized logistic")
    assert metrics["nll"] <= -metrics["elbo"] + 3 * math.hypot(
        metrics["nll_se"], metrics["elbo_se"]
    )


def test_flow_guide_refines_in_every_semi_amortized_mode(mnist, tiny_options):
    vae = SkipVAE(mnist.data_shape, **tiny_options, guide="flow", seed=0)
    x = (mnist.train[:20] > 0.5).float()
    for mode in ("end-to-end", "stop-gradient", "kl", "svi"):
        inference = SemiAmortizedSVI(
            vae.model,
            vae.guide,
            pyro.optim.Adam({"lr": 1e-3}),
            pyro.infer.Trace_ELBO(),
            mode=mode,
            num_refine_steps=2,
        )
        assert math.isfinite(inference.step(x, size=500))


def test_kl_mode_refuses_a_family_without_a_closed_form_kl(mnist, tiny_options):
    class StudentTGuide(Guide):
        def distribution(self, loc, log_var):
            return dist.StudentT(4.0, loc, (0.5 * log_var).exp()).to_event(1)

    encoder = MLPEncoder(mnist.data_shape, 4, hidden_dims=(32,))
    vae = SkipVAE(mnist.data_shape, **tiny_options, guide=StudentTGuide(encoder))
    inference = SemiAmortizedSVI(
        vae.model,
        vae.guide,
        pyro.optim.Adam({"lr": 1e-3}),
        pyro.infer.Trace_ELBO(),
        mode="kl",
        num_refine_steps=1,
    )
    with pytest.raises(
        ConfigError,
        match="needs KL.*closed form.*StudentT.*; use mode 'stop-gradient' or 'end-to-end'$",
    ):
        inference.step((mnist.train[:10] > 0.5).float(), size=500)
