"""Every collapse diagnostic of one model/guide pair on one data set: :func:`diagnose`.

:func:`diagnose` encodes the data once (:class:`~.latent.Posteriors`: a refined guide is
refined once, and every metric measures the same q(z|x)), then runs the entries of
:data:`METRICS` in order on one shared :class:`Diagnosis`. A metric is a function
``metric(d)`` that reads the model, the stored q, the data and the options from ``d`` and
adds its numbers to ``d.metrics`` (JSON-able), its estimator's description to
``d.estimators`` and its per-datapoint tensors to ``d.per_datapoint``. Later metrics may
read what earlier ones wrote: the consistency checks read the KL and the MI, the per-token
rates the per-datapoint ELBO and NLL, the classifiers the posterior means. A new metric is
one function and one entry (as in Pyro's ``contrib/forecast``, whose metrics are a
``{name: fn}`` dict):

>>> def posterior_scale_mean(d):                                 # doctest: +SKIP
...     d.metrics["posterior_scale_mean"] = float(d.per_datapoint["posterior_scale"].mean())
>>> diagnose(model, guide, x, metrics={**METRICS, "scale": posterior_scale_mean})  # doctest: +SKIP

Nothing here prints or reads run directories (:mod:`pyro_skipvae.evaluation` does that).
"""

import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch

from ..errors import ConfigError
from .classify import accuracy_metrics, classification_accuracy
from .elbo import elbo_terms
from .estimate import mean_and_se, ratio_and_se
from .latent import (
    AU_THRESHOLD,
    Posteriors,
    aggregate_posterior_terms,
    expected_kl,
    kl_per_dimension,
    minibatch_mutual_information,
    posterior_mean_variance,
)
from .nll import importance_sample

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Diagnosis:
    """What the metrics of one :func:`diagnose` call share: the inputs and options (as
    :func:`diagnose` documents them, ``chunk_size`` resolved), the stored q(z|x) ``post``,
    and the results the metrics add to.

    :ivar dict metrics: JSON-able numbers, in the order the metrics wrote them.
    :ivar dict estimators: one description (estimator and settings) per reported metric.
    :ivar dict per_datapoint: tensors with leading dimension N (written to netCDF).
    :ivar dict seconds: wall time of the timed steps (:meth:`timed`).
    :ivar codes: posterior means ``(N, D)`` (set by ``"au"``).
    :ivar kl_per_dim: mean KL per dimension ``(D,)``, or ``None`` (set by ``"elbo_kl"``).
    :ivar posterior_mean_variance: Var_x E_q[z_d|x] ``(D,)`` (set by ``"au"``).
    """

    model: Any
    guide: Any
    data: torch.Tensor
    post: Posteriors
    labels: torch.Tensor | None = None
    train_data: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    num_samples: int = 500
    nll_size: int | None = None
    mi_num_samples: int = 2
    au_threshold: float = AU_THRESHOLD
    mi_batch_size: int = 50
    chunk_size: int = 100
    iw_batch_size: int | None = None
    particle_chunk: int | None = None
    num_tokens: torch.Tensor | None = None
    classifiers: list[str] | None = None
    keep_log_weights: bool = False
    seed: int = 0
    progress: bool = False
    metrics: dict = field(default_factory=dict)
    estimators: dict = field(default_factory=dict)
    per_datapoint: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    codes: torch.Tensor | None = None
    kl_per_dim: torch.Tensor | None = None
    posterior_mean_variance: torch.Tensor | None = None

    @contextmanager
    def timed(self, name):
        """Record the wall time of the ``with`` block as ``seconds[name]``."""
        tic = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - tic

    def encode(self, data):
        """q(z|x) of other data (a subset, the classifiers' training data) by the same guide."""
        return Posteriors(self.guide, data, chunk_size=self.chunk_size, progress=self.progress)

    def result(self) -> dict:
        """The return value of :func:`diagnose`."""
        self.metrics["estimators"] = self.estimators
        self.metrics["seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        return {
            "metrics": self.metrics,
            "per_datapoint": self.per_datapoint,
            "codes": self.codes,
            "kl_per_dim": self.kl_per_dim,
            "posterior_mean_variance": self.posterior_mean_variance,
        }


# ---------------------------------------------------------------------------- metrics
def measure_elbo_and_kl(d: Diagnosis) -> None:
    """``elbo`` (one reparameterised sample, analytic KL when known) and ``kl`` = E_x
    KL(q(z|x) ‖ p(z)) (:func:`~.latent.expected_kl`), each with ``_se``; the mean KL per
    dimension ``kl_per_dim`` where the prior factorises."""
    with d.timed("elbo_kl"):
        starts = d.post.starts
        elbos = [
            elbo_terms(d.model, d.post.guide(s, s + x.shape[0]), x)[0]
            for (x, _, _), s in zip(d.post.chunks(), starts)
        ]
        elbo = mean_and_se(torch.cat(elbos))
        kl = expected_kl(d.model, d.post)
        d.per_datapoint["elbo"], d.per_datapoint["kl"] = elbo.per_datapoint, kl.per_datapoint
        d.metrics.update(elbo=float(elbo), elbo_se=elbo.se, kl=float(kl), kl_se=kl.se)
        d.estimators["elbo"] = "one reparameterised sample of log p(x|z) minus the KL below"
        d.estimators["kl"] = f"{kl.estimator} KL(q(z|x)||p(z)) per datapoint, mean over data"
        try:
            kl_dims = kl_per_dimension(d.model, d.post)
        except ConfigError as e:  # a non-factorising prior: per-dimension KL is undefined
            logger.info("no per-dimension KL: %s", e)
            return
        d.per_datapoint["kl_per_dim"] = kl_dims
        d.kl_per_dim = kl_dims.double().mean(0)
        d.metrics["kl_per_dim"] = [round(v, 6) for v in d.kl_per_dim.tolist()]


def measure_mi_and_aggregate_kl(d: Diagnosis) -> None:
    """``mi`` (full-set estimator, ceiling ``log_n`` = log N) and ``agg_kl`` from one shared
    N × N pass (:func:`~.latent.aggregate_posterior_terms`), each with ``_se`` (spread over
    datapoints / √N) and ``_mc_se`` (the Monte-Carlo part alone, from ``mi_num_samples`` ≥ 2
    draws per datapoint)."""
    with d.timed("mi_agg_kl"):
        terms = aggregate_posterior_terms(
            d.model, d.post, None, num_samples=d.mi_num_samples, progress=d.progress
        )
        mi, agg = terms["mi"], terms["agg_kl"]
        d.per_datapoint["mi"], d.per_datapoint["agg_kl"] = mi.per_datapoint, agg.per_datapoint
        d.metrics.update(
            mi=float(mi),
            mi_se=mi.se,
            mi_mc_se=mi.info["mc_se"],
            agg_kl=float(agg),
            agg_kl_se=agg.se,
            agg_kl_mc_se=agg.info["mc_se"],
        )
        n = d.post.num_points
        d.estimators["mi"] = (
            f"full-set: aggregate posterior = mixture of q(z|x_n) over all N={n} points, "
            f"exact; {d.mi_num_samples} z draw(s) per point; ceiling log N = {math.log(n):.3f}"
        )
        d.estimators["agg_kl"] = "full-set, same mixture and draws as mi"


def consistency_checks(metrics, num_se=3.0) -> dict:
    """Inequalities every correct estimate satisfies, each within ``num_se`` standard errors:
    I_q(x;z) ≤ log N (the empirical joint's ceiling), I_q(x;z) ≤ E_x KL(q(z|x)‖p(z)) (their
    difference is KL(q(z)‖p(z)) ≥ 0) and KL(q(z)‖p(z)) ≥ 0. A wrongly normalised mixture
    or a wrong log N can break them; holding proves nothing more than consistency."""

    def se(key):
        value = metrics.get(f"{key}_se")
        return 0.0 if value is None or not math.isfinite(value) else value

    mi, kl, agg = metrics["mi"], metrics["kl"], metrics["agg_kl"]
    return {
        "mi_le_log_n": bool(mi <= metrics["log_n"] + num_se * se("mi")),
        "mi_le_kl": bool(mi <= kl + num_se * math.hypot(se("mi"), se("kl"))),
        "agg_kl_ge_0": bool(agg >= -num_se * se("agg_kl")),
    }


def check_consistency(d: Diagnosis) -> None:
    """``checks``: whether MI ≤ log N, MI ≤ KL and aggregate KL ≥ 0 hold within 3 standard
    errors (:func:`consistency_checks`; they must for any correct estimate)."""
    d.metrics["checks"] = consistency_checks(d.metrics)


def measure_minibatch_mi(d: Diagnosis) -> None:
    """``mi_minibatch``: He et al.'s minibatch estimator at batch ``mi_batch_size`` (capped
    at log batch size), for comparison with published numbers; 0 skips it."""
    if not d.mi_batch_size:
        return
    try:
        mb = minibatch_mutual_information(d.post, batch_size=d.mi_batch_size)
    except NotImplementedError as e:  # a non-Gaussian guide whose chunks cannot be re-cut
        logger.warning("no minibatch MI: %s", e)
        return
    d.metrics.update(mi_minibatch=float(mb), mi_minibatch_se=mb.se, mi_minibatch_cap=mb.info["cap"])
    d.estimators["mi_minibatch"] = (
        f"{mb.estimator}: capped at log {d.mi_batch_size} = {math.log(d.mi_batch_size):.3f}"
    )


def measure_active_units(d: Diagnosis) -> None:
    """``au``: active units, Var_x E_q[z_d|x] > δ = ``au_threshold``; the posterior means
    (``codes``) and scales per datapoint."""
    d.codes = d.post.means()
    d.posterior_mean_variance = variances = posterior_mean_variance(d.post, None)
    d.metrics.update(au=int((variances > d.au_threshold).sum()), au_threshold=d.au_threshold)
    d.metrics["posterior_mean_variance"] = [round(v, 6) for v in variances.tolist()]
    d.estimators["au"] = (
        f"Var over all N points of E_q[z_d|x] > {d.au_threshold:g} (Burda et al. 2016)"
    )
    d.per_datapoint["posterior_mean"] = d.codes
    try:
        d.per_datapoint["posterior_scale"] = torch.cat([fn.stddev for fn in d.post.fns])
    except NotImplementedError:
        pass


def measure_iw_nll(d: Diagnosis) -> None:
    """``nll``: importance-weighted NLL with K = ``num_samples`` (0 skips it), with Pareto
    k̂; on all N points, or on ``nll_size`` of them drawn uniformly without replacement
    with ``seed`` (``nll_num_points``; the per-datapoint values of the others are NaN). The
    subset's mean is unbiased for the full set's, with the standard error of ``nll_size``
    points; its cost is ``nll_size / N`` of the full pass, the part of a diagnosis that
    dominates on a CPU (N · K decoder passes)."""
    if not d.num_samples:
        return
    with d.timed("nll"):
        iw_post, subset = _nll_points(d)
        iw = importance_sample(
            d.model,
            iw_post,
            num_samples=d.num_samples,
            batch_size=d.iw_batch_size or d.post.chunk_size,
            particle_chunk=d.particle_chunk,
            keep_log_weights=d.keep_log_weights,
            progress=d.progress,
        )
        nll, summary = iw.estimate(), iw.pareto_summary()
        scored = {"nll": iw.nll, "pareto_k": iw.pareto_k, "ess": iw.ess, "nll_mc_var": iw.mc_var}
        if d.keep_log_weights:
            scored["log_weights"] = iw.log_weights
        n = d.post.num_points
        d.per_datapoint.update(scored if subset is None else _spread(scored, subset, n))
        d.metrics.update(
            nll=float(nll),
            nll_se=nll.se,
            nll_mc_se=nll.info["mc_se"],
            nll_num_samples=d.num_samples,
            nll_num_points=n if subset is None else len(subset),
            pareto_k_share_above=summary["share_above"],
            pareto_k_share_above_0_5=summary["share_above_0.5"],
            pareto_k_max=summary["max"],
            pareto_k_threshold=summary["threshold"],
            pareto_warning=summary["warning"],
        )
        d.estimators["nll"] = (
            f"{nll.estimator}; nll_se = std over points/sqrt(N), nll_mc_se = Monte-Carlo part "
            "(delta method); Pareto k-hat by arviz.psislw per datapoint"
        )


def _nll_points(d: Diagnosis) -> tuple[Posteriors, torch.Tensor | None]:
    """The q(z|x) the IW-NLL scores and the rows it holds (``None``: all N)."""
    n = d.post.num_points
    if d.nll_size is None or d.nll_size >= n:
        return d.post, None
    generator = torch.Generator().manual_seed(d.seed)
    subset = torch.randperm(n, generator=generator)[: d.nll_size].sort().values
    try:
        return d.post.subset(subset), subset
    except NotImplementedError:  # a guide whose q cannot be re-cut: encode the subset
        return d.encode(d.data[subset.to(d.data.device)]), subset


def _spread(per_point: dict, index: torch.Tensor, n: int) -> dict:
    """Per-datapoint tensors of the rows ``index`` placed in length-``n`` tensors, NaN elsewhere."""
    spread = {}
    for key, values in per_point.items():
        full = torch.full((n, *values.shape[1:]), math.nan, dtype=values.dtype)
        full[index] = values.cpu()
        spread[key] = full
    return spread


def measure_per_token(d: Diagnosis) -> None:
    """Given ``num_tokens`` (tokens per datapoint, e.g. from
    :meth:`~pyro_skipvae.models.Likelihood.num_tokens`): ``elbo_per_token`` = Σ ELBO / Σ
    tokens, the perplexity bound ``ppl_bound`` = exp(−Σ ELBO / Σ tokens), and with the
    IW-NLL ``nll_per_token`` and the importance-weighted perplexity ``iw_ppl`` = exp(Σ NLL
    / Σ tokens); standard errors of these ratios by the delta method
    (:func:`~.estimate.ratio_and_se`)."""
    if d.num_tokens is None:
        return
    tokens = torch.as_tensor(d.num_tokens).double()
    d.per_datapoint["num_tokens"] = tokens
    d.metrics["num_tokens"] = int(tokens.sum())
    rates = [("elbo", "ppl_bound", -1.0)]
    if "nll" in d.metrics:
        rates.append(("nll", "iw_ppl", 1.0))
    for key, ppl, sign in rates:
        values = d.per_datapoint[key]
        scored = ~torch.isnan(values.double().cpu())  # the IW-NLL may score a subset
        value, se = ratio_and_se(values[scored], tokens[scored])
        d.metrics.update({f"{key}_per_token": value, f"{key}_per_token_se": se})
        d.metrics[ppl] = math.exp(sign * value)
        d.metrics[f"{ppl}_se"] = d.metrics[ppl] * se
    d.estimators["ppl_bound"] = (
        "exp(−Σ ELBO / Σ tokens) with the ELBO above; tokens: the real tokens of each "
        "datapoint (text: the words and the end-of-sentence token, not BOS)"
    )
    if "iw_ppl" in d.metrics:
        d.estimators["iw_ppl"] = "exp(Σ IW-NLL / Σ tokens) with the IW-NLL above"


def measure_accuracy(d: Diagnosis) -> None:
    """``accuracy`` (logistic regression) and ``accuracy_knn`` (5-NN), fractions in [0, 1]
    (:func:`~.classify.classification_accuracy`), when ``labels``, ``train_data`` and
    ``train_labels`` are given: classifiers fitted on the posterior means of ``train_data``
    (encoded by the same guide), scored on those of ``data``."""
    if d.labels is None:
        return
    d.per_datapoint["label"] = d.labels
    if d.train_data is None or d.train_labels is None:
        return
    with d.timed("accuracy"):
        if isinstance(d.guide, Posteriors):
            logger.warning(
                "no classification accuracy: pass a guide, not Posteriors, to encode train_data"
            )
            return
        train_codes = d.encode(d.train_data).means()
        accuracy = classification_accuracy(
            train_codes, d.train_labels, d.codes, d.labels, classifiers=d.classifiers
        )
        values, described = accuracy_metrics(accuracy)
        d.metrics.update(values)
        d.estimators.update(described)
        d.metrics["classifier_num_train"] = int(train_codes.shape[0])


#: The metrics of :func:`diagnose`, run in this order (a metric may read what the ones
#: before it wrote): ``{name: metric}``, each ``metric(d: Diagnosis) -> None``.
METRICS: dict[str, Callable[[Diagnosis], None]] = {
    "elbo_kl": measure_elbo_and_kl,
    "mi_agg_kl": measure_mi_and_aggregate_kl,
    "checks": check_consistency,
    "mi_minibatch": measure_minibatch_mi,
    "au": measure_active_units,
    "nll": measure_iw_nll,
    "per_token": measure_per_token,
    "accuracy": measure_accuracy,
}


@torch.no_grad()
def diagnose(
    model,
    guide,
    data,
    *,
    labels=None,
    train_data=None,
    train_labels=None,
    num_samples=500,
    nll_size=None,
    mi_num_samples=2,
    au_threshold=AU_THRESHOLD,
    mi_batch_size=50,
    chunk_size=None,
    iw_batch_size=None,
    particle_chunk=None,
    num_tokens=None,
    classifiers=None,
    keep_log_weights=False,
    seed=0,
    progress=False,
    metrics=None,
) -> dict:
    r"""Measure how much a model uses its latent code, on ``data``: every metric of
    :data:`METRICS`, in order, all per datapoint and in nats unless stated:

    * ``elbo``, ``kl`` and ``kl_per_dim`` (:func:`measure_elbo_and_kl`);
    * ``mi`` (ceiling ``log_n``) and ``agg_kl`` with ``_se`` and ``_mc_se``
      (:func:`measure_mi_and_aggregate_kl`), and ``checks`` (:func:`check_consistency`);
    * ``mi_minibatch`` at batch ``mi_batch_size`` (:func:`measure_minibatch_mi`);
    * ``au`` at δ = ``au_threshold`` (:func:`measure_active_units`);
    * ``nll`` with K = ``num_samples`` (0 skips it) on all points or ``nll_size`` of them,
      with Pareto k̂ (:func:`measure_iw_nll`);
    * given ``num_tokens`` (``(N,)`` tokens of each datapoint), ``elbo_per_token``,
      ``ppl_bound``, ``nll_per_token``, ``iw_ppl`` (:func:`measure_per_token`);
    * ``accuracy`` and ``accuracy_knn`` when ``labels``, ``train_data`` and ``train_labels``
      are given (:func:`measure_accuracy`; ``classifiers``: names in
      :data:`~.classify.CLASSIFIERS`, default all).

    Standard errors are under ``<key>_se``; estimator names and settings under
    ``estimators``; wall times under ``seconds``.

    :param model: Pyro model following the site contract.
    :param guide: Pyro guide following the site contract (e.g. a refined guide
        ``lambda x: guide(x, local_params=refine(x))``), or a :class:`~.latent.Posteriors`.
    :param torch.Tensor data: evaluation data ``(N, ...)``, in the likelihood's support.
    :param int chunk_size: datapoints per guide call and per IW batch (default 100;
        ``iw_batch_size`` overrides the latter); the minibatch MI needs ``mi_batch_size``
        rows at a time, which any diagonal-Gaussian guide allows (others: make them equal).
    :param int particle_chunk: importance samples per model call (default: see
        :func:`~.nll.importance_sample`); lower it when the decoder's output is large.
    :param dict metrics: ``{name: metric}`` to run instead of :data:`METRICS`.
    :returns: dict with ``metrics`` (JSON-able flat dict), ``per_datapoint`` (dict of
        tensors with leading dimension N), ``codes`` (posterior means ``(N, D)``),
        ``kl_per_dim`` (``(D,)`` or ``None``) and ``posterior_mean_variance`` (``(D,)``).
    """
    pyro.set_rng_seed(seed)
    chunk_size = 100 if chunk_size is None else chunk_size
    tic = time.perf_counter()
    post = (
        guide
        if isinstance(guide, Posteriors)
        else Posteriors(guide, data, chunk_size=chunk_size, progress=progress)
    )
    d = Diagnosis(
        model, guide, data, post, labels=labels, train_data=train_data,
        train_labels=train_labels, num_samples=num_samples, nll_size=nll_size,
        mi_num_samples=mi_num_samples, au_threshold=au_threshold, mi_batch_size=mi_batch_size,
        chunk_size=chunk_size, iw_batch_size=iw_batch_size, particle_chunk=particle_chunk,
        num_tokens=num_tokens, classifiers=classifiers, keep_log_weights=keep_log_weights,
        seed=seed, progress=progress,
    )  # fmt: skip
    d.seconds["encode"] = time.perf_counter() - tic
    n = post.num_points
    d.metrics.update(num_points=n, latent_dim=post.latent_dim, log_n=math.log(n), seed=seed)
    for metric in (METRICS if metrics is None else metrics).values():
        metric(d)
    return d.result()
