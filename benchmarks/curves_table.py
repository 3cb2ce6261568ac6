"""Validation curves of several run folders side by side: a Markdown table (one row per
epoch, one column group per run) and, with ``--png``, the training-curve figure of
``skipvae report``. Reads ``metrics.jsonl`` only, so it works on runs still training.

    python benchmarks/curves_table.py ../runs/ptb_cpu/cells/latent_dim=64_seed=0_skip=true \\
        ../runs/ptb_cpu/cells/latent_dim=64_seed=0_skip=false --names Skip-VAE,VAE \\
        --columns val_kl,val_ppl --png benchmarks/results/study/ptb_curves.png

``--csv PATH`` also writes every run's per-epoch record as one CSV, one row per run and
epoch (:data:`CSV_COLUMNS`, empty where a run did not record a key), to commit beside rows.
"""

import argparse
import csv
import io
from pathlib import Path

from pyro_skipvae.checkpoint import atomic_write_text
from pyro_skipvae.report.figures import training_curves
from pyro_skipvae.report.runs import read_history

#: the per-epoch validation curve: bound, KL, active units, perplexity, learning rate, cost
CSV_COLUMNS = [
    "epoch", "beta", "train_elbo", "val_elbo", "val_kl", "val_au", "val_ppl",
    "val_elbo_amortized", "val_kl_amortized", "val_amortization_gap", "learning_rate",
    "selected", "seconds",
]  # fmt: skip


def curves_csv(names, histories) -> str:
    """The records of every run, one CSV row per (run, epoch), columns ``run`` + CSV_COLUMNS."""
    out = io.StringIO()
    writer = csv.DictWriter(out, ["run", *CSV_COLUMNS], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for name, history in zip(names, histories):
        for epoch in sorted(history):
            writer.writerow({"run": name, **history[epoch]})
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--names", help="comma-separated run names [default: folder names]")
    parser.add_argument("--columns", default="val_elbo,val_kl", help="metrics.jsonl keys")
    parser.add_argument("--png", type=Path, help="also write the training-curve figure here")
    parser.add_argument("--csv", type=Path, help="also write every per-epoch record here")
    args = parser.parse_args()
    names = args.names.split(",") if args.names else [r.name for r in args.runs]
    if len(names) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(names)} names")
    columns = args.columns.split(",")
    histories = [{r["epoch"]: r for r in read_history(run)} for run in args.runs]
    selected = [
        max(h.values(), key=lambda r: r["epoch"]).get("selected") if h else None for h in histories
    ]

    print("| epoch | β | " + " | ".join(f"{n} {c}" for n in names for c in columns) + " |")
    print("|" + "---|" * (2 + len(names) * len(columns)))
    for epoch in sorted({e for h in histories for e in h}):
        beta = next((h[epoch]["beta"] for h in histories if epoch in h), None)
        cells = []
        for history, best in zip(histories, selected):
            record = history.get(epoch, {})
            for column in columns:
                value = record.get(column)
                text = "–" if value is None else f"{value:.2f}"
                cells.append(f"**{text}**" if epoch == best and value is not None else text)
        print(f"| {epoch} | {beta:.2f} | " + " | ".join(cells) + " |")
    print("\nBold: the selected epoch (best validation ELBO so far, the one in best.pt).")

    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.csv, curves_csv(names, histories))
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        png = training_curves(list(zip(names, [list(h.values()) for h in histories])))
        if png is not None:
            args.png.write_bytes(png)


if __name__ == "__main__":
    main()
