"""A cheaper semi-amortized recipe measured against the full one on a short run (issue 21).

Both recipes fine-tune the same converged amortized model (``fit --init-from``) with
semi-amortized inference: the *full* one with the authors' K = 20 refinement steps per
minibatch, the cheaper ones with fewer. Each fine-tunes for the same number of minibatches
(the first ``--train-size`` training images, one epoch, the grid's optimizer), then every
model, the starting one included, is scored on the same validation images with the *same*
K = 20 refinement (one seed for the draws), so the recipes are compared on one yardstick:
the refined ELBO and KL, the amortized ELBO, the amortization gap and the seconds per step.

    python benchmarks/sa_recipe.py ../runs/pixelcnn_cpu/cells/seed=0_skip=true \\
        --ks 20,5 --train-size 5000 --val-size 1000 --out ../runs/sa_recipe

Prints one JSON line per model and a Markdown table. Run it with the study's thread
setting (``OMP_NUM_THREADS=1 taskset -c N``) and record the load average beside it.
"""

import argparse
import json
import os
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the converged amortized run folder")
    parser.add_argument("--ks", default="20,5", help="refinement steps of each recipe")
    parser.add_argument("--mode", default="end-to-end")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--score-steps", type=int, default=20, help="K of the common yardstick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for the fine-tuned runs")
    args = parser.parse_args()

    import pyro
    import pyro.optim

    from pyro_skipvae import SkipVAE
    from pyro_skipvae.data import load_dataset, prepare
    from pyro_skipvae.infer import ELBOS, SemiAmortizedSVI
    from pyro_skipvae.run import read_config

    source = read_config(args.source)
    train = source["train"]
    splits = load_dataset(
        source["run"]["dataset"], train_size=args.train_size, val_size=args.val_size
    )

    def score(vae):
        inference = SemiAmortizedSVI(
            vae.model,
            vae.guide,
            pyro.optim.Adam({}),
            ELBOS.build(train["elbo"]),
            mode=args.mode,
            refine_batch_size=train["batch_size"],
            num_refine_steps=args.score_steps,
        )
        pyro.set_rng_seed(7)
        metrics = inference.evaluate_metrics(val.to(vae.device), batch_size=500)
        return {k: round(v, 3) for k, v in metrics.items()}

    start_model = SkipVAE.load(args.source)
    # binarised once (with the fit's fixed validation seed): every model is scored on the same images
    val = prepare(splits.val, start_model.model.likelihood, binarization=train["binarize"])
    rows = [{"recipe": "amortized start", **score(start_model)}]
    print(json.dumps(rows[-1]), flush=True)
    for k in map(int, args.ks.split(",")):
        vae = SkipVAE.from_config(source["model"])
        start = time.perf_counter()
        history = vae.fit(
            splits.train,
            val=None,
            num_epochs=1,
            run_dir=Path(args.out) / f"k{k}",
            init_from=args.source,
            batch_size=train["batch_size"],
            learning_rate=train["learning_rate"],
            clip_norm=train["clip_norm"],
            elbo=train["elbo"],
            kl_warmup_epochs=0,
            binarize=train["binarize"],
            seed=args.seed,
            inference="semi-amortized",
            inference_options={"mode": args.mode, "num_refine_steps": k},
        )
        seconds = time.perf_counter() - start
        steps = -(-len(splits.train) // train["batch_size"])
        rows.append(
            {
                "recipe": f"K = {k}",
                "train_elbo": round(history[-1]["train_elbo"], 3),
                "seconds_per_step": round(seconds / steps, 3),
                **score(vae),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f}; K = {args.score_steps} refinement to score\n")
    print("| recipe | s/step | refined ELBO | refined KL | amortized ELBO | gap |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['recipe']} | {r.get('seconds_per_step', '')} | {r['elbo']:.2f} | "
            f"{r['kl']:.2f} | {r['elbo_amortized']:.2f} | {r['amortization_gap']:.2f} |"
        )


if __name__ == "__main__":
    main()
