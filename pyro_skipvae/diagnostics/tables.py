"""Text tables of diagnose() metrics: one result as two columns (:func:`format_table`),
several side by side as Markdown and CSV (:func:`compare_table`). Formatting only; the
rows and their labels are :data:`TABLE_ROWS`, shared with the HTML report
(:mod:`pyro_skipvae.report.content`).
"""

import csv
import io
import math

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

#: settings shown below the metric rows of :func:`compare_table`, when a run has them
COMPARE_EXTRA = ["split", "num_points", "nll_num_samples", "refine_steps"]


def _cell(metrics, key, digits=2):
    """One table cell: ``value ± se`` (percent for accuracies and the k̂ share, ``au / D``
    for active units, ``–`` when the metric is missing)."""
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
    """A readable two-column table of one :func:`~pyro_skipvae.diagnostics.diagnose`
    result's metrics."""
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
    rows = [row for row in TABLE_ROWS if any(row[0] in m for _, m in named_metrics)]
    extra = [k for k in COMPARE_EXTRA if any(k in m for _, m in named_metrics)]
    return _markdown(named_metrics, rows, extra), _csv(named_metrics, rows, extra)


def _markdown(named_metrics, rows, extra) -> str:
    header = ["metric", *(name for name, _ in named_metrics)]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label, unit in rows:
        cells = [f"{label} ({unit})", *(_cell(m, key) for _, m in named_metrics)]
        md.append("| " + " | ".join(cells) + " |")
    for key in extra:
        md.append(
            "| " + " | ".join([key, *(str(m.get(key, "–")) for _, m in named_metrics)]) + " |"
        )
    return "\n".join(md) + "\n"


def _csv(named_metrics, rows, extra) -> str:
    """One row per run: each metric, its ``_se`` when any run has one, then ``extra``."""
    keys = []
    for key, _, _ in rows:
        keys += [key, f"{key}_se"] if any(f"{key}_se" in m for _, m in named_metrics) else [key]
    keys += extra
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", *keys])
    for name, m in named_metrics:
        writer.writerow([name, *(m.get(k, "") if m.get(k) is not None else "" for k in keys)])
    return buffer.getvalue()
