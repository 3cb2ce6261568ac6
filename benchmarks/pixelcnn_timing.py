"""Cost of the gated PixelCNN skip-VAE on static binarised MNIST: training seconds per epoch,
full-test-set IW-NLL time, and a PixelCNN step through Pyro against the same network's
hand-written PyTorch step.

Sizes (decoder / encoder options; latent 20, skip on):

* ``cpu-default``: the library defaults (4 gated layers of 8 channels, kernels 7,3,3,3;
  conv encoder of 3 blocks × 32 channels);
* ``paper``: the Skip-VAE MNIST setting (8 layers of 32 channels, kernel 3; encoder 64
  channels).

Per size: the median time of ``--steps`` training steps (batch 50, Adam, clip 5: what
``skipvae fit`` runs) over ``--repeats`` blocks, times 1,000 steps, plus the validation pass
(10,000 images without gradients) gives seconds per epoch; importance sampling with K = 500
on ``--iw-images`` test images (the library's default chunking) gives the IW-NLL time,
extrapolated to the 10,000 test images. For ``cpu-default`` the Pyro step is timed against a
hand-written PyTorch step on a copy of the same network and batch (same single-sample ELBO
estimator, Adam, clip), blocks interleaved so machine noise hits both; the ratio of medians is
reported. Results are printed and, with ``--save``, appended as JSON lines.

    python benchmarks/pixelcnn_timing.py [--sizes cpu-default,paper] [--steps 10]
        [--repeats 3] [--iw-images 4] [--device cpu] [--save]
"""

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import load_dataset
from pyro_skipvae.diagnostics.nll import importance_sample
from pyro_skipvae.infer import Optimizer
from pyro_skipvae.infer.svi import SVI
from pyro_skipvae.modes import evaluating

RESULTS = Path(__file__).parent / "results" / "pixelcnn_timing.jsonl"
SIZES = {
    "cpu-default": ({}, {}),
    "paper": ({"num_layers": 8, "channels": 32, "kernel_sizes": 3}, {"channels": 64}),
}
STEPS_PER_EPOCH = 50_000 // 50
NUM_TEST = 10_000


def torch_step(encoder, decoder, optimizer, x):
    """One step of the per-datapoint negative ELBO in plain PyTorch, with Trace_ELBO's
    single-sample estimator (log p(z) − log q(z|x) at the sample), Adam and clip 5."""
    loc, log_var = encoder(x)
    scale = (0.5 * log_var).exp()
    z = loc + scale * torch.randn_like(loc)
    logits = decoder(z, x)
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none"
    ).sum((1, 2, 3))
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    loss = -(log_lik + log_p - log_q).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], 5.0)
    optimizer.step()
    return loss.item()


def timed(step, batches, device):
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for x in batches:
        step(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / len(batches)


def measure(size, splits, args, ratio):
    decoder_options, encoder_options = SIZES[size]
    vae = SkipVAE(
        splits.data_shape,
        latent_dim=20,
        decoder="pixelcnn",
        encoder="conv",
        decoder_options=decoder_options,
        encoder_options=encoder_options,
        seed=0,
        device=args.device,
    )
    twin_encoder = copy.deepcopy(vae.guide.encoder)
    twin_decoder = copy.deepcopy(vae.model.decoder)
    svi = SVI(vae.model, vae.guide, Optimizer(vae.parameters(), clip_norm=5.0), Trace_ELBO())
    torch_optimizer = torch.optim.Adam(
        [*twin_encoder.parameters(), *twin_decoder.parameters()], lr=1e-3
    )
    train = splits.train.to(args.device)
    batches = [train[i * 50 : (i + 1) * 50] for i in range(args.steps)]
    n = train.shape[0]

    def pyro_step(x):
        with pyro.validation_enabled(False):  # as in pyro_skipvae.infer.fit.train
            return svi.step(x, size=n)

    steps = {"pyro": pyro_step}
    if ratio:
        steps["torch"] = lambda x: torch_step(twin_encoder, twin_decoder, torch_optimizer, x)
    times = {name: [] for name in steps}
    for step in steps.values():  # warm-up: allocator, optimizer state
        timed(step, batches[:2], args.device)
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(timed(step, batches, args.device))
    step_seconds = statistics.median(times["pyro"])

    val = splits.val[:500].to(args.device)
    with torch.no_grad(), evaluating(vae.model, vae.guide):
        started = time.perf_counter()
        for start in range(0, val.shape[0], 100):  # the validation ELBO's work, 500 images
            x = val[start : start + 100]
            loc, log_var = vae.guide.encoder(x)
            vae.model.decoder(loc, x)
        val_seconds = (time.perf_counter() - started) * splits.val.shape[0] / val.shape[0]
        test = splits.test[: args.iw_images].to(args.device)
        started = time.perf_counter()
        result = importance_sample(vae.model, vae.guide, test, num_samples=500, pareto=False)
        iw_seconds = (time.perf_counter() - started) * NUM_TEST / test.shape[0]
    assert torch.isfinite(result.nll).all()
    row = {
        "size": size,
        "decoder_options": vae.config.decoder_options,
        "encoder_options": vae.config.encoder_options,
        "parameters": sum(p.numel() for p in vae.parameters()),
        "step_ms": round(1e3 * step_seconds, 1),
        "steps_timed": f"{args.repeats} x {args.steps}",
        "validation_s": round(val_seconds, 1),
        "seconds_per_epoch": round(STEPS_PER_EPOCH * step_seconds + val_seconds),
        "iw_nll_k500_test_hours": round(iw_seconds / 3600, 2),
        "iw_images_timed": args.iw_images,
    }
    if ratio:
        torch_seconds = statistics.median(times["torch"])
        row["torch_step_ms"] = round(1e3 * torch_seconds, 1)
        row["ratio_pyro_torch"] = round(step_seconds / torch_seconds, 3)
        row["ratio_per_repeat"] = [round(p / t, 3) for p, t in zip(times["pyro"], times["torch"])]
    return row


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="cpu-default,paper")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iw-images", type=int, default=4, help="test images timed at K=500")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--save", action="store_true", help=f"append the results to {RESULTS}")
    args = parser.parse_args()
    splits = load_dataset("binarized-mnist")
    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s), "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at start"
    )
    common = {
        "device": args.device,
        "machine": machine,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/pixelcnn_timing.py " + " ".join(sys.argv[1:]),
    }
    for i, size in enumerate(args.sizes.split(",")):
        row = {**measure(size, splits, args, ratio=i == 0 and size == "cpu-default"), **common}
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
        print(json.dumps(row), flush=True)
        if args.save:
            with open(RESULTS, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
