"""One GPU window of the reproduction study (issues 21 and 33): train the cells of one study, an
epoch of each in turn, for as long as the window's budget allows, then diagnose them and write
their rows to ``<out>/results.csv``; stop cleanly. A later window with the same ``--out`` (its
run folders carried back) resumes where this one stopped.

    python3 benchmarks/gpu_window.py --out WINDOW_DIR --budget-s 420 --device cuda
    python3 benchmarks/gpu_window.py --study ptb --out PTB_DIR --budget-s 540 --device cuda \\
        --cells skip=true skip=false          # the amortized text pair
    python3 benchmarks/gpu_window.py --out /tmp/w --tiny --device cpu --budget-s 60   # the test

The cells are ordinary run folders (``skipvae fit --resume``), so every epoch that finished is
kept; an epoch cut by the deadline is lost, never half-written (the fit is interrupted with
Ctrl-C, so it releases its run folder's lock). ``--cells`` picks cells by name (default: all
of the study); ``--epochs-per-turn`` trains more than one epoch per ``fit`` call, which saves
a process start per epoch when epochs are short; ``--fit-flag`` adds a ``skipvae fit`` flag
to every cell (e.g. ``--fit-flag=--precision=bf16-mixed``; recorded in each ``config.json``).

**Studies** (``--study``):

* ``pixelcnn`` (default; issue 21): the paper-size PixelCNN pair on static binarised MNIST,
  ``benchmarks/grids/pixelcnn_bmnist.yaml``'s inference grid (amortized): 8 gated layers x 32
  channels, kernel 3, conv encoder of 64 channels, latent 20, Adam 1e-3, batch 50, clip 5, no
  KL warm-up, up to 50 epochs. Cells ``skip=true`` and ``skip=false``. Diagnosis: IW-NLL
  K = 500 on a seeded random ``--nll-size`` (2,000) test subset, posterior-mean accuracy on
  labelled MNIST.
* ``ptb`` (issue 33): the text recipe of ``benchmarks/grids/ptb_lstm_cpu.yaml`` on the Penn
  Treebank: LSTM encoder and decoder of 256/256 (embedding/hidden), latent 64, mean-field
  ELBO, SGD lr 1, global-norm clip 5, batch 32, KL warm-up from 0.1 over 10 epochs, plateau
  halving from epoch 15, early stopping with patience 3 (not before the warm-up ends), and the
  authors' stopping rule instead of a cap: stop once the learning rate falls below
  ``--min-learning-rate`` (0.03, as sa-vae's ``train_text.py``), at most ``--max-epochs`` (30).
  Cells: the amortized pair ``skip=true`` / ``skip=false`` and the semi-amortized pair trained
  from the first step, ``sa_skip=true`` / ``sa_skip=false`` (``--sa-mode``, default
  end-to-end, and ``--num-refine-steps`` K, default 10: the smallest K reaching 80 % of
  K = 20's refined-bound gain on validation, ``results/ptb_text/k_calibration.json``).
  Diagnosis: KL, MI, aggregate KL, active units and the perplexities on the test split,
  IW-NLL K = 500 on a seeded random ``--nll-size`` (2,000) sentence subset; semi-amortized
  cells are diagnosed with their own refinement. The controls of issue 33 item 5 (amortized
  cells with the same K-step refinement, SA cells without) are not run here: they need only
  the cells' ``best.pt``, so ``skipvae diagnose CELL --num-refine-steps K`` (or ``0``) runs
  them afterwards, on any machine.

**A cell that ends by its own rule** (its learning rate fell below the minimum, or early
stopping) has fewer epochs than its last ``fit --num-epochs E`` asked for, although that fit
succeeded: the library's own ``finished()`` decided. The window then counts it as done, records
it in ``<out>/window.json`` and never calls ``fit`` for it again (the first ``fit`` after the
stopping epoch is the one that finds out: it resumes, trains nothing and exits). The others
go on. ``window.json`` also records which epoch and diagnosis options each cell was diagnosed
at, so an unchanged cell (finished, or not trained in this window) is not diagnosed again;
its row is still written. Rows are rewritten after each window with the epochs reached so far.
A second seed is a second ``--out`` with ``--seed 1`` (the cell names carry no seed).

**On the lent device machine** a text cell's folder holds two 38 MB weight files (``best.pt``,
``checkpoint.pt`` at 256/256 with PTB's 10,000 words), over what comes back from a call (16 MiB
a file) or travels with one (64 MiB): put ``--out`` in an ignored folder of the checkout, which
stays on the machine while it is warm, run the next window there, and bring back the small
files (``tar czf $OUT/window.tgz --exclude='*.pt' OUT_DIR``: rows, curves, diagnoses, log).
"""

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyro_skipvae.checkpoint import atomic_write_json  # noqa: E402
from pyro_skipvae.lock import LOCK_FILE, read_holder  # noqa: E402
from pyro_skipvae.sweep import COLUMNS, _read_rows, _write_rows, cell_results  # noqa: E402

PAPER = ["--decoder-option", "num_layers=8", "--decoder-option", "channels=32"]
PAPER += ["--decoder-option", "kernel_sizes=3", "--encoder-option", "channels=64"]
FIT = ["--dataset", "binarized-mnist", "--decoder", "pixelcnn", "--encoder", "conv"]
FIT += ["--latent-dim", "20", "--batch-size", "50", "--learning-rate", "0.001"]
FIT += ["--clip-norm", "5", "--kl-warmup-epochs", "0", "--quiet"]
TINY = ["--train-size", "100", "--val-size", "50", "--decoder-option", "num_layers=2"]
TINY += ["--decoder-option", "channels=4", "--encoder-option", "channels=4"]
DIAGNOSE = ["--num-samples", "500", "--accuracy-dataset", "mnist"]
DIAGNOSE += ["--no-plots", "--quiet"]
DIAGNOSE_TINY = ["--num-samples", "5", "--eval-size", "60"]
DIAGNOSE_TINY += ["--accuracy-dataset", "mnist", "--classifier-train-size", "100"]
DIAGNOSE_TINY += ["--no-plots", "--quiet"]
CELLS = {"skip=true": ["--skip"], "skip=false": ["--no-skip"]}

# the text recipe of benchmarks/grids/ptb_lstm_cpu.yaml, less its 20-epoch cap
PTB_FIT = ["--dataset", "ptb", "--decoder", "lstm", "--encoder", "lstm"]
PTB_FIT += ["--elbo", "mean-field", "--optimizer", "sgd", "--learning-rate", "1.0"]
PTB_FIT += ["--clip-norm", "5", "--batch-size", "32", "--lr-decay", "plateau"]
PTB_FIT += ["--lr-decay-min-epochs", "15", "--kl-warmup-epochs", "10"]
PTB_FIT += ["--early-stopping-patience", "3", "--quiet"]
PTB_SIZE = ["--latent-dim", "64"]
PTB_SIZE += [f"--{net}-option={key}=256" for net in ("decoder", "encoder")
             for key in ("embedding_dim", "hidden_dim")]  # fmt: skip
PTB_TINY = ["--latent-dim", "4", "--train-size", "64", "--val-size", "32"]
PTB_TINY += [f"--{net}-option={key}=8" for net in ("decoder", "encoder")
             for key in ("embedding_dim", "hidden_dim")]  # fmt: skip
PTB_DIAGNOSE = ["--num-samples", "500", "--no-plots", "--quiet"]
PTB_DIAGNOSE_TINY = ["--num-samples", "5", "--eval-size", "40", "--no-plots", "--quiet"]
STATE_FILE = "window.json"
#: seconds an interrupted fit or diagnosis gets to release its lock before it is killed
GRACE_S = 15.0


class Study(NamedTuple):
    """What a window runs: the ``fit`` options shared by the cells, each cell's own, and the
    ``diagnose`` options."""

    fit: list[str]
    cells: dict[str, list[str]]
    diagnose: list[str]


def pixelcnn(args) -> Study:
    diagnose = DIAGNOSE_TINY if args.tiny else DIAGNOSE
    return Study(
        [*FIT, *(TINY if args.tiny else PAPER)],
        dict(CELLS),
        [*diagnose, "--nll-size", str(args.nll_size)],
    )


def ptb(args) -> Study:
    semi = ["--inference", "semi-amortized", "--sa-mode", args.sa_mode]
    semi += ["--num-refine-steps", str(args.num_refine_steps)]
    diagnose = PTB_DIAGNOSE_TINY if args.tiny else PTB_DIAGNOSE
    return Study(
        [*PTB_FIT, *(PTB_TINY if args.tiny else PTB_SIZE)]
        + ["--min-learning-rate", str(args.min_learning_rate)],
        {
            "skip=true": ["--skip"],
            "skip=false": ["--no-skip"],
            "sa_skip=true": ["--skip", *semi],
            "sa_skip=false": ["--no-skip", *semi],
        },
        [*diagnose, "--nll-size", str(args.nll_size)],
    )


STUDIES = {"pixelcnn": pixelcnn, "ptb": ptb}
#: per study: (--max-epochs, --diagnose-s) when not given
DEFAULTS = {"pixelcnn": (50, 150.0), "ptb": (30, 300.0)}


def epochs_done(folder: Path) -> int:
    metrics = folder / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def run(command, *, timeout, log, folder: Path | None = None):
    """Run ``command``, interrupted at ``timeout`` seconds; return whether it finished well.

    At the deadline the command gets Ctrl-C (SIGINT), so a ``skipvae`` command releases the
    lock on its run folder as it stops; one still running ``GRACE_S`` later is killed, and
    the lock it held on ``folder`` is removed: a window on another host could not tell it
    from a live one for the lock's stale time.
    """
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    with subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) as process:
        try:
            return process.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                holder = read_holder(folder / LOCK_FILE) if folder is not None else None
                if holder and (holder.get("host"), holder.get("pid")) == (
                    socket.gethostname(),
                    process.pid,
                ):
                    (folder / LOCK_FILE).unlink(missing_ok=True)
            log.write(f"stopped at the window's deadline ({timeout:.0f} s)\n")
            return False


def train_level(
    cells, fit_command, *, deadline, max_epochs, finished, log, epochs_per_turn=1
) -> None:
    """Train the cells ``epochs_per_turn`` epochs each in turn (so they stay level) until
    ``max_epochs`` or ``deadline``. A cell whose fit succeeded with fewer epochs than asked
    ended by its own rule (minimum learning rate, early stopping): it goes into
    ``finished`` (name -> epochs) and is not trained again. A fit that fails or is cut by
    the deadline ends the training: a failure would only fail again (its error is in the
    log)."""
    while True:
        active = {n: f for n, f in cells.items() if n not in finished}
        if not active or deadline <= time.monotonic():
            return
        reached = min(epochs_done(f) for f in active.values())
        if reached >= max_epochs:
            return
        target = min(reached + epochs_per_turn, max_epochs)
        for name, folder in active.items():
            if epochs_done(folder) < target:
                command = fit_command(name, folder, target)
                left = max(1.0, deadline - time.monotonic())
                if not run(command, timeout=left, log=log, folder=folder):
                    return
                if epochs_done(folder) < target:
                    finished[name] = epochs_done(folder)
                    log.write(f"{name} ended by its own rule after epoch {finished[name]}\n")


def read_state(out: Path, cells: dict) -> dict:
    """``window.json``: the cells that ended by their own rule and what each was diagnosed
    at, less any entry whose run folder has since changed (e.g. removed to start it again)."""
    path = out / STATE_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    finished = {
        name: epochs
        for name, epochs in state.get("finished", {}).items()
        if name in cells and epochs_done(cells[name]) == epochs
    }
    return {"finished": finished, "diagnosed": state.get("diagnosed", {})}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--study", choices=sorted(STUDIES), default="pixelcnn")
    parser.add_argument(
        "--cells", nargs="+", metavar="NAME", help="the cells to run [default: the study's all]"
    )
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument(
        "--diagnose-s",
        type=float,
        help="seconds kept back for diagnosing the cells [default: pixelcnn 150, ptb 300]",
    )
    parser.add_argument("--max-epochs", type=int, help="[default: pixelcnn 50, ptb 30]")
    parser.add_argument(
        "--epochs-per-turn", type=int, default=1, help="epochs of a cell per fit call"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--nll-size",
        type=int,
        help="IW-NLL on this many test points, drawn with the seed [default: 2000; --tiny: 20]",
    )
    parser.add_argument(
        "--min-learning-rate",
        type=float,
        default=0.03,
        help="ptb: stop a cell once its learning rate falls below this",
    )
    parser.add_argument(
        "--sa-mode",
        choices=["end-to-end", "stop-gradient"],
        default="end-to-end",
        help="ptb: how the semi-amortized cells' encoder learns",
    )
    parser.add_argument(
        "--num-refine-steps",
        type=int,
        default=10,
        help="ptb: K of the semi-amortized cells [default: 10, the calibrated K]",
    )
    parser.add_argument(
        "--fit-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="an extra flag for every fit, after the recipe's (so it overrides them), "
        "e.g. --fit-flag=--precision=bf16-mixed; repeatable",
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny size, for the CPU test")
    args = parser.parse_args(argv)
    max_epochs, diagnose_s = DEFAULTS[args.study]
    args.max_epochs = args.max_epochs or max_epochs
    args.diagnose_s = diagnose_s if args.diagnose_s is None else args.diagnose_s
    args.nll_size = args.nll_size or (20 if args.tiny else 2000)
    if args.epochs_per_turn < 1:
        parser.error(f"--epochs-per-turn must be at least 1, found {args.epochs_per_turn}")
    study = STUDIES[args.study](args)
    unknown = sorted(set(args.cells or []) - set(study.cells))
    if unknown:
        parser.error(
            f"unknown cell(s) {unknown} of study {args.study}; expected {list(study.cells)}"
        )
    names = args.cells or list(study.cells)
    deadline = time.monotonic() + args.budget_s
    # installed, the CLI is pyro_skipvae.cli; from a bare checkout (the GPU machine), cli/
    installed = importlib.util.find_spec("pyro_skipvae.cli") is not None
    cli = [sys.executable, "-m", "pyro_skipvae.cli.main" if installed else "cli.main"]
    shared = [*study.fit, "--seed", str(args.seed), "--device", args.device]
    cells = {name: args.out / "cells" / name for name in dict.fromkeys(names)}
    args.out.mkdir(parents=True, exist_ok=True)
    state = read_state(args.out, cells)

    def fit_command(name, folder, epoch):
        resume = ["--resume"] if (folder / "config.json").exists() else []
        own = [*study.cells[name], *args.fit_flag, "--num-epochs", str(epoch)]
        return [*cli, "fit", *shared, *own] + [
            "--out",
            str(folder),
            *resume,
        ]

    # the NLL subset is drawn with diagnose's own seed (0): the same points for every cell
    diagnose_options = list(study.diagnose)
    with open(args.out / "log.txt", "a") as log:
        try:
            train_level(
                cells,
                fit_command,
                deadline=deadline - args.diagnose_s,
                max_epochs=args.max_epochs,
                finished=state["finished"],
                log=log,
                epochs_per_turn=args.epochs_per_turn,
            )
        finally:
            atomic_write_json(args.out / STATE_FILE, state)
        rows = []
        for name, folder in cells.items():
            if not (folder / "best.pt").exists():
                continue
            # the diagnosis a cell has is current if neither its epochs nor the options changed
            at = {"epochs": epochs_done(folder), "options": diagnose_options}
            current = state["diagnosed"].get(name) == at
            if not (current and (folder / "diagnostics.json").exists()):
                left = deadline - time.monotonic()
                diagnose = [*cli, "diagnose", str(folder), *diagnose_options]
                if left <= 0 or not run(
                    [*diagnose, "--device", args.device], timeout=left, log=log, folder=folder
                ):
                    continue
                state["diagnosed"][name] = at
                atomic_write_json(args.out / STATE_FILE, state)
            rows.append(
                {"cell": name, "status": "ok", "error": "", "grid": "gpu-window"}
                | cell_results(folder)
            )
    write_rows(args.out / "results.csv", rows)
    for row in rows:
        print(json.dumps({k: row.get(k) for k in COLUMNS}))
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """Replace this window's cells' rows in the CSV (atomically, as the sweep writes it),
    keeping any others."""
    kept = _read_rows(path)
    kept.update({row["cell"]: row for row in rows})
    _write_rows(path, kept, list(kept))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
