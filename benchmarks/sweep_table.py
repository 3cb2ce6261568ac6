"""Summarise a sweep's results.csv as a Markdown table: one row per (grid, skip, inference,
latent_dim, num_layers), the mean and the standard deviation over the seeds that finished.

    python benchmarks/sweep_table.py sweeps/mnist-mlp-cpu/results.csv
"""

import argparse
import csv
import statistics
from collections import defaultdict

KEYS = ("grid", "skip", "inference", "latent_dim", "num_layers")
METRICS = ("test_nll", "kl", "mi", "log_n", "au", "accuracy_knn")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results")
    args = parser.parse_args()
    groups = defaultdict(list)
    with open(args.results, newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] == "ok":
                groups[tuple(row[k] for k in KEYS)].append(row)
    print("| " + " | ".join(KEYS + ("seeds",) + METRICS) + " |")
    print("|" + "---|" * (len(KEYS) + 1 + len(METRICS)))
    for key in sorted(groups, key=lambda k: (k[0], int(k[3]), int(k[4]), k[2], k[1])):
        rows = groups[key]
        cells = []
        for metric in METRICS:
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
