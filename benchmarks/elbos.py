"""Every named ELBO on the same short run, and the JIT recompilation check.

``cli``: one epoch of the default Skip-VAE on real MNIST (50,000 training images, batch 50,
validation on the 10,000 held-out ones) per ELBO, through the installed ``skipvae fit`` with
``--num-particles 2``; reads the validation ELBO and the epoch's seconds from each run's
``metrics.jsonl``.

``steps``: the cost of one training step of each ELBO (``--num-particles 2``, batch 50, the
default network), timed round-robin in one process so that machine load hits all alike.

``jit``: counts how often each JIT ELBO traces (compiles) the model over a number of training
steps at a fixed β and minibatch size, by counting calls of :func:`torch.jit.trace`, and
times the steps against their non-JIT twins.

    OMP_NUM_THREADS=1 python benchmarks/elbos.py cli --out /work/runs/extend/elbos
    OMP_NUM_THREADS=1 python benchmarks/elbos.py steps --rounds 5
    OMP_NUM_THREADS=1 python benchmarks/elbos.py jit --steps 20

Each prints a Markdown table; ``--save`` appends it to ``benchmarks/results/elbos.md``.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "elbos.md"
ELBOS = ("trace", "mean-field", "tracegraph", "renyi", "iwae", "jit", "free-bits")


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header(title, command) -> str:
    import torch

    return (
        f"## {title}\n\nCommand: `{command}`  \n"
        f"Machine: 2-core x86_64 CPU box, shared with other jobs ({platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}, {os.environ.get('OMP_NUM_THREADS', 'default')} thread(s)); "
        f"commit `{commit()}`, {time.strftime('%Y-%m-%d')}.\n\n"
    )


def run_cli(args) -> str:
    skipvae = shutil.which("skipvae") or str(Path(sys.executable).with_name("skipvae"))
    rows = []
    for elbo in args.elbos:
        out = Path(args.out) / elbo
        if out.exists():
            shutil.rmtree(out)
        command = [skipvae, "fit", "--elbo", elbo, "--num-particles", "2", "--num-epochs", "1"]
        command += ["--quiet", "--out", str(out), *args.extra]
        print(" ".join(command[1:]), flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append(f"| {elbo} | failed: {done.stderr.strip().splitlines()[-1]} | | |")
            continue
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        rows.append(
            f"| {elbo} | {record['val_elbo']:.2f} | {record['train_elbo']:.2f} | "
            f"{record['seconds']:.0f} |"
        )
        print(rows[-1], flush=True)
    command = "skipvae fit --elbo ELBO --num-particles 2 --num-epochs 1 " + " ".join(args.extra)
    return (
        header("One epoch per ELBO on MNIST (`--num-particles 2`)", command)
        + "| ELBO | validation ELBO (nats) | train objective (nats) | seconds per epoch |\n"
        + "|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def run_steps(args) -> str:
    import statistics

    import pyro
    import torch

    from pyro_skipvae import SkipVAE
    from pyro_skipvae.data import binarize, load_dataset
    from pyro_skipvae.infer import ELBOS as REGISTRY
    from pyro_skipvae.infer import SVI, Optimizer

    splits = load_dataset("mnist", train_size=50 * 5 * args.rounds)
    data = binarize(splits.train, "dynamic", torch.Generator().manual_seed(0))
    runs = {}
    for name in ELBOS:
        vae = SkipVAE(splits.data_shape, seed=0)
        elbo = REGISTRY.build(name, options={"num_particles": 2})
        runs[name] = (SVI(vae.model, vae.guide, Optimizer(vae.parameters()), elbo), [])
    for r in range(args.rounds + 1):  # round 0 warms up (and compiles the JIT)
        for svi, times in runs.values():
            for i in range(5):
                x = data[(r * 5 + i) % (len(data) // 50) * 50 :][:50]
                started = time.perf_counter()
                with pyro.validation_enabled(False):
                    svi.step(x, size=50_000, beta=0.5)
                if r:
                    times.append(time.perf_counter() - started)
    base = statistics.median(runs["trace"][1])
    rows = [
        f"| {name} | {statistics.median(t) * 1e3:.0f} | {statistics.median(t) / base:.2f} |"
        for name, (_, t) in runs.items()
    ]
    command = f"python benchmarks/elbos.py steps --rounds {args.rounds}"
    return (
        header("Cost of one training step per ELBO (`--num-particles 2`, batch 50)", command)
        + "| ELBO | median ms per step | relative to trace |\n|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def run_jit(args) -> str:
    import pyro
    import torch
    from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

    from pyro_skipvae import SkipVAE
    from pyro_skipvae.data import binarize, load_dataset
    from pyro_skipvae.infer import SVI, JitELBO, Optimizer

    traces = 0
    original = torch.jit.trace

    def counting_trace(*a, **k):
        nonlocal traces
        traces += 1
        return original(*a, **k)

    torch.jit.trace = counting_trace
    splits = load_dataset("mnist", train_size=args.steps * 50)
    data = binarize(splits.train, "dynamic", torch.Generator().manual_seed(0))
    rows = []

    for name, make in (
        ("Trace_ELBO", lambda: Trace_ELBO()),
        ("JitTrace_ELBO (JitELBO, our wrapper)", lambda: JitELBO()),
        ("JitTrace_ELBO (stock)", lambda: JitTrace_ELBO(ignore_jit_warnings=True)),
        ("TraceMeanField_ELBO", lambda: TraceMeanField_ELBO()),
        (
            "JitTraceMeanField_ELBO (stock)",
            lambda: JitTraceMeanField_ELBO(ignore_jit_warnings=True),
        ),
    ):
        pyro.clear_param_store()
        vae = SkipVAE(splits.data_shape, seed=0)
        elbo = make()
        svi = SVI(vae.model, vae.guide, Optimizer(vae.parameters()), elbo)
        traces = 0
        times = []
        for step in range(args.steps):
            x = data[step * 50 : (step + 1) * 50]
            started = time.perf_counter()
            with pyro.validation_enabled(False):
                svi.step(x, size=50_000) if isinstance(elbo, JitELBO) else svi.step(x)
            times.append(time.perf_counter() - started)
        steady = sorted(times[2:])[len(times[2:]) // 2]
        rows.append(f"| {name} | {traces} | {times[0] * 1e3:.0f} | {steady * 1e3:.1f} |")
        print(rows[-1], flush=True)
    torch.jit.trace = original
    command = f"python benchmarks/elbos.py jit --steps {args.steps}"
    return (
        header("JIT compilations over training steps (MNIST MLP Skip-VAE, batch 50)", command)
        + f"{args.steps} steps at a fixed minibatch size; stock ELBOs called as `model(x)` (β = 1, "
        "no keyword arguments that change), so every compilation after the first is the ELBO's "
        "own.\n\n"
        + "| ELBO | torch.jit.trace calls | first step (ms) | median later step (ms) |\n"
        + "|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    cli = sub.add_parser("cli")
    cli.add_argument("--out", default="runs/elbos")
    cli.add_argument("--elbos", nargs="+", default=list(ELBOS))
    cli.add_argument("extra", nargs="*", help="further skipvae fit flags (after --)")
    steps = sub.add_parser("steps")
    steps.add_argument("--rounds", type=int, default=5)
    jit = sub.add_parser("jit")
    jit.add_argument("--steps", type=int, default=20)
    for p in (cli, steps, jit):
        p.add_argument("--save", action="store_true")
    args = parser.parse_args()
    table = {"cli": run_cli, "steps": run_steps, "jit": run_jit}[args.what](args)
    print(table)
    if args.save:
        with RESULTS.open("a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
