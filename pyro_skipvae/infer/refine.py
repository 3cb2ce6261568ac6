r"""Refinement of local variational parameters: K steps of SGD with momentum on the ELBO.

The one algorithm that semi-amortized training (:class:`~.semi_amortized.SemiAmortizedSVI`)
and evaluation (:func:`refined_guide`, used by ``skipvae diagnose``) share. From λ₀, with
u = c(λ) the refinement coordinates (Kim et al. 2018, Algorithm 1; code ``optim_n2n.py``):

.. math::

    g_k &= \operatorname{clip}_c\big(\nabla_u \tfrac{1}{B}\textstyle\sum_i
           -\mathrm{ELBO}_\beta(c^{-1}(u_{k,i}); x_i)\big) \quad\text{(each tensor of u on its own)} \\
    m_k &= \rho\, m_{k-1} + g_k, \qquad m_{-1} = 0 \\
    u_{k+1} &= u_k - \eta\, m_k, \qquad k = 0, \dots, K-1

The guide's local parameters are (μ, log σ²). By default the refinement works in exactly
those coordinates, as the authors' code does; ``refine_coordinates="log-scale"`` refines
(μ, log σ) instead, where the gradient is twice as large, so the same η, ρ and clip move the
variance 2–4× as far per step (kept for comparison with earlier results).

The objective is the *mean* over the minibatch (the authors' losses are batch averages), so
each datapoint moves along its own gradient scaled by η / B, and the clip acts on the whole
minibatch's gradient tensor: both make the refinement depend on the minibatch size B. Every
sub-batch of an evaluation is therefore divided by the B the run trained with, the last,
shorter one included (:func:`refined_guide`), as training divides every minibatch by it.

**What the refinement ascends.** Always the (β-weighted) ELBO
E_q[log p(x|z)] − β KL(q_λ(z) ‖ p(z)), per datapoint, whatever objective the run trains on:
λ_K is a variational posterior, scored by the ELBO at training, validation and test, so it must
maximise the ELBO, not free bits (whose max over the minibatch's KL couples the datapoints
and, under data parallelism, the ranks) or an importance-weighted bound. The KL is analytic
where :func:`~pyro.distributions.kl.kl_divergence` knows the pair of guide and prior (diagonal
Gaussians: as the authors' refinement does), one-sample Monte Carlo otherwise
(:func:`refinement_elbo`); ``refine_kl="monte-carlo"`` keeps the Monte-Carlo KL of
:class:`~pyro.infer.Trace_ELBO` (each of the K steps then noisier, kept for comparison:
``benchmarks/results/semi_amortized.md``). The number of particles is the run's.
"""

import functools
from dataclasses import dataclass, fields

import torch
from pyro import poutine
from pyro.infer import ELBO

from ..checks import is_positive
from ..errors import ConfigError
from .trace_elbo import Trace_ELBO, TraceMeanField_ELBO

COORDINATES = ("log-variance", "log-scale")
#: ``"objective"`` is the rule of runs trained before a07db1e (the training objective itself)
KL_ESTIMATORS = ("analytic", "monte-carlo", "objective")


def refinement_elbo(elbo, refine_kl: str = "analytic"):
    """The Pyro ELBO the refinement ascends, given the run's objective ``elbo``: the plain
    ELBO with ``elbo``'s particle settings, its KL analytic where ``kl_divergence`` knows the
    pair (:class:`~.trace_elbo.TraceMeanField_ELBO`), or one-sample Monte Carlo
    (:class:`~.trace_elbo.Trace_ELBO`) with ``refine_kl="monte-carlo"``; both are Pyro's
    estimators without host synchronisation (the refinement evaluates the ELBO K times per
    training step).

    Any :class:`pyro.infer.ELBO` (Trace_ELBO, free bits, IWAE, Rényi, ...) is replaced this
    way; an object that is not one (a hand-written objective with ``differentiable_loss``) is
    taken as it is, and so is an ELBO of the wanted class already. ``refine_kl="objective"``
    takes ``elbo`` as it is: the rule before commit a07db1e (the refinement ascended the
    training objective with its own KL estimator), kept so runs trained under it resume and
    are diagnosed as they were trained.
    """
    if refine_kl == "objective":
        return elbo
    target = TraceMeanField_ELBO if refine_kl == "analytic" else Trace_ELBO
    if not isinstance(elbo, ELBO) or type(elbo) is target:
        return elbo
    vectorized = elbo.vectorize_particles and elbo.num_particles > 1
    settings = {
        "num_particles": elbo.num_particles,
        "vectorize_particles": elbo.vectorize_particles,
        # Pyro's ELBO counts the particle plate in max_plate_nesting once it vectorises; the
        # new ELBO adds it again, so pass the model's own nesting
        "max_plate_nesting": elbo.max_plate_nesting - vectorized,
    }
    return target(**settings)


def clip_tensor_norm(grad: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """``grad`` rescaled so its 2-norm is at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_``
    on one tensor, with its 1e-6), as a differentiable expression.

    The clip factor stays in the graph (it is not detached), so the end-to-end gradient is the
    exact derivative of the λ_K actually computed; the authors treat it as a constant.
    """
    if max_norm is None:
        return grad
    return grad * (max_norm / (grad.norm() + 1e-6)).clamp(max=1.0)


@dataclass(frozen=True)
class Refinement:
    """Settings of the refinement, with the authors' defaults; :meth:`run` applies it.

    :param int num_refine_steps: K (default 20).
    :param float refine_lr: η (default 1.0).
    :param float refine_momentum: ρ in [0, 1) (default 0.5).
    :param float refine_max_grad_norm: clip c of each gradient tensor's norm (default 5.0;
        ``None`` disables clipping).
    :param str refine_coordinates: ``"log-variance"`` (default: (μ, log σ²), the authors'
        coordinates) or ``"log-scale"`` ((μ, log σ)).
    :param str refine_kl: ``"analytic"`` (default: the KL in closed form where prior and guide
        have one, as the authors' refinement), ``"monte-carlo"`` (one-sample estimate) or
        ``"objective"`` (the training objective itself, the rule of runs trained before
        commit a07db1e); see the module docstring and :func:`refinement_elbo`.
    """

    num_refine_steps: int = 20
    refine_lr: float = 1.0
    refine_momentum: float = 0.5
    refine_max_grad_norm: float | None = 5.0
    refine_coordinates: str = "log-variance"
    refine_kl: str = "analytic"

    def __post_init__(self):
        k = self.num_refine_steps
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"num_refine_steps must be a non-negative integer, found {k!r}")
        if not is_positive(self.refine_lr):
            raise ConfigError(f"refine_lr must be positive, found {self.refine_lr!r}")
        rho = self.refine_momentum
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0 <= rho < 1:
            raise ConfigError(f"refine_momentum must lie in [0, 1), found {rho!r}")
        c = self.refine_max_grad_norm
        if c is not None and not is_positive(c):
            raise ConfigError(f"refine_max_grad_norm must be positive or None, found {c!r}")
        if self.refine_coordinates not in COORDINATES:
            raise ConfigError(
                f"unknown refine_coordinates {self.refine_coordinates!r}; expected one of: "
                + ", ".join(COORDINATES)
            )
        if self.refine_kl not in KL_ESTIMATORS:
            raise ConfigError(
                f"unknown refine_kl {self.refine_kl!r}; expected one of: "
                + ", ".join(KL_ESTIMATORS)
            )

    @classmethod
    def from_options(cls, options: dict) -> "Refinement":
        """The refinement settings among ``options`` (e.g. a run's ``inference_options``)."""
        return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})

    def options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # ------------------------------------------------------------------ coordinates
    def to_coordinates(self, local_params):
        """u = c(λ) from the guide's λ = (μ, log σ²)."""
        if self.refine_coordinates == "log-scale":
            loc, log_var = local_params
            return loc, 0.5 * log_var
        return tuple(local_params)

    def from_coordinates(self, coords):
        """λ = c⁻¹(u)."""
        if self.refine_coordinates == "log-scale":
            loc, log_scale = coords
            return loc, 2.0 * log_scale
        return tuple(coords)

    # ------------------------------------------------------------------ the algorithm
    def loss(self, model, guide, elbo, x, coords, *, beta=1.0, batch_size=None):
        """(1/B) Σ_i −ELBO_β(c⁻¹(u_i); x_i) through ``differentiable_loss`` of
        :func:`refinement_elbo` (``elbo``) (plate scale 1: no ``size``); B is ``batch_size``,
        default ``len(x)``."""
        objective = refinement_elbo(elbo, self.refine_kl)
        refined = functools.partial(guide, local_params=self.from_coordinates(coords))
        loss = objective.differentiable_loss(model, refined, x, beta=beta)
        return loss / (batch_size or x.shape[0])

    def run(self, model, guide, elbo, x, init, *, beta=1.0, create_graph=False, batch_size=None):
        """The K steps from the guide's λ₀ = ``init``.

        ``batch_size`` is the B of the 1/B factor (default ``len(x)``): in data-parallel
        training ``x`` is one rank's share of a global minibatch of B points, and dividing by
        B keeps each datapoint's step η/B that of a 1-process run (the clip still sees only
        this rank's share of the gradient tensor; see :mod:`~.semi_amortized`).

        With ``create_graph`` the result is differentiable w.r.t. ``init`` and every parameter
        the ELBO touches (end-to-end training); otherwise ``init`` is detached and each step's
        history is cut, so memory stays that of one step. Gradients are taken w.r.t. the local
        parameters only (``torch.autograd.grad``), so no parameter's ``.grad`` changes.

        :returns: ``(λ_K, u₀, g₀)``: the refined local parameters in the guide's coordinates,
            the starting point in refinement coordinates (differentiable w.r.t. ``init``) and
            the raw gradient g₀ at u₀ (detached; ``None`` when K = 0).
        """
        start = self.to_coordinates(init)
        coords = list(start) if create_graph else [u.detach().requires_grad_() for u in start]
        momenta = [None] * len(coords)
        first_grads = None
        elbo = refinement_elbo(elbo, self.refine_kl)  # once, not per step
        with torch.enable_grad():
            for _ in range(self.num_refine_steps):
                loss = self.loss(model, guide, elbo, x, coords, beta=beta, batch_size=batch_size)
                grads = torch.autograd.grad(loss, coords, create_graph=create_graph)
                if first_grads is None:
                    first_grads = [g.detach() for g in grads]
                stepped = []
                for i, (u, g) in enumerate(zip(coords, grads)):
                    g = clip_tensor_norm(g, self.refine_max_grad_norm)
                    momenta[i] = g if momenta[i] is None else self.refine_momentum * momenta[i] + g
                    stepped.append(u - self.refine_lr * momenta[i])
                if not create_graph:
                    momenta = [m.detach() for m in momenta]
                    stepped = [u.detach().requires_grad_() for u in stepped]
                coords = stepped
        return self.from_coordinates(coords), start, first_grads

    def __call__(self, model, guide, elbo, x, init, *, beta=1.0, batch_size=None):
        """Refined local parameters λ_K for the batch ``x``, detached (no history); the
        objective is divided by ``batch_size`` (default ``len(x)``), see :meth:`run`."""
        refined, _, _ = self.run(model, guide, elbo, x, init, beta=beta, batch_size=batch_size)
        return tuple(p.detach() for p in refined)


def refined_guide(model, guide, elbo, refinement, *, batch_size, initial_params=None):
    """``guide`` with its local parameters refined on each call, for evaluation.

    The refinement runs on minibatches of ``batch_size`` (the refinement step depends on B,
    so use the training minibatch size) from ``initial_params(x)`` (default: the guide's own
    ``local_params``), with β = 1, hidden from any enclosing trace. Every minibatch's objective
    is divided by ``batch_size``, also the last one when it is shorter (the remainder of the
    split, or a data-parallel rank's share), so each datapoint moves by η/B times its own
    gradient wherever it falls, as in training. Evaluate it inside
    :func:`~pyro_skipvae.modes.evaluating`.
    """
    initial_params = initial_params or guide.local_params

    def refined(x, **kwargs):
        parts = []
        with poutine.block():
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start : start + batch_size]
                with torch.no_grad():
                    init = initial_params(chunk)
                parts.append(refinement(model, guide, elbo, chunk, init, batch_size=batch_size))
        local = tuple(torch.cat(p) for p in zip(*parts))
        return guide(x, local_params=local, **kwargs)

    return refined
