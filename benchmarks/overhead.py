"""Overhead of training through Pyro against the best hand-written PyTorch step of the *same*
network: what ``skipvae fit`` runs (our SVI + Trace_ELBO + pyro_skipvae's Optimizer) against
the per-datapoint ELBO written directly in PyTorch with ``torch.optim.Adam``, lr 1e-3.

Sides (``--sides``; the first two are always run):

``pyro``          what ``skipvae fit`` runs, as configured by default.
``torch``         hand-written step, ``torch.optim.Adam`` as a user writes it (its default
                  implementation: a per-tensor loop on the CPU, foreach on CUDA).
``torch-fused``   hand-written step, ``torch.optim.Adam(fused=True)`` (one kernel per step:
                  the fastest torch implementation on both CPU and CUDA).
``pyro-unfused``  ``pyro`` with ``Optimizer(fused=False)``: the 1/N scaling as its own pass
                  over the gradients (the state before the fused optimizer).
``pyro-syncs``    ``pyro`` with Pyro's stock ``pyro.infer.Trace_ELBO`` (an ``.item()`` per
                  sample site: a host sync each on CUDA) instead of ours.
``stock``         stock ``pyro.infer.SVI`` with ``pyro.optim.Adam`` (one torch optimizer per
                  parameter), for reference.

The reported ``ratio`` is ``pyro`` against the faster of ``torch`` and ``torch-fused``.
Blocks of ``--steps`` steps alternate between the sides in one process, ``--repeats`` times,
in a fresh random order each repeat, so machine noise hits all alike; a side's ratio is the
median over repeats of its time over the baseline's in the same repeat, reported with the
spread of those per-repeat ratios. On the CPU both wall-clock and process CPU time are timed: on a machine shared with
other jobs the CPU time of a single-threaded step is the steadier of the two.

The network is any registered decoder/encoder (``--decoder pixelcnn`` once it is registered;
``--decoder-option KEY=VALUE``), on real data (``--dataset``, MNIST by default, dynamically
binarised for Bernoulli likelihoods). The hand-written step computes log p(x|z) with
``binary_cross_entropy_with_logits`` for the Bernoulli likelihood and with the likelihood's
own distribution otherwise, and the single-sample Monte-Carlo ELBO (Trace_ELBO's estimator).

    OMP_NUM_THREADS=1 python benchmarks/overhead.py [--repeats 15] [--steps 20] [--threads 1]
        [--decoder mlp] [--device cpu|cuda] [--sides ...] [--precision 32|bf16-mixed]
        [--epoch] [--save]

``--precision bf16-mixed`` compares mixed precision on both sides: ``SkipVAE(precision=
"bf16-mixed")`` on the Pyro sides, the hand-written step with its two network calls under
``torch.autocast(bfloat16)`` (outputs cast to float32). ``--dataset ptb`` takes the text
model's components from the vocabulary (LSTM encoder and decoder, categorical likelihood;
size them with ``--decoder-option``/``--encoder-option``) and trims each minibatch.

``--compile [MODE]`` compiles encoder and decoder with ``torch.compile`` on every side, as
``SkipVAE(compile=MODE)`` does (alone: mode ``default``; ``reduce-overhead`` adds CUDA graphs;
the first steps, excluded from the timing, compile). ``--epoch`` also times one training epoch (all 50,000 images, or ``--epoch-size``; batch 50;
validation on 10,000) through ``SkipVAE.fit`` and through the same epoch written in PyTorch
with the data on the device (Bernoulli likelihood only). ``--save`` appends the JSON result (with machine, commit, date and load
average) to ``benchmarks/results/overhead.jsonl``. The last line printed is that JSON.
"""

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.infer
import pyro.optim
import torch

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import binarize, binarize_for_evaluation, load_dataset
from pyro_skipvae.infer import ELBOS, SVI, Optimizer
from pyro_skipvae.infer.compile import COMPILE_MODES

RESULTS = Path(__file__).parent / "results" / "overhead.jsonl"
SIDES = ("pyro", "torch", "torch-fused", "pyro-unfused", "pyro-syncs", "stock")


def torch_step(vae, optimizer, x, mixed=False):
    """One ELBO step written directly in PyTorch, mirroring Trace_ELBO's estimator, on the
    per-datapoint loss (the minibatch mean). ``mixed``: the two networks' calls under
    bfloat16 autocast, their outputs cast to float32, as a user writes mixed precision by hand
    (the densities, the loss and the optimizer stay float32)."""
    encoder, decoder, likelihood = vae.guide.encoder, vae.model.decoder, vae.model.likelihood
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mixed)
    with autocast:
        loc, log_var = encoder(x)
    loc, log_var = loc.float(), log_var.float()
    scale = (0.5 * log_var).exp()
    z = loc + scale * torch.randn_like(loc)
    with autocast:
        params = decoder(z, x) if decoder.autoregressive else decoder(z)
    params = params.float()
    if type(likelihood).__name__ == "BernoulliLikelihood":
        log_lik = (
            -torch.nn.functional.binary_cross_entropy_with_logits(params, x, reduction="none")
            .flatten(1)
            .sum(-1)
        )
    else:
        log_lik = likelihood(params, x).log_prob(x)
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    loss = -(log_lik + log_p - log_q).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def torch_epoch(vae, train, val, device, batch_size=50):
    """One epoch written directly in PyTorch, as ``SkipVAE.fit`` runs it (dynamic
    binarisation, batch 50, fused Adam, then the validation ELBO with analytic KL), with the
    data on the device from the start; returns the validation ELBO."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    data = binarize(train, "dynamic", generator).to(device)
    for index in torch.randperm(len(data), generator=generator).to(device).split(batch_size):
        torch_step(vae, optimizer, data[index])
    val = binarize_for_evaluation(val, "dynamic").to(device)  # as fit scores validation
    with torch.no_grad():
        loc, log_var = vae.guide.encoder(val)
        z = loc + (0.5 * log_var).exp() * torch.randn_like(loc)
        logits = vae.model.decoder(z)
        log_lik = (
            -torch.nn.functional.binary_cross_entropy_with_logits(logits, val, reduction="none")
            .flatten(1)
            .sum(-1)
        )
        kl = 0.5 * (loc.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
        return (log_lik - kl).mean().item()


def options(pairs):
    result = {}
    for pair in pairs or ():
        key, _, text = pair.partition("=")
        try:
            result[key] = json.loads(text)
        except ValueError:
            result[key] = text
    return result


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--decoder", default="mlp")
    parser.add_argument("--decoder-option", action="append", help="KEY=VALUE (JSON value)")
    parser.add_argument("--encoder", default="mlp")
    parser.add_argument("--encoder-option", action="append", help="KEY=VALUE (JSON value)")
    parser.add_argument("--likelihood", default="bernoulli")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--epoch", action="store_true", help="also time one training epoch")
    parser.add_argument("--epoch-size", type=int, default=None, help="images in that epoch")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=COMPILE_MODES,
        help="torch.compile encoder and decoder on every side, with this mode (alone: default)",
    )
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16-mixed"],
        help="bf16-mixed: SkipVAE(precision='bf16-mixed') on the Pyro sides, the hand-written "
        "sides' networks under torch.autocast(bfloat16)",
    )
    parser.add_argument("--save", action="store_true", help=f"append the JSON result to {RESULTS}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sides = list(dict.fromkeys(["pyro", "torch", *args.sides]))

    splits = load_dataset(args.dataset)
    size = splits.train.shape[0]
    data = splits.train[: args.steps * args.batch_size]
    if args.likelihood == "bernoulli" and data.is_floating_point():
        data = binarize(data, "dynamic", torch.Generator().manual_seed(0))
    batches = [
        data[i * args.batch_size : (i + 1) * args.batch_size].to(args.device)
        for i in range(args.steps)
    ]
    # text (--dataset ptb): the data's own components (LSTMs, the categorical likelihood over
    # the vocabulary), and each minibatch trimmed to its longest sentence as training does
    components = {
        "decoder": args.decoder,
        "encoder": args.encoder,
        "likelihood": args.likelihood,
        "decoder_options": options(args.decoder_option),
        "encoder_options": options(args.encoder_option),
    }
    if splits.vocabulary is not None:
        implied = splits.vocabulary.model_options()
        components.update(implied, decoder_options=components["decoder_options"])
        components["encoder_options"] = {
            **implied["encoder_options"],
            **options(args.encoder_option),
        }
        batches = [b[:, : int((b > 0).sum(1).max())] for b in batches]

    def make_vae(precision=args.precision):
        vae = SkipVAE(
            splits.data_shape,
            **components,
            seed=0,
            device=args.device,
            compile=args.compile or False,  # the same compiled networks on the torch side
            precision=precision,
        )
        return vae

    def pyro_step(kind):
        vae = make_vae()
        if kind == "stock":
            svi = pyro.infer.SVI(
                vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO()
            )
        else:
            optim = Optimizer(vae.parameters(), learning_rate=1e-3, fused=kind != "pyro-unfused")
            elbo = pyro.infer.Trace_ELBO() if kind == "pyro-syncs" else ELBOS.build("trace")
            svi = SVI(vae.model, vae.guide, optim, elbo)

        def step(x):
            with pyro.validation_enabled(False):  # as in pyro_skipvae.infer.fit.train
                return svi.step(x, size=size)

        return step

    def hand_written(fused):
        vae = make_vae(precision="32")  # autocast written by hand in torch_step instead
        optimizer = torch.optim.Adam(
            vae.parameters(), lr=1e-3, **({"fused": True} if fused else {})
        )
        mixed = args.precision == "bf16-mixed"
        return lambda x: torch_step(vae, optimizer, x, mixed=mixed)

    steps = {
        name: hand_written(name == "torch-fused") if name.startswith("torch") else pyro_step(name)
        for name in sides
    }
    cuda = args.device == "cuda"

    def timed(step, xs):
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        for x in xs:
            step(x)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - wall) / len(xs), (time.process_time() - cpu) / len(xs)

    for step in steps.values():  # warm-up: allocator, lazily created optimizer state
        timed(step, batches[:5])
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    order = random.Random(0)
    for _ in range(args.repeats):
        # a fresh order each repeat: no side always follows the same one
        for name in order.sample(list(steps), len(steps)):
            w, c = timed(steps[name], batches)
            wall[name].append(w)
            cpu[name].append(c)

    def summary(times):
        """Median time per side, the faster torch side, each side's per-repeat ratios to it
        (same repeat: paired against drifting load) and their medians."""
        medians = {name: statistics.median(t) for name, t in times.items()}
        best = min((n for n in medians if n.startswith("torch")), key=medians.get)
        paired = {n: [a / b for a, b in zip(t, times[best])] for n, t in times.items()}
        return medians, best, paired, {n: statistics.median(r) for n, r in paired.items()}

    medians, best, paired, ratio = summary(wall)
    cpu_medians, cpu_best, cpu_paired, cpu_ratio = summary(cpu)
    print(
        f"device {args.device}, decoder {args.decoder}, batch {args.batch_size}, {args.steps} steps x "
        f"{args.repeats} repeats, torch threads {torch.get_num_threads()}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"{'side':<13} {'wall ms/step':>12} {'ratio':>7} {'cpu ms/step':>12} {'ratio':>7}")
    for name in steps:
        print(
            f"{name:<13} {1e3 * medians[name]:>12.2f} {ratio[name]:>7.3f} "
            f"{1e3 * cpu_medians[name]:>12.2f} {cpu_ratio[name]:>7.3f}"
        )
    print(
        f"ratio pyro/{best}: {ratio['pyro']:.3f} wall (per-repeat {min(paired['pyro']):.2f}.."
        f"{max(paired['pyro']):.2f}); pyro/{cpu_best}: {cpu_ratio['pyro']:.3f} CPU time "
        f"(per-repeat {min(cpu_paired['pyro']):.2f}..{max(cpu_paired['pyro']):.2f})"
    )

    result = {
        "ratio": round(ratio["pyro"], 4),
        "baseline": best,
        "ratio_range": [round(min(paired["pyro"]), 3), round(max(paired["pyro"]), 3)],
        "ms_per_step": {n: round(1e3 * m, 3) for n, m in medians.items()},
        "ratios": {n: round(r, 4) for n, r in ratio.items()},
        "decoder": args.decoder,
        "compiled": args.compile,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "load_average": round(os.getloadavg()[0], 1),
        "versions": f"torch {torch.__version__}, pyro {pyro.__version__}",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": datetime.date.today().isoformat(),
    }
    if not cuda:  # process time means nothing for asynchronous GPU work
        result["cpu_time_ratio"] = round(cpu_ratio["pyro"], 4)
        result["cpu_time_ratio_range"] = [
            round(min(cpu_paired["pyro"]), 3),
            round(max(cpu_paired["pyro"]), 3),
        ]
        result["cpu_time_ratios"] = {n: round(r, 4) for n, r in cpu_ratio.items()}
    if args.epoch:
        train, val = splits.train[: args.epoch_size], splits.val
        vae = make_vae()
        started = time.perf_counter()
        history = vae.fit(train, val=val, num_epochs=1, binarize="dynamic")
        result["seconds_per_epoch"] = round(time.perf_counter() - started, 1)
        result["epoch_val_elbo"] = round(history[-1]["val_elbo"], 2)
        assert math.isfinite(result["epoch_val_elbo"])
        started = time.perf_counter()
        val_elbo = torch_epoch(make_vae(), train, val, args.device)
        result["torch_seconds_per_epoch"] = round(time.perf_counter() - started, 1)
        result["torch_epoch_val_elbo"] = round(val_elbo, 2)
        result["epoch_size"] = len(train)
    if args.save:
        result["command"] = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
        with open(RESULTS, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
