"""Priors p(z) over the latent site ``"z"``.

A prior is an :class:`torch.nn.Module` whose ``forward(batch_shape)`` returns a Pyro
distribution with ``event_dim == 1`` and ``event_shape == (latent_dim,)``, batched to
``batch_shape``. Choose one by name from :data:`PRIORS` or pass any such module.
"""

import pyro.distributions as dist
import torch
from torch import nn

from ..registry import Registry

PRIORS = Registry("prior")


class Prior(nn.Module):
    """Base class: ``forward(batch_shape) -> Distribution`` over ``z`` with event_dim 1."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, batch_shape: tuple[int, ...]) -> dist.TorchDistribution:
        raise NotImplementedError


@PRIORS.register("normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        # Buffers, not constants, so ``.to(device)`` moves them with the model.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, batch_shape):
        return dist.Normal(self.loc, self.scale).to_event(1).expand(tuple(batch_shape))


@PRIORS.register("learned-normal")
class LearnedNormalPrior(Prior):
    """p(z) = N(m, diag s²) with learnable m and log s, initialised at N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, batch_shape):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1).expand(tuple(batch_shape))


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """p(z) = Σ_k π_k N(z; m_k, diag s_k²), all of π, m_k and log s_k learnable.

    Components start at unit scale with means drawn from N(0, I) (spread so they do not
    start identical, which would keep their gradients identical).

    :param int num_components: number of mixture components K (default 10).
    """

    def __init__(self, latent_dim: int, num_components: int = 10):
        super().__init__(latent_dim)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self, batch_shape):
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        mixture = dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)
        return mixture.expand(tuple(batch_shape))
