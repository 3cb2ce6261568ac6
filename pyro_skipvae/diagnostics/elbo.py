"""Per-datapoint ELBO and KL for any model/guide pair that follows the site contract."""

import math

import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence

from ..sites import LATENT_SITE, OBSERVED_SITE


def elbo_terms(model, guide, x, *, num_particles=1, guide_kwargs=None):
    r"""Per-datapoint ELBO and KL(q(z|x) ‖ p(z)) in nats.

    .. math::

        \mathrm{ELBO}(x) = \mathbb{E}_{q(z|x)}[\log p(x|z)] - \mathrm{KL}(q(z|x) \,\|\, p(z))

    The KL is analytic when :func:`pyro.distributions.kl.kl_divergence` knows the pair
    (Gaussian guide and Gaussian prior), otherwise the single-sample Monte-Carlo estimate
    log q(z|x) − log p(z) averaged over particles. The expectation is a Monte-Carlo
    average over ``num_particles`` reparameterised samples, unbiased for the ELBO.

    Log-densities are recomputed with ``fn.log_prob`` rather than read from the trace, so
    they are per datapoint and unscaled whatever plate size or β the model uses.

    :param model: Pyro model called as ``model(x)``.
    :param guide: Pyro guide called as ``guide(x, **guide_kwargs)``.
    :param torch.Tensor x: a batch of shape ``(N, ...)``.
    :returns: ``(elbo, kl)``, each a tensor of shape ``(N,)``.
    """
    guide_kwargs = guide_kwargs or {}
    elbo = kl = 0.0
    for _ in range(num_particles):
        guide_trace = poutine.trace(guide).get_trace(x, **guide_kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        q = guide_trace.nodes[LATENT_SITE]["fn"]
        p = model_trace.nodes[LATENT_SITE]["fn"]
        z = guide_trace.nodes[LATENT_SITE]["value"]
        obs = model_trace.nodes[OBSERVED_SITE]
        log_lik = obs["fn"].log_prob(obs["value"])
        try:
            kl_particle = kl_divergence(q, p)
        except NotImplementedError:
            kl_particle = q.log_prob(z) - p.log_prob(z)
        elbo = elbo + (log_lik - kl_particle)
        kl = kl + kl_particle
    return elbo / num_particles, kl / num_particles


@torch.no_grad()
def evaluate_elbo(model, guide, data, *, batch_size=500, num_particles=1):
    """Mean per-datapoint ELBO and KL over ``data``, in nats, computed in batches.

    :returns: dict with ``elbo`` and ``kl`` (floats) and their per-datapoint tensors
        ``elbo_per_datapoint`` / ``kl_per_datapoint`` of shape ``(N,)``.
    """
    elbos, kls = [], []
    for start in range(0, data.shape[0], batch_size):
        elbo, kl = elbo_terms(
            model, guide, data[start : start + batch_size], num_particles=num_particles
        )
        elbos.append(elbo)
        kls.append(kl)
    elbo, kl = torch.cat(elbos), torch.cat(kls)
    return {
        "elbo": elbo.mean().item(),
        "kl": kl.mean().item(),
        "elbo_per_datapoint": elbo,
        "kl_per_datapoint": kl,
    }


#: decoder outputs (tensor elements) one evaluation call may produce: 2**25 ≈ 34 million,
#: 128 MB in float32 (text: ~40 PTB sentences of the full width 83 × 10,002 tokens)
OUTPUT_BUDGET = 2**25


def evaluation_batch_size(likelihood, batch_size, *, multiple_of=1, budget=OUTPUT_BUDGET) -> int:
    """``batch_size``, lowered so one batch's decoder output (``likelihood.param_shape`` per
    datapoint) stays within ``budget`` elements, then rounded down to a multiple of
    ``multiple_of`` (never below it: a refinement in minibatches of that size must see whole
    minibatches). Image models keep their batch size (MNIST: 784 outputs per image); a
    text model's output is T × V per sentence, so its evaluation batches are small.
    """
    per_point = math.prod(likelihood.param_shape)
    size = min(batch_size, max(1, budget // per_point))
    return max(multiple_of, size - size % multiple_of)
