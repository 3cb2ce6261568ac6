"""Closed forms of the synthetic linear-Gaussian model used across the tests (not a data
set): z ~ N(0, I), x | z ~ N(W z + b, σ² I).

Its posterior is Gaussian, q*(z|x) = N(Σ Wᵀ(x − b)/σ², Σ) with Σ = (I + WᵀW/σ²)⁻¹, and its
marginal is x ~ N(b, W Wᵀ + σ² I); with q* as proposal every importance weight equals p(x).
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_skipvae.sites import data_plate


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
