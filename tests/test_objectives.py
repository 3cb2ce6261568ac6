"""Objectives and schedules beyond the ELBO: free bits against its closed form, the JIT ELBO
against Trace_ELBO under subsampling (minibatch shapes and β), the refusal of
JitTraceMeanField_ELBO, cyclical KL annealing, and every registered ELBO training on MNIST."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import TraceGraph_ELBO, TraceMeanField_ELBO

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.infer import ELBOS, CyclicalAnnealing, FreeBitsELBO, JitELBO, LinearWarmup
from pyro_skipvae.infer.annealing import kl_schedule
from pyro_skipvae.sites import data_plate

N, B, D, P = 1000, 6, 3, 4


def toy(prior_scale=1.0):
    """A linear-Gaussian model with a per-dimension prior scale and a guide whose draws are kept."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(P, D, generator=g)
    scales = torch.tensor([0.05, 0.6, 1.4]) * prior_scale  # q's scales: KL differs per dim

    def model(x, *, size=None, beta=1.0):
        with data_plate(x, size):
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T, 1.0).to_event(1), obs=x)

    draws = []

    def guide(x, *, size=None, beta=1.0):
        A = pyro.param("A", torch.full((D, P), 0.1))
        with data_plate(x, size):
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(x @ A.T, scales).to_event(1))
        draws.append(z)
        return z

    x = torch.randn(B, P, generator=g)
    guide(x)
    return model, guide, draws, x, W, scales


def free_bits_by_hand(x, z, W, scales, lam, beta):
    """(N/B) Σ_i log p(x_i|z_i) − βN Σ_j max(λ, mean_i KL_ij), from the guide's draws z."""
    A = pyro.param("A").detach()
    log_lik = dist.Normal(z @ W.T, 1.0).to_event(1).log_prob(x)
    kl = kl_divergence(dist.Normal(x @ A.T, scales), dist.Normal(0.0, 1.0))  # (B, D)
    return (N / B) * log_lik.sum() - beta * N * kl.mean(0).clamp(min=lam).sum()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("lam", [0.0, 0.5, 5.0])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_free_bits_loss_is_its_closed_form(lam, beta):
    model, guide, draws, x, W, scales = toy()
    elbo = FreeBitsELBO(free_bits=lam)
    loss = elbo.loss(model, guide, x, size=N, beta=beta)
    assert loss == pytest.approx(
        -free_bits_by_hand(x, draws[-1], W, scales, lam, beta).item(), rel=1e-12
    )


@pytest.mark.usefixtures("float64")
def test_free_bits_with_lambda_zero_is_the_mean_field_elbo():
    model, guide, _, x, _, _ = toy()
    losses = []
    for elbo in (FreeBitsELBO(free_bits=0.0), TraceMeanField_ELBO()):
        pyro.set_rng_seed(3)
        losses.append(elbo.loss(model, guide, x, size=N, beta=0.7))
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)


@pytest.mark.usefixtures("float64")
def test_free_bits_gradient_ignores_the_kl_of_dimensions_below_lambda():
    model, guide, draws, x, W, scales = toy()
    A = pyro.param("A").unconstrained()
    kl = kl_divergence(dist.Normal(x @ pyro.param("A").detach().T, scales), dist.Normal(0.0, 1.0))
    lam = kl.mean(0).sort().values[1].item()  # between the two smallest per-dimension KLs
    grads = {}
    for name, value in (("free bits", lam), ("likelihood only", 1e6)):
        pyro.set_rng_seed(5)
        A.grad = None
        FreeBitsELBO(free_bits=value).loss_and_grads(model, guide, x, size=N)
        grads[name] = A.grad.clone()
    below = kl.mean(0) < lam  # these rows of A get the likelihood's gradient only
    assert below.sum() == 1
    assert torch.allclose(grads["free bits"][below], grads["likelihood only"][below], rtol=1e-12)
    assert not torch.allclose(grads["free bits"][~below], grads["likelihood only"][~below])


def test_free_bits_refuses_a_non_factorising_prior(mnist, tiny_options):
    vae = SkipVAE(mnist.data_shape, **tiny_options, prior="mixture")
    with pytest.raises(ConfigError, match="factorises over latent dimensions"):
        vae.fit(mnist.train[:100], elbo="free-bits", num_epochs=1, binarize="dynamic")
    with pytest.raises(ConfigError, match="free_bits must be a number >= 0"):
        FreeBitsELBO(free_bits=-1)


@pytest.mark.usefixtures("float64")
def test_free_bits_estimates_a_kl_without_closed_form_from_the_guides_draws():
    """q SoftLaplace, p Normal: no registered KL, so KL_ij = log q(z_ij) − log p(z_ij) at the
    guide's draws, averaged over particles and minibatch before the max; with vectorised
    particles the draws have shape (particles, B, D)."""
    D_, lam, beta = 3, 0.4, 0.6
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, D_, generator=g)
    scale = torch.tensor([0.05, 0.5, 2.0])
    draws = []

    def model(x, *, size=None, beta=1.0):
        with data_plate(x, size):
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(D_), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x, *, size=None, beta=1.0):
        with data_plate(x, size):
            with pyro.poutine.scale(scale=beta):
                draws.append(pyro.sample("z", dist.SoftLaplace(0.5 * x, scale).to_event(1)))

    elbo = FreeBitsELBO(free_bits=lam, num_particles=2, vectorize_particles=True)
    loss = elbo.loss(model, guide, x, size=N, beta=beta)
    z = draws[-1]
    assert z.shape == (2, B, D_)
    log_lik = dist.Normal(z, 1.0).to_event(1).log_prob(x)  # (2, B)
    kl = dist.SoftLaplace(0.5 * x, scale).log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)
    per_dim = kl.reshape(-1, D_).mean(0)
    expected = (N / B) * log_lik.sum() / 2 - beta * N * per_dim.clamp(min=lam).sum()
    assert loss == pytest.approx(-expected.item(), rel=1e-12)


@pytest.mark.usefixtures("float64")
def test_free_bits_counts_the_guides_other_latent_sites_as_the_elbo_does():
    """A second latent site u (after z in the guide) enters as log p(u) − log q(u)."""
    draws = {}

    def model(x, *, size=None, beta=1.0):
        u = pyro.sample("u", dist.Normal(0.0, 1.0))
        with data_plate(x, size):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + u, 1.0).to_event(1), obs=x)

    def guide(x, *, size=None, beta=1.0):
        with data_plate(x, size):
            draws["z"] = pyro.sample("z", dist.Normal(0.3 * x, 0.5).to_event(1))
        draws["u"] = pyro.sample("u", dist.Normal(0.2, 0.3))

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    loss = FreeBitsELBO(free_bits=0.0).loss(model, guide, x, size=4)
    z, u = draws["z"], draws["u"]
    kl = kl_divergence(dist.Normal(0.3 * x, 0.5), dist.Normal(0.0, 1.0))
    expected = (
        dist.Normal(z + u, 1.0).to_event(1).log_prob(x).sum()
        + dist.Normal(0.0, 1.0).log_prob(u)
        - dist.Normal(0.2, 0.3).log_prob(u)
        - kl.sum()
    )
    assert loss == pytest.approx(-expected.item(), rel=1e-12)


@pytest.mark.filterwarnings(
    "ignore:Found (non-auxiliary )?vars in"
)  # the guides are wrong on purpose
def test_free_bits_refusals_say_what_was_found():
    x = torch.zeros(3, 2)

    def model(x, *, size=None, beta=1.0):
        with data_plate(x, size):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide_with(fn, site="z", extra=None):
        def guide(x, *, size=None, beta=1.0):
            if extra is not None:
                pyro.sample("c", extra)
            with data_plate(x, size):
                pyro.sample(site, fn)

        return guide

    elbo = FreeBitsELBO()
    assert elbo.free_bits == 0.25  # Kingma et al.'s λ is the user's choice; 0.25 the default
    normal = dist.Normal(torch.zeros(3, 2), 1.0)
    cases = [
        (
            dist.MultivariateNormal(torch.zeros(3, 2), torch.eye(2)),
            {},
            r"a q\(z\|x\) that factorises .*found MultivariateNormal",
        ),
        (normal.to_event(1), {"site": "w"}, "the guide has no latent site 'z'"),
        (
            normal.to_event(1),
            {"extra": dist.Bernoulli(0.5)},
            "guide site 'c' is not reparameterisable; only reparameterised latent sites",
        ),
        (
            dist.Binomial(2, torch.full((3, 2), 0.5)).to_event(1),
            {},
            "free bits need a reparameterisable q at site 'z'",
        ),
    ]
    for fn, kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            elbo.loss(model, guide_with(fn, **kwargs), x, size=3)

    def mixture_model(x, *, size=None, beta=1.0):
        with data_plate(x, size):
            mix = dist.MixtureSameFamily(
                dist.Categorical(torch.ones(2)),
                dist.Normal(torch.zeros(2, 2), 1.0).to_event(1),
            )
            z = pyro.sample("z", mix)
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    with pytest.raises(ConfigError, match=r"a p\(z\) that factorises .*found MixtureSameFamily"):
        elbo.loss(mixture_model, guide_with(normal.to_event(1)), x, size=3)
    for bad in (-0.1, True, "1"):
        with pytest.raises(ConfigError, match="free_bits must be a number >= 0"):
            FreeBitsELBO(free_bits=bad)
    assert FreeBitsELBO(free_bits=0).free_bits == 0.0


def test_linear_warm_up_is_the_authors_schedule():
    """β = min(1, start + (1 − start) t / T): from 0.1 over 10 epochs by default."""
    default = LinearWarmup()
    assert [default(t) for t in (0, 2.5, 5, 10, 12)] == pytest.approx([0.1, 0.325, 0.55, 1, 1])
    assert LinearWarmup(4, 0.5)(2) == pytest.approx(0.75)
    assert LinearWarmup(0)(0) == LinearWarmup(-1)(0) == LinearWarmup(0, 0.2)(0.5) == 1.0


def test_cyclical_annealing_limits_are_inclusive_where_beta_still_reaches_one():
    assert CyclicalAnnealing(0.5, 0.0)(0.2) == 1.0  # short cycles, no warm-up: β = 1
    assert CyclicalAnnealing(2.0, 2.0, start=0.0)(1.0) == pytest.approx(0.5)
    for cycle, warmup in ((0.0, 0.0), (-1.0, 0.0), (2.0, -0.5), (2.0, 2.5)):
        with pytest.raises(ConfigError, match="^cyclical KL annealing needs kl_cycle_epochs > 0"):
            CyclicalAnnealing(cycle, warmup)


@pytest.mark.usefixtures("float64")
def test_jit_elbo_equals_trace_elbo_for_every_minibatch_size_and_beta():
    """Stock JitTrace_ELBO compiles once per β (a keyword); JitELBO passes β as a tensor and
    compiles once per minibatch shape, with the plate scale N/B right for each."""
    model, guide, _, _, _, _ = toy()
    elbo, reference = JitELBO(), ELBOS.build("trace")
    g = torch.Generator().manual_seed(1)
    for batch in (6, 4):  # compile: the JIT runs the model twice then, drawing extra samples
        elbo.loss_and_grads(model, guide, torch.randn(batch, P, generator=g), size=N, beta=0.1)
    for batch, beta in ((6, 0.3), (6, 0.4), (4, 0.5), (6, 1.0), (4, 0.9)):
        x = torch.randn(batch, P, generator=g)
        losses = []
        for e in (elbo, reference):
            pyro.set_rng_seed(7)
            losses.append(e.loss(model, guide, x, size=N, beta=beta))
        assert losses[0] == pytest.approx(losses[1], rel=1e-10)
        pyro.set_rng_seed(7)
        elbo.loss_and_grads(model, guide, x, size=N, beta=beta)
    compiled = elbo.elbo._loss_and_surrogate_loss.compiled
    assert len(compiled) == 2  # one graph per minibatch shape, none per β


def test_jit_mean_field_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="traces the model again on every step"):
        ELBOS.build("jit-mean-field")


def test_tracegraph_is_pyros():
    elbo = ELBOS.build("tracegraph", options={"num_particles": 3})
    assert (
        isinstance(elbo, TraceGraph_ELBO) and elbo.vectorize_particles and elbo.num_particles == 3
    )


def test_cyclical_annealing_repeats_the_warm_up():
    schedule = CyclicalAnnealing(cycle_epochs=4, warmup_epochs=2, start=0.2)
    assert [schedule(t) for t in (0, 1, 2, 3, 4, 5, 6, 9)] == pytest.approx(
        [0.2, 0.6, 1.0, 1.0, 0.2, 0.6, 1.0, 0.6]
    )
    assert kl_schedule(2, 0.2) == LinearWarmup(2, 0.2)
    with pytest.raises(ConfigError, match="kl_warmup_epochs <= kl_cycle_epochs"):
        kl_schedule(3, 0.1, cycle_epochs=2)


def test_fit_follows_the_cyclical_schedule(mnist, tiny_options):
    vae = SkipVAE(mnist.data_shape, **tiny_options, seed=0)
    history = vae.fit(
        mnist.train,
        num_epochs=4,
        batch_size=100,
        binarize="dynamic",
        kl_warmup_epochs=1,
        kl_cycle_epochs=2,
        kl_start=0.5,
    )
    # the record's β is that of the epoch's last minibatch, at t = epoch − 1 + 4/5
    schedule = CyclicalAnnealing(2, 1, 0.5)
    assert [r["beta"] for r in history] == pytest.approx([schedule(e + 0.8) for e in range(4)])
    assert history[0]["beta"] == pytest.approx(0.9) and history[2]["beta"] == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="kl_cycle_epochs"):
        vae.fit(mnist.train, num_epochs=1, kl_warmup_epochs=3, kl_cycle_epochs=2)


TRAINABLE = [name for name in ELBOS if name != "jit-mean-field"]


@pytest.mark.parametrize("name", TRAINABLE)
def test_every_registered_elbo_trains_on_real_mnist(name, mnist, tiny_options):
    vae = SkipVAE(mnist.data_shape, **tiny_options, seed=0)
    history = vae.fit(
        mnist.train,
        val=mnist.val,
        elbo=name,
        num_particles=2,
        num_epochs=3,
        kl_warmup_epochs=0,
        binarize="dynamic",
    )
    # an untrained model scores about −543 nats; every objective must make real progress
    assert history[-1]["val_elbo"] > history[0]["val_elbo"] + 30, history
    assert all(math.isfinite(r["train_elbo"]) for r in history)


def test_svi_evaluates_in_eval_mode_with_the_amortized_guide():
    """SVI.evaluate_metrics: every network call in eval() mode, training mode restored after,
    and the KL is the encoder's own (analytic, so exactly that of its (μ, log σ²))."""
    from pyro_skipvae.infer import SVI, Optimizer

    torch.manual_seed(0)
    vae = SkipVAE((6,), latent_dim=2, hidden_dims=(4,))
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    modes = []
    for module in (vae.model.decoder, vae.guide.encoder):
        module.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    svi = SVI(vae.model, vae.guide, Optimizer(vae.parameters()), TraceMeanField_ELBO())
    metrics = svi.evaluate_metrics(x, batch_size=2)
    assert set(metrics) == {"elbo", "kl"} and modes and not any(modes)
    assert vae.model.training and vae.guide.training
    loc, log_var = vae.guide.local_params(x)
    kl = 0.5 * (log_var.exp() + loc**2 - 1 - log_var).sum(-1)
    assert metrics["kl"] == pytest.approx(kl.mean().item(), rel=1e-6)


def test_svi_with_a_pyro_optimizer_and_its_sizes():
    """With a PyroOptim, SVI is Pyro's (same loss on the same draws, Pyro's step, gradients
    released after); with ours, the step is on the per-datapoint gradient: 1/size of the
    N-scaled one, size defaulting to the minibatch's."""
    import functools

    import pyro.optim
    from pyro.infer import Trace_ELBO

    from pyro_skipvae.infer import SVI, Optimizer

    torch.manual_seed(0)
    vae = SkipVAE((6,), latent_dim=2, hidden_dims=(4,))
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    svi = SVI(vae.model, vae.guide, pyro.optim.SGD({"lr": 0.0}), Trace_ELBO(), num_samples=7)
    assert svi.num_samples == 7
    ours = SVI(vae.model, vae.guide, Optimizer(vae.parameters()), Trace_ELBO(), num_samples=7)
    assert ours.num_samples == 7
    pyro.set_rng_seed(1)
    expected = Trace_ELBO().loss(vae.model, vae.guide, x, size=50, beta=0.5)
    pyro.set_rng_seed(1)
    assert svi.step(x, size=50, beta=0.5) == pytest.approx(expected, rel=1e-6)
    assert all(p.grad is None for p in vae.parameters())
    params = list(vae.parameters())
    for size in (50, None):
        pyro.set_rng_seed(2)
        loss = Trace_ELBO().differentiable_loss(
            functools.partial(vae.model), vae.guide, x, size=size or 5
        )
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        before = [p.detach().clone() for p in params]
        ours = SVI(
            vae.model,
            vae.guide,
            Optimizer(params, name="sgd", learning_rate=0.1, clip_norm=None),
            Trace_ELBO(),
        )
        pyro.set_rng_seed(2)
        ours.step(x, **({} if size is None else {"size": size}))
        for p, p0, g in zip(params, before, grads):
            step = 0 if g is None else 0.1 * g / (size or 5)
            assert torch.allclose(p.detach(), p0 - step, rtol=1e-5, atol=1e-7)
        # x by keyword (the site contract's name) is the same minibatch of 5: the same step
        with torch.no_grad():
            for p, p0 in zip(params, before):
                p.copy_(p0)
        pyro.set_rng_seed(2)
        ours.step(x=x, **({} if size is None else {"size": size}))
        for p, p0, g in zip(params, before, grads):
            step = 0 if g is None else 0.1 * g / (size or 5)
            assert torch.allclose(p.detach(), p0 - step, rtol=1e-5, atol=1e-7)


def test_svi_step_of_a_model_without_data_is_a_step_on_a_minibatch_of_one():
    from pyro.infer import Trace_ELBO

    from pyro_skipvae.infer import SVI, Optimizer

    loc = torch.nn.Parameter(torch.tensor([0.5]))

    def model():
        pyro.sample("y", dist.Normal(pyro.param("loc", loc), 1.0), obs=torch.tensor([2.0]))

    svi = SVI(model, lambda: None, Optimizer([loc], name="sgd", learning_rate=0.1), Trace_ELBO())
    svi.step()
    # d/dloc of −log N(2 | loc, 1) is loc − 2 = −1.5; size 1: the step is 0.1 · 1.5
    assert loc.item() == pytest.approx(0.65)


def test_svi_step_tells_the_optimizer_the_local_minibatch_and_the_data_size(monkeypatch):
    """apply_gradients gets B (this process's minibatch, the weight of its gradient in a
    data-parallel average) and N (size, default B)."""
    from pyro.infer import Trace_ELBO

    from pyro_skipvae.infer import SVI, svi

    steps = []
    monkeypatch.setattr(svi, "apply_gradients", lambda optim, trace, **sizes: steps.append(sizes))
    vae = SkipVAE((6,), latent_dim=2, hidden_dims=(4,), seed=0)
    inference = SVI(vae.model, vae.guide, pyro.optim.Adam({}), Trace_ELBO())
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    inference.step(x, size=50)
    inference.step(x=x)
    assert steps == [{"size": 50, "batch_size": 5}, {"size": 5, "batch_size": 5}]
