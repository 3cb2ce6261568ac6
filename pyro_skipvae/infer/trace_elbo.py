"""Pyro's :class:`~pyro.infer.Trace_ELBO` without host synchronisation.

Pyro's implementation turns each sample site's log-density into a Python float as it builds
the loss (``torch_item``) and checks the loss for NaN (``warn_if_nan``): on a GPU each of these
waits for every queued kernel to finish, three or more times per training step (about a
hundred per semi-amortized step, whose refinement evaluates the bound K times), so the host
can never run ahead of the device. :class:`Trace_ELBO` computes the same estimator and the
same surrogate, term by term, but keeps the loss a (detached) tensor; the caller reads it once
(``SVI.step``), and the training loop raises on a non-finite loss instead of warning.
``benchmarks/overhead.py`` (side ``pyro-syncs``) measures the difference.
"""

import pyro.infer
import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer.trace_elbo import _compute_log_r


class Trace_ELBO(pyro.infer.Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` (same estimator, surrogate and gradients, partial
    Rao-Blackwellisation of score-function terms included) whose ``loss_and_grads`` and
    ``differentiable_loss`` return tensors and never synchronise with the device.

    ``loss`` (evaluation only) is Pyro's, a float.
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        # Pyro's own method, with torch_item(log_prob_sum) replaced by a detached tensor.
        elbo = surrogate = 0.0
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"].detach()
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                elbo = elbo - site["log_prob_sum"].detach()
                if not is_identically_zero(entropy_term):
                    surrogate = surrogate - entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    downstream = log_r.sum_to(site["cond_indep_stack"])
                    surrogate = surrogate + (downstream * score_function_term).sum()
        return -elbo, -surrogate

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Backpropagate the surrogate of every particle; return the loss (−ELBO estimate) as
        a 0-dim tensor."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = loss + particle / self.num_particles
            trainable = any(
                site["type"] == "param"
                for trace in (model_trace, guide_trace)
                for site in trace.nodes.values()
            )
            if trainable and getattr(surrogate, "requires_grad", False):
                (surrogate / self.num_particles).backward(retain_graph=self.retain_graph)
        return torch.as_tensor(loss)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss's value with the surrogate's gradient, as Pyro's, without reading either."""
        loss = surrogate = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle, surrogate_particle = self._differentiable_loss_particle(
                model_trace, guide_trace
            )
            loss = loss + particle / self.num_particles
            surrogate = surrogate + surrogate_particle / self.num_particles
        surrogate = torch.as_tensor(surrogate)
        return loss + (surrogate - surrogate.detach())


__all__ = ["Trace_ELBO"]
