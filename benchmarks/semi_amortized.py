"""Cost of one semi-amortized training step, per mode, relative to amortized SVI.

Model: the MNIST MLP skip-VAE (784 → 1024 → 1024 → 32 and back, skip on), a batch of real
dynamically-binarised MNIST, Trace_ELBO, ClippedAdam (lr 1e-3, no clipping, the library default), as
``skipvae fit`` runs it. Rows: ``svi`` (amortized, :class:`pyro_skipvae.infer.svi.SVI`) and
:class:`~pyro_skipvae.infer.SemiAmortizedSVI` in each mode with K refinement steps.

Each row runs in its own process, so its peak memory is its own: on CPU the growth of the
peak resident set size (``ru_maxrss``) over the resident size before the first step; on
CUDA ``torch.cuda.max_memory_allocated`` over the allocation before the first step. Times
are medians over ``--repeats`` blocks of ``--steps`` steps, after two warm-up steps.
Expectation: stop-gradient, kl and svi cost about K + 1 forward/backward passes (the
refinement's first gradient doubles as the encoder's), end-to-end more (second-order
terms), and end-to-end's memory grows with K (the graph of all K steps is kept).

    python benchmarks/semi_amortized.py [--num-refine-steps 20] [--repeats 3] [--steps 3]

``--dataset ptb`` times the text study's model instead (issue 33: the cost of training the SA
pair from scratch): LSTM encoder and decoder of 256/256, latent 64, skip on, batches of 32
training sentences of similar length (the fit's bucketing, one seeded epoch order), the
mean-field ELBO; one epoch is 1,315 such steps. The optimizer is ClippedAdam in both cases
(the study's SGD costs the same per step: the passes dominate).

Writes a Markdown table to ``benchmarks/results/semi_amortized.md`` (``--out``) and prints it.
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("svi", "end-to-end", "stop-gradient", "kl", "svi-mode")


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(args):
    """Time one method in this process; print one JSON line."""
    import pyro
    import pyro.optim
    import torch
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    from pyro_skipvae import SkipVAE
    from pyro_skipvae.data import binarize, load_dataset
    from pyro_skipvae.data.text import bucket_batches, trim_collate
    from pyro_skipvae.infer import SemiAmortizedSVI
    from pyro_skipvae.infer.svi import SVI

    device = torch.device(args.device)
    splits = load_dataset(args.dataset)
    size = splits.train.shape[0]
    if args.dataset == "ptb":
        options = splits.vocabulary.model_options()
        widths = {"embedding_dim": 256, "hidden_dim": 256}
        vae = SkipVAE(
            splits.data_shape,
            latent_dim=64,
            seed=0,
            device=args.device,
            **{**options, "encoder_options": {**options["encoder_options"], **widths}},
            decoder_options=widths,
        )
        lengths = vae.model.likelihood.num_tokens(splits.train)
        order = bucket_batches(lengths, args.batch_size)(torch.Generator().manual_seed(0))
        collate = trim_collate(lengths)
        batches = [collate(splits.train, i).to(device) for i in order[: args.steps + 2]]
        elbo = TraceMeanField_ELBO()
    else:
        data = binarize(
            splits.train[: args.batch_size * (args.steps + 2)],
            "dynamic",
            torch.Generator().manual_seed(0),
        )
        batches = [
            data[i * args.batch_size : (i + 1) * args.batch_size].to(device)
            for i in range(args.steps + 2)
        ]
        vae = SkipVAE(splits.data_shape, seed=0, device=args.device)
        elbo = Trace_ELBO()
    optim = pyro.optim.ClippedAdam({"lr": 1e-3, "clip_norm": math.inf})
    if args.method == "svi":
        inference = SVI(vae.model, vae.guide, optim, elbo)
    else:
        mode = "svi" if args.method == "svi-mode" else args.method
        inference = SemiAmortizedSVI(
            vae.model,
            vae.guide,
            optim,
            elbo,
            mode=mode,
            num_refine_steps=args.num_refine_steps,
        )

    def step(x):
        with pyro.validation_enabled(False):  # as in pyro_skipvae.infer.fit.train
            return inference.step(x, size=size, beta=1.0)

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mib()
    for x in batches[:2]:
        step(x)
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for x in batches[2:]:
            step(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) / args.steps)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    print(
        json.dumps(
            {
                "method": args.method,
                "ms": 1e3 * statistics.median(times),
                "ms_min": 1e3 * min(times),
                "ms_max": 1e3 * max(times),
                "peak_mib": peak,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "pyro": pyro.__version__,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-refine-steps", type=int, default=20)
    parser.add_argument("--dataset", choices=["mnist", "ptb"], default="mnist")
    parser.add_argument("--batch-size", type=int, help="[default: mnist 50, ptb 32]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "semi_amortized.md")
    )
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one row in this process
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 32 if args.dataset == "ptb" else 50
    if args.method:
        return run_one(args)

    rows, load = [], os.getloadavg()[0]
    for method in args.methods.split(","):
        command = [sys.executable, __file__, "--method", method] + [
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if k not in ("method", "methods", "out")
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{method} failed:\n{result.stderr}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"{method}: {rows[-1]['ms']:.1f} ms/step", file=sys.stderr)

    base = rows[0]["ms"] if rows[0]["method"] == "svi" else None
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = git.stdout.strip() if git.returncode == 0 else "unknown (not a git checkout)"
    lines = [
        "# Semi-amortized inference: cost of one training step",
        "",
        (
            "PTB LSTM skip-VAE (256/256, z 64), mean-field ELBO"
            if args.dataset == "ptb"
            else "MNIST MLP skip-VAE (hidden 1024,1024, z 32), Trace_ELBO"
        )
        + f", batch {args.batch_size}, ClippedAdam, "
        f"K = {args.num_refine_steps} refinement steps, device {args.device}; median of {args.repeats} blocks "
        f"of {args.steps} steps after 2 warm-up steps; each row in its own process.",
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"torch {rows[0]['threads']} threads, torch {rows[0]['torch']}, pyro {rows[0]['pyro']}, "
        f"python {platform.python_version()}. Commit: `{commit}` (plus the working tree). "
        f"Load average before the first row: {load:.2f}, after the last: {os.getloadavg()[0]:.2f}.",
        "",
        f"Command: `python benchmarks/semi_amortized.py --dataset {args.dataset} "
        f"--num-refine-steps {args.num_refine_steps} "
        f"--batch-size {args.batch_size} --repeats {args.repeats} --steps {args.steps} --device {args.device}`",
        "",
        "| method | ms/step (median) | min–max | × amortized SVI | peak memory growth (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['ms'] / base:.1f}" if base else "–"
        name = (
            "svi (amortized)"
            if r["method"] == "svi"
            else f"semi-amortized {r['method'].replace('svi-mode', 'svi')}"
        )
        lines.append(
            f"| {name} | {r['ms']:.1f} | {r['ms_min']:.1f}–{r['ms_max']:.1f} | {ratio} | {r['peak_mib']:.0f} |"
        )
    lines += [
        "",
        "Peak memory: on CPU, growth of the process's peak RSS over its RSS before the first step "
        "(includes optimizer state and allocator caching); on CUDA, growth of "
        "`torch.cuda.max_memory_allocated`.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text)


if __name__ == "__main__":
    main()
