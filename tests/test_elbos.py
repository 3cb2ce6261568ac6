"""Objectives: every ELBO in the registry is right under subsampling.

Pyro scales a site's log-density by the plate's N/B before the ELBO combines particles. For
bounds linear in the log-weights that is exact; for Rényi/IWAE bounds it is not (the scale
lands inside the log-sum-exp), so those go through PerDatapointBound, checked here against an
independent computation of the IWAE bound from the very draws the guide made.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.infer import ELBOS, SVI, Optimizer, PerDatapointBound
from pyro_skipvae.sites import data_plate

pytestmark = pytest.mark.usefixtures("float64")

N, B, K, D, P = 1000, 6, 4, 2, 3


def linear_gaussian():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(P, D, generator=g), torch.randn(P, generator=g)
    A = torch.randn(D, P, generator=g) * 0.3

    def model(x, *, size=None, beta=1.0):
        with data_plate(x, size):
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, 1.0).to_event(1), obs=x)

    draws = []

    def guide(x, *, size=None, beta=1.0):
        loc = pyro.param("A", A.clone()) @ x.T
        with data_plate(x, size):
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(loc.T, 0.8).to_event(1))
        draws.append(z)
        return z

    x = torch.randn(B, P, generator=g) * 2
    guide(x)  # creates the parameter "A"
    return model, guide, draws, x, (W, b)


def iwae_by_hand(x, z, W, b, beta=1.0):
    """Σ_i log (1/K) Σ_k w_ik from draws z of shape (K, B, D); log w with β on p(z)/q(z)."""
    A = pyro.param("A").detach()
    log_lik = dist.Normal(z @ W.T + b, 1.0).to_event(1).log_prob(x)
    log_prior = dist.Normal(torch.zeros(D), 1.0).to_event(1).log_prob(z)
    log_q = dist.Normal((A @ x.T).T, 0.8).to_event(1).log_prob(z)
    log_w = log_lik + beta * (log_prior - log_q)
    return (log_w.logsumexp(0) - math.log(z.shape[0])).sum()


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_iwae_is_the_per_datapoint_bound_scaled_outside(beta):
    model, guide, draws, x, (W, b) = linear_gaussian()
    elbo = ELBOS.build("iwae", options={"num_particles": K})
    assert isinstance(elbo, PerDatapointBound)
    pyro.set_rng_seed(1)
    loss = elbo.loss(model, guide, x, size=N, beta=beta)
    z = draws[-1]
    assert z.shape == (K, B, D)
    expected = -(N / B) * iwae_by_hand(x, z, W, b, beta)
    assert loss == pytest.approx(expected.item(), rel=1e-10)


def test_stock_renyi_puts_the_plate_scale_inside_its_log_sum_exp():
    """The trap PerDatapointBound exists for: stock RenyiELBO with size=N is not (N/B) times
    the per-datapoint bound (on this toy, far from it)."""
    model, guide, draws, x, (W, b) = linear_gaussian()
    stock = RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(1)
    loss = stock.loss(model, guide, x, size=N)
    right = -(N / B) * iwae_by_hand(x, draws[-1], W, b)
    assert abs(loss - right.item()) > 0.05 * abs(right.item())


def test_gradients_are_scaled_by_n_over_b():
    model, guide, draws, x, (W, b) = linear_gaussian()
    elbo = ELBOS.build("renyi", options={"num_particles": K, "alpha": 0.5})
    grads = []
    for size in (None, N):
        pyro.set_rng_seed(2)
        A = pyro.param("A")
        A.grad = None
        elbo.loss_and_grads(model, guide, x, size=size)
        grads.append(pyro.param("A").unconstrained().grad.clone())
    assert torch.allclose(grads[1], (N / B) * grads[0], rtol=1e-10)


def test_gradients_already_held_are_kept():
    model, guide, draws, x, _ = linear_gaussian()
    elbo = ELBOS.build("iwae", options={"num_particles": K})
    A = pyro.param("A").unconstrained()
    pyro.set_rng_seed(2)
    A.grad = None
    elbo.loss_and_grads(model, guide, x, size=N)
    once = A.grad.clone()
    pyro.set_rng_seed(2)
    elbo.loss_and_grads(model, guide, x, size=N)  # accumulates, as backward() does
    assert torch.allclose(A.grad, 2 * once, rtol=1e-10)


def test_bare_renyi_in_a_users_inference_object_is_refused(mnist, tiny_options):
    torch.set_default_dtype(torch.float32)
    vae = SkipVAE(mnist.data_shape, **tiny_options)
    svi = SVI(vae.model, vae.guide, Optimizer(vae.parameters()), RenyiELBO(alpha=0.0))
    with pytest.raises(ConfigError, match="PerDatapointBound"):
        vae.fit(mnist.train[:100], inference=svi, binarize="dynamic", num_epochs=1)


@pytest.mark.parametrize("elbo", ["iwae", RenyiELBO(alpha=0.0, num_particles=3)])
def test_iwae_trains_through_fit_on_real_mnist(mnist, tiny_options, elbo):
    torch.set_default_dtype(torch.float32)
    vae = SkipVAE(mnist.data_shape, **tiny_options, seed=0)
    history = vae.fit(
        mnist.train,
        val=mnist.val,
        elbo=elbo,
        num_particles=3,
        num_epochs=3,
        kl_warmup_epochs=0,
        binarize="dynamic",
        batch_size=50,
    )
    # An untrained model scores about 784 log 2 = 543 nats below zero. Ten steps an epoch
    # move it slowly (Trace_ELBO on this setting: −545 → −434 nats over three epochs); the
    # IWAE objective must do as well: at least 50 nats of progress.
    assert history[-1]["val_elbo"] > history[0]["val_elbo"] + 50
    assert all(math.isfinite(r["train_elbo"]) for r in history)


@pytest.mark.parametrize("wrap", ["per-datapoint", "vectorized", "jit"])
def test_wrapped_elbos_trace_model_and_guide_as_the_wrapped_elbo(wrap):
    """Pyro's trace utilities (``_get_traces``) see through the wrappers: the same sites, the
    guide's draw replayed in the model, vectorised particles in their own plate."""
    from pyro.infer import Trace_ELBO

    from pyro_skipvae.infer.elbos import JitELBO

    model, guide, _, x, _ = linear_gaussian()
    elbo = {
        "per-datapoint": lambda: PerDatapointBound(Trace_ELBO()),
        "vectorized": lambda: PerDatapointBound(
            RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
        ),
        "jit": JitELBO,
    }[wrap]()
    model_trace, guide_trace = next(elbo._get_traces(model, guide, (x,), {"size": N}))
    shape = (K, B, D) if wrap == "vectorized" else (B, D)
    assert guide_trace.nodes["z"]["value"].shape == shape
    assert set(guide_trace.stochastic_nodes) == {"z"}
    assert model_trace.nodes["x"]["is_observed"] and torch.equal(model_trace.nodes["x"]["value"], x)
    assert torch.equal(model_trace.nodes["z"]["value"], guide_trace.nodes["z"]["value"])
    assert model_trace.nodes["z"]["scale"] == N / B


def test_wrappers_carry_the_wrapped_settings():
    from pyro_skipvae.infer.elbos import JitELBO

    renyi = RenyiELBO(alpha=0.0, num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    wrapped = PerDatapointBound(renyi)
    settings = ("num_particles", "max_plate_nesting", "vectorize_particles")
    assert [getattr(wrapped, s) for s in settings] == [getattr(renyi, s) for s in settings]
    assert wrapped.num_particles == 4 and wrapped.vectorize_particles
    assert repr(wrapped) == "PerDatapointBound(RenyiELBO)"
    jit = JitELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    for elbo in (jit, jit.elbo):  # max_plate_nesting: the data plate and the particles'
        assert (elbo.num_particles, elbo.vectorize_particles, elbo.max_plate_nesting) == (
            3,
            True,
            2,
        )
    assert jit.elbo.ignore_jit_warnings


def test_per_datapoint_bound_returns_the_scaled_loss_and_passes_beta():
    """loss_and_grads returns −(N/B) × the per-datapoint bound at β, the same number loss()
    gives on the same draws."""
    model, guide, draws, x, (W, b) = linear_gaussian()
    elbo = ELBOS.build("iwae", options={"num_particles": K})
    pyro.set_rng_seed(4)
    loss = elbo.loss_and_grads(model, guide, x, size=N, beta=0.3)
    expected = -(N / B) * iwae_by_hand(x, draws[-1], W, b, beta=0.3)
    assert loss == pytest.approx(expected.item(), rel=1e-10)


def test_per_datapoint_bound_restores_gradients_of_parameters_it_did_not_touch():
    """A parameter of an earlier call, absent from this one's trace, keeps its gradient."""
    model, guide, _, x, _ = linear_gaussian()
    elbo = ELBOS.build("iwae", options={"num_particles": K})
    elbo.loss_and_grads(model, guide, x, size=N)  # "A" is now one of the bound's parameters
    A = pyro.param("A").unconstrained()
    A.grad = torch.ones_like(A)

    def other_guide(x, *, size=None, beta=1.0):
        with data_plate(x, size):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], D), 1.0).to_event(1))

    pyro.param("other", torch.zeros(1)).unconstrained().grad = None
    elbo.loss_and_grads(model, other_guide, x, size=N)
    assert torch.equal(A.grad, torch.ones_like(A))


@pytest.mark.parametrize("beta", [None, 0.3])
def test_jit_elbo_is_trace_elbo_on_the_same_draws(beta):
    """Same seed, same draws: JitELBO's loss (and loss_and_grads') equals Trace_ELBO's, with
    β = 1 when not given."""
    from pyro.infer import Trace_ELBO

    from pyro_skipvae.infer.elbos import JitELBO

    model, guide, _, x, _ = linear_gaussian()
    kwargs = {} if beta is None else {"beta": beta}
    pyro.set_rng_seed(5)
    expected = Trace_ELBO().loss(model, guide, x, size=N, **kwargs)
    for method in ("loss", "loss_and_grads"):
        jit = JitELBO()
        getattr(jit, method)(model, guide, x, size=N, **kwargs)  # compiles (and draws)
        pyro.set_rng_seed(5)
        got = getattr(jit, method)(model, guide, x, size=N, **kwargs)
        assert float(got) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    "name, num_particles, message",
    [
        ("trace", 0, "num_particles must be an integer >= 1, found 0"),
        ("trace", True, "num_particles must be an integer >= 1, found True"),
        ("trace", 2.0, "num_particles must be an integer >= 1, found 2.0"),
        ("iwae", 1, "num_particles must be an integer >= 2, found 1"),
    ],
)
def test_bad_particle_counts_are_config_errors(name, num_particles, message):
    with pytest.raises(ConfigError, match=message):
        ELBOS.build(name, options={"num_particles": num_particles})


def test_jit_elbo_keeps_tracer_warnings_quiet():
    """Tracing the model warns about Python values frozen into the graph (expected here); the
    wrapper silences them, so users of ``--elbo jit`` see no noise."""
    import warnings

    from pyro_skipvae.infer.elbos import JitELBO

    model, guide, _, x, _ = linear_gaussian()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        JitELBO().loss(model, guide, x, size=N)
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def test_per_datapoint_bound_keeps_a_held_gradient_this_loss_does_not_reach():
    """A parameter in this call's trace whose value is used detached (no gradient from this
    loss) keeps the gradient it held before."""
    model, guide, _, x, _ = linear_gaussian()
    elbo = ELBOS.build("iwae", options={"num_particles": K})
    elbo.loss_and_grads(model, guide, x, size=N)  # "A" is now one of the bound's parameters
    A = pyro.param("A").unconstrained()
    A.grad = torch.full_like(A, 3.0)

    def detached_guide(x, *, size=None, beta=1.0):
        loc = pyro.param("A").detach() @ x.T
        with data_plate(x, size):
            pyro.sample("z", dist.Normal(loc.T, 0.8).to_event(1))

    elbo.loss_and_grads(model, detached_guide, x, size=N)
    assert torch.equal(A.grad, torch.full_like(A, 3.0))


def test_per_datapoint_bound_passes_further_positional_arguments_to_the_model():
    """A model with data besides x (e.g. labels) gets them, in loss and loss_and_grads."""
    model, guide, _, x, _ = linear_gaussian()
    seen = []

    def model_with_labels(x, labels, *, size=None, beta=1.0):
        seen.append(labels)
        return model(x, size=size, beta=beta)

    def guide_with_labels(x, labels, *, size=None, beta=1.0):
        return guide(x, size=size, beta=beta)

    elbo = ELBOS.build("iwae", options={"num_particles": K})
    labels = torch.arange(B)
    elbo.loss(model_with_labels, guide_with_labels, x, labels, size=N)
    elbo.loss_and_grads(model_with_labels, guide_with_labels, x, labels, size=N)
    assert len(seen) == 2 and all(s is labels for s in seen)
