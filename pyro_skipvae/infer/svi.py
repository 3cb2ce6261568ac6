"""Stochastic variational inference: :class:`pyro.infer.SVI` with one optimizer step shared
with semi-amortized inference."""

import pyro.infer
import pyro.optim
from pyro import poutine

from ..diagnostics.elbo import evaluate_elbo
from ..modes import evaluating
from . import distributed
from .optim import Optimizer


class SVI(pyro.infer.SVI):
    """:class:`pyro.infer.SVI` that also takes our :class:`~.optim.Optimizer` and releases
    gradients after each step instead of zero-filling them.

    Stock ``SVI.step`` ends with ``pyro.infer.util.zero_grads``, which allocates a zero tensor
    per parameter; the next backward pass then reads and adds into those buffers instead of
    writing fresh ones (most of Pyro's overhead over a hand-written PyTorch step on the MNIST
    MLP, ``benchmarks/overhead.py``). Any Pyro ELBO and any :class:`pyro.optim.PyroOptim` work
    as with stock SVI.

    The keyword arguments are stock SVI's, spelled out rather than taken as ``**kwargs``, so
    that the registry (:data:`~pyro_skipvae.infer.INFERENCES`) can tell that an option such
    as ``mode`` belongs to another inference and say so, instead of Pyro raising a
    ``TypeError`` from deep inside.
    """

    def __init__(self, model, guide, optim, loss, loss_and_grads=None, num_samples=0, num_steps=0):
        stock = dict(loss_and_grads=loss_and_grads, num_samples=num_samples, num_steps=num_steps)
        if isinstance(optim, Optimizer):
            # pyro.infer.SVI insists on a PyroOptim; ours is applied by apply_gradients.
            super().__init__(model, guide, pyro.optim.Adam({}), loss, **stock)
            self.optim = optim
        else:
            super().__init__(model, guide, optim, loss, **stock)

    def step(self, *args, **kwargs):
        """One optimizer step on the minibatch ``x`` (first argument, or keyword ``x``);
        returns the loss as a float.

        Without ``size`` the plate is unscaled (N = B, the minibatch itself). In a
        data-parallel group, B is then the *global* minibatch, the sum of the ranks' shares:
        the model and guide get ``size`` = B, so each rank's loss is −(B/B_r) Σ_{i∈r} ELBO_i
        and the all-reduced gradient Σ_r (B_r/B) G_r is the 1-process gradient on the whole
        global minibatch (with each rank's own B_r as N, unequal shards would step apart).
        """
        # the minibatch, by position or (the site contract's name) by keyword; a model that
        # takes no data has a "minibatch" of one
        x = args[0] if args else kwargs.get("x")
        batch_size = 1 if x is None else x.shape[0]
        if kwargs.get("size") is None and distributed.active():
            kwargs = {**kwargs, "size": distributed.global_batch_size(batch_size)}
        with poutine.trace(param_only=True) as param_capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        size = kwargs.get("size") or batch_size
        apply_gradients(self.optim, param_capture.trace, size=size, batch_size=batch_size)
        return loss.item() if hasattr(loss, "item") else float(loss)

    def evaluate_metrics(self, data, *, batch_size=500):
        """Mean per-datapoint ``elbo`` and ``kl`` (nats) of the amortized guide on ``data``,
        with the networks in ``eval()`` mode (see :func:`~pyro_skipvae.diagnostics.evaluate_elbo`)."""
        with evaluating(self.model, self.guide):
            result = evaluate_elbo(self.model, self.guide, data, batch_size=batch_size)
        return {"elbo": result["elbo"], "kl": result["kl"]}


def apply_gradients(optim, param_trace, *, size: int, batch_size: int) -> None:
    """One optimizer step on every parameter recorded in ``param_trace`` (from
    ``poutine.trace(param_only=True)`` around the backward pass), then release their
    gradients (``grad = None``, not a zero-filled copy).

    With our :class:`~.optim.Optimizer` the step is on the per-datapoint gradient (1/``size``
    of Pyro's N-scaled one, see :mod:`~.optim`); with a :class:`pyro.optim.PyroOptim` it is
    Pyro's usual step on the N-scaled gradient.

    In data-parallel training the gradients are first averaged over the ranks, weighted by
    each rank's ``batch_size`` (its share of the global minibatch), so every replica takes the
    step of the whole global minibatch (:func:`~.distributed.all_reduce_gradients`).
    """
    # dict, not set: the trace's order is the same on every rank (the all-reduce needs one)
    params = list(
        dict.fromkeys(site["value"].unconstrained() for site in param_trace.nodes.values())
    )
    if distributed.active():
        shared = optim.params if isinstance(optim, Optimizer) else params
        distributed.all_reduce_gradients(shared, batch_size=batch_size)
    if isinstance(optim, Optimizer):
        optim.check_params(params)
        optim.step(size=size)
        return
    optim(params)
    for p in params:
        p.grad = None
