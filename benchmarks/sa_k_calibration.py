"""Choose K, the refinement steps of semi-amortized training (issue 33 item 2): the smallest K
whose refinement reaches a stated fraction (0.8) of the K = 20 refinement's gain in the
validation bound, on a fitted run's model.

For each K the guide's local parameters (μ, log σ²) of every validation sentence start at the
encoder's output and take K steps of the library's refinement with the authors' settings
(η = 1, momentum 0.5, clip 5, minibatches of the run's batch size, analytic KL:
:func:`pyro_skipvae.evaluation.run_refinement`, as ``skipvae diagnose --num-refine-steps K``
builds it). The ELBO is then scored per sentence with one draw, the same seed for every K:

.. math::

    \\mathrm{gain}(K) = \\frac{1}{N} \\sum_i \\big(\\mathrm{ELBO}_i(\\lambda_K)
        - \\mathrm{ELBO}_i(\\lambda_0)\\big),

with its standard error from the N paired differences (it holds the draws' noise too). The
chosen K is the smallest of ``--ks`` with gain(K) ≥ fraction · gain(K_max). The seconds of
each K's pass are the evaluation's cost; a training step of SA costs about K + 1 forward and
backward passes in stop-gradient mode and more end to end (backpropagation through the K
steps).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/sa_k_calibration.py \\
        ../runs/ptb-text/skip-seed0 --val-size 640 --out benchmarks/results/ptb_k_calibration.json

The run folder's ``best.pt`` is scored: calibrate on the model the SA cells will resemble
(a fitted amortized text model of the same recipe). Prints a Markdown table; ``--out`` also
writes the rows and the choice as JSON. Validation split only: K is never chosen on test.
"""

import argparse
import json
import math
import os
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a fitted run folder")
    parser.add_argument("--ks", default="0,1,2,5,10,20", help="refinement steps to score")
    parser.add_argument("--val-size", type=int, default=640, help="first N validation points")
    parser.add_argument("--fraction", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON file for the rows and the choice")
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")} | {0})

    import pyro
    import torch

    from pyro_skipvae import checkpoint
    from pyro_skipvae.diagnose_options import DiagnoseOptions
    from pyro_skipvae.diagnostics.elbo import evaluate_elbo, evaluation_batch_size
    from pyro_skipvae.evaluation import load_run, prepare_split, run_refinement
    from pyro_skipvae.modes import evaluating

    options = DiagnoseOptions(
        split="val", eval_size=args.val_size, num_samples=0, plots=False, progress=False
    )
    run = load_run(args.run, options)
    split = prepare_split(run, options)
    data = split.data if split.order is None else split.data[split.order]
    model = run.vae.model
    batch_size = int(run.config["train"].get("batch_size", 50))
    # one chunking for every K: whole refinement minibatches within the output budget
    chunk = evaluation_batch_size(model.likelihood, 100, multiple_of=batch_size)

    elbos, rows = {}, []
    for k in ks:
        guide, _ = run_refinement(run.vae, run.config, k, run_dir=args.run)
        pyro.set_rng_seed(args.seed)
        start = time.perf_counter()
        with evaluating(model, run.vae.guide):
            result = evaluate_elbo(model, guide, data, batch_size=chunk)
        seconds = time.perf_counter() - start
        elbos[k] = result["elbo_per_datapoint"].double()
        gain = elbos[k] - elbos[0]
        rows.append(
            {
                "K": k,
                "elbo": result["elbo"],
                "kl": result["kl"],
                "gain": gain.mean().item(),
                "gain_se": (gain.std() / math.sqrt(len(gain))).item() if k else 0.0,
                "seconds": seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    top = rows[-1]["gain"]
    for row in rows:
        row["fraction_of_top"] = row["gain"] / top if top > 0 else math.nan
    reaching = [r["K"] for r in rows if r["K"] and top > 0 and r["gain"] >= args.fraction * top]
    choice = min(reaching) if reaching else None

    load = os.getloadavg()[0]
    print(f"\n{args.run}: {len(data)} validation points, load average {load:.2f}\n")
    print(f"| K | ELBO | KL | gain over K = 0 (± SE) | of K = {ks[-1]}'s gain | s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['K']} | {r['elbo']:.3f} | {r['kl']:.3f} | {r['gain']:.3f} ± "
            f"{r['gain_se']:.3f} | {r['fraction_of_top']:.2f} | {r['seconds']:.0f} |"
        )
    print(f"\nsmallest K reaching {args.fraction:.0%} of K = {ks[-1]}'s gain: {choice}")
    if args.out:
        checkpoint.atomic_write_json(
            args.out,
            {
                "run": str(args.run),
                "val_size": len(data),
                "fraction": args.fraction,
                "chosen_k": choice,
                "rows": rows,
                "load_average": load,
                "threads": torch.get_num_threads(),
            },
        )


if __name__ == "__main__":
    main()
