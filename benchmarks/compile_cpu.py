"""Compiled against eager networks on the CPU, side by side in one process: the training step
of ``skipvae fit`` (our SVI + Trace_ELBO + Optimizer) with ``SkipVAE(compile=False)`` and with
``SkipVAE(compile=True)``, for the MLP VAE (``benchmarks/overhead.py``'s network: 1024-1024
MLPs, latent 32, batch 100, dynamically binarised MNIST) and the CPU-default PixelCNN
(4 gated layers of 8 channels, conv encoder, latent 20, batch 50, clip 5, static binarised
MNIST; ``benchmarks/pixelcnn_timing.py``'s ``cpu-default``).

Blocks of ``--steps`` steps alternate between the two in a fresh random order each of
``--repeats`` repeats, so load drift hits both; the ratio is the median over repeats of
eager time / compiled time in the same repeat (> 1: compiled is faster), for wall-clock and
for process CPU time. Compilation happens in the warm-up steps and is reported separately.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/compile_cpu.py [--cases mlp,pixelcnn]
        [--repeats 9] [--steps 10]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyro  # noqa: E402
import torch  # noqa: E402

from pyro_skipvae import SkipVAE  # noqa: E402
from pyro_skipvae.data import binarize, load_dataset  # noqa: E402
from pyro_skipvae.infer import ELBOS, SVI, Optimizer  # noqa: E402

CASES = {
    "mlp": ("mnist", 100, {}, None),
    "pixelcnn": ("binarized-mnist", 50, {"decoder": "pixelcnn", "encoder": "conv"}, 5.0),
}


def make_step(case, compile, splits, batch_size):
    _, _, options, clip = CASES[case]
    vae = SkipVAE(
        splits.data_shape,
        latent_dim=32 if case == "mlp" else 20,
        seed=0,
        compile=compile,
        **options,
    )
    svi = SVI(
        vae.model, vae.guide, Optimizer(vae.parameters(), clip_norm=clip), ELBOS.build("trace")
    )

    def step(x):
        with pyro.validation_enabled(False):
            return svi.step(x, size=50_000)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default="mlp,pixelcnn")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    for case in args.cases.split(","):
        dataset, batch_size, _, _ = CASES[case]
        splits = load_dataset(dataset, train_size=args.steps * batch_size)
        data = splits.train
        if data.unique().numel() > 2:
            data = binarize(data, "dynamic", torch.Generator().manual_seed(0))
        batches = list(data.split(batch_size))
        steps, compile_seconds = {}, {}
        for name in ("eager", "compiled"):
            steps[name] = make_step(case, name == "compiled", splits, batch_size)
            started = time.perf_counter()
            for x in batches[:3]:  # compiles (compiled side), allocator and Adam state
                steps[name](x)
            compile_seconds[name] = time.perf_counter() - started
        wall = {name: [] for name in steps}
        cpu = {name: [] for name in steps}
        order = random.Random(0)
        for _ in range(args.repeats):
            for name in order.sample(list(steps), 2):
                w, c = time.perf_counter(), time.process_time()
                for x in batches:
                    steps[name](x)
                wall[name].append((time.perf_counter() - w) / len(batches))
                cpu[name].append((time.process_time() - c) / len(batches))

        def ratio(t):
            paired = [e / c for e, c in zip(t["eager"], t["compiled"])]
            return round(statistics.median(paired), 3), [
                round(min(paired), 3),
                round(max(paired), 3),
            ]

        print(
            json.dumps(
                {
                    "case": case,
                    "batch_size": batch_size,
                    "eager_ms": round(1e3 * statistics.median(wall["eager"]), 2),
                    "compiled_ms": round(1e3 * statistics.median(wall["compiled"]), 2),
                    "speedup_wall": ratio(wall),
                    "speedup_cpu_time": ratio(cpu),
                    "first_3_steps_s": {k: round(v, 1) for k, v in compile_seconds.items()},
                    "repeats": f"{args.repeats} x {args.steps} steps",
                    "torch_threads": torch.get_num_threads(),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                    "versions": f"torch {torch.__version__}, pyro {pyro.__version__}",
                    "commit": subprocess.run(
                        ["git", "rev-parse", "--short", "HEAD"],
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                    ).stdout.strip(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
