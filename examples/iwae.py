"""IWAE training: the K-sample importance-weighted bound (Burda et al. 2016, eq. 8) as the
objective, against the ELBO, scored by the same importance-weighted NLL.

``elbo="iwae"`` is Pyro's ``RenyiELBO(alpha=0)`` evaluated per datapoint and scaled by N/B
outside its log-sum-exp (``pyro_skipvae.infer.PerDatapointBound``), the bound's definition
under minibatching; the command line is ``skipvae fit --elbo iwae --num-particles 5``.

Run: ``python examples/iwae.py [--train-size 5000] [--num-epochs 2] [--num-particles 5]``
"""

import argparse

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import binarize_for_evaluation, load_dataset
from pyro_skipvae.diagnostics import importance_sample
from pyro_skipvae.modes import evaluating


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--num-epochs", type=int, default=2)
    parser.add_argument("--num-particles", type=int, default=5)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    splits = load_dataset("mnist", data_dir=args.data_dir, train_size=args.train_size, val_size=500)
    val = binarize_for_evaluation(splits.val, "dynamic")  # as fit scores its validation data
    for elbo in ("trace", "iwae"):
        vae = SkipVAE(
            splits.data_shape, latent_dim=args.latent_dim, hidden_dims=args.hidden_dims, seed=0
        )
        history = vae.fit(
            splits.train,
            val=splits.val,
            elbo=elbo,
            num_particles=args.num_particles,
            num_epochs=args.num_epochs,
            kl_warmup_epochs=0,
            binarize="dynamic",
        )
        with evaluating(vae.model, vae.guide):
            nll = importance_sample(vae.model, vae.guide, val, num_samples=50).estimate()
        print(
            f"{elbo:>5} (K={args.num_particles}): validation ELBO {history[-1]['val_elbo']:.2f}, "
            f"IW-NLL (K=50) {float(nll):.2f} ± {nll.se:.2f} nats"
        )


if __name__ == "__main__":
    main()
