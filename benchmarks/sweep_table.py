"""Summarise a sweep's results.csv as a Markdown table: one row per (grid, skip, inference,
latent_dim, num_layers), the mean and the standard deviation over the seeds that finished.

    python benchmarks/sweep_table.py sweeps/mnist-mlp-cpu/results.csv
    python benchmarks/sweep_table.py a.csv b.csv --metrics test_nll,kl,mi,agg_kl,au,accuracy

Several files make one table (e.g. a grid and the semi-amortized grid fine-tuned from it).
"""

import argparse
import csv
import statistics
from collections import defaultdict

KEYS = ("grid", "skip", "inference", "latent_dim", "num_layers")
METRICS = ("test_nll", "kl", "mi", "log_n", "au", "accuracy_knn")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="+")
    parser.add_argument("--metrics", default=",".join(METRICS), help="columns to summarise")
    args = parser.parse_args()
    metrics = tuple(args.metrics.split(","))
    groups = defaultdict(list)
    for path in args.results:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["status"] == "ok":
                    groups[tuple(row[k] for k in KEYS)].append(row)
    print("| " + " | ".join(KEYS + ("seeds",) + metrics) + " |")
    print("|" + "---|" * (len(KEYS) + 1 + len(metrics)))
    for key in sorted(groups, key=lambda k: (k[0], int(k[3]), int(k[4] or 0), k[2], k[1])):
        rows = groups[key]
        cells = []
        for metric in metrics:
            values = [float(r[metric]) for r in rows if r[metric] not in ("", None)]
            if not values:
                cells.append("–")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}")
            else:
                cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
        print("| " + " | ".join((*key, str(len(rows)), *cells)) + " |")


if __name__ == "__main__":
    main()
