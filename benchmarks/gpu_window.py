"""One GPU window of the paper-size PixelCNN pair (issue 21): train VAE and Skip-VAE, an epoch
of each in turn, for as long as the window's budget allows, then diagnose both and append
their rows to ``<out>/results.csv``; stop cleanly. A later window with the same ``--out``
(its run folders carried back) resumes where this one stopped.

    python3 benchmarks/gpu_window.py --out WINDOW_DIR --budget-s 420 --device cuda
    python3 benchmarks/gpu_window.py --out /tmp/w --tiny --device cpu --budget-s 60   # the test

The cells are ordinary run folders (``skipvae fit --resume``), so every epoch that finished is
kept; an epoch cut by the deadline is lost, never half-written. The grid is
``benchmarks/grids/pixelcnn_bmnist.yaml``'s inference grid (amortized, seed 0): 8 gated
layers x 32 channels, kernel 3, conv encoder of 64 channels, latent 20, Adam 1e-3, batch 50, clip 5.
Diagnosis: IW-NLL K = 500 on a seeded random 2,000-image test subset, posterior-mean accuracy
on labelled MNIST. Rows are rewritten after each window with the epochs reached so far.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyro_skipvae.sweep import COLUMNS, _read_rows, _write_rows, cell_results  # noqa: E402

PAPER = ["--decoder-option", "num_layers=8", "--decoder-option", "channels=32"]
PAPER += ["--decoder-option", "kernel_sizes=3", "--encoder-option", "channels=64"]
FIT = ["--dataset", "binarized-mnist", "--decoder", "pixelcnn", "--encoder", "conv"]
FIT += ["--latent-dim", "20", "--batch-size", "50", "--learning-rate", "0.001"]
FIT += ["--clip-norm", "5", "--kl-warmup-epochs", "0", "--seed", "0", "--quiet"]
TINY = ["--train-size", "100", "--val-size", "50", "--decoder-option", "num_layers=2"]
TINY += ["--decoder-option", "channels=4", "--encoder-option", "channels=4"]
DIAGNOSE = ["--num-samples", "500", "--nll-size", "2000", "--accuracy-dataset", "mnist"]
DIAGNOSE += ["--no-plots", "--quiet"]
DIAGNOSE_TINY = ["--num-samples", "5", "--eval-size", "60", "--nll-size", "20"]
DIAGNOSE_TINY += ["--accuracy-dataset", "mnist", "--classifier-train-size", "100"]
DIAGNOSE_TINY += ["--no-plots", "--quiet"]
CELLS = {"skip=true": ["--skip"], "skip=false": ["--no-skip"]}


def epochs_done(folder: Path) -> int:
    metrics = folder / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def run(command, *, timeout, log):
    """Run ``command``, killed at ``timeout`` seconds; return whether it finished well."""
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    try:
        return (
            subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        log.write(f"stopped at the window's deadline ({timeout:.0f} s)\n")
        return False


def train_level(cells, fit_command, *, deadline, max_epochs, log) -> None:
    """Train the cells an epoch each in turn (so the pair stays level) until ``max_epochs``
    or ``deadline``; a fit that fails or is cut by the deadline ends the training: a
    failure would only fail again (its error is in the log)."""
    while True:
        epoch = min(epochs_done(f) for f in cells.values()) + 1
        if epoch > max_epochs or deadline <= time.monotonic():
            return
        for name, folder in cells.items():
            if epochs_done(folder) < epoch:
                command = fit_command(name, folder, epoch)
                if not run(command, timeout=max(1.0, deadline - time.monotonic()), log=log):
                    return


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument(
        "--diagnose-s",
        type=float,
        default=150.0,
        help="seconds kept back for diagnosing both cells",
    )
    parser.add_argument("--max-epochs", type=int, default=50)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny size, for the CPU test")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    # installed, the CLI is pyro_skipvae.cli; from a bare checkout (the GPU machine), cli/
    installed = importlib.util.find_spec("pyro_skipvae.cli") is not None
    cli = [sys.executable, "-m", "pyro_skipvae.cli.main" if installed else "cli.main"]
    shared = [*FIT, *(TINY if args.tiny else PAPER), "--device", args.device]
    cells = {name: args.out / "cells" / name for name in CELLS}
    args.out.mkdir(parents=True, exist_ok=True)

    def fit_command(name, folder, epoch):
        resume = ["--resume"] if (folder / "config.json").exists() else []
        return [*cli, "fit", *shared, *CELLS[name], "--num-epochs", str(epoch)] + [
            "--out",
            str(folder),
            *resume,
        ]

    with open(args.out / "log.txt", "a") as log:
        train_level(
            cells,
            fit_command,
            deadline=deadline - args.diagnose_s,
            max_epochs=args.max_epochs,
            log=log,
        )
        rows = []
        for name, folder in cells.items():
            left = deadline - time.monotonic()
            if not (folder / "best.pt").exists() or left <= 0:
                continue
            diagnose = [*cli, "diagnose", str(folder), *(DIAGNOSE_TINY if args.tiny else DIAGNOSE)]
            if run([*diagnose, "--device", args.device], timeout=left, log=log):
                rows.append(
                    {
                        "cell": name,
                        "status": "ok",
                        "error": "",
                        "grid": "gpu-window",
                        **cell_results(folder),
                    }
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
