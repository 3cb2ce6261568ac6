"""A custom likelihood: Beta-distributed grey levels, x_i ~ Beta(a_i, b_i), on MNIST
intensities in [0, 1] (not binarised).

A likelihood states the decoder output it needs (``param_shape``: here two numbers per
pixel), turns that output into a distribution over one datapoint (``forward``) and says
which data it accepts (``_check_support``, used by ``validate`` before training starts).
The Beta density is infinite or zero at exactly 0 and 1, where most MNIST pixels sit, so the
Beta variable is x' = ε + (1 − 2ε) x: an affine map (its Jacobian is part of the density)
that keeps the density finite on all of [0, 1] (the support is then slightly wider than [0, 1]).

Run: ``python examples/custom_likelihood.py [--train-size 5000] [--num-epochs 1]``
"""

import argparse
import math

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineTransform

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import load_dataset
from pyro_skipvae.models import LIKELIHOODS, Likelihood


@LIKELIHOODS.register("beta")
class BetaLikelihood(Likelihood):
    support_description = "values in [0, 1]"

    def __init__(self, data_shape, eps=1e-3):
        super().__init__(data_shape)
        self.eps = eps

    @property
    def param_shape(self):
        return self.data_shape + (2,)  # softplus⁻¹ of the concentrations a and b

    def forward(self, params, x=None):
        a, b = torch.nn.functional.softplus(params).clamp(min=1e-3).unbind(-1)
        # x' = ε + (1 − 2ε) x ~ Beta(a, b); x = (x' − ε) / (1 − 2ε).
        squeeze = AffineTransform(-self.eps / (1 - 2 * self.eps), 1 / (1 - 2 * self.eps))
        return self._event(dist.TransformedDistribution(dist.Beta(a, b), [squeeze]))

    def _check_support(self, x):
        return (x >= 0) & (x <= 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--num-epochs", type=int, default=1)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    splits = load_dataset("mnist", data_dir=args.data_dir, train_size=args.train_size, val_size=500)
    vae = SkipVAE(
        splits.data_shape,
        likelihood="beta",
        latent_dim=args.latent_dim,
        hidden_dims=args.hidden_dims,
        seed=0,
    )
    history = vae.fit(splits.train, val=splits.val, num_epochs=args.num_epochs, binarize="none")
    elbo = history[-1]["val_elbo"]
    # A density on [0, 1]^784: the ELBO is in nats of a continuous variable (can be positive).
    print(f"validation ELBO {elbo:.2f} nats ({elbo / math.prod(splits.data_shape):.3f} per pixel)")
    samples = vae.sample(4, mean=False)
    print(f"4 samples, intensities in [{samples.min():.3f}, {samples.max():.3f}]")


if __name__ == "__main__":
    main()
