"""Overhead of training through Pyro (our SVI + Trace_ELBO + pyro_skipvae's Optimizer, what
``skipvae fit`` runs) against the hand-written PyTorch ELBO step a user would write for the
*same* network: the per-datapoint loss and ``torch.optim.Adam`` (its default foreach
implementation), lr 1e-3.

Both sides use the MNIST MLP skip-VAE (784 → 1024 → 1024 → 32 and back, skip on), batch
100 of real dynamically-binarised MNIST and the single-sample Monte-Carlo ELBO (Trace_ELBO's
estimator). Stock ``pyro.infer.SVI`` with ``pyro.optim.Adam`` (one torch optimizer per
parameter) is timed for reference. Steps alternate between the sides in one process,
repeated, so machine noise hits all alike; the ratio of medians is printed last as JSON.

    python benchmarks/overhead.py [--repeats 7] [--steps 30] [--epoch] [--device cuda] [--save]

``--epoch`` also times one full training epoch (50,000 images, batch 50) through
``SkipVAE.fit``.
"""

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.infer
import pyro.optim
import torch
from pyro.infer import Trace_ELBO

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import binarize, load_dataset
from pyro_skipvae.infer import SVI, Optimizer

RESULTS = Path(__file__).parent / "results" / "overhead.jsonl"


def torch_step(vae, optimizer, x):
    """One ELBO step written directly in PyTorch, mirroring Trace_ELBO's estimator, on the
    per-datapoint loss (the minibatch mean)."""
    encoder, decoder = vae.guide.encoder, vae.model.decoder
    loc, log_var = encoder(x)
    scale = (0.5 * log_var).exp()
    z = loc + scale * torch.randn_like(loc)
    logits = decoder(z)
    log_lik = (
        -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
        .flatten(1)
        .sum(-1)
    )
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    loss = -(log_lik + log_p - log_q).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def time_steps(step, batches):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for x in batches:
        step(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / len(batches)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed block")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epoch", action="store_true", help="also time one full MNIST epoch")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--save", action="store_true", help=f"append the JSON result to {RESULTS}")
    args = parser.parse_args()

    splits = load_dataset("mnist")
    size = splits.train.shape[0]
    generator = torch.Generator().manual_seed(0)
    data = binarize(splits.train, "dynamic", generator)
    batches = [
        data[i * args.batch_size : (i + 1) * args.batch_size].to(args.device)
        for i in range(args.steps)
    ]

    def make_svi(svi_class):
        vae = SkipVAE(splits.data_shape, seed=0, device=args.device)
        if svi_class is SVI:
            optim = Optimizer(vae.parameters(), learning_rate=1e-3)
        else:
            optim = pyro.optim.Adam({"lr": 1e-3})
        svi = svi_class(vae.model, vae.guide, optim, Trace_ELBO())

        def step(x):
            with pyro.validation_enabled(False):  # as in pyro_skipvae.infer.fit.train
                return svi.step(x, size=size)

        return step

    torch_vae = SkipVAE(splits.data_shape, seed=0, device=args.device)
    optimizer = torch.optim.Adam(torch_vae.parameters(), lr=1e-3)
    steps = {
        "pyro": make_svi(SVI),  # what `skipvae fit` runs
        "stock": make_svi(pyro.infer.SVI),  # pyro.infer.SVI as shipped, for reference
        "torch": lambda x: torch_step(torch_vae, optimizer, x),
    }
    times = {name: [] for name in steps}

    def timed(name, xs):
        return time_steps(steps[name], xs)

    for name in steps:  # warm-up: allocator, lazily created optimizer state
        timed(name, batches[:5])
    for _ in range(args.repeats):
        for name in steps:
            times[name].append(timed(name, batches))

    rows = {name: statistics.median(t) for name, t in times.items()}
    ratio = rows["pyro"] / rows["torch"]
    ratios = [p / t for p, t in zip(times["pyro"], times["torch"])]
    stock_ratio = rows["stock"] / rows["torch"]
    print(
        f"device {args.device}, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, torch threads {torch.get_num_threads()}"
    )
    print(f"{'path':<8} {'median ms/step':>15} {'min':>8} {'max':>8}")
    for name, t in times.items():
        print(f"{name:<8} {1e3 * rows[name]:>15.2f} {1e3 * min(t):>8.2f} {1e3 * max(t):>8.2f}")
    print(f"ratio pyro/torch: {ratio:.3f} (per-repeat ratios {min(ratios):.3f}..{max(ratios):.3f})")
    print(f"ratio stock pyro.infer.SVI + pyro.optim.Adam/torch: {stock_ratio:.3f}")

    result = {
        "ratio": round(ratio, 4),
        "stock_svi_ratio": round(stock_ratio, 4),
        "pyro_ms_per_step": round(1e3 * rows["pyro"], 3),
        "torch_ms_per_step": round(1e3 * rows["torch"], 3),
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    if args.epoch:
        vae = SkipVAE(splits.data_shape, seed=0, device=args.device)
        started = time.perf_counter()
        history = vae.fit(splits.train, val=splits.val, num_epochs=1, binarize="dynamic")
        result["seconds_per_epoch"] = round(time.perf_counter() - started, 1)
        result["epoch_val_elbo"] = round(history[-1]["val_elbo"], 2)
        assert math.isfinite(result["epoch_val_elbo"])
    if args.save:
        result["command"] = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
        with open(RESULTS, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
