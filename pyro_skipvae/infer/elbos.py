r"""Registries of the objectives and inference algorithms a fit can use, by name.

``ELBOS`` maps names to factories ``(num_particles=..., **options) -> Pyro ELBO``;
``INFERENCES`` maps names to factories ``(model, guide, optim, loss, **options) -> object
with step()``, the signature of :class:`pyro.infer.SVI`. New algorithms register themselves
here.

**Bounds that are not linear in the log-weights** (Rényi α ≠ 1, IWAE) need care under
subsampling. Pyro scales every site's log-density by the plate's N/B *before* combining
particles, so :class:`~pyro.infer.RenyiELBO` computes log mean_k exp((N/B) log w_ik) instead
of (N/B) log mean_k w_ik: a different, wrong objective whenever B < N. :class:`PerDatapointBound`
evaluates such a bound per datapoint on the unscaled plate and applies N/B outside. The
linear bounds (``trace``, ``mean-field``, ``tracegraph``, ``jit``) are exact under
subsampling as they are; ``free-bits`` is a minibatch objective by definition (its max acts
on the minibatch's average KL).

**JIT.** :class:`JitELBO` runs :class:`~pyro.infer.JitTrace_ELBO` with the site contract's
keyword arguments made JIT-safe. ``jit-mean-field`` is refused: in pyro-ppl 1.9
:class:`~pyro.infer.JitTraceMeanField_ELBO` caches its compiled function under a different
attribute than the one it checks, so it traces the model again on every step
(``benchmarks/results/elbos.md`` has the measurement).
"""

import logging
import weakref

import torch
from pyro import poutine
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    RenyiELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from ..errors import ConfigError
from ..registry import Registry
from . import distributed
from .aggressive import AggressiveSVI
from .free_bits import FreeBitsELBO
from .semi_amortized import SemiAmortizedSVI
from .svi import SVI
from .trace_elbo import Trace_ELBO

logger = logging.getLogger(__name__)


class PerDatapointBound(ELBO):
    r"""A Pyro ELBO evaluated with the data plate unscaled, its loss and gradients then
    multiplied by N/B: the bound of each datapoint is computed on its own and the minibatch
    sum is scaled outside, as the bound's definition requires.

    For :class:`~pyro.infer.RenyiELBO` with α = 0 and K particles this is the IWAE bound
    (Burda et al. 2016, eq. 8) summed over the minibatch and scaled by N/B. β < 1 (KL
    warm-up) scales log p(z) − log q(z) inside each log-weight, which for K = 1 is the
    β-weighted ELBO.

    The model and guide are called as ``model(x, size=N, beta=β)`` (the site contract of
    :mod:`pyro_skipvae.sites`); the wrapper calls them without ``size``.

    Gradients: after the wrapped ``loss_and_grads`` they are multiplied by N/B. Gradients a
    parameter already held are kept (added back unscaled) for parameters seen in an earlier
    call; a parameter seen for the first time is assumed to start at zero or ``None``, as
    :class:`pyro.infer.SVI` leaves them.

    :param elbo: the Pyro ELBO to wrap (e.g. ``RenyiELBO(alpha=0, num_particles=5)``).
    """

    def __init__(self, elbo):
        # An ELBO subclass, so pyro.infer.SVI calls loss_and_grads; settings are the wrapped one's.
        super().__init__(
            num_particles=elbo.num_particles,
            max_plate_nesting=elbo.max_plate_nesting,
            vectorize_particles=elbo.vectorize_particles,
        )
        # Pyro's ELBO adds the particle dimension to max_plate_nesting when it vectorises; the
        # wrapped one already holds the sum, so take it as is (adding it again put the particle
        # plate of the wrapper's own traces one dimension beyond what the wrapped ELBO allows).
        self.max_plate_nesting = elbo.max_plate_nesting
        self.elbo = elbo
        self._params = weakref.WeakSet()

    @staticmethod
    def _scale(x, size):
        return 1.0 if size is None else size / x.shape[0]

    def loss(self, model, guide, x, *args, size=None, **kwargs):
        return self._scale(x, size) * self.elbo.loss(model, guide, x, *args, **kwargs)

    def loss_and_grads(self, model, guide, x, *args, size=None, **kwargs):
        scale = self._scale(x, size)
        held = {p: p.grad for p in self._params}
        for p in held:
            p.grad = None
        with poutine.trace(param_only=True) as capture:
            loss = self.elbo.loss_and_grads(model, guide, x, *args, **kwargs)
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
            previous = held.get(p)
            if previous is not None:
                p.grad = previous if p.grad is None else p.grad + previous
        for p, previous in held.items():
            if p not in params:
                p.grad = previous
        self._params = weakref.WeakSet(params)
        return scale * loss

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(model, guide, args, kwargs)

    def __repr__(self):
        return f"PerDatapointBound({type(self.elbo).__name__})"


class JitELBO(ELBO):
    r""":class:`~pyro.infer.JitTrace_ELBO` for models called as ``model(x, *, size, beta)``.

    Pyro's JIT ELBOs compile once per distinct set of keyword arguments, and treat only
    positional tensors as inputs of the compiled graph. Under the site contract β is a float
    keyword that changes every step during KL warm-up, so stock JitTrace_ELBO would compile
    anew on every step; this wrapper passes β as a tensor argument instead. It also keys the
    compilation on the minibatch shape, because :func:`torch.jit.trace` does not promise a
    graph that is valid for other shapes (a smaller last minibatch gets its own graph; on this
    model the stock graph happened to give the right loss on a smaller batch too).

    Semi-amortized inference is refused (no ``differentiable_loss``): it passes a new guide to
    the ELBO on every call, which would compile every time.

    :param int num_particles: samples per datapoint (vectorised when > 1).
    """

    def __init__(self, num_particles=1, **kwargs):
        super().__init__(num_particles=num_particles, **kwargs)
        self.elbo = JitTrace_ELBO(num_particles=num_particles, ignore_jit_warnings=True, **kwargs)
        self._wrapped = weakref.WeakKeyDictionary()

    def _wrap(self, fn):
        # One wrapper per model/guide, kept alive with it: the JIT keys its cache by their ids.
        if fn not in self._wrapped:

            def wrapped(x, beta, *, size, shape):
                return fn(x, size=size, beta=beta)

            self._wrapped[fn] = wrapped
        return self._wrapped[fn]

    def _call(self, method, model, guide, x, *, size=None, beta=1.0):
        beta = torch.as_tensor(beta, dtype=torch.get_default_dtype(), device=x.device)
        return method(
            self._wrap(model), self._wrap(guide), x, beta, size=size, shape=tuple(x.shape)
        )

    def loss_and_grads(self, model, guide, x, *, size=None, beta=1.0):
        return self._call(self.elbo.loss_and_grads, model, guide, x, size=size, beta=beta)

    def loss(self, model, guide, x, *, size=None, beta=1.0):
        with torch.no_grad():
            loss = self._call(self.elbo.differentiable_loss, model, guide, x, size=size, beta=beta)
        return loss.item()

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(model, guide, args, kwargs)

    def __repr__(self):
        return f"JitELBO(num_particles={self.num_particles})"


def is_nonlinear(elbo) -> bool:
    """True for an ELBO that is wrong under subsampling unless wrapped (see the module
    docstring); also for such an ELBO's bound ``loss`` method, which is what
    :class:`pyro.infer.SVI` keeps."""
    return isinstance(getattr(elbo, "__self__", elbo), RenyiELBO)


def _particles(num_particles):
    # Vectorised particles need the plate nesting: the site contract has one plate ("data").
    return {
        "num_particles": num_particles,
        "vectorize_particles": num_particles > 1,
        "max_plate_nesting": 1,
    }


def _check_particles(num_particles, minimum=1):
    if (
        isinstance(num_particles, bool)
        or not isinstance(num_particles, int)
        or num_particles < minimum
    ):
        raise ConfigError(f"num_particles must be an integer >= {minimum}, found {num_particles!r}")


ELBOS = Registry("elbo")


@ELBOS.register("trace")
def trace_elbo(num_particles=1):
    """:class:`~pyro.infer.Trace_ELBO`'s estimator (Monte-Carlo KL, works with any prior and
    guide), as :class:`~pyro_skipvae.infer.trace_elbo.Trace_ELBO`: no host syncs."""
    _check_particles(num_particles)
    return Trace_ELBO(**_particles(num_particles))


@ELBOS.register("mean-field")
def mean_field_elbo(num_particles=1):
    """:class:`~pyro.infer.TraceMeanField_ELBO`: analytic KL where ``kl_divergence`` knows the
    pair (the authors' choice), Monte Carlo otherwise."""
    _check_particles(num_particles)
    return TraceMeanField_ELBO(**_particles(num_particles))


@ELBOS.register("tracegraph")
def tracegraph_elbo(num_particles=1):
    """:class:`~pyro.infer.TraceGraph_ELBO`: Rao-Blackwellised score-function terms for
    non-reparameterisable sites (none in the default model, where it equals ``trace``)."""
    _check_particles(num_particles)
    return TraceGraph_ELBO(**_particles(num_particles))


@ELBOS.register("free-bits")
def free_bits_elbo(num_particles=1, free_bits=0.25):
    """:class:`~pyro_skipvae.infer.free_bits.FreeBitsELBO`: the KL of each latent dimension
    counts as at least ``free_bits`` nats (Kingma et al. 2016); a training objective."""
    _check_particles(num_particles)
    return FreeBitsELBO(free_bits, **_particles(num_particles))


@ELBOS.register("jit")
def jit_elbo(num_particles=1):
    """:class:`JitELBO`: :class:`~pyro.infer.JitTrace_ELBO`, compiled once per minibatch shape."""
    _check_particles(num_particles)
    return JitELBO(**_particles(num_particles))


@ELBOS.register("jit-mean-field")
def jit_mean_field_elbo(num_particles=1):
    """Refused: :class:`~pyro.infer.JitTraceMeanField_ELBO` recompiles on every step in
    pyro-ppl 1.9 (see the module docstring)."""
    raise ConfigError(
        "jit-mean-field: pyro-ppl 1.9's JitTraceMeanField_ELBO traces the model again on "
        "every step (it checks for its compiled function under the wrong attribute), which "
        "makes it slower than no JIT; use --elbo mean-field, or --elbo jit (JitTrace_ELBO)"
    )


@ELBOS.register("renyi")
def renyi_elbo(num_particles=2, alpha=0.5):
    """Rényi bound of order α (Li & Turner 2016) with K = ``num_particles``, per datapoint."""
    _check_particles(num_particles, 2)
    if alpha == 1:
        raise ConfigError("renyi: alpha = 1 is the ELBO; use --elbo trace")
    return PerDatapointBound(RenyiELBO(alpha=alpha, **_particles(num_particles)))


@ELBOS.register("iwae")
def iwae_elbo(num_particles=5):
    """Importance-weighted bound with K = ``num_particles`` samples per datapoint (Burda et al.
    2016): Rényi α = 0, per datapoint."""
    _check_particles(num_particles, 2)
    return PerDatapointBound(RenyiELBO(alpha=0.0, **_particles(num_particles)))


INFERENCES = Registry("inference")
INFERENCES.register("svi", SVI)  # pyro.infer.SVI, without a per-step gradient re-allocation
INFERENCES.register("semi-amortized", SemiAmortizedSVI)  # Kim et al. 2018; options in its docstring
INFERENCES.register("aggressive", AggressiveSVI)  # He et al. 2019; options in its docstring


def build_elbo(elbo, *, num_particles: int = 1, options: dict | None = None) -> ELBO:
    """The ELBO a fit optimises: a name in :data:`ELBOS` built with ``num_particles`` and
    ``options``, or the user's instance (a non-linear bound wrapped in
    :class:`PerDatapointBound`, see the module docstring)."""
    if isinstance(elbo, str):
        return ELBOS.build(elbo, options={"num_particles": num_particles, **(options or {})})
    if is_nonlinear(elbo):
        logger.info("wrapping %s so it is evaluated per datapoint", type(elbo).__name__)
        return PerDatapointBound(elbo)
    return elbo


def check_inference(inference):
    """Return a user's inference object if the training loop and the run can use it.

    :raises ConfigError: its loss is a bound that is wrong under subsampling (unwrapped
        Rényi/IWAE), it has no ``optim`` (the run checkpoints it), or training is
        data-parallel and it does not average gradients over the processes.
    """
    if is_nonlinear(getattr(inference, "loss", None)):
        raise ConfigError(
            f"{type(inference.loss).__name__} is not linear in the log-weights, so under "
            "subsampling Pyro scales each datapoint's bound inside its log-sum-exp; wrap it "
            "as pyro_skipvae.infer.elbos.PerDatapointBound(...) (or pass elbo=... instead)"
        )
    if not hasattr(inference, "optim"):
        raise ConfigError("an inference object must have an `optim` attribute (its optimizer)")
    if distributed.active() and not isinstance(inference, SVI | SemiAmortizedSVI):
        raise ConfigError(
            f"data-parallel training needs an inference object that averages gradients "
            f"over the processes; {type(inference).__name__} does not (use "
            "pyro_skipvae.infer.SVI or SemiAmortizedSVI)"
        )
    return inference
