"""The amortized variational family q(z | x) as a Pyro guide."""

import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.nn import PyroModule, pyro_method

from ..sites import LATENT_SITE, data_plate
from .encoders import Encoder


class Guide(PyroModule):
    r"""q(z | x) = N(z; μ(x), diag σ(x)²) on site ``"z"`` inside plate ``"data"``.

    :param Encoder encoder: x → (μ, log σ).

    ``guide(x, size=N, beta=β, local_params=None)`` mirrors the model's signature.
    ``local_params=(loc, log_scale)`` replaces the encoder's output: semi-amortized inference
    passes refined per-datapoint parameters λ_K this way (Kim et al. 2018, §3).
    """

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    # pyro_method: called directly (not through forward), a PyroModule would not register
    # the encoder's parameters with Pyro, so an inference that reads λ₀ here (semi-amortized
    # SVI) would never see, and never train, them.
    @pyro_method
    def local_params(self, x):
        """The encoder's variational parameters λ₀ = (μ, log σ) for the batch ``x``."""
        return self.encoder(x)

    def distribution(self, loc, log_scale):
        """q(z) for given local parameters, with event_dim 1."""
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    def forward(self, x, *, size=None, beta=1.0, local_params=None):
        loc, log_scale = self.local_params(x) if local_params is None else local_params
        with data_plate(x, size):
            with poutine.scale(scale=beta):
                return pyro.sample(LATENT_SITE, self.distribution(loc, log_scale))
