"""Diagnose and compare run directories written by ``SkipVAE.fit(run_dir=...)`` / ``skipvae fit``.

The front door's level of the package (it loads :class:`~pyro_skipvae.SkipVAE` runs and their
data) on top of the pure estimators of :mod:`pyro_skipvae.diagnostics`:

>>> result = diagnose_run("runs/skip", split="test", num_samples=500)   # doctest: +SKIP
>>> result["metrics"]["mi"], result["paths"]["json"]                     # doctest: +SKIP
"""

import json
import logging
from pathlib import Path

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from . import checkpoint
from .data import EVAL_BINARIZATION_SEED, binarize_for_evaluation, load_dataset
from .diagnostics.report import (
    compare_table,
    diagnose,
    per_datapoint_dataset,
    plot_diagnostics,
    write_netcdf,
)
from .errors import CheckpointError, ConfigError, DataError
from .infer.semi_amortized import SemiAmortizedSVI
from .skip_vae import BEST_FILE, CONFIG_FILE, SkipVAE

logger = logging.getLogger(__name__)

DIAGNOSTICS_FILE = "diagnostics.json"
SPLITS = ("test", "val")


def _read_config(run_dir: Path) -> dict:
    path = run_dir / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{run_dir} is not a run directory: expected {CONFIG_FILE} there"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e})") from None


def refined_guide(vae, num_refine_steps, config=None):
    """The guide with semi-amortized refinement of its local parameters (Kim et al. 2018).

    Refines λ = (μ, log σ) by ``num_refine_steps`` steps of SGD with momentum on each
    datapoint's ELBO, from the encoder's output, in minibatches of the run's training batch
    size (the refinement step depends on it); refinement settings from the run's
    ``inference_options`` when it was trained semi-amortized, else
    :class:`~pyro_skipvae.infer.semi_amortized.SemiAmortizedSVI`'s defaults.
    """
    train = (config or {}).get("train", {})
    options = {
        k: v
        for k, v in (train.get("inference_options") or {}).items()
        if k in ("refine_lr", "refine_momentum", "refine_max_grad_norm", "mode")
    }
    refiner = SemiAmortizedSVI(
        vae.model,
        vae.guide,
        None,
        Trace_ELBO(),
        num_refine_steps=int(num_refine_steps),
        refine_batch_size=int(train.get("batch_size", 50)),
        **options,
    )

    def guide(x, **kwargs):
        b = refiner.refine_batch_size
        # block: the refinement's own model/guide runs must not enter the caller's trace
        with poutine.block():
            parts = [refiner.refine(x[i : i + b]) for i in range(0, x.shape[0], b)]
        local = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return vae.guide(x, local_params=local, **kwargs)

    settings = {
        "num_refine_steps": int(num_refine_steps),
        "refine_batch_size": refiner.refine_batch_size,
        "refine_lr": refiner.refine_lr,
        "refine_momentum": refiner.refine_momentum,
        "refine_max_grad_norm": refiner.refine_max_grad_norm,
        "mode": refiner.mode,
    }
    return guide, settings


def output_paths(run_dir, out=None) -> dict:
    """Where :func:`diagnose_run` writes: ``json``, ``netcdf`` and the ``plots`` folder."""
    json_path = Path(out) if out is not None else Path(run_dir) / DIAGNOSTICS_FILE
    stem = json_path.with_suffix("")
    return {"json": json_path, "netcdf": stem.with_suffix(".nc"), "plots": Path(f"{stem}_plots")}


def diagnose_run(
    run_dir,
    *,
    split="test",
    num_samples=500,
    eval_size=None,
    data_dir=None,
    refine_steps=0,
    out=None,
    classifier_train_size=None,
    au_threshold=0.01,
    embedding="tsne",
    plots=True,
    keep_log_weights=False,
    seed=0,
    device=None,
    progress=False,
) -> dict:
    """Run every diagnostic of :func:`pyro_skipvae.diagnostics.diagnose` on a fitted run.

    Loads ``best.pt`` of ``run_dir`` and the run's data set (``config.json``), binarises the
    evaluation split and the classifier's training images once with a fixed seed (as the
    run's validation data were), and writes ``diagnostics.json`` (or ``out``), the
    per-datapoint results as netCDF (``<stem>.nc``, an xarray Dataset) and PNGs in
    ``<stem>_plots/``, all atomically.

    :param str split: ``"test"`` (default) or ``"val"``.
    :param int num_samples: importance samples K of the IW-NLL (default 500; 0 skips it).
    :param int eval_size: evaluate the first ``eval_size`` examples of the split only.
    :param int refine_steps: if > 0, evaluate q with semi-amortized refinement of this many
        steps (see :func:`refined_guide`); the classifier's training codes are refined too.
    :param int classifier_train_size: fit the classifiers on the first this-many training
        images (default: all of the data set's training split).
    :returns: dict with ``metrics`` (as written to JSON), ``paths`` and the :func:`diagnose`
        result under ``result``.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    for name, value in (("eval_size", eval_size), ("classifier_train_size", classifier_train_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be a positive integer, found {value}")
    if num_samples < 0 or refine_steps < 0:
        raise ConfigError(
            f"num_samples and refine_steps must be >= 0, found {num_samples} and {refine_steps}"
        )
    run_dir = Path(run_dir)
    if not (run_dir / BEST_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} holds no {BEST_FILE}: expected a run directory written by `skipvae fit`"
        )
    config = _read_config(run_dir)
    run = config.get("run", {})
    if "dataset" not in run:
        raise CheckpointError(
            f"{run_dir / CONFIG_FILE} does not name the run's data set (run.dataset)"
        )
    dataset = run["dataset"]
    mode = config.get("train", {}).get("binarize", "none")
    vae = SkipVAE.load(run_dir, device=device)
    vae.model.eval()
    vae.guide.eval()

    splits = load_dataset(dataset, data_dir=data_dir)
    data, labels = splits.split(split)
    if eval_size is not None:
        data, labels = data[:eval_size], None if labels is None else labels[:eval_size]
    data = binarize_for_evaluation(data, mode) if mode != "none" else data
    vae.model.likelihood.validate(data, f"{split} data")
    train_data, train_labels = splits.train, splits.train_labels
    if classifier_train_size is not None:
        train_data = train_data[:classifier_train_size]
        train_labels = None if train_labels is None else train_labels[:classifier_train_size]
    if labels is not None and train_labels is not None:
        train_data = binarize_for_evaluation(train_data, mode) if mode != "none" else train_data
    else:
        train_data = train_labels = None

    guide, refinement = vae.guide, None
    if refine_steps:
        guide, refinement = refined_guide(vae, refine_steps, config)
    dev = vae.device
    result = diagnose(
        vae.model,
        guide,
        data.to(dev),
        labels=labels,
        train_data=None if train_data is None else train_data.to(dev),
        train_labels=train_labels,
        num_samples=num_samples,
        au_threshold=au_threshold,
        keep_log_weights=keep_log_weights,
        seed=seed,
        progress=progress,
    )
    metrics = result["metrics"]
    metrics.update(
        run_dir=str(run_dir),
        dataset=dataset,
        split=split,
        binarize=mode,
        binarization_seed=EVAL_BINARIZATION_SEED if mode == "dynamic" else None,
        refine_steps=int(refine_steps),
        inference="semi-amortized" if refine_steps else "amortized",
        refinement=refinement,
        skip=vae.config.skip,
        decoder=vae.config.decoder,
    )
    paths = output_paths(run_dir, out)
    if plots:
        metrics["plots"] = plot_diagnostics(
            vae.model,
            data.to(dev),
            result,
            paths["plots"],
            labels=labels,
            embedding=embedding,
            autoregressive=vae.model.decoder.autoregressive,
            seed=seed,
        )
    metrics["netcdf"] = str(paths["netcdf"])
    write_netcdf(
        per_datapoint_dataset(result, attrs={"run_dir": str(run_dir), "split": split}),
        paths["netcdf"],
    )
    checkpoint.atomic_write_json(paths["json"], metrics)
    return {"metrics": metrics, "paths": {k: str(v) for k, v in paths.items()}, "result": result}


def load_diagnostics(path) -> dict:
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


def compare_runs(paths, *, names=None, out=None) -> tuple[str, str]:
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
