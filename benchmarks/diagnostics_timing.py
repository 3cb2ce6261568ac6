"""Time the collapse diagnostics against the targets of issue #5.

1. MI + aggregate KL + active units on 10,000 points with a 32-dim latent (target < 60 s),
   for a synthetic linear-Gaussian guide and, with --run-dir, a trained MNIST guide;
2. IW-NLL with K = 500 on the 10,000 MNIST test images with the MLP model (target < 15 min),
   measured on the first --nll-size images and extrapolated linearly (the cost is exactly
   proportional to the number of images) unless --nll-size 10000.

Writes benchmarks/results/diagnostics_timing.md (machine, commit, command, timings).

    python benchmarks/diagnostics_timing.py --run-dir runs/diag-skip --nll-size 1000
"""

import argparse
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pyro_skipvae import SkipVAE
from pyro_skipvae.checkpoint import atomic_write_text
from pyro_skipvae.data import binarize, load_dataset
from pyro_skipvae.diagnostics import (
    Posteriors,
    active_units,
    aggregate_posterior_terms,
    importance_sample,
)
from pyro_skipvae.sites import data_plate


def linear_guide(A, s):
    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", dist.Normal(x @ A.T, s).to_event(1))

    return guide


def standard_normal_model(latent_dim):
    def model(x, **kwargs):
        with data_plate(x):
            pyro.sample("z", dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1))

    return model


def time_latent(model, guide, data, chunk_size):
    tic = time.perf_counter()
    post = Posteriors(guide, data, chunk_size=chunk_size)
    terms = aggregate_posterior_terms(model, post)
    au = active_units(post)
    return time.perf_counter() - tic, terms, au


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--num-points", type=int, default=10_000)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=500)
    p.add_argument("--run-dir", default=None, help="a fitted MLP run for the MNIST parts")
    p.add_argument("--nll-size", type=int, default=1000, help="test images for the IW-NLL timing")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--out", default="benchmarks/results/diagnostics_timing.md")
    args = p.parse_args()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    load_before = os.getloadavg()
    lines = []

    # 1a. synthetic linear-Gaussian guide
    n, d = args.num_points, args.latent_dim
    x = torch.randn(n, 64)
    guide = linear_guide(torch.randn(d, 64) / 40, torch.ones(d))  # MI below the log N ceiling
    seconds, terms, au = time_latent(standard_normal_model(d), guide, x, args.chunk_size)
    lines.append(
        f"| MI + agg KL + AU, synthetic linear-Gaussian guide | {n} × {d} | {seconds:.1f} s | < 60 s | "
        f"MI {terms['mi']:.3f} (log N {math.log(n):.3f}), agg KL {terms['agg_kl']:.3f}, AU {au} |"
    )
    print(lines[-1], flush=True)

    if args.run_dir:
        vae = SkipVAE.load(args.run_dir)
        splits = load_dataset("mnist")
        test = binarize(splits.test, "dynamic", torch.Generator().manual_seed(0))
        # 1b. the trained MNIST guide on all test images
        with torch.no_grad():
            seconds, terms, au = time_latent(vae.model, vae.guide, test[:n], args.chunk_size)
        lines.append(
            f"| MI + agg KL + AU, trained MLP guide ({args.run_dir}), MNIST test | {min(n, len(test))} × "
            f"{vae.config.latent_dim} | {seconds:.1f} s | < 60 s | MI {terms['mi']:.3f}, agg KL "
            f"{terms['agg_kl']:.3f}, AU {au} (includes the model pass for p(z)) |"
        )
        print(lines[-1], flush=True)
        # 2. IW-NLL
        m = args.nll_size
        tic = time.perf_counter()
        result = importance_sample(
            vae.model, vae.guide, test[:m], num_samples=args.num_samples, keep_log_weights=False
        )
        seconds = time.perf_counter() - tic
        full = seconds * len(test) / m
        how = (
            "measured"
            if m >= len(test)
            else f"extrapolated ×{len(test) / m:g} from {m} images ({seconds:.0f} s)"
        )
        lines.append(
            f"| IW-NLL K={args.num_samples} (with Pareto k̂), MLP model, MNIST test | {len(test)} images | "
            f"{full / 60:.1f} min ({how}) | < 15 min | NLL {result.nll.mean():.2f} nats on the {m} images |"
        )
        print(lines[-1], flush=True)

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = "\n".join(
        [
            "# Diagnostics timing",
            "",
            f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
            f"- commit: `{head}` (plus uncommitted work in progress)",
            f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads",
            f"- load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
            f"after: {'/'.join(f'{v:.1f}' for v in os.getloadavg())} (other jobs share these 2 cores)",
            f"- peak resident memory of the process: {rss:.0f} MB; the N × N pass holds at most "
            f"max(chunk, 500) × N float64 values at a time ({max(args.chunk_size, 500) * n * 8 / 2**20:.0f} MB)",
            "",
            "| what | size | time | target | result |",
            "|---|---|---|---|---|",
            *lines,
            "",
            "Full IW-NLL run (no extrapolation): "
            f"`python benchmarks/diagnostics_timing.py --run-dir {args.run_dir or 'RUN_DIR'} --nll-size 10000`",
            "",
        ]
    )
    atomic_write_text(args.out, text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
