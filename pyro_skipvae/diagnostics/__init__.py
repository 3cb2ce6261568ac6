"""Measurements of a fitted model: ELBO, KL and (see the submodules) collapse diagnostics.

Every function here is pure: it takes a model, a guide and data that follow the site
contract of :mod:`pyro_skipvae.sites` and returns numbers; nothing prints.
"""

from .elbo import elbo_terms, evaluate_elbo

__all__ = ["elbo_terms", "evaluate_elbo"]
