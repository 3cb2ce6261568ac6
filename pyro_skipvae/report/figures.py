"""Pictures for the report, embedded as ``data:`` URIs so the page needs no other file.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas
(:class:`matplotlib.backends.backend_agg.FigureCanvasAgg`): no pyplot, so no global backend
is selected or switched and a user's interactive session is left as it was.
"""

import base64
import io
import math
from pathlib import Path

#: one colour per run, in order (matplotlib's tab10); the page underlines each run's name in
#: its colour, so the figures' legends and the tables agree
RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def data_uri(data, mime="image/png") -> str:
    """``data:`` URI of a file (a path) or of bytes."""
    if isinstance(data, str | Path):
        data = Path(data).read_bytes()
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _column(history, key):
    epochs = [r["epoch"] for r in history if _finite(r.get(key))]
    return epochs, [r[key] for r in history if _finite(r.get(key))]


def _finite(value):
    return isinstance(value, int | float) and math.isfinite(value)


def training_curves(named_histories, *, dpi=100) -> bytes | None:
    """PNG of the training curves of one or more runs: colour tells the run, line style the
    series.

    Panels: ELBO per epoch (validation solid, with the selected epoch circled; training
    dotted: the β-weighted bound while β < 1; for semi-amortized runs the validation bound
    is the refined one and the amortized ELBO is dashed), validation KL (amortized KL dashed),
    β, and, when a run is semi-amortized, the amortization gap (refined minus amortized
    validation ELBO).

    :param named_histories: list of ``(name, records of metrics.jsonl)``.
    :returns: PNG bytes, or ``None`` if no run has finished an epoch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    named_histories = [(n, h) for n, h in named_histories if h]
    if not named_histories:
        return None
    semi_amortized = any("val_amortization_gap" in r for _, h in named_histories for r in h)
    fig = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, 2)
    axes = {"elbo": grid[0, 0], "kl": grid[0, 1], "beta": grid[1, 0], "gap": grid[1, 1]}
    for i, (_, history) in enumerate(named_histories):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        for key, style in (("val_elbo", "-"), ("train_elbo", ":"), ("val_elbo_amortized", "--")):
            axes["elbo"].plot(*_column(history, key), style, color=colour)
        selected = [r for r in history if r["epoch"] == history[-1].get("selected")]
        if selected and _finite(selected[0].get("val_elbo")):
            axes["elbo"].plot(
                selected[0]["epoch"], selected[0]["val_elbo"], "o", color=colour, mfc="none", ms=9
            )
        for key, style in (("val_kl", "-"), ("val_kl_amortized", "--")):
            axes["kl"].plot(*_column(history, key), style, color=colour)
        axes["beta"].plot(*_column(history, "beta"), "-", color=colour)
        axes["gap"].plot(*_column(history, "val_amortization_gap"), "-", color=colour)
    titles = {
        "elbo": "ELBO per datapoint (nats; higher is better)",
        "kl": "KL(q(z|x) ‖ p(z)) on validation data (nats)",
        "beta": "β, the weight of the KL term (warm-up)",
        "gap": "Amortization gap: refined − amortized ELBO (nats)",
    }
    for key, ax in axes.items():
        if key == "gap" and not semi_amortized:
            continue  # this slot holds the legend
        ax.set_title(titles[key], fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _set_elbo_limits(axes["elbo"], named_histories)
    runs = [
        Line2D([], [], color=RUN_COLOURS[i % len(RUN_COLOURS)], lw=3, label=name)
        for i, (name, _) in enumerate(named_histories)
    ]
    styles = [
        Line2D([], [], color="k", ls="-", label="validation"),
        Line2D([], [], color="k", ls=":", label="training (β-weighted while β < 1)"),
        Line2D([], [], color="k", marker="o", mfc="none", ls="", label="selected epoch (best.pt)"),
    ]
    if semi_amortized:
        styles.insert(1, Line2D([], [], color="k", ls="--", label="validation, amortized q"))
        axes["kl"].legend(handles=[styles[0], styles[1]], fontsize=8)
        fig.legend(handles=runs + styles, loc="outside upper center", ncols=4, fontsize=9)
    else:  # the fourth panel would be empty: the legend takes its place
        axes["gap"].set_axis_off()
        axes["gap"].legend(handles=runs + styles, loc="center", fontsize=10, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _set_elbo_limits(ax, named_histories):
    # The first epoch's bounds are far below the rest; clip the axis to what follows so the
    # differences between runs at the end stay visible (the table below has every number).
    values = [
        r[key]
        for _, h in named_histories
        for r in h[1 if len(h) > 2 else 0 :]
        for key in ("val_elbo", "train_elbo", "val_elbo_amortized")
        if _finite(r.get(key))
    ]
    if len(values) > 1:
        low, high = min(values), max(values)
        pad = 0.1 * (high - low) or 1.0
        ax.set_ylim(low - pad, high + pad)


def training_alt_text(named_histories) -> str:
    """What :func:`training_curves` shows, in words (the image's ``alt`` text)."""
    parts = []
    for name, history in named_histories:
        if not history:
            parts.append(f"{name}: no epoch finished yet.")
            continue
        first, last = history[0], history[-1]
        best = next((r for r in history if r["epoch"] == last.get("selected")), last)
        text = (
            f"{name}, {len(history)} epochs: validation ELBO from {_fmt(first.get('val_elbo'))} to "
            f"{_fmt(last.get('val_elbo'))} nats (selected epoch {best['epoch']}: "
            f"{_fmt(best.get('val_elbo'))}), KL from {_fmt(first.get('val_kl'))} to "
            f"{_fmt(last.get('val_kl'))} nats, β from {_fmt(first.get('beta'), 2)} to "
            f"{_fmt(last.get('beta'), 2)}"
        )
        if "val_amortization_gap" in last:
            text += f", amortization gap {_fmt(last['val_amortization_gap'])} nats at the end"
        parts.append(text + ".")
    return "Training curves per epoch. " + " ".join(parts)


def _fmt(value, digits=1):
    return f"{value:.{digits}f}" if _finite(value) else "–"


#: what each PNG written by ``skipvae diagnose`` shows (by file stem): a title, and for
#: figures whose content the metrics cannot describe, the alt text's description
FIGURE_TITLES = {
    "kl_per_dim": "KL per latent dimension",
    "embedding": "Map of the posterior means",
    "reconstructions": "Reconstructions",
    "samples": "Samples from the prior",
    "traversals": "Latent traversals",
}


def figure_title(stem: str) -> str:
    """``"kl_per_dim" → "KL per latent dimension"``; unknown stems in words."""
    return FIGURE_TITLES.get(stem, stem.replace("_", " ").capitalize())


def figure_alt(stem: str, name: str, metrics: dict, config: dict) -> str:
    """Alt text of a diagnostics figure of run ``name``: what it shows, with the numbers the
    metrics give (so a reader who cannot see it loses little)."""
    split = metrics.get("split", "evaluation")
    if stem == "kl_per_dim":
        return f"{name}: {_kl_bars_text(metrics)}"
    if stem == "embedding":
        method = {"tsne": "t-SNE", "pca": "PCA"}.get(metrics.get("embedding"), "2-D")
        text = (
            f"{name}: {method} map of the posterior means E[z|x] of up to 3000 {split} points, "
            "one dot per point, coloured by its label."
        )
        if metrics.get("accuracy_knn") is not None:
            text += (
                f" A 5-NN classifier on the means gets {100 * metrics['accuracy_knn']:.1f}% of "
                "the labels right."
            )
        return text
    if stem == "reconstructions":
        return (
            f"{name}: {split} images (rows labelled data) above their reconstructions (rows "
            "labelled recon.), decoded from their posterior means."
        )
    if stem == "samples":
        prior = config.get("model", {}).get("prior", "normal")
        return f"{name}: images decoded from latent codes drawn from the prior ({prior})."
    if stem == "traversals":
        return (
            f"{name}: latent traversals. Each row sets one of the latent dimensions with most "
            "KL to values from −3 to +3, the others held at one test image's posterior mean, "
            "and shows the decoded image."
        )
    return f"{name}: {stem.replace('_', ' ')}, a figure written by skipvae diagnose."


def _kl_bars_text(metrics):
    kl = metrics.get("kl_per_dim") or []
    variances = metrics.get("posterior_mean_variance") or []
    delta = metrics.get("au_threshold", 0.01)
    if not kl:
        return "bar chart of the KL of each latent dimension."
    active = [v > delta for v in variances] if len(variances) == len(kl) else [True] * len(kl)
    inactive = [f"z{d}" for d, a in enumerate(active) if not a]
    largest = sorted(range(len(kl)), key=lambda d: -kl[d])[:3]
    text = (
        f"bar chart of the KL of each of the {len(kl)} latent dimensions, {sum(kl):.1f} nats "
        f"in all; {sum(active)} active (blue), {len(inactive)} inactive (grey"
        + (
            ": " + ", ".join(inactive[:12]) + (" …" if len(inactive) > 12 else "")
            if inactive
            else ""
        )
        + "); largest: "
        + ", ".join(f"z{d} {kl[d]:.2f} nats" for d in largest)
        + "."
    )
    return text
