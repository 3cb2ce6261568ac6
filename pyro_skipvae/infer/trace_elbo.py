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
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled


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


class TraceMeanField_ELBO(pyro.infer.TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` (the same estimator: the KL of each latent
    site in closed form where :func:`~pyro.distributions.kl.kl_divergence` knows the pair,
    log p − log q at the guide's draw otherwise) whose ``loss_and_grads`` and
    ``differentiable_loss`` return tensors and never synchronise with the device, like
    :class:`Trace_ELBO`. The refinement of semi-amortized inference evaluates it K times
    per training step (:func:`~pyro_skipvae.infer.refine.refinement_elbo`).

    Every latent site of the guide must be reparameterised (checked by Pyro when validation
    is on), as for Pyro's.
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        # Pyro's own method, with torch_item(elbo) replaced by a detached tensor.
        elbo = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                entropy = guide_site["score_parts"].entropy_term
                elbo = elbo + model_site["log_prob_sum"] - entropy.sum()
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            if torch.is_tensor(kl):
                elbo = elbo - kl.sum()
            else:
                elbo = elbo - kl * torch.Size(guide_site["fn"].batch_shape).numel()
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        elbo = torch.as_tensor(elbo)
        return -elbo.detach(), -elbo

    loss_and_grads = Trace_ELBO.loss_and_grads
    differentiable_loss = Trace_ELBO.differentiable_loss


__all__ = ["TraceMeanField_ELBO", "Trace_ELBO"]
