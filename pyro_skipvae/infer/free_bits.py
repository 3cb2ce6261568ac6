r"""The free-bits objective (Kingma et al. 2016, §C.8 "free bits"), as a Pyro ELBO.

Per latent dimension j, the KL term may not fall below λ nats: with the minibatch average
:math:`\overline{\mathrm{KL}}_j = \frac{1}{B}\sum_{i\in B} \mathrm{KL}(q(z_j|x_i) \,\|\, p(z_j))`,

.. math::

    \mathcal{L}_\lambda = \frac{N}{B} \sum_{i \in B} \mathbb{E}_q[\log p(x_i | z_i)]
        - \beta N \sum_{j=1}^{D} \max\big(\lambda, \overline{\mathrm{KL}}_j\big).

Below λ a dimension's KL is free: its gradient is zero, so the optimizer has no reason to
shrink it further, and dimensions stay out of collapse until they carry λ nats. This is
Kingma et al.'s minibatch form with one dimension per group; ``λ = 0`` is the ordinary
(β-weighted) ELBO. It is a training objective, not a bound: runs report the plain ELBO for
validation.

The KL of each dimension is analytic when :func:`~pyro.distributions.kl.kl_divergence` knows
the pair of one-dimensional marginals (diagonal Gaussians), else the one-sample estimate
log q(z_j|x) − log p(z_j) at the guide's own draw (averaged over particles and minibatch
before the max). Both q and p must factorise over dimensions (``Independent(…, 1)``).

**Not under data parallelism.** The max acts on the *global* minibatch's average KL; a rank
holding a share of it sees only its share's average, so its gradient (and the all-reduced
one) is not the 1-process gradient. :class:`FreeBitsELBO` refuses to run in an active
``torch.distributed`` group of more than one process rather than train a different objective.
"""

import pyro.distributions as dist
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO
from pyro.infer.util import torch_item

from ..errors import ConfigError
from ..sites import LATENT_SITE
from . import distributed


class FreeBitsELBO(Trace_ELBO):
    r""":class:`~pyro.infer.Trace_ELBO` with the KL of site ``"z"`` replaced by the free-bits
    term β N Σ_j max(λ, mean_i KL_ij) (see the module docstring).

    Every other site contributes as in Trace_ELBO; latent sites of the guide must be
    reparameterisable. The site's scale (plate N/B times β) is read from the trace, so
    subsampling and KL annealing work as with the other ELBOs.

    :param float free_bits: λ, nats per latent dimension (default 0.25; 0: the ELBO).
    :param kwargs: :class:`~pyro.infer.ELBO` settings (``num_particles``,
        ``vectorize_particles``, ``max_plate_nesting``).
    """

    def __init__(self, free_bits=0.25, **kwargs):
        if not isinstance(free_bits, int | float) or isinstance(free_bits, bool) or free_bits < 0:
            raise ConfigError(
                f"free_bits must be a number >= 0 (nats per dimension), found {free_bits!r}"
            )
        super().__init__(**kwargs)
        self.free_bits = float(free_bits)

    def kl_per_dimension(self, guide_site, model_site) -> torch.Tensor:
        """KL(q(z_j|x) ‖ p(z_j)) of every draw and dimension, shape ``(*batch, D)``."""
        q, p = guide_site["fn"], model_site["fn"]
        for name, d in (("q(z|x)", q), ("p(z)", p)):
            if not (isinstance(d, dist.Independent) and d.reinterpreted_batch_ndims == 1):
                raise ConfigError(
                    f"free bits need a {name} that factorises over latent dimensions "
                    f"(Independent(..., 1)), found {type(d).__name__}"
                )
        try:
            kl = kl_divergence(q.base_dist, p.base_dist)
        except NotImplementedError:
            z = guide_site["value"]
            kl = q.base_dist.log_prob(z) - p.base_dist.log_prob(z)
        return kl.expand(guide_site["value"].shape)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if distributed.active():
            raise ConfigError(
                f"free bits cannot train data-parallel (found {distributed.world_size()} "
                "processes): max(λ, mean KL_j) is taken over each process's share of the "
                "minibatch, not the whole minibatch; train in one process, or use another ELBO"
            )
        elbo = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and name != LATENT_SITE:
                elbo = elbo + site["log_prob_sum"]
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or name == LATENT_SITE:
                continue
            if not site["fn"].has_rsample:
                raise ConfigError(
                    f"free bits: guide site {name!r} is not reparameterisable; "
                    "only reparameterised latent sites are supported"
                )
            elbo = elbo - site["log_prob_sum"]
        if LATENT_SITE not in guide_trace.nodes:
            raise ConfigError(f"free bits: the guide has no latent site {LATENT_SITE!r}")
        model_site, guide_site = model_trace.nodes[LATENT_SITE], guide_trace.nodes[LATENT_SITE]
        if not guide_site["fn"].has_rsample:
            raise ConfigError(f"free bits need a reparameterisable q at site {LATENT_SITE!r}")
        kl = self.kl_per_dimension(guide_site, model_site)
        per_dim = kl.reshape(-1, kl.shape[-1]).mean(0)
        # The site's scale (β N/B) times the number of draws it holds (particles × B) puts the
        # term on the scale of the other sites' sums, which Trace_ELBO divides by num_particles.
        draws = kl.numel() // kl.shape[-1]
        scale = model_site["scale"]
        elbo = elbo - scale * draws * per_dim.clamp(min=self.free_bits).sum()
        return -torch_item(elbo), -elbo

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))
