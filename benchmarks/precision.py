"""float32 vs bf16-mixed (issue 34): are the fits equivalent, and how much faster is a step?

``equivalence CASE``: fit the same configuration and seed twice, ``precision="32"`` and
``"bf16-mixed"`` (resumable run folders under ``--runs``), then score both selected models
(``best.pt``) on the same validation points in float32 with the same Monte-Carlo seed. Reports
each fit's own selected validation bound and KL (as training recorded them, in its own
precision) and the paired per-datapoint difference of the float32 re-scoring, with its
standard error sd(d)/√N over the validation points. That standard error is the evaluation's
noise; the two fits' trajectories also differ (rounding changes every step after the first,
as another seed would), which ``--control-seed S`` measures: a third, float32 fit with seed S,
compared with the seed-0 float32 fit the same way.

``speed``: per-step time of one training step (forward, backward, optimizer), float32 and
bf16-mixed interleaved in blocks in one process (so load changes hit both alike), for the
MLP (MNIST), the CPU PixelCNN (binarised MNIST) and the PTB LSTM 256/256; and the time of a
PTB IW-NLL (K = 500) on a fixed subset of validation sentences.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/precision.py equivalence ptb
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/precision.py speed

Each writes one JSON line per result to ``benchmarks/results/precision.jsonl`` with the
machine, commit, thread count and load average.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import pyro
import torch

from pyro_skipvae import SkipVAE
from pyro_skipvae.configs import TrainConfig, resolve_components
from pyro_skipvae.data import binarize, load_dataset, prepare
from pyro_skipvae.diagnostics.elbo import evaluate_elbo, evaluation_batch_size
from pyro_skipvae.diagnostics.nll import importance_weighted_nll
from pyro_skipvae.modes import evaluating

RESULTS = Path(__file__).parent / "results" / "precision.jsonl"
PRECISIONS = ("32", "bf16-mixed")

#: the three decoders' recipes: (data set options, model options, fit options)
CASES = {
    # the README's main job: MNIST MLP Skip-VAE, 10 epochs
    "mlp": (
        {"name": "mnist"},
        {"latent_dim": 32, "hidden_dims": (1024, 1024)},
        {"num_epochs": 10, "binarize": "dynamic"},
    ),
    # the image study's CPU PixelCNN (benchmarks/grids/pixelcnn_bmnist_cpu.yaml), 3 epochs
    "pixelcnn": (
        {"name": "binarized-mnist"},
        {"latent_dim": 20, "decoder": "pixelcnn", "encoder": "conv"},
        {"num_epochs": 3, "clip_norm": 5, "kl_warmup_epochs": 0},
    ),
    # the text study's LSTM 256/256 (benchmarks/grids/ptb_lstm_cpu.yaml), latent 64, 3 epochs
    "ptb": (
        {"name": "ptb"},
        {
            "latent_dim": 64,
            "decoder_options": {"embedding_dim": 256, "hidden_dim": 256},
            "encoder_options": {"embedding_dim": 256, "hidden_dim": 256},
        },
        {
            "num_epochs": 3,
            "elbo": "mean-field",
            "optimizer": "sgd",
            "learning_rate": 1.0,
            "clip_norm": 5,
            "batch_size": 32,
            "lr_decay": "plateau",
            "kl_warmup_epochs": 10,
        },
    ),
}


def build(case, splits, precision, seed):
    _, model_options, _ = CASES[case]
    options = dict(model_options)
    given = {k: options.pop(k) for k in ("decoder", "encoder") if k in options}
    for kind in ("decoder", "encoder"):
        given[f"{kind}_options"] = options.pop(f"{kind}_options", {})
    components = resolve_components(splits.vocabulary, **given)
    return SkipVAE(
        splits.data_shape, skip=True, seed=seed, precision=precision, **options, **components
    )


def machine() -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    return {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": commit + ("+dirty" if dirty.stdout.strip() else ""),
        "load_average": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write(record: dict) -> None:
    record = {**record, **machine()}
    print(json.dumps(record))
    with RESULTS.open("a") as f:
        f.write(json.dumps(record) + "\n")


def fit(case, splits, precision, seed, runs: Path):
    run_dir = runs / f"{case}-{precision}-seed{seed}"
    vae = build(case, splits, precision, seed)
    history = vae.fit(
        splits.train,
        val=splits.val,
        run_dir=run_dir,
        resume=(run_dir / "checkpoint.pt").exists(),
        progress=True,
        seed=seed,
        **CASES[case][2],
    )
    return run_dir, history


def rescore(run_dir, val, precision="32"):
    """Per-datapoint validation ELBO of a run's selected model, fixed MC seed (in float32
    unless ``precision`` says otherwise)."""
    vae = SkipVAE.load(run_dir, precision=precision)
    data = prepare(val, vae.model.likelihood, binarization="none")
    batch = evaluation_batch_size(vae.model.likelihood, 500)
    pyro.set_rng_seed(1234)
    with evaluating(vae.model, vae.guide):
        return evaluate_elbo(vae.model, vae.guide, data, batch_size=batch)


def paired(a, b) -> dict:
    d = (b["elbo_per_datapoint"] - a["elbo_per_datapoint"]).double()
    k = (b["kl_per_datapoint"] - a["kl_per_datapoint"]).double()
    n = d.numel()
    return {
        "elbo_difference": d.mean().item(),
        "elbo_difference_se": (d.std() / math.sqrt(n)).item(),
        "kl_difference": k.mean().item(),
        "kl_difference_se": (k.std() / math.sqrt(n)).item(),
        "num_points": n,
    }


def selected(history) -> dict:
    best = next(r for r in history if r["epoch"] == history[-1]["selected"])
    return {k: best[k] for k in ("epoch", "val_elbo", "val_kl", "seconds")}


def case_data(case):
    """The case's data set and its validation split, binarised once with a fixed seed where
    the fit binarises dynamically, so that every model is re-scored on the same points."""
    splits = load_dataset(CASES[case][0]["name"])
    val = splits.val
    if CASES[case][2].get("binarize") == "dynamic":
        val = binarize(val, "dynamic", torch.Generator().manual_seed(0))
    return splits, val


def equivalence(case, runs: Path, control_seed=None):
    splits, val = case_data(case)
    cells = [(p, 0) for p in PRECISIONS] + ([("32", control_seed)] if control_seed else [])
    fitted = {}
    for precision, seed in cells:
        run_dir, history = fit(case, splits, precision, seed, runs)
        fitted[precision, seed] = (run_dir, selected(history), rescore(run_dir, val))
    base = fitted["32", 0]
    # the same weights scored both ways: what bf16 does to an evaluation alone (diagnose)
    mixed = rescore(base[0], val, precision="bf16-mixed")
    write(
        {
            "benchmark": "evaluation",
            "case": case,
            "compared": "32 seed 0 weights scored in bf16-mixed - in 32",
            "rescored_32": {"elbo": base[2]["elbo"], "kl": base[2]["kl"]},
            "rescored_other": {"elbo": mixed["elbo"], "kl": mixed["kl"]},
            **paired(base[2], mixed),
        }
    )
    for key, (_, chosen, scores) in fitted.items():
        if key == ("32", 0):
            continue
        write(
            {
                "benchmark": "equivalence",
                "case": case,
                "compared": f"{key[0]} seed {key[1]} - 32 seed 0",
                "selected_32": base[1],
                "selected_other": chosen,
                "rescored_32": {"elbo": base[2]["elbo"], "kl": base[2]["kl"]},
                "rescored_other": {"elbo": scores["elbo"], "kl": scores["kl"]},
                **paired(base[2], scores),
            }
        )


def seeds_comparison(case, runs: Path, seeds, precisions=PRECISIONS):
    """Both precisions at each of ``seeds``: the mean re-scored validation bound per precision
    over the seeds, and the difference of the means with its standard error from the seeds'
    spread (Welch: sqrt(s²_a/n_a + s²_b/n_b)), which includes the run-to-run noise that one
    seed per precision cannot see. Fits are resumed where they exist."""
    splits, val = case_data(case)
    bounds = {p: [] for p in precisions}
    for seed in seeds:
        for precision in precisions:
            run_dir, _ = fit(case, splits, precision, seed, runs)
            bounds[precision].append(rescore(run_dir, val)["elbo"])
    a, b = (torch.tensor(bounds[p], dtype=torch.float64) for p in precisions)
    se = math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))
    write(
        {
            "benchmark": "seeds",
            "case": case,
            "compared": f"mean over seeds {list(seeds)}: {precisions[1]} - {precisions[0]}",
            "bounds": bounds,
            "elbo_difference": (b.mean() - a.mean()).item(),
            "elbo_difference_se": se,
        }
    )


def time_steps(case, splits, *, num_steps, blocks, seed=0):
    """ms per training step of each precision, interleaved blocks; returns medians."""
    _, _, fit_options = CASES[case]
    cfg = TrainConfig.from_options({**fit_options, "num_epochs": 1})
    x_all = splits.train[: cfg.batch_size * num_steps]
    models = {}
    for precision in PRECISIONS:
        vae = build(case, splits, precision, seed)
        inference = vae._inference(cfg, sequences=splits.vocabulary is not None)
        models[precision] = (vae, inference)
    x_all = prepare(
        x_all,
        models["32"][0].model.likelihood,
        binarization="threshold" if case != "ptb" else "none",
    )
    batches = list(x_all.split(cfg.batch_size))
    if case == "ptb":  # trim each minibatch to its longest sentence, as training does
        batches = [b[:, : int((b > 0).sum(1).max())] for b in batches]
    times = {p: [] for p in PRECISIONS}
    for block in range(blocks + 1):  # block 0 warms up
        for precision, (_, inference) in models.items():
            start = time.perf_counter()
            with pyro.validation_enabled(False):
                for x in batches:
                    inference.step(x, size=len(splits.train), beta=1.0)
            if block:
                times[precision].append((time.perf_counter() - start) / len(batches) * 1e3)
    return {p: sorted(t)[len(t) // 2] for p, t in times.items()}, times


def time_nll(splits, *, num_points, num_samples=500, repeats=2):
    """Seconds of an IW-NLL (K = num_samples) on the first ``num_points`` validation sentences."""
    seconds = {p: [] for p in PRECISIONS}
    data = splits.val[:num_points]
    for _ in range(repeats):
        for precision in PRECISIONS:
            vae = build("ptb", splits, precision, 0)
            with evaluating(vae.model, vae.guide):
                start = time.perf_counter()
                importance_weighted_nll(vae.model, vae.guide, data, num_samples=num_samples)
                seconds[precision].append(time.perf_counter() - start)
    return {p: min(s) for p, s in seconds.items()}, seconds


def speed(num_steps, blocks, nll_points):
    for case in ("mlp", "pixelcnn", "ptb"):
        splits = load_dataset(CASES[case][0]["name"], train_size=2000)
        medians, all_times = time_steps(case, splits, num_steps=num_steps, blocks=blocks)
        write(
            {
                "benchmark": "step_ms",
                "case": case,
                "ms_32": medians["32"],
                "ms_bf16": medians["bf16-mixed"],
                "speedup": medians["32"] / medians["bf16-mixed"],
                "blocks": all_times,
                "steps_per_block": num_steps,
            }
        )
    splits = load_dataset("ptb", train_size=100)
    best, all_seconds = time_nll(splits, num_points=nll_points)
    write(
        {
            "benchmark": "ptb_iw_nll_seconds",
            "num_points": nll_points,
            "num_samples": 500,
            "s_32": best["32"],
            "s_bf16": best["bf16-mixed"],
            "speedup": best["32"] / best["bf16-mixed"],
            "all": all_seconds,
        }
    )


def report(path=RESULTS) -> str:
    """The Markdown tables of ``precision.jsonl``'s latest record of each kind."""
    latest = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        key = (record["benchmark"], record.get("case"), record.get("compared"))
        latest[key] = record
    lines = [
        "| case | compared | selected epoch | selected val bound (32 / other) | selected val KL "
        "(32 / other) | re-scored bound difference ± SE | KL difference ± SE | N | within 0.3? "
        "| within 2 SE? |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (kind, case, compared), r in latest.items():
        if kind not in ("equivalence", "evaluation"):
            continue
        a, b = r.get("selected_32"), r.get("selected_other")
        if a is None:  # the same weights scored both ways: nothing was selected
            a = b = {"epoch": "-", "val_elbo": math.nan, "val_kl": math.nan}
        d, se = r["elbo_difference"], r["elbo_difference_se"]
        lines.append(
            f"| {case} | {compared} | {a['epoch']} / {b['epoch']} | {a['val_elbo']:.2f} / "
            f"{b['val_elbo']:.2f} | {a['val_kl']:.2f} / {b['val_kl']:.2f} | {d:+.3f} ± {se:.3f} "
            f"| {r['kl_difference']:+.3f} ± {r['kl_difference_se']:.3f} | {r['num_points']} "
            f"| {'yes' if abs(d) <= 0.3 else 'no'} | {'yes' if abs(d) <= 2 * se else 'no'} |"
        )
    lines += [
        "",
        "| benchmark | float32 | bf16-mixed | speed-up | threads | load | commit |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for (kind, case, _), r in latest.items():
        if kind == "step_ms":
            lines.append(
                f"| {case} step (ms) | {r['ms_32']:.1f} | {r['ms_bf16']:.1f} | "
                f"{r['speedup']:.2f}x | {r['threads']} | {r['load_average']:.2f} | {r['commit']} |"
            )
        elif kind == "ptb_iw_nll_seconds":
            lines.append(
                f"| PTB IW-NLL K = 500, {r['num_points']} sentences (s) | {r['s_32']:.1f} | "
                f"{r['s_bf16']:.1f} | {r['speedup']:.2f}x | {r['threads']} | "
                f"{r['load_average']:.2f} | {r['commit']} |"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    eq = sub.add_parser("equivalence")
    eq.add_argument("case", choices=sorted(CASES))
    eq.add_argument("--runs", type=Path, default=Path("../runs/precision"))
    eq.add_argument("--control-seed", type=int, default=None)
    se = sub.add_parser("seeds", help="both precisions at several seeds, difference of means")
    se.add_argument("case", choices=sorted(CASES))
    se.add_argument("--runs", type=Path, default=Path("../runs/precision"))
    se.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    se.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    sp = sub.add_parser("speed")
    sp.add_argument("--num-steps", type=int, default=10)
    sp.add_argument("--blocks", type=int, default=5)
    sp.add_argument("--nll-points", type=int, default=100)
    sub.add_parser("report", help="print the Markdown tables of precision.jsonl")
    args = parser.parse_args()
    if args.command == "report":
        print(report())
    elif args.command == "seeds":
        seeds_comparison(args.case, args.runs, args.seeds, tuple(args.precisions))
    elif args.command == "equivalence":
        equivalence(args.case, args.runs, args.control_seed)
    else:
        speed(args.num_steps, args.blocks, args.nll_points)


if __name__ == "__main__":
    main()
