"""A custom prior: a heavy-tailed Student-t p(z), used by name and by import path.

A prior is a module whose ``forward(batch_shape)`` returns a distribution over z with one
event dimension (``examples/student_t.py``). Registered, it is used by name in any process
that imported it; named by import path (``module:attribute``), every later process
(``SkipVAE.load``, ``skipvae fit --resume``, ``skipvae diagnose``) rebuilds it from
``config.json`` by importing it::

    cd examples && skipvae fit --prior student_t:StudentTPrior --prior-option df=3 --num-epochs 1

Run: ``python examples/custom_prior.py [--train-size 5000] [--num-epochs 1]``
"""

import argparse

from student_t import StudentTPrior  # registers "student-t" (examples/student_t.py)

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import load_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--num-epochs", type=int, default=1)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/examples/custom-prior")
    args = parser.parse_args(argv)

    splits = load_dataset("mnist", data_dir=args.data_dir, train_size=args.train_size, val_size=500)
    options = dict(latent_dim=args.latent_dim, hidden_dims=args.hidden_dims, seed=0)
    by_name = SkipVAE(splits.data_shape, prior="student-t", prior_options={"df": 3}, **options)
    by_path = SkipVAE(splits.data_shape, prior="student_t:StudentTPrior", **options)
    for vae in (by_name, by_path):
        assert isinstance(vae.model.prior, StudentTPrior)
        print(f"prior {vae.config.prior!r} with options {vae.config.prior_options}")
    history = by_path.fit(
        splits.train,
        val=splits.val,
        num_epochs=args.num_epochs,
        binarize="dynamic",
        run_dir=args.out,
    )
    print(f"validation ELBO {history[-1]['val_elbo']:.2f} nats, KL {history[-1]['val_kl']:.2f}")
    reloaded = SkipVAE.load(args.out)  # rebuilt from the import path in config.json
    print(f"reloaded: {type(reloaded.model.prior).__name__}, df = {reloaded.model.prior.df[0]:.0f}")


if __name__ == "__main__":
    main()
