"""Trace_ELBO (Monte-Carlo KL) against TraceMeanField_ELBO (analytic KL) per training step.

The default MNIST skip-VAE (784-1024-1024-32), batch 50 of real dynamically-binarised MNIST,
our SVI + Optimizer (Adam 1e-3): blocks of steps alternate between the two objectives in one
process, so machine noise hits both alike; prints the median ms per step of each and their
ratio as a last JSON line. Learning curves at equal time come from two `skipvae fit` runs
side by side (see benchmarks/results/core_hardening.md).

    python benchmarks/trace_vs_meanfield.py [--repeats 7] [--steps 20]
"""

import argparse
import json
import statistics
import subprocess
import time

import pyro
import torch

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import binarize, load_dataset
from pyro_skipvae.infer import ELBOS, SVI, Optimizer


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    splits = load_dataset("mnist", train_size=args.steps * 50)
    data = binarize(splits.train, "dynamic", torch.Generator().manual_seed(0))
    batches = data.split(50)
    steps = {}
    for name in ("trace", "mean-field"):
        vae = SkipVAE(splits.data_shape, seed=0)
        svi = SVI(vae.model, vae.guide, Optimizer(vae.parameters()), ELBOS.build(name))
        steps[name] = svi
    times = {name: [] for name in steps}
    with pyro.validation_enabled(False):
        for repeat in range(args.repeats + 1):
            for name, svi in steps.items():
                started = time.perf_counter()
                for x in batches:
                    svi.step(x, size=50_000)
                if repeat:  # the first block warms up
                    times[name].append((time.perf_counter() - started) / len(batches))
    median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(
            f"{name:<11} median {median[name]:7.2f} ms/step (min {1e3 * min(t):.2f}, max {1e3 * max(t):.2f})"
        )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(
        json.dumps(
            {
                "trace_ms": round(median["trace"], 2),
                "mean_field_ms": round(median["mean-field"], 2),
                "ratio_mean_field_over_trace": round(median["mean-field"] / median["trace"], 3),
                "threads": torch.get_num_threads(),
                "commit": commit.stdout.strip(),
            }
        )
    )


if __name__ == "__main__":
    main()
