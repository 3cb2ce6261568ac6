"""The model and guide are plain Pyro: Predictive draws prior and posterior predictives, and a
non-amortized AutoNormal guide fits the local latents of a small data set (NUTS on one
datapoint's true posterior: ``tests/test_diagnostics.py``)."""

import math

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_skipvae import SkipVAE
from pyro_skipvae.diagnostics import evaluate_elbo
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
