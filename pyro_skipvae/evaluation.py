"""Diagnose and compare run directories written by ``SkipVAE.fit(run_dir=...)`` / ``skipvae fit``.

The front door's level of the package (it loads :class:`~pyro_skipvae.SkipVAE` runs and their
data) on top of the pure estimators of :mod:`pyro_skipvae.diagnostics`:

>>> result = diagnose_run("runs/skip", split="test", num_samples=500)   # doctest: +SKIP
>>> result["metrics"]["mi"], result["paths"]["json"]                     # doctest: +SKIP
"""

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pyro.infer import Trace_ELBO

from . import checkpoint
from .data import EVAL_BINARIZATION_SEED, default_binarization, load_dataset, prepare
from .data.text import length_order
from .diagnostics.classify import accuracy_metrics, classification_accuracy
from .diagnostics.diagnosis import diagnose
from .diagnostics.elbo import OUTPUT_BUDGET, evaluation_batch_size
from .diagnostics.latent import Posteriors
from .diagnostics.netcdf import per_datapoint_dataset, write_netcdf
from .diagnostics.plots import plot_diagnostics, prior_sample
from .diagnostics.tables import compare_table
from .diagnostics.text import text_report
from .errors import CheckpointError, ConfigError, DataError
from .infer import ELBOS, Refinement, refined_guide
from .modes import evaluating
from .run import BEST_FILE, CONFIG_FILE, read_config
from .skip_vae import SkipVAE

logger = logging.getLogger(__name__)

DIAGNOSTICS_FILE = "diagnostics.json"
SPLITS = ("test", "val")


def run_refinement(vae, config, num_refine_steps=None):
    """The guide a run is evaluated with, and the refinement settings behind it.

    A semi-amortized run is evaluated as it was trained and selected: its local parameters
    refined by the run's own :class:`~pyro_skipvae.infer.Refinement` (K, step size, momentum,
    clip, coordinates from ``config.json``), from the encoder's output (from 0 in ``svi``
    mode), in minibatches of the training batch size (the refinement step depends on it),
    ascending the plain ELBO with the run's particle settings and the analytic KL where it
    exists (:func:`~pyro_skipvae.infer.refine.refinement_elbo`), whatever the training
    objective. ``num_refine_steps`` overrides K; 0 gives the amortized
    guide. Other runs are amortized unless ``num_refine_steps`` > 0 asks for the default
    refinement.

    :returns: ``(guide, settings)``; ``settings`` is ``None`` for the amortized guide.
    """
    train = config.get("train", {})
    semi_amortized = train.get("inference") == "semi-amortized"
    options = dict(train.get("inference_options") or {}) if semi_amortized else {}
    if num_refine_steps is not None:
        options["num_refine_steps"] = int(num_refine_steps)
    refinement = Refinement.from_options(options)
    if not (semi_amortized or num_refine_steps) or refinement.num_refine_steps == 0:
        return vae.guide, None
    elbo = Trace_ELBO()
    if semi_amortized and isinstance(train.get("elbo"), str) and train["elbo"] in ELBOS:
        elbo = ELBOS.build(
            train["elbo"],
            options={
                "num_particles": train.get("num_particles", 1),
                **train.get("elbo_options", {}),
            },
        )
    initial_params = None
    if options.get("mode") == "svi":

        def initial_params(x):  # no encoder: start every datapoint at the prior, as in training
            zeros = torch.zeros(x.shape[0], vae.config.latent_dim, device=x.device)
            return zeros, zeros.clone()

    batch_size = int(options.get("refine_batch_size") or train.get("batch_size", 50))
    guide = refined_guide(
        vae.model, vae.guide, elbo, refinement, batch_size=batch_size, initial_params=initial_params
    )
    settings = {
        **refinement.options(),
        "refine_batch_size": batch_size,
        "mode": options.get("mode", "amortized encoder"),
    }
    return guide, settings


def output_paths(run_dir, out=None) -> dict:
    """Where :func:`diagnose_run` writes: ``json``, ``netcdf``, the ``plots`` folder and, for
    text, the decoded sentences (``text``)."""
    json_path = Path(out) if out is not None else Path(run_dir) / DIAGNOSTICS_FILE
    stem = json_path.with_suffix("")
    return {
        "json": json_path,
        "netcdf": stem.with_suffix(".nc"),
        "plots": Path(f"{stem}_plots"),
        "text": Path(f"{stem}_text.md"),
    }


def diagnose_run(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    num_samples: int = 500,
    nll_size: int | None = None,
    eval_size: int | None = None,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    num_refine_steps: int | None = None,
    out: str | os.PathLike | None = None,
    classifier_train_size: int | None = None,
    accuracy_dataset: str | None = None,
    au_threshold: float = 0.01,
    embedding: str = "tsne",
    plots: bool = True,
    keep_log_weights: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every diagnostic of :func:`pyro_skipvae.diagnostics.diagnose` on a fitted run.

    Loads ``best.pt`` of ``run_dir`` and the run's data set (``config.json``), prepares the
    evaluation split and the classifier's training images as the run's validation data were
    (binarised once with a fixed seed), and writes ``diagnostics.json`` (or ``out``), the
    per-datapoint results as netCDF (``<stem>.nc``, an xarray Dataset) and PNGs in
    ``<stem>_plots/``, all atomically. The networks are in ``eval()`` mode throughout.

    **Sequences** (a likelihood that counts tokens): the per-token metrics of
    :func:`~pyro_skipvae.diagnostics.diagnose` (perplexity bound, IW perplexity); the data
    are evaluated in order of length (similar lengths share a chunk, so the decoder runs
    over little padding; per-datapoint results are returned in the split's own order, but
    the minibatch MI estimator and the refinement minibatches see length-sorted neighbours,
    as in the authors' length-bucketed evaluation), in chunks whose decoder output stays
    within :data:`~pyro_skipvae.diagnostics.elbo.OUTPUT_BUDGET`. For a text data set,
    ``<stem>_text.md`` holds reconstructions, samples from the prior and homotopies
    (:func:`~pyro_skipvae.diagnostics.text.text_report`).

    :param str split: ``"test"`` (default) or ``"val"``.
    :param int num_samples: importance samples K of the IW-NLL (default 500; 0 skips it).
    :param int nll_size: score the IW-NLL on this many points of the split, drawn uniformly
        without replacement with ``seed`` (default: all; see
        :func:`~pyro_skipvae.diagnostics.diagnose`).
    :param int eval_size: evaluate the first ``eval_size`` examples of the split only.
    :param str dataset: evaluate on this data set (a name or file, same data shape) instead of
        the run's own, binarised as that data set is by default
        (:func:`~pyro_skipvae.data.default_binarization`, once, with the fixed seed): e.g. a
        model fitted on the unlabelled static binarised MNIST scored on labelled MNIST, a
        Bernoulli draw of the same intensities.
    :param int num_refine_steps: refinement steps of q's local parameters (see
        :func:`run_refinement`): default ``None`` evaluates a semi-amortized run with its own
        refinement and other runs amortized; 0 forces the amortized guide. The classifier's
        training codes are refined too.
    :param int classifier_train_size: fit the classifiers on the first this-many training
        images (default: all of the data set's training split).
    :param str accuracy_dataset: a labelled data set of the same shape on which to measure
        posterior-mean accuracy (``accuracy``, ``accuracy_knn``) when the evaluated one has
        no labels, e.g. ``"mnist"`` for a model of the unlabelled static binarised MNIST: its
        split and training images, binarised as that data set is by default (once, with the
        fixed seed), are encoded by the same (refined) guide.
    :returns: dict with ``metrics`` (as written to JSON), ``paths`` and the :func:`diagnose`
        result under ``result``.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    for name, value in (
        ("eval_size", eval_size),
        ("nll_size", nll_size),
        ("classifier_train_size", classifier_train_size),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be a positive integer, found {value}")
    if num_samples < 0 or (num_refine_steps is not None and num_refine_steps < 0):
        raise ConfigError(
            f"num_samples and num_refine_steps must be >= 0, found {num_samples} and {num_refine_steps}"
        )
    run_dir = Path(run_dir)
    if not (run_dir / BEST_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} holds no {BEST_FILE}: expected a run directory written by `skipvae fit`"
        )
    config = read_config(run_dir)
    run = config.get("run", {})
    if "dataset" not in run:
        raise CheckpointError(
            f"{run_dir / CONFIG_FILE} does not name the run's data set (run.dataset)"
        )
    mode = config.get("train", {}).get("binarize", "none")
    if dataset is None or dataset == run["dataset"]:
        dataset = run["dataset"]
    else:
        mode = default_binarization(dataset)
    vae = SkipVAE.load(run_dir, device=device)
    likelihood = vae.model.likelihood

    splits = load_dataset(dataset, data_dir=data_dir, max_length=run.get("max_length"))
    data, labels = splits.split(split)
    if eval_size is not None:
        data, labels = data[:eval_size], None if labels is None else labels[:eval_size]
    data = prepare(data, likelihood, binarization=mode, name=f"{split} data")
    train_data, train_labels = splits.train, splits.train_labels
    if classifier_train_size is not None:
        train_data = train_data[:classifier_train_size]
        train_labels = None if train_labels is None else train_labels[:classifier_train_size]
    if labels is not None and train_labels is not None:
        train_data = prepare(train_data, likelihood, binarization=mode, name="training data")
    else:
        train_data = train_labels = None

    guide, refinement = run_refinement(vae, config, num_refine_steps)
    dev = vae.device
    tokens = likelihood.num_tokens(data)
    order = None if tokens is None else length_order(tokens)
    # Chunks of whole refinement minibatches, their decoder output within the budget.
    chunk_size = evaluation_batch_size(
        likelihood, 100, multiple_of=1 if refinement is None else refinement["refine_batch_size"]
    )
    per_call = max(1, OUTPUT_BUDGET // (chunk_size * math.prod(likelihood.param_shape)))
    with evaluating(vae.model, vae.guide):
        result = diagnose(
            vae.model,
            guide,
            (data if order is None else data[order]).to(dev),
            labels=labels if order is None or labels is None else labels[order],
            train_data=None if train_data is None else train_data.to(dev),
            train_labels=train_labels,
            num_samples=num_samples,
            nll_size=nll_size,
            au_threshold=au_threshold,
            chunk_size=chunk_size,
            particle_chunk=min(max(1, 10_000 // chunk_size), per_call),
            num_tokens=None if order is None else tokens[order],
            keep_log_weights=keep_log_weights,
            seed=seed,
            progress=progress,
        )
        if order is not None:  # back to the split's order
            inverse = torch.argsort(order)
            result["per_datapoint"] = {k: v[inverse] for k, v in result["per_datapoint"].items()}
            result["codes"] = result["codes"][inverse]
        metrics = result["metrics"]
        if accuracy_dataset is not None and "accuracy" not in metrics:
            accuracy = labelled_accuracy(
                vae,
                guide,
                accuracy_dataset,
                split=split,
                data_dir=data_dir,
                eval_size=eval_size,
                classifier_train_size=classifier_train_size,
                chunk_size=chunk_size,
                progress=progress,
            )
            metrics["estimators"].update(accuracy.pop("estimators"))
            metrics.update(accuracy)
        metrics.update(
            run_dir=str(run_dir),
            dataset=dataset,
            trained_on=run["dataset"],
            split=split,
            binarize=mode,
            binarization_seed=EVAL_BINARIZATION_SEED if mode == "dynamic" else None,
            num_refine_steps=0 if refinement is None else refinement["num_refine_steps"],
            inference="amortized" if refinement is None else "semi-amortized",
            refinement=refinement,
            skip=vae.config.skip,
            decoder=vae.config.decoder,
            max_length=run.get("max_length"),
        )
        paths = output_paths(run_dir, out)
        decoder = vae.model.decoder
        if splits.vocabulary is not None and hasattr(decoder, "generate"):
            text = text_report(
                decoder,
                data,
                result["codes"],
                prior_sample(vae.model, data[:10].to(dev)),
                splits.vocabulary,
                seed=seed,
            )
            checkpoint.atomic_write_text(paths["text"], text)
            metrics["text"] = str(paths["text"])
        if plots:
            metrics["embedding"] = embedding
            metrics["plots"] = plot_diagnostics(
                vae.model,
                data.to(dev),
                result,
                paths["plots"],
                labels=labels,
                embedding=embedding,
                seed=seed,
            )
    metrics["netcdf"] = str(paths["netcdf"])
    write_netcdf(
        per_datapoint_dataset(result, attrs={"run_dir": str(run_dir), "split": split}),
        paths["netcdf"],
    )
    checkpoint.atomic_write_json(paths["json"], metrics)
    return {"metrics": metrics, "paths": {k: str(v) for k, v in paths.items()}, "result": result}


def labelled_accuracy(
    vae, guide, dataset, *, split, data_dir, eval_size, classifier_train_size, chunk_size, progress
) -> dict:
    """Posterior-mean accuracy (logistic regression and 5-NN, fractions with standard
    errors) of ``guide``'s codes on the labelled data set ``dataset``: the classifiers are
    fitted on the codes of its training images (the first ``classifier_train_size``) and
    scored on (the first ``eval_size`` of) its ``split``. See :func:`diagnose_run`'s
    ``accuracy_dataset``."""
    splits = load_dataset(dataset, data_dir=data_dir)
    data, labels = splits.split(split)
    if labels is not None and eval_size is not None:
        data, labels = data[:eval_size], labels[:eval_size]
    train, train_labels = splits.train, splits.train_labels
    if labels is None or train_labels is None:
        raise DataError(f"accuracy_dataset {dataset!r} has no labels")
    if classifier_train_size is not None:
        train, train_labels = train[:classifier_train_size], train_labels[:classifier_train_size]
    likelihood, mode = vae.model.likelihood, default_binarization(dataset)
    codes = [
        Posteriors(
            guide,
            prepare(x, likelihood, binarization=mode, name=f"{dataset} {name}").to(vae.device),
            chunk_size=chunk_size,
            progress=progress,
        ).means()
        for name, x in ((split, data), ("training data", train))
    ]
    accuracy = classification_accuracy(codes[1], train_labels, codes[0], labels)
    metrics, described = accuracy_metrics(
        accuracy, fitted_on=f"{dataset} training points, scored on its {split} split"
    )
    metrics.update(
        accuracy_dataset=dataset, classifier_num_train=int(train.shape[0]), estimators=described
    )
    return metrics


def load_diagnostics(path: str | os.PathLike) -> dict[str, Any]:
    """The metrics of a run directory's ``diagnostics.json`` (or of a JSON file path)."""
    path = Path(path)
    file = path / DIAGNOSTICS_FILE if path.is_dir() else path
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        hint = f"; run `skipvae diagnose {path}` first" if path.is_dir() else ""
        raise DataError(f"no diagnostics found: expected {file}{hint}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{file} is unreadable ({e})") from None


def compare_runs(
    paths: Sequence[str | os.PathLike],
    *,
    names: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
) -> tuple[str, str]:
    """Side-by-side table of several runs' diagnostics: ``(markdown, csv)``.

    :param paths: run directories (holding ``diagnostics.json``) or JSON files.
    :param names: column names (default: the folder name of each run).
    :param out: if given, also write ``<out>.md`` and ``<out>.csv`` (any suffix of ``out``
        is dropped), atomically.
    """
    paths = list(paths)
    if not paths:
        raise ConfigError("expected at least one run directory or diagnostics file")
    if names is not None and len(names) != len(paths):
        raise ConfigError(f"expected {len(paths)} names, one per run, found {len(names)}")
    named = []
    for i, path in enumerate(paths):
        p = Path(path)
        name = (
            names[i] if names is not None else (p.name if p.is_dir() else p.parent.name or p.stem)
        )
        named.append((name, load_diagnostics(p)))
    markdown, csv_text = compare_table(named)
    if out is not None:
        stem = Path(out).with_suffix("")
        checkpoint.atomic_write_text(stem.with_suffix(".md"), markdown)
        checkpoint.atomic_write_text(stem.with_suffix(".csv"), csv_text)
    return markdown, csv_text
