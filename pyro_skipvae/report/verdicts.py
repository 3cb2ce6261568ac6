"""Plain-language readings of a run's diagnostics, with the thresholds behind them.

Each function takes the metrics of ``diagnostics.json`` and returns a dict with ``level``
(a short machine-readable word), ``label`` (a few words), ``summary`` (one sentence),
``notes`` (further sentences) and ``thresholds`` (the rules used, as sentences), so the page
can say both what it concluded and why.
"""

import math

#: total KL (nats per datapoint) below which z is said to carry nothing: 0.1 nats is
#: 0.14 bits, less than one pixel's worth of information about x.
COLLAPSED_KL = 0.1
#: MI at or above this share of its ceiling log N cannot separate runs (PAPER.md §3).
MI_CEILING_SHARE = 0.95
#: the share of points with k̂ above the threshold up to which the IW-NLL is called reliable,
#: and up to which it is "usable with care"
PSIS_RELIABLE_SHARE, PSIS_USABLE_SHARE = 0.01, 0.10


def percent(share: float) -> str:
    """``0.9906 → "99.1%"``, ``0.25 → "25%"``: a decimal only where rounding would mislead."""
    value = 100 * share
    if value in (0, 100) or 1 <= value <= 99:
        return f"{value:.0f}%"
    if 0 < value < 0.05:
        return "< 0.1%"
    if 99.95 <= value < 100:
        return "> 99.9%"
    return f"{value:.1f}%"


def nats(value: float) -> str:
    """Two decimals below 10 nats, one above."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def collapse_verdict(metrics: dict) -> dict:
    r"""Is the latent code used? Read from active units, KL and mutual information.

    Levels, with D latent dimensions, A active units (Var_x E_q[z_d|x] > δ, Burda et al.
    2016) and KL = E_x KL(q(z|x) ‖ p(z)):

    * ``collapsed``: A = 0 or KL < :data:`COLLAPSED_KL` nats;
    * ``partial``: 0 < A < D (some dimensions copy the prior);
    * ``none``: A = D.

    Notes add the MI reading (at its ceiling log N when MI ≥ :data:`MI_CEILING_SHARE` · log N,
    where it cannot rank runs), the split KL = MI + KL(q(z) ‖ p(z)) (Hoffman & Johnson 2016),
    the label accuracy of the posterior means, and any failed consistency check.

    :param dict metrics: ``diagnostics.json`` (needs ``kl``, ``au``, ``latent_dim``).
    :returns: dict with ``level``, ``label``, ``summary``, ``notes``, ``thresholds``.
    """
    kl, au, dims = metrics.get("kl"), metrics.get("au"), metrics.get("latent_dim")
    delta = metrics.get("au_threshold", 0.01)
    thresholds = [
        f"a dimension d is active when the variance over the data of its posterior mean "
        f"E[z_d|x] exceeds δ = {delta:g}",
        f"collapse: no active dimension, or KL below {COLLAPSED_KL:g} nats",
        "partial collapse: at least one inactive dimension",
        f"MI at its ceiling: MI ≥ {percent(MI_CEILING_SHARE)} of log N",
    ]
    if kl is None or au is None or dims is None:
        return {
            "level": "unknown",
            "label": "Unknown",
            "summary": "The diagnostics lack KL or active units; rerun `skipvae diagnose`.",
            "notes": [],
            "thresholds": thresholds,
        }
    if au == 0 or kl < COLLAPSED_KL:
        level, label = "collapsed", "Posterior collapse"
        summary = (
            f"The posterior does not depend on the data: KL {nats(kl)} nats, {au} of {dims} "
            "dimensions active, so the code carries no information about x."
        )
    elif au < dims:
        level, label = "partial", "Partial collapse"
        carried = _kl_of_active(metrics)
        summary = (
            f"{dims - au} of {dims} latent dimensions are unused; the {au} active ones carry "
            f"{nats(kl if carried is None else carried)} of the {nats(kl)} nats of KL."
        )
    else:
        level, label = "none", "No collapse"
        summary = f"All {dims} latent dimensions are active (KL {nats(kl)} nats)."

    return {
        "level": level,
        "label": label,
        "summary": summary,
        "notes": _collapse_notes(metrics),
        "thresholds": thresholds,
    }


def _collapse_notes(metrics: dict) -> list[str]:
    """The MI reading, the KL split, the label accuracies and failed checks, in words."""
    kl = metrics["kl"]
    notes = []
    mi, log_n = metrics.get("mi"), metrics.get("log_n")
    if mi is not None and log_n:
        if mi >= MI_CEILING_SHARE * log_n:
            notes.append(
                f"Mutual information {mi:.2f} nats is at its ceiling log N = {log_n:.2f} "
                f"(N = {metrics.get('num_points', 0):,} points), so it cannot rank runs here; "
                "compare KL and active units instead."
            )
        else:
            notes.append(f"Mutual information {mi:.2f} nats, of at most log N = {log_n:.2f}.")
        agg = metrics.get("agg_kl")
        if agg is not None and kl >= COLLAPSED_KL:
            notes.append(
                f"Of the KL of {nats(kl)} nats, {nats(mi)} are information about x (MI) and "
                f"{nats(agg)} the mismatch between the aggregate posterior and the prior."
            )
    accuracies = [
        f"{percent(metrics[key])} ({name})"
        for key, name in (("accuracy", "logistic regression"), ("accuracy_knn", "5-NN"))
        if metrics.get(key) is not None
    ]
    if accuracies:
        notes.append(
            "Classifiers fitted on the posterior means predict the labels of "
            + " and ".join(accuracies)
            + f" of {metrics.get('split', 'evaluation')} points."
        )
    failed = [name for name, ok in (metrics.get("checks") or {}).items() if not ok]
    if failed:
        notes.append(
            "Warning: the estimates fail the consistency checks "
            + ", ".join(failed)
            + "; treat these numbers with suspicion."
        )
    return notes


def _kl_of_active(metrics):
    per_dim, variances = metrics.get("kl_per_dim"), metrics.get("posterior_mean_variance")
    if not per_dim or not variances or len(per_dim) != len(variances):
        return None
    delta = metrics.get("au_threshold", 0.01)
    return sum(k for k, v in zip(per_dim, variances) if v > delta)


def psis_verdict(metrics: dict) -> dict:
    r"""Can the importance-weighted NLL be trusted? Read from the Pareto k̂ of each point.

    PSIS k̂ (Vehtari et al. 2024) estimates the tail index of a point's importance weights
    p(x, z_k) / q(z_k|x): above 0.7 the weights' variance is so large (or infinite) that the
    K-sample estimate is unreliable; between 0.5 and 0.7 it converges slowly. Levels, by the
    share s of points above the threshold: ``reliable`` (s ≤ :data:`PSIS_RELIABLE_SHARE`),
    ``usable`` (s ≤ :data:`PSIS_USABLE_SHARE`), ``unreliable`` (above), or ``missing``
    (no IW-NLL, or K too small for k̂).

    :param dict metrics: ``diagnostics.json``.
    :returns: dict with ``level``, ``label``, ``summary``, ``notes``, ``thresholds``.
    """
    threshold = metrics.get("pareto_k_threshold", 0.7)
    num_samples = metrics.get("nll_num_samples")
    thresholds = [
        f"a point's importance sampling is reliable when its k̂ ≤ {threshold:g}",
        f"the IW-NLL is called reliable when at most {percent(PSIS_RELIABLE_SHARE)} of points "
        f"exceed it, usable with care up to {percent(PSIS_USABLE_SHARE)}",
    ]
    if num_samples and num_samples > 10:
        strict = min(1 - 1 / math.log10(num_samples), 0.7)
        if strict < threshold:
            thresholds.append(
                f"Vehtari et al.'s sample-size-aware threshold, 1 − 1/log₁₀ K = {strict:.2f} for "
                f"K = {num_samples}, is stricter still"
            )
    missing = {"level": "missing", "label": "Not measured", "notes": [], "thresholds": thresholds}
    if metrics.get("nll") is None:
        return {**missing, "summary": "No importance-weighted NLL (diagnosed with K = 0 samples)."}
    share = metrics.get("pareto_k_share_above")
    if share is None:
        return {
            **missing,
            "summary": f"No Pareto k̂: K = {num_samples} importance samples are too few to fit it.",
        }
    split = metrics.get("split", "evaluation")
    summary = (
        f"Importance sampling reliable for {percent(1 - share)} of {split} points "
        f"(k̂ ≤ {threshold:g} with K = {num_samples} samples from q)."
    )
    notes = []
    if share <= PSIS_RELIABLE_SHARE:
        level, label = "reliable", "Reliable"
        notes.append("The IW-NLL can be trusted.")
    elif share <= PSIS_USABLE_SHARE:
        level, label = "usable", "Usable with care"
        notes.append(
            "The IW-NLL is usable, but for some points a few importance weights dominate; "
            "their contribution may be overestimated."
        )
    else:
        level, label = "unreliable", "Unreliable"
        notes.append(
            "The IW-NLL is unreliable: for most points a few importance weights dominate, so "
            "the estimate may lie well above the true NLL (it is an upper bound only on "
            "average). More samples or a better proposal (a refined q) would tighten it."
        )
    slow = metrics.get("pareto_k_share_above_0_5")
    if slow is not None and slow > share:
        notes.append(
            f"k̂ between 0.5 and {threshold:g} (reliable, slow to converge) for "
            f"{percent(slow - share)} of points."
        )
    return {
        "level": level,
        "label": label,
        "summary": summary,
        "notes": notes,
        "thresholds": thresholds,
    }
