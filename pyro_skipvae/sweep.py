"""Grids of runs: every cell is an ordinary run folder, fitted and diagnosed, one CSV row each.

A grid file (YAML or JSON) names the shared options and the axes to cross::

    fit:                      # options of `skipvae fit` for every cell (snake_case names)
      dataset: mnist
      num_epochs: 5
      hidden_dims: [256, 256]
    diagnose:                 # options of `skipvae diagnose` for every cell
      num_samples: 500
    grids:                    # the union of these cross products (identical cells run once)
      - name: latent
        axes: {skip: [true, false], latent_dim: [2, 8, 32], seed: [0, 1, 2]}
      - name: depth
        fit: {latent_dim: 32}          # overrides for this grid only
        axes: {skip: [true, false], hidden_dims: [[256], [256, 256]], seed: [0, 1, 2]}

A string option may name the cell's other options in braces (:func:`fill_placeholders`), e.g.
``init_from: ../runs/pixelcnn/cells/seed={seed}_skip={skip}`` fine-tunes each cell from the
matching cell of another grid.

Each cell runs ``skipvae fit`` then ``skipvae diagnose`` in a child process (so ``jobs`` cells
can run side by side, on CPU cores or sharing a GPU, and a crash takes one cell down, not the
sweep), with its output in ``<out>/cells/<cell>/log.txt``. The sweep is resumable: a cell
whose row says ``ok`` is never recomputed; an interrupted cell resumes from its checkpoint
(``fit --resume``); a failed cell is recorded with its error, the sweep goes on, and a later
invocation retries it. ``<out>/results.csv`` holds one row per cell (:data:`COLUMNS`).

**Ctrl-C** (or SIGTERM) stops a sweep cleanly (:mod:`pyro_skipvae.children`): no further
cell starts, each running cell's process gets one SIGINT (``skipvae fit`` exits at its last
completed epoch, whose checkpoint is intact), the sweep waits for them to exit (a second
signal terminates them, and it still waits), then stops its MPS daemon, records those cells
as ``interrupted`` and raises :class:`~pyro_skipvae.children.Interrupted` (``skipvae sweep``
exits with status 130). Running the same sweep again resumes them.

**Several cells on one GPU.** Cells whose ``fit`` options say ``device: cuda`` (or
``cuda:N``) and run side by side (``jobs > 1``) share the GPU through CUDA MPS
(:mod:`pyro_skipvae.mps`): the sweep starts a private MPS control daemon for its duration,
the cells' processes become clients of one MPS server, and the small kernels of several
cells run on the GPU at the same time instead of in turns (without MPS the GPU time-slices
between the processes' contexts). ``mps="auto"`` (the default) does this only where it can
help and is there; ``"on"`` insists; ``"off"`` never does. MPS was chosen over training
several cells in one process (which would give up the one-process-per-cell isolation that
makes a crash cost one cell and a cell resumable on its own, and would share Pyro's global
state between models) and over CUDA graphs (fewer launches per step; they are
``fit --compile reduce-overhead`` and are measured separately, and they combine with MPS).
Measured on one H200 without MPS, 2 cells gave 1.91x the throughput of one and 4 cells
2.55x; the gain from MPS has not been measured yet. ``benchmarks/gpu_bench.py --parts cells
--mps auto`` measures 1, 2 and 4 cells with and without it.
"""

import csv
import io
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint
from . import mps as cuda_mps
from .children import Children, Interrupted
from .config_files import read_mapping
from .errors import ConfigError, RunLockedError
from .lock import locked

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
#: a cell's own row, written when it finishes: what --collect and --cell build results.csv from
ROW_FILE = "row.json"
#: options whose False is spelled ``--no-<option>`` on the command line
NEGATABLE = {"skip"}
#: the columns of results.csv, in order
COLUMNS = [
    "cell", "status", "error", "grid",
    "skip", "inference", "latent_dim", "num_layers", "decoder", "dataset", "seed",
    "val_elbo", "test_elbo", "test_nll", "test_nll_se", "kl", "kl_se", "mi", "mi_se", "log_n",
    "agg_kl", "agg_kl_se", "au", "accuracy", "accuracy_knn", "ppl_bound", "iw_ppl",
    "pareto_k_share_above", "mi_le_kl", "mi_le_log_n", "au_le_latent_dim",
    "epochs", "selected_epoch", "seconds", "diagnose_seconds",
]  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its folder name, the grid it came from, and its options."""

    name: str
    grid: str
    fit: dict
    diagnose: dict


def expand_grid(spec: dict) -> list[Cell]:
    """The cells of a grid specification (see the module docstring), duplicates removed."""
    unknown = set(spec) - {"fit", "diagnose", "grids", "description"}
    if unknown:
        raise ConfigError(
            f"unknown grid key(s) {sorted(unknown)}; expected: fit, diagnose, grids, description"
        )
    grids = spec.get("grids") or [{}]  # none: one cell of the shared options
    cells: dict[str, Cell] = {}
    for i, grid in enumerate(grids):
        extra = set(grid) - {"name", "fit", "axes"}
        if extra:
            raise ConfigError(
                f"grids[{i}]: unknown key(s) {sorted(extra)}; expected name, fit, axes"
            )
        axes = grid.get("axes") or {}
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"grids[{i}].axes.{key}: expected a non-empty list, found {values!r}"
                )
        base = {**(spec.get("fit") or {}), **(grid.get("fit") or {})}
        for combination in itertools.product(*axes.values()):
            options = {**base, **dict(zip(axes, combination))}
            name = cell_name(options, spec.get("fit") or {})
            options = fill_placeholders(options)
            cells.setdefault(
                name, Cell(name, grid.get("name", str(i)), options, spec.get("diagnose") or {})
            )
    return list(cells.values())


def cell_name(options: dict, shared: dict) -> str:
    """A readable, filesystem-safe folder name from the options that differ from ``shared``
    (sorted by key, so the same options always give the same name)."""
    parts = []
    for key in sorted(options):
        if key in shared and shared[key] == options[key]:
            continue
        parts.append(f"{key}={_text(options[key])}")
    name = "_".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9=,._+-]", "", name.replace('"', ""))


def fill_placeholders(options: dict) -> dict:
    """Fill ``{option}`` in the cell's string options with that option's value, written as in
    cell names (``true``, ``32``, ``256,256``), so one grid can point every cell at the
    matching cell of another grid::

        fit: {inference: semi-amortized, init_from: "../runs/pixelcnn/cells/seed={seed}_skip={skip}"}

    :raises ConfigError: a placeholder that names no option of the cell.
    """
    texts = {key: _text(value).replace('"', "") for key, value in options.items()}
    filled = {}
    for key, value in options.items():
        if isinstance(value, str) and "{" in value:
            try:
                value = value.format_map(texts)
            except (KeyError, ValueError, IndexError) as e:
                raise ConfigError(
                    f"fit.{key}: {value!r} has a placeholder that names no option of the cell "
                    f"({type(e).__name__}: {e}); the cell's options: {', '.join(sorted(texts))}"
                ) from None
        filled[key] = value
    return filled


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else json.dumps(value)


def command_arguments(options: dict) -> list[str]:
    """``{"latent_dim": 32, "skip": False, "decoder_options": {"k": 3}}`` →
    ``["--latent-dim", "32", "--no-skip", "--decoder-option", "k=3"]``."""
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                args.append(flag)
            elif key in NEGATABLE:
                args.append("--no-" + key.replace("_", "-"))
        elif value is None:
            continue
        elif isinstance(value, dict):  # decoder_options etc.: a repeated --decoder-option K=V
            for k, v in value.items():
                args += [flag.removesuffix("s"), f"{k}={json.dumps(v)}"]
        elif isinstance(value, list | tuple):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, str(value)]
    return args


def uses_cuda(cell: Cell) -> bool:
    """Whether the cell trains on a CUDA device (its ``fit`` options' ``device``; the CLI's
    default is the CPU)."""
    return str(cell.fit.get("device") or "cpu").startswith("cuda")


def run_sweep(grid_file, out, *, jobs=1, progress=False, python=None, mps="auto") -> dict:
    """Run (or resume) every cell of ``grid_file`` into ``out``; return a summary
    ``{"cells", "ok", "failed", "skipped", "interrupted", "results"}`` (``results``: the
    CSV's path).

    :param int jobs: cells run side by side (child processes). On CPU each child gets
        ``max(1, cpus // jobs)`` threads (:func:`available_cpus`) unless ``OMP_NUM_THREADS``
        is set.
    :param str python: the interpreter for the child processes (default: this one).
    :param str mps: CUDA MPS for cells sharing a GPU (see the module docstring and
        :func:`pyro_skipvae.mps.for_processes`): ``"auto"`` (default) starts a private MPS
        daemon for the sweep when more than one cell runs at a time, every cell left to run
        trains on CUDA, ``nvidia-cuda-mps-control`` is on ``PATH`` and no daemon is reachable
        already (then the cells join that one); ``"on"`` requires it
        (:class:`~pyro_skipvae.errors.MPSError` if it cannot start); ``"off"`` never. The
        daemon's logs are kept in ``<out>/mps-logs``.
    :raises Interrupted: on SIGINT (Ctrl-C) or SIGTERM, once every running cell has stopped
        (see the module docstring); its ``summary`` is the one returned otherwise.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, found {jobs!r}")
    if mps not in cuda_mps.MODES:
        raise ConfigError(f"mps: expected one of {', '.join(cuda_mps.MODES)}, found {mps!r}")
    cells = expand_grid(read_mapping(grid_file))
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    rows = _read_rows(out / RESULTS_FILE)
    todo = [c for c in cells if rows.get(c.name, {}).get("status") != "ok"]
    summary = {"cells": len(cells), "ok": 0, "failed": 0, "skipped": len(cells) - len(todo)}
    summary["interrupted"] = 0
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // jobs)))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(cells), initial=summary["skipped"], disable=not progress, unit="cell")
    children = Children()
    # The daemon outlives the pool: it is stopped only after every cell's process has ended,
    # also on Ctrl-C (the signals are handled, not raised, until then).
    with (
        children.watching(),
        cuda_mps.for_processes(
            mps,
            processes=min(jobs, len(todo)),
            cuda=bool(todo) and all(uses_cuda(c) for c in todo),
            keep_logs=out / "mps-logs",
        ) as mps_env,
    ):
        env.update(mps_env)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {
                pool.submit(_run_cell, cell, out, python or sys.executable, env, children): cell
                for cell in todo
            }
            for future in as_completed(futures):
                cell = futures[future]
                row = future.result()
                if row is None:  # never started: the sweep was stopped first
                    continue
                rows[cell.name] = row
                summary[row["status"]] += 1  # ok, failed or interrupted
                _write_rows(out / RESULTS_FILE, rows, [c.name for c in cells])
                bar.set_postfix(ok=summary["ok"], failed=summary["failed"])
                bar.update()
    bar.close()
    _write_rows(out / RESULTS_FILE, rows, [c.name for c in cells])
    summary["results"] = str(out / RESULTS_FILE)
    if children.stopped is not None:
        raise Interrupted(children.stopped, summary)
    return summary


def available_cpus() -> int:
    """The CPU cores this process may use: ``$SLURM_CPUS_PER_TASK`` inside a SLURM task (its
    ``--cpus-per-task``), else the cores it is pinned to (``os.sched_getaffinity``; a
    ``taskset`` or a cgroup's cpuset), else every core of the machine."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.strip().isdigit() and int(slurm) > 0:
        return int(slurm)
    if slurm:
        logger.warning("SLURM_CPUS_PER_TASK=%r is not a positive integer; ignored", slurm)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cell_commands(cell: Cell, out, cli=("skipvae",)) -> tuple[list[str], list[str]]:
    """The ``skipvae fit`` and ``skipvae diagnose`` commands of a cell of a sweep into ``out``
    (the fit without ``--resume``: the sweep adds it when the folder holds a run)."""
    folder = Path(out) / "cells" / cell.name
    fit = [*cli, "fit", *command_arguments(cell.fit), "--out", str(folder), "--quiet"]
    diagnose = [*cli, "diagnose", str(folder), *command_arguments(cell.diagnose), "--quiet"]
    return fit, diagnose


def _run_cell(cell: Cell, out: Path, python: str, env: dict, children: Children) -> dict | None:
    """Fit (resuming if the folder holds a run) and diagnose one cell, and write its row to
    ``cells/<cell>/row.json``; ``None`` for a cell not started because the sweep was
    stopped (:mod:`pyro_skipvae.children`); never raises."""
    if children.stopped is not None:
        return None
    row = _fit_and_diagnose(cell, out, python, env, children)
    checkpoint.atomic_write_json(out / "cells" / cell.name / ROW_FILE, row)
    return row


def _fit_and_diagnose(cell: Cell, out: Path, python: str, env: dict, children: Children) -> dict:
    folder = out / "cells" / cell.name
    folder.mkdir(parents=True, exist_ok=True)
    fit, diagnose = cell_commands(cell, out, (python, "-m", "pyro_skipvae.cli.main"))
    if (folder / "config.json").exists():
        fit.append("--resume")
    started = time.perf_counter()
    with open(folder / "log.txt", "a") as log:
        for step, command in (("fit", fit), ("diagnose", diagnose)):
            process = None
            if children.stopped is None:
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                process = children.start(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            returncode = None if process is None else children.wait(process)
            if returncode != 0:
                if children.stopped is not None:  # not `ok`: the next sweep resumes it
                    status = "interrupted"
                    error = f"{signal.Signals(children.stopped).name} during its {step}"
                else:
                    status = "failed"
                    error = _last_error(folder / "log.txt") or f"exit status {returncode}"
                logger.warning("cell %s %s: %s", cell.name, status, error)
                return {"cell": cell.name, "grid": cell.grid, "status": status, "error": error}
    logger.info("cell %s done in %.0f s", cell.name, time.perf_counter() - started)
    return {
        "cell": cell.name,
        "grid": cell.grid,
        "status": "ok",
        "error": "",
        **cell_results(folder),
    }


def _last_error(log: Path) -> str:
    # ours print "error: ...", click's usage errors "Error: ..."
    lines = [line for line in log.read_text().splitlines() if line.lower().startswith("error:")]
    return lines[-1][len("error:") :].strip() if lines else ""


def cell_results(folder) -> dict:
    """The results.csv columns of a fitted and diagnosed run folder."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((folder / "diagnostics.json").read_text())
    model, train = config["model"], config["train"]
    options = model.get("decoder_options", {})
    num_layers = options.get("num_layers", len(options.get("hidden_dims", [])) or None)
    inference = {"svi": "amortized"}.get(train["inference"], train["inference"])
    if inference == "semi-amortized":
        inference += "/" + train.get("inference_options", {}).get("mode", "end-to-end")
    selected = history[-1].get("selected", history[-1]["epoch"])
    val = next((r.get("val_elbo") for r in history if r["epoch"] == selected), None)
    checks = metrics.get("checks", {})
    return {
        "skip": model["skip"],
        "inference": inference,
        "latent_dim": model["latent_dim"],
        "num_layers": num_layers,
        "decoder": model["decoder"],
        "dataset": config["run"].get("dataset"),
        "seed": train["seed"],
        "val_elbo": val,
        "test_elbo": metrics.get("elbo"),
        "test_nll": metrics.get("nll"),
        "test_nll_se": metrics.get("nll_se"),
        **{
            k: metrics.get(k)
            for k in ("kl", "kl_se", "mi", "mi_se", "log_n", "agg_kl", "agg_kl_se", "au")
        },
        "accuracy": metrics.get("accuracy"),
        "accuracy_knn": metrics.get("accuracy_knn"),
        "ppl_bound": metrics.get("ppl_bound"),  # text: per-token perplexities
        "iw_ppl": metrics.get("iw_ppl"),
        "pareto_k_share_above": metrics.get("pareto_k_share_above"),
        "mi_le_kl": checks.get("mi_le_kl"),
        "mi_le_log_n": checks.get("mi_le_log_n"),
        "au_le_latent_dim": metrics.get("au", 0) <= model["latent_dim"],
        "epochs": len(history),
        "selected_epoch": selected,
        "seconds": round(sum(r["seconds"] for r in history), 1),
        "diagnose_seconds": round(sum(metrics.get("seconds", {}).values()), 1),
    }


def _read_rows(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["cell"]: row for row in csv.DictReader(f)}


def _write_rows(path: Path, rows: dict, order: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for name in order + sorted(set(rows) - set(order)):
        if name in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in rows[name].items()})
    checkpoint.atomic_write_text(path, buffer.getvalue())


def grid_cells(grid_file) -> list[Cell]:
    """The cells of a grid file, in the order ``--cell`` numbers them (from 0)."""
    return expand_grid(read_mapping(grid_file))


def run_cell(grid_file, out, index: int, *, python=None) -> dict:
    """Run exactly cell ``index`` of ``grid_file`` into ``out`` (resumably: a cell whose row
    says ``ok``, in its ``row.json`` or in ``results.csv``, is not rerun), then rebuild
    ``results.csv`` (:func:`collect`). Its process gets :func:`available_cpus` threads
    unless ``OMP_NUM_THREADS`` is set.

    Cells may run as separate, concurrent processes, on separate hosts sharing the folder
    (a job array): each writes only its own folder, and the CSV is rebuilt from the cells'
    ``row.json`` files under the sweep folder's lock (:mod:`pyro_skipvae.lock`), so no
    row is lost or interleaved. Returns the cell's row.

    :raises ConfigError: ``index`` outside ``0 .. number of cells - 1``.
    :raises Interrupted: on SIGINT or SIGTERM, once the cell's process has stopped (as in
        :func:`run_sweep`; its ``summary`` is :func:`collect`'s).
    """
    cells = grid_cells(grid_file)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cells):
        raise ConfigError(
            f"cell: expected an index from 0 to {len(cells) - 1} ({len(cells)} cells in "
            f"{grid_file}), found {index!r}"
        )
    cell, out = cells[index], Path(out)
    # a sweep made before cells wrote row.json has the cell's row only in results.csv
    row = _read_row(out / "cells" / cell.name) or _read_rows(out / RESULTS_FILE).get(cell.name)
    children = Children()
    if row is None or row.get("status") != "ok":
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(available_cpus()))
        with children.watching():
            row = _run_cell(cell, out, python or sys.executable, env, children) or row
    summary = collect(grid_file, out)
    if children.stopped is not None:
        raise Interrupted(children.stopped, summary)
    return row


def collect(grid_file, out) -> dict:
    """Rebuild ``out/results.csv``: one row per cell, the cells of the grid in grid order,
    then any others found (folders under ``out/cells`` with a ``row.json``, or rows already
    in ``results.csv``, of cells the grid no longer has, as :func:`run_sweep` keeps them),
    by name. A cell's row is its ``row.json``, or, for a sweep made before cells wrote one,
    its row already in ``results.csv``.

    Returns ``{"cells", "ok", "failed", "interrupted", "missing", "others", "results"}``:
    ``cells`` counts the grid's cells, ``ok``/``failed``/``interrupted`` those of them with
    that status (``interrupted``: stopped by a signal, resumed by the next run), ``missing``
    those with no row, and ``others`` the rows of cells not in the grid. Waits (up to 10
    minutes) for another process rebuilding it."""
    cells, out = grid_cells(grid_file), Path(out)
    deadline = time.monotonic() + 600
    while True:
        try:
            with locked(out, "sweep results.csv"):
                # read under the lock: a cell finishing meanwhile rebuilds after this one
                rows = _read_rows(out / RESULTS_FILE)
                for folder in sorted((out / "cells").glob(f"*/{ROW_FILE}")):
                    if (row := _read_row(folder.parent)) is not None:
                        rows[folder.parent.name] = {**row, "cell": folder.parent.name}
                _write_rows(out / RESULTS_FILE, rows, [c.name for c in cells])
            break
        except RunLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    statuses = [rows[c.name].get("status") for c in cells if c.name in rows]
    return {
        "cells": len(cells),
        **{status: statuses.count(status) for status in ("ok", "failed", "interrupted")},
        "missing": len(cells) - len(statuses),
        "others": len(set(rows) - {c.name for c in cells}),
        "results": str(out / RESULTS_FILE),
    }


def _read_row(folder: Path) -> dict | None:
    """A cell folder's ``row.json``, or None if it has none (or an unreadable one)."""
    try:
        row = json.loads((folder / ROW_FILE).read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) else None
