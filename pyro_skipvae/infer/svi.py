"""Stochastic variational inference: :class:`pyro.infer.SVI` minus one measured cost."""

import pyro.infer
from pyro import poutine


class SVI(pyro.infer.SVI):
    """:class:`pyro.infer.SVI` that releases gradients after each step instead of zero-filling them.

    Stock ``SVI.step`` ends with ``pyro.infer.util.zero_grads``, which allocates a zero tensor
    per parameter (``p.grad = zeros_like(p.grad)``); the next backward pass then reads and adds
    into those buffers instead of writing fresh ones. For the 6M-parameter MNIST MLP VAE that
    was most of Pyro's overhead over a hand-written PyTorch step (``benchmarks/overhead.py``).
    Setting ``p.grad = None`` is what ``torch.optim.Optimizer.zero_grad`` does by default.
    Everything else (parameter capture, ``pyro.optim`` per-parameter optimizers, any ELBO) is
    unchanged, so this is a drop-in replacement.
    """

    def step(self, *args, **kwargs):
        with poutine.trace(param_only=True) as param_capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        apply_gradients(self.optim, param_capture.trace)
        return loss.item() if hasattr(loss, "item") else float(loss)


def apply_gradients(optim, param_trace) -> None:
    """Step ``optim`` (a :class:`pyro.optim.PyroOptim`) on every parameter recorded in
    ``param_trace`` (from ``poutine.trace(param_only=True)`` around the backward pass), then
    release their gradients (``grad = None``, not a zero-filled copy: see :class:`SVI`)."""
    params = {site["value"].unconstrained() for site in param_trace.nodes.values()}
    optim(params)
    for p in params:
        p.grad = None
