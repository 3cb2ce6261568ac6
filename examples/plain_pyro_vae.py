"""Our diagnostics on a VAE written from scratch in plain Pyro (nothing of pyro_skipvae's
model, guide or training loop).

The diagnostics need only the site contract (``pyro_skipvae.sites``): the guide samples
site "z" (one event dimension) and the model samples "z" from its prior and observes "x",
both inside ``pyro.plate("data", ...)`` at dim -1. For the importance-weighted NLL the
decoder must accept extra leading dimensions of z (K importance samples in front of the
minibatch), which ``nn.Linear`` layers do.

Run: ``python examples/plain_pyro_vae.py [--train-size 5000] [--num-epochs 2]``
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_skipvae.data import binarize, binarize_for_evaluation, load_dataset
from pyro_skipvae.diagnostics import diagnose, format_table
from pyro_skipvae.modes import evaluating


class Encoder(nn.Module):
    def __init__(self, latent_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU())
        self.loc, self.log_scale = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)

    def forward(self, x):
        h = self.net(x)
        return self.loc(h), self.log_scale(h).exp()


def make_vae(latent_dim, hidden):
    encoder = Encoder(latent_dim, hidden)
    decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def model(x, size=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", size or len(x), subsample=x, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([latent_dim]).to_event(1))
            logits = decoder(z).reshape(z.shape[:-1] + x.shape[1:])
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(x, size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", size or len(x), subsample=x, dim=-1):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--num-epochs", type=int, default=2)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--num-samples", type=int, default=100, help="IW-NLL samples")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    pyro.set_rng_seed(0)
    splits = load_dataset("mnist", data_dir=args.data_dir, train_size=args.train_size, val_size=500)
    model, guide = make_vae(args.latent_dim, args.hidden)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    n = len(splits.train)
    for epoch in range(args.num_epochs):
        x = binarize(splits.train, "dynamic", torch.Generator().manual_seed(epoch))
        loss = sum(svi.step(batch, size=n) for batch in x[torch.randperm(n)].split(50))
        print(f"epoch {epoch + 1}: training ELBO {-loss / n / (n / 50):.2f} nats (batch mean)")

    val = binarize_for_evaluation(splits.val, "dynamic")
    with evaluating(model, guide), torch.no_grad():
        result = diagnose(model, guide, val, num_samples=args.num_samples)
    print(format_table(result["metrics"]))


if __name__ == "__main__":
    main()
