"""Our sync-free Trace_ELBO against Pyro's: the same loss and gradients on the same draws,
reparameterised (the skip-VAE on real MNIST) and score-function (a discrete latent), and no
host synchronisation (no ``.item()``) while it builds them."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_skipvae import SkipVAE
from pyro_skipvae.infer import ELBOS
from pyro_skipvae.infer.trace_elbo import Trace_ELBO


def discrete_model(x):
    p = pyro.param("p", torch.tensor(0.3), constraint=constraints.unit_interval)
    loc = pyro.param("loc", torch.tensor(0.5))
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Bernoulli(p))
        pyro.sample("x", dist.Normal(loc * c, 1.0), obs=x)


def discrete_guide(x):
    q = pyro.param("q", torch.full((len(x),), 0.6), constraint=constraints.unit_interval)
    with pyro.plate("data", len(x)):
        pyro.sample("c", dist.Bernoulli(q))


def loss_and_grads(elbo, model, guide, params, *args, **kwargs):
    for p in params():
        p.grad = None
    pyro.set_rng_seed(1)
    loss = elbo.loss_and_grads(model, guide, *args, **kwargs)
    grads = [p.grad.clone() for p in params()]
    pyro.set_rng_seed(1)
    differentiable = elbo.differentiable_loss(model, guide, *args, **kwargs)
    for p in params():
        p.grad = None
    differentiable.backward()
    return float(loss), grads, differentiable.item(), [p.grad.clone() for p in params()]


def assert_same(ours, pyros):
    assert ours[0] == pytest.approx(pyros[0], rel=1e-12) and ours[2] == pytest.approx(
        pyros[2], rel=1e-12
    )
    for a, b in zip(ours[1] + ours[3], pyros[1] + pyros[3]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def skip_vae_batch(mnist, num_particles):
    """A small skip-VAE, 20 binarised MNIST images and the ELBO options for its particles."""
    vae = SkipVAE(mnist.data_shape, latent_dim=4, hidden_dims=(16, 16), seed=0)
    x = (mnist.train[:20] > 0.5).double()
    kwargs = {
        "num_particles": num_particles,
        "vectorize_particles": num_particles > 1,
        "max_plate_nesting": 1,
    }
    return vae, x, kwargs


@pytest.mark.parametrize("num_particles", [1, 3])
def test_equals_pyros_trace_elbo_on_the_skip_vae(mnist, float64, num_particles):
    vae, x, kwargs = skip_vae_batch(mnist, num_particles)
    results = [
        loss_and_grads(elbo, vae.model, vae.guide, vae.parameters, x, size=1000, beta=0.5)
        for elbo in (Trace_ELBO(**kwargs), pyro.infer.Trace_ELBO(**kwargs))
    ]
    assert_same(*results)


def test_equals_pyros_trace_elbo_with_score_function_terms(float64):
    x = torch.randn(7, generator=torch.Generator().manual_seed(0))
    discrete_guide(x)
    discrete_model(x)
    params = lambda: [pyro.param(n).unconstrained() for n in ("p", "loc", "q")]  # noqa: E731
    results = [
        loss_and_grads(elbo, discrete_model, discrete_guide, params, x)
        for elbo in (Trace_ELBO(num_particles=2), pyro.infer.Trace_ELBO(num_particles=2))
    ]
    assert all(g.abs().sum() > 0 for g in results[0][1]), "every parameter gets a gradient"
    assert_same(*results)


def test_builds_the_loss_without_reading_it(mnist, monkeypatch):
    vae = SkipVAE(mnist.data_shape, latent_dim=4, hidden_dims=(16, 16), seed=0)
    x = (mnist.train[:20] > 0.5).float()
    elbo = ELBOS.build("trace")
    assert isinstance(elbo, Trace_ELBO)

    def no_item(self):
        raise AssertionError(".item() would synchronise with the device")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    with pyro.validation_enabled(False):
        loss = elbo.loss_and_grads(vae.model, vae.guide, x, size=1000)
        differentiable = elbo.differentiable_loss(vae.model, vae.guide, x, size=1000)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert differentiable.requires_grad
    monkeypatch.undo()
    assert torch.isfinite(loss) and loss.item() > 0


@pytest.mark.parametrize("num_particles", [1, 3])
def test_mean_field_equals_pyros_on_the_skip_vae(mnist, float64, num_particles):
    """Our sync-free TraceMeanField_ELBO (the refinement's objective) gives Pyro's loss and
    gradients on the same draws, analytic KL included."""
    from pyro_skipvae.infer.trace_elbo import TraceMeanField_ELBO

    vae, x, kwargs = skip_vae_batch(mnist, num_particles)
    results = [
        loss_and_grads(elbo, vae.model, vae.guide, vae.parameters, x, size=1000, beta=0.5)
        for elbo in (TraceMeanField_ELBO(**kwargs), pyro.infer.TraceMeanField_ELBO(**kwargs))
    ]
    assert_same(*results)
    # the KL is analytic: not Trace_ELBO's one-sample estimate on the same draws
    trace = loss_and_grads(Trace_ELBO(**kwargs), vae.model, vae.guide, vae.parameters, x)
    assert trace[2] != pytest.approx(results[0][2], rel=1e-6)


def test_mean_field_falls_back_to_the_draw_without_a_closed_form(float64):
    """A Student-t guide against a normal prior has no closed-form KL: log p − log q at the
    draw, as Pyro's; with validation off, nothing is read from the tensors."""
    from pyro_skipvae.infer.trace_elbo import TraceMeanField_ELBO

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(len(x)))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.StudentT(4.0, loc, 1.0))

    x = torch.randn(5, generator=torch.Generator().manual_seed(0))
    guide(x)
    params = lambda: [pyro.param("loc").unconstrained()]  # noqa: E731
    results = [
        loss_and_grads(elbo, model, guide, params, x)
        for elbo in (TraceMeanField_ELBO(), pyro.infer.TraceMeanField_ELBO())
    ]
    assert_same(*results)


def test_mean_field_builds_the_loss_without_reading_it(mnist, monkeypatch):
    from pyro_skipvae.infer.trace_elbo import TraceMeanField_ELBO

    vae = SkipVAE(mnist.data_shape, latent_dim=4, hidden_dims=(16, 16), seed=0)
    x = (mnist.train[:20] > 0.5).float()

    def no_item(self):
        raise AssertionError(".item() would synchronise with the device")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    with pyro.validation_enabled(False):
        loss = TraceMeanField_ELBO().loss_and_grads(vae.model, vae.guide, x, size=1000)
        differentiable = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert differentiable.requires_grad


def meanfield_model(x):
    # a latent site after the observed one, and a masked latent site: Pyro's loop must keep
    # going past an observation and honour the mask
    z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z1, 1.0), obs=x)
    pyro.sample("z2", dist.Normal(0.0, 2.0))
    with pyro.poutine.mask(mask=torch.tensor(False)):
        pyro.sample("z3", dist.Normal(0.0, 1.0))


def meanfield_guide(x):
    loc = pyro.param("loc", torch.tensor(0.3))
    pyro.sample("aux", dist.Normal(loc, 0.5), infer={"is_auxiliary": True})  # guide-only
    pyro.sample("z1", dist.Normal(loc, 0.7))
    pyro.sample("z2", dist.Normal(-loc, 0.4))
    with pyro.poutine.mask(mask=torch.tensor(False)):
        pyro.sample("z3", dist.Normal(5.0, 0.1))  # would add a KL of about 14 nats unmasked


def test_mean_field_elbo_equals_pyros_past_observations_with_masks_and_auxiliary_sites(float64):
    """Our sync-free TraceMeanField_ELBO against Pyro's, on the branches the VAE never takes:
    a latent site after an observed one, a masked latent site and a guide-only site."""
    from pyro_skipvae.infer.trace_elbo import TraceMeanField_ELBO

    x = torch.tensor(1.5)
    pyro.clear_param_store()
    meanfield_guide(x)  # creates the parameter
    params = lambda: [pyro.param("loc")]  # noqa: E731
    ours = loss_and_grads(TraceMeanField_ELBO(), meanfield_model, meanfield_guide, params, x)
    pyros = loss_and_grads(
        pyro.infer.TraceMeanField_ELBO(), meanfield_model, meanfield_guide, params, x
    )
    assert_same(ours, pyros)
    # z2's KL (about 1.3 nats) counts and the masked z3's (about 14 nats) does not
    assert 2.0 < ours[0] < 8.0
