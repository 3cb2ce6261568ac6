"""The amortized variational family q(z | x) as a Pyro guide."""

import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.nn import PyroModule, pyro_method

from ..names import forget_params_when_collected, unique_name
from ..sites import LATENT_SITE, data_plate
from .encoders import Encoder


class Guide(PyroModule):
    r"""q(z | x) = N(z; μ(x), diag σ²(x)) on site ``"z"`` inside plate ``"data"``.

    :param Encoder encoder: x → λ = (μ, log σ²).
    :param str name: Pyro name of the module (default: ``"guide"``, made unique in the
        process, so two guides never share parameters in Pyro's store).

    ``guide(x, size=N, beta=β, local_params=None)`` mirrors the model's signature.
    ``local_params=(loc, log_var)`` replaces the encoder's output: semi-amortized inference
    passes refined per-datapoint parameters λ_K this way (Kim et al. 2018, §3). The local
    parameters are (μ, log σ²), the coordinates the authors' code refines in.
    """

    def __init__(self, encoder: Encoder, *, name: str | None = None):
        name = name or unique_name("guide")
        super().__init__(name)
        self.encoder = encoder
        forget_params_when_collected(self, name)

    # pyro_method: called directly (not through forward), a PyroModule would not register
    # the encoder's parameters with Pyro, so an inference that reads λ₀ here (semi-amortized
    # SVI) would never see, and never train, them.
    @pyro_method
    def local_params(self, x):
        """The encoder's variational parameters λ₀ = (μ, log σ²) for the batch ``x``."""
        return self.encoder(x)

    def distribution(self, loc, log_var):
        """q(z) for given local parameters (μ, log σ²), with event_dim 1."""
        return dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)

    def forward(self, x, *, size=None, beta=1.0, local_params=None):
        loc, log_var = self.local_params(x) if local_params is None else local_params
        with data_plate(x, size):
            with poutine.scale(scale=beta):
                return pyro.sample(LATENT_SITE, self.distribution(loc, log_var))
