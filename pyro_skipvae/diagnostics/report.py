"""Every collapse diagnostic of one model/guide pair on one data set, and tables of them.

:func:`diagnose` runs the estimators of :mod:`.latent`, :mod:`.nll`, :mod:`.elbo` and
:mod:`.classify` on the same q(z|x) (the guide is run once per chunk, so a refined guide is
refined once) and returns JSON-able metrics plus per-datapoint tensors;
:func:`plot_diagnostics` draws the pictures; :func:`format_table` and :func:`compare_table`
turn metrics into text. Nothing here prints or reads run directories (see
:mod:`pyro_skipvae.evaluation` for that).
"""

import csv
import io
import logging
import math
import time
from pathlib import Path

import pyro
import torch
from pyro import poutine

from ..checkpoint import atomic_path
from ..errors import ConfigError
from ..sites import LATENT_SITE, OBSERVED_SITE
from . import plots
from .classify import CLASSIFIERS, classification_accuracy
from .elbo import elbo_terms
from .estimate import mean_and_se
from .latent import (
    Posteriors,
    aggregate_posterior_terms,
    expected_kl,
    kl_per_dimension,
    minibatch_mutual_information,
    posterior_mean_variance,
)
from .nll import importance_sample

logger = logging.getLogger(__name__)

#: (key, label, unit) of the rows of :func:`format_table` and :func:`compare_table`
TABLE_ROWS = [
    ("nll", "IW-NLL", "nats"),
    ("elbo", "ELBO", "nats"),
    ("iw_ppl", "IW perplexity exp(Σ NLL / Σ tokens)", "per token"),
    ("ppl_bound", "perplexity bound exp(−Σ ELBO / Σ tokens)", "per token"),
    ("nll_per_token", "IW-NLL per token", "nats"),
    ("elbo_per_token", "ELBO per token", "nats"),
    ("kl", "KL = E_x KL(q(z|x)||p(z))", "nats"),
    ("mi", "MI I_q(x;z), full set", "nats"),
    ("log_n", "  ceiling log N", "nats"),
    ("agg_kl", "aggregate KL(q(z)||p(z))", "nats"),
    ("mi_minibatch", "MI, minibatch estimator", "nats"),
    ("au", "active units", "dims"),
    ("accuracy", "accuracy, logistic regression", "%"),
    ("accuracy_knn", "accuracy, 5-NN", "%"),
    ("pareto_k_share_above", "share of k̂ > 0.7", "%"),
]


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
    au_threshold=0.01,
    mi_batch_size=50,
    chunk_size=None,
    iw_batch_size=None,
    particle_chunk=None,
    num_tokens=None,
    classifiers=None,
    keep_log_weights=False,
    seed=0,
    progress=False,
) -> dict:
    r"""Measure how much a model uses its latent code, on ``data``.

    Computes, all per datapoint and in nats unless stated:

    * ``elbo`` (one reparameterised sample, analytic KL when known) and ``kl``
      = E_x KL(q(z|x) ‖ p(z)) (:func:`~.latent.expected_kl`), with per-dimension KL;
    * ``mi`` (full-set estimator, ceiling ``log_n`` = log N) and ``agg_kl`` from one shared
      N × N pass (:func:`~.latent.aggregate_posterior_terms`), each with ``_se`` (spread
      over datapoints / √N: what a redrawn evaluation set would change, Monte-Carlo noise
      included) and ``_mc_se`` (the Monte-Carlo part alone, from ``mi_num_samples`` ≥ 2
      draws per datapoint); ``checks`` says whether MI ≤ log N, MI ≤ KL and aggregate
      KL ≥ 0 hold within 3 standard errors (they must for any correct estimate);
    * ``mi_minibatch``: He et al.'s minibatch estimator at batch ``mi_batch_size`` (capped at
      log batch size), for comparison with published numbers;
    * ``au``: active units at δ = ``au_threshold``;
    * ``nll``: importance-weighted NLL with K = ``num_samples`` (0 skips it), with Pareto k̂;
      on all N points, or on ``nll_size`` of them drawn uniformly without replacement with
      ``seed`` (``nll_num_points``; the per-datapoint values of the others are NaN). The
      subset's mean is unbiased for the full set's, with the standard error of ``nll_size``
      points; its cost is ``nll_size / N`` of the full pass, the part of a diagnosis that
      dominates on a CPU (N · K decoder passes);
    * ``accuracy`` (logistic regression) and ``accuracy_knn`` (5-NN), fractions in [0, 1],
      when ``labels``, ``train_data`` and ``train_labels`` are given;
    * given ``num_tokens`` (tokens per datapoint, e.g. from
      :meth:`~pyro_skipvae.models.Likelihood.num_tokens`), per-token values: ``elbo_per_token``
      = Σ ELBO / Σ tokens, the perplexity bound ``ppl_bound`` = exp(−Σ ELBO / Σ tokens),
      ``nll_per_token`` and the importance-weighted perplexity ``iw_ppl`` = exp(Σ NLL / Σ
      tokens); standard errors of these ratios by the delta method (:func:`ratio_and_se`).

    Standard errors are under ``<key>_se``; estimator names and settings under ``estimators``.

    :param model: Pyro model following the site contract.
    :param guide: Pyro guide following the site contract (e.g. a refined guide
        ``lambda x: guide(x, local_params=refine(x))``), or a :class:`~.latent.Posteriors`.
    :param torch.Tensor data: evaluation data ``(N, ...)``, in the likelihood's support.
    :param int num_samples: importance samples K of the IW-NLL (default 500; 0 skips it).
    :param int nll_size: score the IW-NLL on this many random points (default: all N).
    :param int chunk_size: datapoints per guide call and per IW batch (default 100); the
        minibatch MI needs ``mi_batch_size`` rows at a time, which any diagonal-Gaussian guide
        allows (other guides: make the two equal).
    :param int particle_chunk: importance samples per model call (default: see
        :func:`~.nll.importance_sample`); lower it when the decoder's output is large.
    :param torch.Tensor num_tokens: ``(N,)`` tokens of each datapoint, for per-token metrics.
    :returns: dict with ``metrics`` (JSON-able flat dict), ``per_datapoint`` (dict of
        tensors with leading dimension N), ``codes`` (posterior means ``(N, D)``) and
        ``kl_per_dim`` (``(D,)`` or ``None``).
    """
    pyro.set_rng_seed(seed)
    chunk_size = 100 if chunk_size is None else chunk_size
    timings = {}
    tic = time.perf_counter()
    post = (
        guide
        if isinstance(guide, Posteriors)
        else Posteriors(guide, data, chunk_size=chunk_size, progress=progress)
    )
    timings["encode"] = time.perf_counter() - tic
    n = post.num_points
    metrics = {"num_points": n, "latent_dim": post.latent_dim, "log_n": math.log(n), "seed": seed}
    estimators = {}
    per = {}

    tic = time.perf_counter()
    elbos = [
        elbo_terms(model, post.guide(s, s + x.shape[0]), x)[0]
        for (x, _, _), s in zip(post.chunks(), post.starts)
    ]
    elbo = mean_and_se(torch.cat(elbos))
    kl = expected_kl(model, post)
    per["elbo"], per["kl"] = elbo.per_datapoint, kl.per_datapoint
    metrics.update(elbo=float(elbo), elbo_se=elbo.se, kl=float(kl), kl_se=kl.se)
    estimators["elbo"] = "one reparameterised sample of log p(x|z) minus the KL below"
    estimators["kl"] = f"{kl.estimator} KL(q(z|x)||p(z)) per datapoint, mean over data"
    try:
        kl_dims = kl_per_dimension(model, post)
        per["kl_per_dim"] = kl_dims
        kl_dims_mean = kl_dims.double().mean(0)
        metrics["kl_per_dim"] = [round(v, 6) for v in kl_dims_mean.tolist()]
    except ConfigError as e:  # a non-factorising prior: per-dimension KL is undefined
        logger.info("no per-dimension KL: %s", e)
        kl_dims_mean = None
    timings["elbo_kl"] = time.perf_counter() - tic

    tic = time.perf_counter()
    terms = aggregate_posterior_terms(
        model, post, None, num_samples=mi_num_samples, progress=progress
    )
    mi, agg = terms["mi"], terms["agg_kl"]
    per["mi"], per["agg_kl"] = mi.per_datapoint, agg.per_datapoint
    metrics.update(
        mi=float(mi),
        mi_se=mi.se,
        mi_mc_se=mi.info["mc_se"],
        agg_kl=float(agg),
        agg_kl_se=agg.se,
        agg_kl_mc_se=agg.info["mc_se"],
    )
    metrics["checks"] = consistency_checks(metrics)
    estimators["mi"] = (
        f"full-set: aggregate posterior = mixture of q(z|x_n) over all N={n} points, exact; "
        f"{mi_num_samples} z draw(s) per point; ceiling log N = {math.log(n):.3f}"
    )
    estimators["agg_kl"] = "full-set, same mixture and draws as mi"
    timings["mi_agg_kl"] = time.perf_counter() - tic

    mb = None
    if mi_batch_size:
        try:
            mb = minibatch_mutual_information(post, batch_size=mi_batch_size)
        except NotImplementedError as e:  # a non-Gaussian guide whose chunks cannot be re-cut
            logger.warning("no minibatch MI: %s", e)
    if mb is not None:
        metrics.update(
            mi_minibatch=float(mb), mi_minibatch_se=mb.se, mi_minibatch_cap=mb.info["cap"]
        )
        estimators["mi_minibatch"] = (
            f"{mb.estimator}: capped at log {mi_batch_size} = {math.log(mi_batch_size):.3f}"
        )

    codes = post.means()
    variances = posterior_mean_variance(post, None)
    metrics.update(au=int((variances > au_threshold).sum()), au_threshold=au_threshold)
    metrics["posterior_mean_variance"] = [round(v, 6) for v in variances.tolist()]
    estimators["au"] = f"Var over all N points of E_q[z_d|x] > {au_threshold:g} (Burda et al. 2016)"
    per["posterior_mean"] = codes
    try:
        per["posterior_scale"] = torch.cat([fn.stddev for fn in post.fns])
    except NotImplementedError:
        pass

    if num_samples:
        tic = time.perf_counter()
        iw_post, subset = post, None
        if nll_size is not None and nll_size < n:
            generator = torch.Generator().manual_seed(seed)
            subset = torch.randperm(n, generator=generator)[:nll_size].sort().values
            try:
                iw_post = post.subset(subset)
            except NotImplementedError:  # a guide whose q cannot be re-cut: encode the subset
                iw_post = Posteriors(
                    guide, data[subset.to(data.device)], chunk_size=chunk_size, progress=progress
                )
        iw = importance_sample(
            model,
            iw_post,
            num_samples=num_samples,
            batch_size=iw_batch_size or post.chunk_size,
            particle_chunk=particle_chunk,
            keep_log_weights=keep_log_weights,
            progress=progress,
        )
        nll = iw.estimate()
        summary = iw.pareto_summary()
        scored = {"nll": iw.nll, "pareto_k": iw.pareto_k, "ess": iw.ess, "nll_mc_var": iw.mc_var}
        if keep_log_weights:
            scored["log_weights"] = iw.log_weights
        per.update(scored if subset is None else _spread(scored, subset, n))
        metrics.update(
            nll=float(nll),
            nll_se=nll.se,
            nll_mc_se=nll.info["mc_se"],
            nll_num_samples=num_samples,
            nll_num_points=n if subset is None else len(subset),
            pareto_k_share_above=summary["share_above"],
            pareto_k_share_above_0_5=summary["share_above_0.5"],
            pareto_k_max=summary["max"],
            pareto_k_threshold=summary["threshold"],
            pareto_warning=summary["warning"],
        )
        estimators["nll"] = (
            f"{nll.estimator}; nll_se = std over points/sqrt(N), nll_mc_se = Monte-Carlo part "
            "(delta method); Pareto k-hat by arviz.psislw per datapoint"
        )
        timings["nll"] = time.perf_counter() - tic

    if num_tokens is not None:
        tokens = torch.as_tensor(num_tokens).double()
        per["num_tokens"] = tokens
        metrics["num_tokens"] = int(tokens.sum())
        rates = [("elbo", "ppl_bound", -1.0)]
        if "nll" in metrics:
            rates.append(("nll", "iw_ppl", 1.0))
        for key, ppl, sign in rates:
            scored = ~torch.isnan(per[key].double().cpu())  # the IW-NLL may score a subset
            value, se = ratio_and_se(per[key][scored], tokens[scored])
            metrics.update({f"{key}_per_token": value, f"{key}_per_token_se": se})
            metrics[ppl] = math.exp(sign * value)
            metrics[f"{ppl}_se"] = metrics[ppl] * se
        estimators["ppl_bound"] = (
            "exp(−Σ ELBO / Σ tokens) with the ELBO above; tokens: the real tokens of each "
            "datapoint (text: the words and the end-of-sentence token, not BOS)"
        )
        if "iw_ppl" in metrics:
            estimators["iw_ppl"] = "exp(Σ IW-NLL / Σ tokens) with the IW-NLL above"

    if labels is not None:
        per["label"] = labels
        if train_data is not None and train_labels is not None:
            tic = time.perf_counter()
            train_codes = (
                None
                if isinstance(guide, Posteriors)
                else Posteriors(guide, train_data, chunk_size=chunk_size, progress=progress).means()
            )
            if train_codes is None:
                logger.warning(
                    "no classification accuracy: pass a guide, not Posteriors, to encode train_data"
                )
            else:
                acc = classification_accuracy(
                    train_codes, train_labels, codes, labels, classifiers=classifiers
                )
                values, described = accuracy_metrics(acc)
                metrics.update(values)
                estimators.update(described)
                metrics["classifier_num_train"] = int(train_codes.shape[0])
            timings["accuracy"] = time.perf_counter() - tic
    metrics["estimators"] = estimators
    metrics["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return {
        "metrics": metrics,
        "per_datapoint": per,
        "codes": codes,
        "kl_per_dim": kl_dims_mean,
        "posterior_mean_variance": variances,
    }


def accuracy_metrics(results: dict, fitted_on: str = "training points") -> tuple[dict, dict]:
    """The metrics (``accuracy`` for logistic regression, ``accuracy_<name>`` for the others,
    each with ``_se``) and the estimator descriptions of
    :func:`~.classify.classification_accuracy`'s ``results``."""
    values, described = {}, {}
    for name, r in results.items():
        key = "accuracy" if name == "logistic" else f"accuracy_{name}"
        values.update({key: r["accuracy"], f"{key}_se": r["accuracy_se"]})
        described[key] = f"{r['classifier']}; fitted on {r['num_train']} {fitted_on}"
    return values, described


def _spread(per_point: dict, index: torch.Tensor, n: int) -> dict:
    """Per-datapoint tensors of the rows ``index`` placed in length-``n`` tensors, NaN elsewhere."""
    spread = {}
    for key, values in per_point.items():
        full = torch.full((n, *values.shape[1:]), math.nan, dtype=values.dtype)
        full[index] = values.cpu()
        spread[key] = full
    return spread


def ratio_and_se(values, counts) -> tuple[float, float]:
    r"""R = Σ_n v_n / Σ_n c_n (e.g. nats per token) and its standard error over datapoints,
    by the delta method for a ratio of means (Cochran 1977, §6.4): with residuals
    r_n = v_n − R c_n,

    .. math::

        \mathrm{se}(R) = \frac{\sqrt{N/(N-1)\,\sum_n r_n^2}}{\sum_n c_n}.

    Long sentences have both more nats and more tokens; the residuals remove that shared
    part, which a standard error of Σ v_n alone would count as noise.
    """
    values, counts = values.double(), torch.as_tensor(counts).double()
    ratio = (values.sum() / counts.sum()).item()
    n = values.shape[0]
    if n < 2:
        return ratio, math.nan
    residuals = values - ratio * counts
    return ratio, math.sqrt(n / (n - 1) * residuals.pow(2).sum().item()) / counts.sum().item()


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


# ---------------------------------------------------------------------------- plots
@torch.no_grad()
def decode(model, z, x_like):
    """What codes ``z`` of shape ``(n, D)`` look like: the mean of p(x | z), read from the
    model's site ``"x"`` with ``z`` conditioned (``x_like``: any n datapoints of the right
    shape). For an autoregressive decoder (``model.decoder.autoregressive``) that mean would
    be teacher-forced on ``x_like`` and look right whatever z is, so x is *sampled* instead,
    position by position (:meth:`~pyro_skipvae.models.Decoder.sample`)."""
    decoder = getattr(model, "decoder", None)
    if getattr(decoder, "autoregressive", False):
        return decoder.sample(z, model.likelihood)
    trace = poutine.trace(poutine.condition(model, data={LATENT_SITE: z})).get_trace(x_like)
    return trace.nodes[OBSERVED_SITE]["fn"].mean


@torch.no_grad()
def prior_sample(model, x_like):
    """z ~ p(z), one per row of ``x_like``, read from the model's site ``"z"``."""
    trace = poutine.trace(poutine.block(model, hide=[OBSERVED_SITE])).get_trace(x_like)
    return trace.nodes[LATENT_SITE]["fn"].sample()


def plot_diagnostics(
    model,
    data,
    result,
    out_dir,
    *,
    labels=None,
    embedding="tsne",
    max_points=3000,
    prefix="",
    seed=0,
) -> list[str]:
    """Write the PNGs for a :func:`diagnose` result into ``out_dir``; return their paths.

    ``embedding.png`` (t-SNE or PCA of posterior means, coloured by label), and for image
    data ``reconstructions.png``, ``samples.png`` (decoded prior samples),
    ``traversals.png`` (the 8 dimensions with most KL, ±3 around one datapoint's code),
    plus ``kl_per_dim.png``. Images are decoded by :func:`decode` (sampled, for
    autoregressive decoders).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    paths = []

    def save(fig, name):
        path = out_dir / f"{prefix}{name}"
        plots.save_figure(fig, path)
        paths.append(str(path))

    codes = result["codes"]
    save(
        plots.plot_embedding(codes, labels, method=embedding, max_points=max_points, seed=seed),
        "embedding.png",
    )
    if result["kl_per_dim"] is not None:
        threshold = result["metrics"]["au_threshold"]
        save(
            plots.plot_kl_per_dimension(
                result["kl_per_dim"],
                variances=result["posterior_mean_variance"],
                threshold=threshold,
            ),
            "kl_per_dim.png",
        )
    data_shape = tuple(data.shape[1:])
    if plots.is_image_shape(data_shape):
        # Autoregressive decoders' pictures are draws, not means (see decode): say so.
        drawn = getattr(getattr(model, "decoder", None), "autoregressive", False)
        x = data[:20]
        save(
            plots.plot_reconstructions(
                x,
                decode(model, codes[:20], x),
                title="Data and reconstructions (x ~ p(x|E[z|x]), drawn pixel by pixel)"
                if drawn
                else None,
            ),
            "reconstructions.png",
        )
        x_like = data[:30]
        save(
            plots.plot_samples(
                decode(model, prior_sample(model, x_like), x_like),
                title="Samples from the prior (x ~ p(x|z), z ~ p(z), drawn pixel by pixel)"
                if drawn
                else None,
            ),
            "samples.png",
        )
        kl = result["kl_per_dim"]
        if kl is None:
            kl = result["posterior_mean_variance"]
        dims = torch.argsort(torch.as_tensor(kl), descending=True)[:8].tolist()
        values = torch.linspace(-3, 3, 9)
        base = codes[0]
        z = base.repeat(len(dims), len(values), 1)
        for i, d in enumerate(dims):
            z[i, :, d] = values.to(z.dtype)
        flat = z.reshape(-1, z.shape[-1])
        x_like = data[:1].expand(flat.shape[0], *data_shape)
        images = decode(model, flat, x_like).reshape(len(dims), len(values), *data_shape)
        save(
            plots.plot_traversals(
                images,
                dims,
                values.tolist(),
                title="Latent traversals of the 8 dims with most KL (others at E[z|x_0])",
            ),
            "traversals.png",
        )
    return paths


# ---------------------------------------------------------------------------- outputs
def per_datapoint_dataset(result, *, attrs=None):
    """The per-datapoint tensors of a :func:`diagnose` result as an :class:`xarray.Dataset`
    (dimensions ``datapoint``, ``latent_dim`` and, if kept, ``particle``)."""
    import xarray as xr

    dims = {1: ("datapoint",), 2: ("datapoint", "latent_dim")}
    variables = {}
    for name, value in result["per_datapoint"].items():
        value = value.detach().cpu()
        d = ("datapoint", "particle") if name == "log_weights" else dims[value.dim()]
        variables[name] = (d, value.numpy())
    metrics = result["metrics"]
    plain = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    }
    return xr.Dataset(variables, attrs={**plain, **(attrs or {})})


def write_netcdf(dataset, path) -> None:
    """Write an xarray Dataset as netCDF4 (h5netcdf engine) atomically."""
    with atomic_path(path) as tmp:
        dataset.to_netcdf(tmp, engine="h5netcdf")


def _cell(metrics, key, digits=2):
    value = metrics.get(key)
    if value is None:
        return "–"
    if key == "au":
        return f"{value} / {metrics.get('latent_dim', '?')}"
    if key.startswith("accuracy") or key == "pareto_k_share_above":
        se = metrics.get(f"{key}_se")
        return f"{100 * value:.2f}" + (f" ± {100 * se:.2f}" if se is not None else "")
    se = metrics.get(f"{key}_se")
    return f"{value:.{digits}f}" + (
        f" ± {se:.{digits}f}" if se is not None and math.isfinite(se) else ""
    )


def format_table(metrics: dict) -> str:
    """A readable two-column table of one :func:`diagnose` result's metrics."""
    rows = [
        (f"{label} ({unit})", _cell(metrics, key))
        for key, label, unit in TABLE_ROWS
        if key in metrics
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b}" for a, b in rows]
    if metrics.get("pareto_warning"):
        lines.append(f"warning: {metrics['pareto_warning']}")
    return "\n".join(lines)


def compare_table(named_metrics) -> tuple[str, str]:
    """Side-by-side table of several results: ``(markdown, csv)``.

    :param named_metrics: list of ``(name, metrics)`` pairs.
    """
    names = [name for name, _ in named_metrics]
    keys = [row for row in TABLE_ROWS if any(row[0] in m for _, m in named_metrics)]
    header = ["metric", *names]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label, unit in keys:
        md.append(
            "| "
            + " | ".join([f"{label} ({unit})", *(_cell(m, key) for _, m in named_metrics)])
            + " |"
        )
    extra = ["split", "num_points", "nll_num_samples", "refine_steps"]
    for key in extra:
        if any(key in m for _, m in named_metrics):
            md.append(
                "| " + " | ".join([key, *(str(m.get(key, "–")) for _, m in named_metrics)]) + " |"
            )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    csv_keys = []
    for key, _, _ in keys:
        csv_keys += [key, f"{key}_se"] if any(f"{key}_se" in m for _, m in named_metrics) else [key]
    csv_keys += [k for k in extra if any(k in m for _, m in named_metrics)]
    writer.writerow(["run", *csv_keys])
    for name, m in named_metrics:
        writer.writerow([name, *(m.get(k, "") if m.get(k) is not None else "" for k in csv_keys)])
    return "\n".join(md) + "\n", buffer.getvalue()


__all__ = [
    "CLASSIFIERS",
    "compare_table",
    "decode",
    "diagnose",
    "format_table",
    "per_datapoint_dataset",
    "plot_diagnostics",
    "prior_sample",
    "write_netcdf",
]
