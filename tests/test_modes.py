"""Train and eval mode: evaluation never drops units at random nor moves batch-norm statistics.

Components here are small stand-ins with the layers that make the mode matter (dropout in
the decoder, BatchNorm in the encoder); the data are real MNIST images.
"""

import pyro
import pytest
import torch
from torch import nn

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import binarize_for_evaluation
from pyro_skipvae.guides import Encoder
from pyro_skipvae.infer import SVI, SemiAmortizedSVI
from pyro_skipvae.infer.optim import Optimizer
from pyro_skipvae.models import Decoder


class DropoutDecoder(Decoder):
    def __init__(self, latent_dim, output_shape, *, skip=False):
        super().__init__(latent_dim, output_shape, skip=skip)
        self.net = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Dropout(0.5))
        self.out = nn.Linear(32, self.output_size)
        self.modes_seen = []

    def forward(self, z, x=None):
        self.modes_seen.append(self.training)
        return self.out(self.net(z)).reshape(z.shape[:-1] + self.output_shape)


class BatchNormEncoder(Encoder):
    def __init__(self, data_shape, latent_dim):
        super().__init__(data_shape, latent_dim)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32, 2 * latent_dim)

    def forward(self, x):
        loc, log_var = self.head(self.net(x.float())).chunk(2, -1)
        return loc, log_var


def build():
    shape = (1, 28, 28)
    return SkipVAE(
        shape,
        latent_dim=4,
        decoder=DropoutDecoder(4, shape),
        encoder=BatchNormEncoder(shape, 4),
        seed=0,
    )


def running_stats(vae):
    bn = vae.guide.encoder.net[2]
    return bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)


def same(a, b):
    return all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(a, b))


def test_evaluation_is_deterministic_and_leaves_batch_norm_alone(mnist):
    vae = build()
    vae.fit(mnist.train[:200], num_epochs=1, batch_size=50, binarize="dynamic")
    x = binarize_for_evaluation(mnist.val[:40], "dynamic")
    stats = running_stats(vae)
    results = []
    for _ in range(2):
        pyro.set_rng_seed(7)
        results.append(
            (
                vae.evaluate(x),
                vae.encode(x)[0],
                vae.diagnose(x, num_samples=20, progress=False)["metrics"]["elbo"],
            )
        )
        assert same(running_stats(vae), stats), "evaluation must not update BatchNorm statistics"
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]
    # evaluation restored train mode afterwards
    assert vae.model.training and vae.guide.training and vae.guide.encoder.net[2].training


def test_fit_trains_in_train_mode_and_validates_in_eval_mode(mnist):
    vae = build()
    decoder = vae.model.decoder
    val = mnist.val[:100]
    vae.fit(mnist.train[:100], val=val, num_epochs=1, batch_size=50, binarize="dynamic")
    # two training steps in train mode, then validation (one batch) in eval mode
    assert decoder.modes_seen[:2] == [True, True]
    assert decoder.modes_seen[2:] and not any(decoder.modes_seen[2:])


@pytest.mark.parametrize("inference", ["svi", "semi-amortized"])
def test_validation_scores_repeat_exactly(mnist, inference):
    """The validation bound of an inference object is a function of the weights and the seed
    only: no dropout noise, no batch-norm drift (the refinement runs in eval mode too)."""
    vae = build()
    x = binarize_for_evaluation(mnist.val[:60], "dynamic")
    optimizer = Optimizer(vae.parameters())
    if inference == "svi":
        algo = SVI(vae.model, vae.guide, optimizer, pyro.infer.Trace_ELBO())
    else:
        algo = SemiAmortizedSVI(
            vae.model, vae.guide, optimizer, pyro.infer.Trace_ELBO(), num_refine_steps=3
        )
    algo.step(x[:30], size=60)
    stats = running_stats(vae)
    scores = []
    for _ in range(2):
        pyro.set_rng_seed(3)
        scores.append(algo.evaluate_metrics(x, batch_size=30))
    assert scores[0] == scores[1]
    assert same(running_stats(vae), stats)
