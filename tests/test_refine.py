"""The refinement (Kim et al. 2018, Algorithm 1) step by step against a hand computation.

Model: z ~ N(0, I_D), x | z ~ N(W z + b, s² I_P); guide q(z|x) = N(μ, diag σ²) with local
parameters λ = (μ, v = log σ²). With the analytic KL (TraceMeanField_ELBO) and one
reparameterised draw z = μ + σ ε, the per-datapoint negative β-ELBO and its gradient are

    ℓ = ½‖x − W z − b‖²/s² + const + β · ½ Σ_d (σ_d² + μ_d² − 1 − v_d)
    ∂ℓ/∂μ = −Wᵀ r / s² + β μ,          r = x − W z − b
    ∂ℓ/∂v = (−Wᵀ r / s²) ⊙ ε σ / 2 + β (σ² − 1) / 2
    ∂ℓ/∂(log σ) = (−Wᵀ r / s²) ⊙ ε σ + β (σ² − 1)

and the refinement objective is the minibatch mean (1/B) Σ_i ℓ_i. Each step: clip each
gradient tensor's norm at c, m_k = ρ m_{k−1} + g_k, u_{k+1} = u_k − η m_k.
"""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch import nn

from pyro_skipvae import Guide, Model
from pyro_skipvae.errors import ConfigError
from pyro_skipvae.guides import Encoder
from pyro_skipvae.infer import Refinement
from pyro_skipvae.models import Decoder
from pyro_skipvae.models.likelihoods import NormalLikelihood
from pyro_skipvae.models.priors import StandardNormalPrior

pytestmark = pytest.mark.usefixtures("float64")

B, D, P, NOISE, BETA = 4, 3, 5, 0.7, 0.6


class LinearDecoder(Decoder):
    def __init__(self, latent_dim, output_shape, *, skip=False):
        super().__init__(latent_dim, output_shape, skip=skip)
        self.linear = nn.Linear(latent_dim, self.output_size)

    def forward(self, z, x=None):
        return self.linear(z)


class UnusedEncoder(Encoder):
    def forward(self, x):
        raise AssertionError("the refinement must start from the λ₀ it is given")


def problem():
    torch.manual_seed(3)
    decoder = LinearDecoder(D, (P,))
    model = Model(StandardNormalPrior(D), decoder, NormalLikelihood((P,), init_scale=NOISE))
    guide = Guide(UnusedEncoder((P,), D))
    x = torch.randn(B, P) * 2
    loc0 = torch.randn(B, D)
    log_var0 = torch.randn(B, D) * 0.5
    return model, guide, x, (loc0, log_var0)


def hand_gradient(model, x, loc, log_var, eps, coordinates):
    W, b = model.decoder.linear.weight.detach(), model.decoder.linear.bias.detach()
    scale = (0.5 * log_var).exp()
    z = loc + scale * eps
    back = -((x - z @ W.T - b) @ W) / NOISE**2  # −Wᵀ r / s², per datapoint
    g_loc = back + BETA * loc
    if coordinates == "log-variance":
        g_second = back * eps * scale / 2 + BETA * (scale**2 - 1) / 2
    else:
        g_second = back * eps * scale + BETA * (scale**2 - 1)
    return g_loc / B, g_second / B


def clip(g, c):
    norm = g.norm()
    return g * min(1.0, c / (norm.item() + 1e-6))


@pytest.mark.parametrize("coordinates", ["log-variance", "log-scale"])
@pytest.mark.parametrize("max_norm", [None, 0.05, 1e3])
def test_two_steps_equal_algorithm_1_by_hand(coordinates, max_norm):
    model, guide, x, init = problem()
    lr, rho = 0.9, 0.5
    refinement = Refinement(
        num_refine_steps=2,
        refine_lr=lr,
        refine_momentum=rho,
        refine_max_grad_norm=max_norm,
        refine_coordinates=coordinates,
    )
    pyro.set_rng_seed(11)
    loc2, log_var2 = refinement(model, guide, TraceMeanField_ELBO(), x, init, beta=BETA)

    # The same two draws of ε, from the same seed (one (B, D) standard normal per step).
    pyro.set_rng_seed(11)
    eps = [torch.empty(B, D).normal_(), torch.empty(B, D).normal_()]
    to_u = (lambda v: v) if coordinates == "log-variance" else (lambda v: 0.5 * v)
    from_u = (lambda u: u) if coordinates == "log-variance" else (lambda u: 2.0 * u)
    loc, u = init[0].clone(), to_u(init[1].clone())
    momenta = None
    grad_norms = []
    for k in range(2):
        grads = hand_gradient(model, x, loc, from_u(u), eps[k], coordinates)
        grad_norms.append(max(g.norm().item() for g in grads))
        grads = [g if max_norm is None else clip(g, max_norm) for g in grads]
        momenta = grads if momenta is None else [rho * m + g for m, g in zip(momenta, grads)]
        loc, u = loc - lr * momenta[0], u - lr * momenta[1]
    if max_norm == 0.05:  # the clip must bite for this case to test it
        assert min(grad_norms) > max_norm
    if max_norm == 1e3:  # and here it must leave gradients far below it alone (not scale up)
        assert max(grad_norms) < max_norm / 2
    assert torch.allclose(loc2, loc, rtol=1e-10, atol=1e-12)
    assert torch.allclose(log_var2, from_u(u), rtol=1e-10, atol=1e-12)


def test_coordinates_matter_and_default_to_the_authors():
    """Without clipping, one step in (μ, log σ) moves log σ² 4× as far as one in (μ, log σ²):
    the gradient w.r.t. log σ is twice that w.r.t. log σ² (chain rule), and a change of
    log σ is a change of log σ² twice as large. The means move identically."""
    assert Refinement().refine_coordinates == "log-variance"
    model, guide, x, init = problem()
    moves = {}
    for coordinates in ("log-variance", "log-scale"):
        pyro.set_rng_seed(5)
        refined = Refinement(
            num_refine_steps=1, refine_max_grad_norm=None, refine_coordinates=coordinates
        )(model, guide, TraceMeanField_ELBO(), x, init)
        moves[coordinates] = refined[0] - init[0], refined[1] - init[1]
    assert torch.allclose(moves["log-scale"][0], moves["log-variance"][0], rtol=1e-10)
    assert torch.allclose(moves["log-scale"][1], 4 * moves["log-variance"][1], rtol=1e-10)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_refine_steps": -1}, "num_refine_steps"),
        ({"refine_lr": 0}, "refine_lr must be positive"),
        ({"refine_momentum": 1}, r"refine_momentum must lie in \[0, 1\)"),
        ({"refine_max_grad_norm": -1.0}, "refine_max_grad_norm"),
        ({"refine_coordinates": "log-sd"}, "expected one of: log-variance, log-scale"),
    ],
)
def test_bad_settings_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        Refinement(**options)


def test_from_options_reads_only_refinement_settings():
    refinement = Refinement.from_options(
        {"mode": "kl", "num_refine_steps": 7, "refine_lr": 0.5, "refine_batch_size": 3}
    )
    assert refinement == Refinement(num_refine_steps=7, refine_lr=0.5)


def test_refinement_options_round_trip():
    """options() names every setting, and from_options reads them back (ignoring others)."""
    refine = Refinement(
        num_refine_steps=3,
        refine_lr=0.5,
        refine_momentum=0.2,
        refine_max_grad_norm=None,
        refine_coordinates="log-scale",
    )
    options = refine.options()
    assert options == {
        "num_refine_steps": 3,
        "refine_lr": 0.5,
        "refine_momentum": 0.2,
        "refine_max_grad_norm": None,
        "refine_coordinates": "log-scale",
        "refine_kl": "analytic",
    }
    assert Refinement.from_options({**options, "learning_rate": 1e-3}) == refine


def test_refinement_ascends_the_plain_elbo_by_default_and_divides_by_the_given_batch():
    """β defaults to 1 at every entry point; ``batch_size`` is the B of the 1/B factor, so
    (without clipping) dividing by 2B is the same as halving the step size."""
    model, guide, x, init = problem()
    elbo = TraceMeanField_ELBO()
    refinement = Refinement(num_refine_steps=2, refine_lr=0.9, refine_max_grad_norm=None)

    def seeded(fn, *args, **kwargs):
        pyro.set_rng_seed(5)
        return fn(*args, **kwargs)

    default = seeded(refinement, model, guide, elbo, x, init)
    assert all(
        torch.equal(a, b)
        for a, b in zip(default, seeded(refinement, model, guide, elbo, x, init, beta=1.0))
    )
    assert not torch.equal(
        default[0], seeded(refinement, model, guide, elbo, x, init, beta=BETA)[0]
    )
    run_default = seeded(refinement.run, model, guide, elbo, x, init)[0]
    assert all(torch.equal(a, b) for a, b in zip(run_default, default))
    coords = refinement.to_coordinates(init)
    assert seeded(refinement.loss, model, guide, elbo, x, coords) == seeded(
        refinement.loss, model, guide, elbo, x, coords, beta=1.0
    )
    halved = Refinement(num_refine_steps=2, refine_lr=0.45, refine_max_grad_norm=None)
    by_2b = seeded(refinement.run, model, guide, elbo, x, init, batch_size=2 * B)[0]
    expected = seeded(halved.run, model, guide, elbo, x, init)[0]
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(by_2b, expected))


def test_momentum_zero_is_allowed_and_a_string_is_a_config_error():
    assert Refinement(refine_momentum=0).refine_momentum == 0
    with pytest.raises(ConfigError, match="refine_momentum"):
        Refinement(refine_momentum="0.5")


def hand_refinement(model, x, init, *, steps, lr, rho, max_norm, beta):
    """Algorithm 1 by hand in (μ, log σ²) with the analytic KL, drawing ε as the library does
    (one (B, D) standard normal per step, from the current seed); also the gradient norms."""
    eps = [torch.empty(x.shape[0], D).normal_() for _ in range(steps)]
    loc, log_var = init[0].clone(), init[1].clone()
    momenta, norms = None, []
    for k in range(steps):
        scale = (0.5 * log_var).exp()
        W, b = model.decoder.linear.weight.detach(), model.decoder.linear.bias.detach()
        back = -((x - (loc + scale * eps[k]) @ W.T - b) @ W) / NOISE**2
        grads = (
            (back + beta * loc) / x.shape[0],
            (back * eps[k] * scale / 2 + beta * (scale**2 - 1) / 2) / x.shape[0],
        )
        norms.append(max(g.norm().item() for g in grads))
        grads = [clip(g, max_norm) for g in grads]
        momenta = grads if momenta is None else [rho * m + g for m, g in zip(momenta, grads)]
        loc, log_var = loc - lr * momenta[0], log_var - lr * momenta[1]
    return (loc, log_var), norms


@pytest.mark.parametrize("entry", ["Refinement", "SemiAmortizedSVI"])
def test_default_refinement_is_the_authors_20_steps_lr_1_momentum_half_clip_5(entry):
    """The defaults, pinned by what they do (not by comparing two default objects, which a
    changed default would leave equal): 20 steps of η = 1, ρ = 0.5 with each gradient tensor
    clipped at norm 5, by hand. The clip binds at the first step (norm > 5) and not at every
    later one, so a clip of 1 (or any other K, η, ρ) gives other parameters."""
    import pyro.optim

    from pyro_skipvae.infer import SemiAmortizedSVI

    model, guide, x, init = problem()
    x = x * 3  # large residuals: gradients above the clip at the start
    pyro.set_rng_seed(4)
    if entry == "Refinement":
        got = Refinement()(model, guide, TraceMeanField_ELBO(), x, init, beta=BETA)
    else:
        inference = SemiAmortizedSVI(model, guide, pyro.optim.Adam({}), TraceMeanField_ELBO())
        got = inference.refine(x, init, beta=BETA)
    pyro.set_rng_seed(4)
    want, norms = hand_refinement(
        model, x, init, steps=20, lr=1.0, rho=0.5, max_norm=5.0, beta=BETA
    )
    assert norms[0] > 5.0 and min(norms) < 5.0
    assert torch.allclose(got[0], want[0], rtol=1e-9, atol=1e-10)
    assert torch.allclose(got[1], want[1], rtol=1e-9, atol=1e-10)


def test_refined_guide_divides_every_chunk_by_the_training_batch_size():
    """Evaluating 4 points in chunks of 3 refines the last chunk of 1 with the objective
    divided by B = 3 (step η/3 per datapoint, as in training), not by its own size 1."""
    from pyro import poutine

    from pyro_skipvae.infer import refined_guide

    model, guide, x, init = problem()
    refinement = Refinement(num_refine_steps=3, refine_lr=0.9)

    def initial_params(chunk):  # λ₀ of the chunk's rows, found by value
        rows = [int((x == row).all(-1).nonzero()) for row in chunk]
        return init[0][rows], init[1][rows]

    pyro.set_rng_seed(2)
    trace = poutine.trace(
        refined_guide(model, guide, TraceMeanField_ELBO(), refinement, batch_size=3,
                      initial_params=initial_params)
    ).get_trace(x)  # fmt: skip
    got = trace.nodes["z"]["fn"].base_dist
    elbo = TraceMeanField_ELBO()

    def last_chunk(batch_size):
        pyro.set_rng_seed(2)
        refinement(model, guide, elbo, x[:3], initial_params(x[:3]), batch_size=3)
        return refinement(model, guide, elbo, x[3:], initial_params(x[3:]), batch_size=batch_size)

    by_3, by_1 = last_chunk(3), last_chunk(None)
    assert not torch.allclose(by_3[0], by_1[0])
    assert torch.allclose(got.loc[3:], by_3[0], rtol=1e-12)
    assert torch.allclose(got.scale[3:], (0.5 * by_3[1]).exp(), rtol=1e-12)


class _Opaque:
    """An objective that is not a Pyro ELBO: the refinement takes it as it is."""

    def __init__(self, elbo):
        self.elbo = elbo

    def differentiable_loss(self, *args, **kwargs):
        return self.elbo.differentiable_loss(*args, **kwargs)


def _refined(elbo, refinement=None, seed=9):
    model, guide, x, init = problem()
    pyro.set_rng_seed(seed)
    refinement = refinement or Refinement(num_refine_steps=3, refine_max_grad_norm=None)
    return refinement(model, guide, elbo, x, init, beta=BETA)


def test_refinement_ascends_the_elbo_whatever_the_training_objective():
    """With free bits as the run's objective (λ = 2 nats per dimension: the KL's gradient
    vanishes below it), λ_K is that of the ELBO with the analytic KL; refining the free-bits
    objective itself would give other parameters."""
    from pyro_skipvae.infer import FreeBitsELBO

    elbo = _refined(TraceMeanField_ELBO())
    got = _refined(FreeBitsELBO(2.0))
    assert all(torch.equal(a, b) for a, b in zip(got, elbo))
    free_bits = _refined(_Opaque(FreeBitsELBO(2.0)))
    assert not torch.allclose(free_bits[1], elbo[1])


def test_refinement_kl_is_analytic_by_default_whatever_the_elbo_and_monte_carlo_on_request():
    """With Trace_ELBO as the run's objective, the refinement's KL is analytic (the same λ_K
    as TraceMeanField_ELBO, not Trace_ELBO's one-sample KL); ``refine_kl="monte-carlo"``
    refines with the one-sample KL. Particle settings are the run's."""
    from pyro.infer import RenyiELBO, Trace_ELBO

    from pyro_skipvae.infer import PerDatapointBound
    from pyro_skipvae.infer.refine import refinement_elbo
    from pyro_skipvae.infer.trace_elbo import TraceMeanField_ELBO as SyncFreeMeanField

    analytic = _refined(TraceMeanField_ELBO())
    monte_carlo = _refined(_Opaque(Trace_ELBO()))
    assert not torch.allclose(analytic[1], monte_carlo[1])
    assert all(torch.equal(a, b) for a, b in zip(_refined(Trace_ELBO()), analytic))
    mc = Refinement(num_refine_steps=3, refine_max_grad_norm=None, refine_kl="monte-carlo")
    for objective in (Trace_ELBO(), TraceMeanField_ELBO()):
        got = _refined(objective, mc)
        assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(got, monte_carlo))
    iwae = PerDatapointBound(
        RenyiELBO(alpha=0.0, num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    )
    objective = refinement_elbo(iwae)
    assert type(objective) is SyncFreeMeanField  # Pyro's estimator, without host syncs
    assert (objective.num_particles, objective.vectorize_particles) == (3, True)
    # the data plate and the particle plate, as in the run's ELBO (not counted twice)
    assert objective.max_plate_nesting == iwae.max_plate_nesting == 2
    mean_field = SyncFreeMeanField()
    assert refinement_elbo(mean_field) is mean_field
    with pytest.raises(ConfigError, match="expected one of: analytic, monte-carlo"):
        Refinement(refine_kl="exact")
