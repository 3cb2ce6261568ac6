"""The model and guide are plain Pyro: Predictive draws prior and posterior predictives, a
non-amortized AutoNormal guide fits the local latents of a small data set, and NUTS samples
one datapoint's true posterior (checked against the closed form of a linear-Gaussian model)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_skipvae import Model, SkipVAE
from pyro_skipvae.diagnostics import evaluate_elbo, nuts_posterior
from pyro_skipvae.models.decoders import Decoder
from pyro_skipvae.models.likelihoods import Likelihood
from pyro_skipvae.models.priors import StandardNormalPrior
from pyro_skipvae.modes import evaluating


def test_predictive_draws_from_prior_and_posterior(mnist, tiny_options):
    vae = SkipVAE(mnist.data_shape, **tiny_options, seed=0)
    vae.fit(mnist.train, num_epochs=1, binarize="dynamic")
    x = (mnist.val[:50] > 0.5).float()
    prior = vae.predictive(x, num_samples=200, posterior=False)
    assert prior["z"].shape == (200, 50, 4) and prior["x"].shape == (200, 50, 1, 28, 28)
    assert set(prior["x"].unique().tolist()) <= {0.0, 1.0}
    z = prior["z"].reshape(-1, 4).double()  # 10,000 draws of N(0, I)
    assert z.mean(0).abs().max() < 4 / math.sqrt(len(z))
    assert (z.var(0) - 1).abs().max() < 4 * math.sqrt(2 / len(z))
    posterior = vae.predictive(x, num_samples=400)
    loc, scale = vae.encode(x)
    se = scale / math.sqrt(400)
    assert ((posterior["z"].mean(0) - loc).abs() < 5 * se).float().mean() > 0.98
    assert not torch.equal(posterior["x"][0], x)  # drawn, not the observed data


def test_a_non_amortized_autonormal_guide_beats_the_encoder_on_a_small_set(mnist, tiny_options):
    vae = SkipVAE(mnist.data_shape, **tiny_options, seed=0)
    vae.fit(mnist.train, num_epochs=3, binarize="dynamic", kl_warmup_epochs=0)
    x = (mnist.val[:100] > 0.5).float()
    # The model is fixed (its parameters hidden from SVI); only the local latents are fitted.
    model = poutine.block(vae.model, hide_types=["param"])
    guide = AutoNormal(model, init_scale=0.1)  # loc and scale for each of the 100 z's
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    with pyro.validation_enabled(False):  # checked once above; per-step checks double the time
        for _ in range(250):
            svi.step(x)
    pyro.set_rng_seed(1)
    with evaluating(vae.model, vae.guide):
        amortized = evaluate_elbo(vae.model, vae.guide, x, num_particles=50)
        local = evaluate_elbo(vae.model, guide, x, num_particles=50)
    # per-datapoint optimisation closes (part of) the amortization gap
    gap = local["elbo_per_datapoint"] - amortized["elbo_per_datapoint"]
    assert gap.mean() > 4 * gap.std() / math.sqrt(len(gap)), gap.mean()


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


@pytest.mark.usefixtures("float64")
def test_nuts_finds_the_closed_form_posterior_of_a_linear_gaussian_model():
    torch.manual_seed(0)
    W = torch.randn(3, 2)
    model = Model(
        StandardNormalPrior(2), LinearDecoder(2, (3,), weight=W), UnitNormalLikelihood((3,))
    )
    x = torch.tensor([[1.0, -0.5, 2.0]])
    # p(z|x) = N(Σ Wᵀ x / s², Σ), Σ = (I + Wᵀ W / s²)⁻¹ with s = 0.5
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / 0.25)
    mean = cov @ W.T @ x[0] / 0.25
    z = nuts_posterior(model, x, num_samples=500, warmup_steps=200)
    assert z.shape == (500, 2)
    sd = cov.diagonal().sqrt()
    # NUTS draws are autocorrelated; 6 standard errors of 500 independent draws allow an
    # effective sample size down to ~150 and are still far tighter than any real error.
    assert torch.all((z.mean(0) - mean).abs() < 6 * sd / math.sqrt(500))
    assert torch.allclose(z.T.cov(), cov, atol=0.25 * cov.diagonal().max().item())
