"""Diagnose and compare run directories written by ``SkipVAE.fit(run_dir=...)`` / ``skipvae fit``.

The front door's level of the package (it loads :class:`~pyro_skipvae.SkipVAE` runs and their
data) on top of the pure estimators of :mod:`pyro_skipvae.diagnostics`. :func:`diagnose_run`
is a pipeline of named steps, each calling only the layers below it:

1. :func:`load_run`: the run's configuration and its model (``best.pt``);
2. :func:`prepare_split`: the evaluation split and the classifiers' training data,
   prepared as the run's validation data were;
3. :func:`run_refinement`: the guide, refined as the run was trained, or amortized;
4. :func:`diagnose_split`: :func:`~pyro_skipvae.diagnostics.diagnose` on the split, with
   the run's settings added to the metrics;
5. :func:`write_outputs`: JSON, netCDF, PNGs and (text) decoded sentences, atomically.

Its options are one :class:`DiagnoseOptions`, validated where it is made:

>>> result = diagnose_run("runs/skip", split="test", num_samples=500)   # doctest: +SKIP
>>> result["metrics"]["mi"], result["paths"]["json"]                     # doctest: +SKIP
"""

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyro.infer import Trace_ELBO

from . import checkpoint
from .configs import recorded_train_config
from .data import EVAL_BINARIZATION_SEED, default_binarization, load_dataset, prepare
from .data.text import length_order
from .diagnose_options import SPLITS, DiagnoseOptions  # noqa: F401  (SPLITS: its old home)
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
from .lock import locked
from .modes import evaluating
from .run import BEST_FILE, CONFIG_FILE, read_config
from .skip_vae import SkipVAE

logger = logging.getLogger(__name__)

DIAGNOSTICS_FILE = "diagnostics.json"


@dataclass(frozen=True)
class LoadedRun:
    """A fitted run as :func:`load_run` finds it: ``run_dir``, its ``config.json``, the
    model ``vae`` (``best.pt``), the data set to evaluate on and its ``binarize`` mode."""

    run_dir: Path
    config: dict
    vae: SkipVAE
    dataset: str
    binarize: str

    @property
    def trained_on(self) -> str:
        return self.config["run"]["dataset"]


@dataclass(frozen=True)
class EvaluationData:
    """The evaluation split as :func:`prepare_split` prepares it (in the likelihood's
    support, on the CPU, in the split's order), the classifiers' training data (``None``
    without labels), and for sequences the tokens per datapoint and the length order."""

    data: torch.Tensor
    labels: torch.Tensor | None
    train_data: torch.Tensor | None
    train_labels: torch.Tensor | None
    vocabulary: Any = None
    tokens: torch.Tensor | None = None
    order: torch.Tensor | None = None


def diagnose_run(
    run_dir: str | os.PathLike, *, options: DiagnoseOptions | None = None, **keywords: Any
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

    :param run_dir: a run directory written by ``skipvae fit``.
    :param DiagnoseOptions options: the options; or give them as keywords of the same names
        (``diagnose_run(run_dir, split="val", num_samples=100)``).
    :returns: dict with ``metrics`` (as written to JSON), ``paths`` and the :func:`diagnose`
        result under ``result``.
    :raises TypeError: an unknown keyword (the message lists the options).
    """
    options = DiagnoseOptions.from_keywords(options, **keywords)
    # writing into the run folder, or a folder inside it: one writer at a time (lock);
    # elsewhere it only reads it
    out_dir = output_paths(run_dir, options.out)["json"].resolve().parent
    into_run = out_dir.is_relative_to(Path(run_dir).resolve())
    with locked(run_dir, "skipvae diagnose", enabled=into_run and Path(run_dir).is_dir()):
        run = load_run(run_dir, options)
        split = prepare_split(run, options)
        guide, refinement = run_refinement(
            run.vae, run.config, options.num_refine_steps, run_dir=run.run_dir
        )
        with evaluating(run.vae.model, run.vae.guide):
            result = diagnose_split(run, split, guide, refinement, options)
            paths = write_outputs(run, split, result, options)
    return {
        "metrics": result["metrics"],
        "paths": {k: str(v) for k, v in paths.items()},
        "result": result,
    }


def load_run(run_dir: str | os.PathLike, options: DiagnoseOptions) -> LoadedRun:
    """Step 1: the run's ``config.json`` and model (``best.pt`` on ``options.device``), and
    the data set to evaluate on: the run's own, binarised as in training, or
    ``options.dataset``, binarised as that data set is by default.

    :raises CheckpointError: not a run directory, or a configuration without ``run.dataset``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / BEST_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} holds no {BEST_FILE}: expected a run directory written by `skipvae fit`"
        )
    config = read_config(run_dir)
    trained_on = config.get("run", {}).get("dataset")
    if trained_on is None:
        raise CheckpointError(
            f"{run_dir / CONFIG_FILE} does not name the run's data set (run.dataset)"
        )
    dataset, mode = trained_on, config.get("train", {}).get("binarize", "none")
    if options.dataset is not None and options.dataset != trained_on:
        dataset, mode = options.dataset, default_binarization(options.dataset)
    # the run's own precision unless another is asked for (the weights are float32 in both)
    precision = {} if options.precision is None else {"precision": options.precision}
    vae = SkipVAE.load(run_dir, device=options.device, **precision)
    return LoadedRun(run_dir, config, vae, dataset, mode)


def prepare_split(run: LoadedRun, options: DiagnoseOptions) -> EvaluationData:
    """Step 2: the first ``eval_size`` examples of ``options.split`` and the first
    ``classifier_train_size`` training examples (kept only when both have labels),
    validated and binarised for the run's likelihood (:func:`~pyro_skipvae.data.prepare`);
    for sequences, their tokens and length order (:func:`~pyro_skipvae.data.text.length_order`)."""
    likelihood = run.vae.model.likelihood
    max_length = run.config["run"].get("max_length")
    splits = load_dataset(run.dataset, data_dir=options.data_dir, max_length=max_length)
    data, labels = splits.split(options.split)
    if options.eval_size is not None:
        data = data[: options.eval_size]
        labels = None if labels is None else labels[: options.eval_size]
    data = prepare(data, likelihood, binarization=run.binarize, name=f"{options.split} data")
    train_data, train_labels = splits.train, splits.train_labels
    if options.classifier_train_size is not None:
        train_data = train_data[: options.classifier_train_size]
        train_labels = (
            None if train_labels is None else train_labels[: options.classifier_train_size]
        )
    if labels is not None and train_labels is not None:
        train_data = prepare(
            train_data, likelihood, binarization=run.binarize, name="training data"
        )
    else:
        train_data = train_labels = None
    tokens = likelihood.num_tokens(data)
    order = None if tokens is None else length_order(tokens)
    return EvaluationData(data, labels, train_data, train_labels, splits.vocabulary, tokens, order)


def run_refinement(vae, config, num_refine_steps=None, *, run_dir="the run"):
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

    An older ``config.json`` without every refinement setting is read with the rule the run
    was trained under, or refused where that cannot be told
    (:func:`~pyro_skipvae.configs.recorded_train_config`; not for ``num_refine_steps=0``).

    :returns: ``(guide, settings)``; ``settings`` is ``None`` for the amortized guide.
    """
    train = config.get("train", {})
    semi_amortized = train.get("inference") == "semi-amortized"
    if semi_amortized and num_refine_steps != 0:
        train = recorded_train_config(train, run_dir)
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


def diagnose_split(
    run: LoadedRun, split: EvaluationData, guide, refinement: dict | None, options: DiagnoseOptions
) -> dict:
    """Step 4: :func:`~pyro_skipvae.diagnostics.diagnose` of ``guide`` on the split, in
    chunks of whole refinement minibatches whose decoder output stays within
    :data:`~pyro_skipvae.diagnostics.elbo.OUTPUT_BUDGET` (sequences sorted by length, the
    per-datapoint results put back in the split's order); the accuracy on
    ``options.accuracy_dataset`` when the split has no labels; and the run's settings
    (:func:`run_settings`) added to the metrics."""
    vae, likelihood = run.vae, run.vae.model.likelihood
    multiple_of = 1 if refinement is None else refinement["refine_batch_size"]
    chunk_size = evaluation_batch_size(likelihood, 100, multiple_of=multiple_of)
    per_call = max(1, OUTPUT_BUDGET // (chunk_size * math.prod(likelihood.param_shape)))
    order = split.order
    result = diagnose(
        vae.model,
        guide,
        (split.data if order is None else split.data[order]).to(vae.device),
        labels=split.labels if order is None or split.labels is None else split.labels[order],
        train_data=None if split.train_data is None else split.train_data.to(vae.device),
        train_labels=split.train_labels,
        num_samples=options.num_samples,
        nll_size=options.nll_size,
        au_threshold=options.au_threshold,
        chunk_size=chunk_size,
        particle_chunk=min(max(1, 10_000 // chunk_size), per_call),
        num_tokens=None if order is None else split.tokens[order],
        keep_log_weights=options.keep_log_weights,
        seed=options.seed,
        progress=options.progress,
    )
    if order is not None:  # back to the split's order
        inverse = torch.argsort(order)
        result["per_datapoint"] = {k: v[inverse] for k, v in result["per_datapoint"].items()}
        result["codes"] = result["codes"][inverse]
    metrics = result["metrics"]
    if options.accuracy_dataset is not None and "accuracy" not in metrics:
        accuracy = labelled_accuracy(
            vae,
            guide,
            options.accuracy_dataset,
            split=options.split,
            data_dir=options.data_dir,
            eval_size=options.eval_size,
            classifier_train_size=options.classifier_train_size,
            chunk_size=chunk_size,
            progress=options.progress,
        )
        metrics["estimators"].update(accuracy.pop("estimators"))
        metrics.update(accuracy)
    metrics.update(run_settings(run, refinement, options))
    return result


def run_settings(run: LoadedRun, refinement: dict | None, options: DiagnoseOptions) -> dict:
    """What was evaluated, for ``diagnostics.json``: the run, data set and split, the
    binarisation, how q was evaluated (amortized or refined, with the refinement's settings),
    the model's skip wiring, decoder and guide (with its options, e.g. BN-VAE's γ), and the
    inference and seed it was trained with (``seed`` is the diagnosis's own, which draws the
    IW-NLL subset)."""
    return {
        "run_dir": str(run.run_dir),
        "dataset": run.dataset,
        "trained_on": run.trained_on,
        "split": options.split,
        "binarize": run.binarize,
        "binarization_seed": EVAL_BINARIZATION_SEED if run.binarize == "dynamic" else None,
        "num_refine_steps": 0 if refinement is None else refinement["num_refine_steps"],
        "inference": "amortized" if refinement is None else "semi-amortized",
        "refinement": refinement,
        "skip": run.vae.config.skip,
        "decoder": run.vae.config.decoder,
        "guide": run.vae.config.guide,
        "guide_options": dict(run.vae.config.guide_options),
        "trained_with": run.config.get("train", {}).get("inference"),
        "train_seed": run.config.get("train", {}).get("seed"),
        "max_length": run.config["run"].get("max_length"),
    }


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


def write_outputs(
    run: LoadedRun, split: EvaluationData, result: dict, options: DiagnoseOptions
) -> dict[str, Path]:
    """Step 5: for a text data set the decoded sentences (``<stem>_text.md``), the PNGs
    (unless ``options.plots`` is false), the per-datapoint netCDF and the JSON of the
    metrics, each written atomically, at :func:`output_paths`; their paths are added to
    the metrics first (so the JSON names them). Returns the paths."""
    paths = output_paths(run.run_dir, options.out)
    metrics = result["metrics"]
    model = run.vae.model
    if split.vocabulary is not None and hasattr(model.decoder, "generate"):
        text = text_report(
            model.decoder,
            split.data,
            result["codes"],
            prior_sample(model, split.data[:10].to(run.vae.device)),
            split.vocabulary,
            seed=options.seed,
        )
        checkpoint.atomic_write_text(paths["text"], text)
        metrics["text"] = str(paths["text"])
    if options.plots:
        metrics["embedding"] = options.embedding
        metrics["plots"] = plot_diagnostics(
            model,
            split.data.to(run.vae.device),
            result,
            paths["plots"],
            labels=split.labels,
            embedding=options.embedding,
            seed=options.seed,
        )
    metrics["netcdf"] = str(paths["netcdf"])
    attrs = {"run_dir": str(run.run_dir), "split": options.split}
    write_netcdf(per_datapoint_dataset(result, attrs=attrs), paths["netcdf"])
    checkpoint.atomic_write_json(paths["json"], metrics)
    return paths


def companion_stem(path, suffixes) -> str:
    """``path`` less its last suffix when that is one of ``suffixes`` (any case), else all
    of it: the stem companion files are named from, keeping every dotted part of the name
    (``diag.test.json`` → ``diag.test``, ``diag.test`` → ``diag.test``), so outputs for two
    splits or two tables never collide."""
    root, suffix = os.path.splitext(os.fspath(path))
    return root if suffix.lower() in suffixes else os.fspath(path)


def output_paths(run_dir, out=None) -> dict:
    """Where :func:`diagnose_run` writes: ``json``, ``netcdf``, the ``plots`` folder and, for
    text, the decoded sentences (``text``); the companions are named from the JSON file's name
    less ``.json`` (:func:`companion_stem`)."""
    json_path = Path(out) if out is not None else Path(run_dir) / DIAGNOSTICS_FILE
    stem = companion_stem(json_path, (".json",))
    return {
        "json": json_path,
        "netcdf": Path(f"{stem}.nc"),
        "plots": Path(f"{stem}_plots"),
        "text": Path(f"{stem}_text.md"),
    }


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
    :param out: if given, also write ``<out>.md`` and ``<out>.csv`` atomically (a ``.md`` or
        ``.csv`` suffix of ``out`` is dropped, any other dotted part kept:
        :func:`compare_output_paths`).
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
        paths = compare_output_paths(out)
        checkpoint.atomic_write_text(paths["markdown"], markdown)
        checkpoint.atomic_write_text(paths["csv"], csv_text)
    return markdown, csv_text


def compare_output_paths(out) -> dict:
    """The ``markdown`` and ``csv`` files :func:`compare_runs` writes for ``out``."""
    stem = companion_stem(out, (".md", ".csv"))
    return {"markdown": Path(f"{stem}.md"), "csv": Path(f"{stem}.csv")}
