"""Measurements of a fitted model: ELBO, KL and collapse diagnostics.

Every function here is pure: it takes a model, a guide and data that follow the site
contract of :mod:`pyro_skipvae.sites` and returns numbers; nothing prints.

* :mod:`.latent`: :func:`mutual_information` (full-set), :func:`aggregate_posterior_kl`,
  :func:`expected_kl`, :func:`kl_per_dimension`, :func:`active_units` and the capped
  :func:`minibatch_mutual_information` of the lagging-encoder code;
* :mod:`.nll`: :func:`importance_weighted_nll` / :func:`importance_sample` with PSIS k̂;
* :mod:`.classify`: posterior-mean classification accuracy;
* :mod:`.diagnosis`: :func:`diagnose`, every metric of one model/guide pair from the
  table of named metrics :data:`METRICS`;
* :mod:`.tables`: :func:`format_table` and :func:`compare_table`; :mod:`.netcdf`: the
  per-datapoint results as netCDF; :mod:`.plots`: pictures, :func:`plot_diagnostics`.
"""

from .classify import CLASSIFIERS, classification_accuracy
from .diagnosis import METRICS, Diagnosis, diagnose
from .elbo import elbo_terms, evaluate_elbo
from .estimate import Estimate
from .latent import (
    Posteriors,
    active_units,
    aggregate_posterior_kl,
    aggregate_posterior_terms,
    expected_kl,
    kl_per_dimension,
    minibatch_mutual_information,
    mutual_information,
    posterior_mean_variance,
)
from .nll import (
    ImportanceSamplingResult,
    importance_sample,
    importance_weighted_nll,
    log_importance_weights,
    pareto_k,
    pareto_k_summary,
)
from .plots import plot_diagnostics
from .posterior import nuts_posterior
from .tables import compare_table, format_table

__all__ = [
    "CLASSIFIERS",
    "METRICS",
    "Diagnosis",
    "Estimate",
    "ImportanceSamplingResult",
    "Posteriors",
    "active_units",
    "aggregate_posterior_kl",
    "aggregate_posterior_terms",
    "classification_accuracy",
    "compare_table",
    "diagnose",
    "elbo_terms",
    "evaluate_elbo",
    "expected_kl",
    "format_table",
    "importance_sample",
    "importance_weighted_nll",
    "kl_per_dimension",
    "log_importance_weights",
    "minibatch_mutual_information",
    "mutual_information",
    "nuts_posterior",
    "pareto_k",
    "pareto_k_summary",
    "plot_diagnostics",
    "posterior_mean_variance",
]
