"""Assemble the report page from run folders: the context for the template, and the HTML."""

import datetime
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..checkpoint import atomic_write_text
from ..errors import ConfigError
from . import content, figures
from .runs import RunFiles, load_run
from .verdicts import collapse_verdict, psis_verdict

logger = logging.getLogger(__name__)

#: the page's sections in order: (id, heading). Sections without content for any run are
#: left out (images for text models, sentences for image models; everything after the
#: training curves when no run has been diagnosed).
SECTIONS = [
    ("summary", "Collapse verdicts"),
    ("configs", "Configurations"),
    ("training", "Training curves"),
    ("diagnostics", "Diagnostics"),
    ("psis", "Can the likelihood estimate be trusted?"),
    ("kl-per-dim", "KL per latent dimension"),
    ("embedding", "Map of the posterior means"),
    ("images", "Reconstructions and samples"),
    ("text", "Sentences"),
    ("glossary", "How to read this page"),
]
IMAGE_FIGURES = ("reconstructions", "samples", "traversals")
#: sections of a text model's decoded sentences (:attr:`.runs.RunFiles.texts`), with titles
TEXT_TITLES = {
    "samples": "Sentences decoded from the prior",
    "reconstructions": "Reconstructions (input, then greedy and sampled decodings of its code)",
    "homotopies": "Homotopies (decoded along a line between two sentences' codes)",
}


def describe(config: dict, epochs_done: int) -> str:
    """A run's kind in a few words, e.g. ``"Skip-VAE, mlp decoder, 32-dim latent, 10 epochs
    on mnist"`` (``"3 of 10 epochs"`` for a run still training)."""
    model, train, run = config.get("model", {}), config.get("train", {}), config.get("run", {})
    semi_amortized = train.get("inference") == "semi-amortized"
    planned = train.get("num_epochs", epochs_done)
    epochs = f"{epochs_done} of {planned}" if epochs_done < planned else str(epochs_done)
    return ", ".join(
        [
            ("Skip-VAE" if model.get("skip") else "VAE")
            + (" with semi-amortized inference" if semi_amortized else ""),
            f"{model.get('decoder', '?')} decoder",
            f"{model.get('latent_dim', '?')}-dim latent",
            f"{epochs} epochs on {run.get('dataset', 'unknown data')}",
        ]
    )


def evaluation_text(metrics: dict) -> str:
    """How a run was diagnosed, in one sentence."""
    refine = metrics.get("num_refine_steps") or 0
    text = f"{metrics.get('split', '?')} split, N = {metrics.get('num_points', 0):,} points; " + (
        f"q refined with {refine} gradient steps per point"
        if refine
        else "q from the amortized encoder"
    )
    if metrics.get("nll_num_samples"):
        text += f"; IW-NLL with K = {metrics['nll_num_samples']} importance samples"
    return text + "."


def diagnose_command(run_dir) -> str:
    return f"skipvae diagnose {shlex.quote(str(run_dir))}"


def _run_context(run: RunFiles, index: int) -> dict:
    metrics = run.diagnostics
    headers, rows = content.history_rows(run.history)
    context = {
        "name": run.name,
        "path": str(run.path),
        "colour": figures.RUN_COLOURS[index % len(figures.RUN_COLOURS)],
        "description": describe(run.config, len(run.history)),
        "diagnosed": metrics is not None,
        "diagnose_command": diagnose_command(run.path),
        "history_headers": headers,
        "history_rows": rows,
        "figures": {},
        "texts": [],
    }
    if metrics is None:
        return context
    context.update(
        verdict=collapse_verdict(metrics),
        psis=psis_verdict(metrics),
        evaluation=evaluation_text(metrics),
        glance={
            "au": f"{metrics['au']} / {metrics['latent_dim']}" if "au" in metrics else "–",
            "kl": _fmt(metrics.get("kl")),
            "mi": _fmt(metrics.get("mi")),
            "log_n": _fmt(metrics.get("log_n")),
            "nll": _fmt(metrics.get("nll")),
        },
    )
    for stem, path in run.figures.items():
        context["figures"][stem] = {
            "uri": figures.data_uri(path),
            "alt": figures.figure_alt(stem, run.name, metrics, run.config),
            "title": figures.figure_title(stem),
        }
    context["texts"] = [
        {"title": TEXT_TITLES.get(stem, stem.replace("_", " ").capitalize()), "text": text}
        for stem, text in run.texts.items()
    ]
    return context


def _fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def report_context(runs: list[RunFiles], *, title=None) -> dict:
    """Everything the template needs, as plain data."""
    contexts = [_run_context(run, i) for i, run in enumerate(runs)]
    names = [run.name for run in runs]
    rows = content.config_rows([run.config for run in runs])
    named_histories = [(run.name, run.history) for run in runs]
    curves = figures.training_curves(named_histories)
    diagnosed = [c for c in contexts if c["diagnosed"]]
    present = {"summary", "configs", "training", "diagnostics", "glossary"}
    # images in a fixed order, then any other figure diagnose wrote
    image_keys = [*IMAGE_FIGURES, *sorted({k for c in contexts for k in c["figures"]})]
    image_sections = [
        (key, figures.figure_title(key))
        for key in dict.fromkeys(image_keys)
        if key not in ("kl_per_dim", "embedding") and any(key in c["figures"] for c in contexts)
    ]
    if diagnosed:
        present |= {"psis", "kl-per-dim", "embedding"}
        if image_sections:
            present.add("images")
        if any(c["texts"] for c in contexts):
            present.add("text")
    return {
        "title": title or " vs ".join(names),
        "runs": contexts,
        "sections": [(key, heading) for key, heading in SECTIONS if key in present],
        "config_rows": rows,
        "training": None
        if curves is None
        else {"uri": figures.data_uri(curves), "alt": figures.training_alt_text(named_histories)},
        "diagnostics_rows": content.diagnostics_rows([(run.name, run.diagnostics) for run in runs]),
        "image_sections": image_sections,
        "version": __version__,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render(context: dict) -> str:
    """The HTML page of a :func:`report_context` (Jinja2, autoescaped)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pyro_skipvae.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html").render(**context)


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
    diagnostics: Sequence[str | os.PathLike | None] | None = None,
) -> str:
    """One self-contained HTML page about one run or a comparison of several.

    The page shows the configurations side by side (differences marked), training curves,
    a collapse verdict per run in words with its thresholds
    (:func:`~.verdicts.collapse_verdict`), the diagnostics with standard errors and
    estimator names, the PSIS k̂ reading (:func:`~.verdicts.psis_verdict`), per-dimension
    KL, the map of posterior means, and reconstructions and samples (images) or sentences
    (text models). Images are ``data:`` URIs; the page loads nothing else and runs no
    script (its Content-Security-Policy forbids both). A run without ``diagnostics.json``
    gets its training section and the command that diagnoses it.

    :param run_dirs: run folders written by ``skipvae fit``.
    :param names: their names on the page (default: the folder names).
    :param str title: the page's title (default: the names joined by "vs").
    :param diagnostics: one diagnostics JSON path (or ``None``) per run, for diagnostics
        written elsewhere than ``RUN_DIR/diagnostics.json`` (``skipvae diagnose --out``).
    :returns: the HTML text.
    :raises ConfigError: no runs, or names/diagnostics not one per run.
    :raises CheckpointError: a folder that is not a run.
    :raises DataError: unreadable metrics or diagnostics.
    """
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ConfigError("expected at least one run directory")
    for label, given in (("names", names), ("diagnostics paths", diagnostics)):
        if given is not None and len(given) != len(run_dirs):
            raise ConfigError(f"expected {len(run_dirs)} {label}, one per run, found {len(given)}")
    runs = [
        load_run(
            path,
            name=None if names is None else names[i],
            diagnostics=None if diagnostics is None else diagnostics[i],
        )
        for i, path in enumerate(run_dirs)
    ]
    if len({run.name for run in runs}) < len(runs):
        raise ConfigError(
            f"runs need distinct names, found {', '.join(run.name for run in runs)}; pass names"
        )
    for run in runs:
        if run.diagnostics is None:
            logger.warning(
                "%s has no diagnostics yet: the report shows its training only; run `%s`",
                run.path,
                diagnose_command(run.path),
            )
    return render(report_context(runs, title=title))


def write_report(
    run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, **options: Any
) -> Path:
    """:func:`build_report`, written atomically to ``out``; returns the path."""
    out = Path(out)
    atomic_write_text(out, build_report(run_dirs, **options))
    logger.info("report written to %s", out)
    return out
