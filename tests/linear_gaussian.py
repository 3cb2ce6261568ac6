"""Closed forms of the synthetic linear-Gaussian model used across the tests (not a data
set): z ~ N(0, I), x | z ~ N(W z + b, σ² I).

Its posterior is Gaussian, q*(z|x) = N(Σ Wᵀ(x − b)/σ², Σ) with Σ = (I + WᵀW/σ²)⁻¹, and its
marginal is x ~ N(b, W Wᵀ + σ² I); with q* as proposal every importance weight equals p(x).
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_skipvae.models import Decoder
from pyro_skipvae.sites import data_plate


class LinearDecoder(Decoder):
    """η = W z + b: the model's decoder, a torch module (W, b are ``linear``'s weight and bias)."""

    def __init__(self, latent_dim, output_shape, *, skip=False):
        super().__init__(latent_dim, output_shape, skip=skip)
        self.linear = nn.Linear(latent_dim, self.output_size)

    def forward(self, z, x=None):
        return self.linear(z).reshape(z.shape[:-1] + self.output_shape)


def posterior(W, b, sigma):
    """``(mean, cov)`` of the exact posterior: ``mean(x)`` ``(N, D)`` and the shared ``cov``."""
    cov = torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / sigma**2)
    return (lambda x: (x - b) @ W @ cov / sigma**2), cov  # cov is symmetric


def marginal(W, b, sigma):
    """p(x) = N(b, W Wᵀ + σ² I)."""
    return dist.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(W.shape[0]))


def mvn_guide(mean, cov):
    """q(z|x) = N(mean(x), cov), a full-covariance MultivariateNormal."""

    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", dist.MultivariateNormal(mean(x), cov))

    return guide
