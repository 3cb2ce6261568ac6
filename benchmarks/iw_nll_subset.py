"""Importance-weighted NLL of a fitted run on a seeded random subset of its test split.

The full-test-set IW-NLL (``skipvae diagnose RUN``, K = 500 on all 10,000 images) costs
5 million decoder passes: hours for a PixelCNN on a CPU. This script gives the same
estimator (:func:`pyro_skipvae.diagnostics.nll.importance_sample`, amortized q, networks in
eval mode, test images prepared as ``diagnose`` prepares them) on ``--num-images`` test images
drawn uniformly without replacement with ``--seed`` — a random subset, not the first rows:
the static binarised MNIST test rows are sorted by digit. The standard error covers the
subset's sampling; label it as a subset estimate wherever it is reported.

    python benchmarks/iw_nll_subset.py RUN_DIR [--num-images 1000] [--num-samples 500]
        [--seed 0] [--out RUN_DIR/iw_nll_subset.json]
"""

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

from pyro_skipvae import SkipVAE, checkpoint
from pyro_skipvae.data import load_dataset, prepare
from pyro_skipvae.diagnostics.nll import importance_sample
from pyro_skipvae.modes import evaluating
from pyro_skipvae.run import read_config


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = read_config(args.run_dir)
    vae = SkipVAE.load(args.run_dir)
    test = load_dataset(config["run"]["dataset"]).test
    index = torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(args.seed))
    x = prepare(
        test[index[: args.num_images]],
        vae.model.likelihood,
        binarization=config["train"]["binarize"],
        name="test data",
    )
    pyro.set_rng_seed(args.seed)
    started = time.perf_counter()
    with evaluating(vae.model, vae.guide):
        result = importance_sample(vae.model, vae.guide, x, num_samples=args.num_samples)
    nll = result.estimate()
    summary = result.pareto_summary()
    out = {
        "run_dir": str(args.run_dir),
        "split": "test",
        "subset": f"{args.num_images} of {test.shape[0]} images, uniform without replacement, seed {args.seed}",
        "nll": float(nll),
        "nll_se": nll.se,
        "nll_mc_se": nll.info["mc_se"],
        "nll_num_samples": args.num_samples,
        "pareto_k_share_above": summary["share_above"],
        "pareto_k_max": summary["max"],
        "seconds": round(time.perf_counter() - started, 1),
        "epoch": checkpoint.load(args.run_dir / "best.pt")["epoch"],
    }
    checkpoint.atomic_write_json(args.out or args.run_dir / "iw_nll_subset.json", out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
