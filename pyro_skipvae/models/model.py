"""The generative model p(z) p(x | z) as a Pyro model."""

import pyro
from pyro import poutine
from pyro.nn import PyroModule

from ..names import forget_params_when_collected, unique_name
from ..sites import LATENT_SITE, OBSERVED_SITE, data_plate
from .decoders import Decoder
from .likelihoods import Likelihood
from .priors import Prior


class Model(PyroModule):
    r"""p(x, z) = p(z) p(x | decoder(z)), one datapoint per element of plate ``"data"``.

    :param Prior prior: returns p(z) for a batch shape (event_dim 1).
    :param Decoder decoder: z (and, for autoregressive decoders, x) → likelihood parameters.
    :param Likelihood likelihood: likelihood parameters → distribution over x.
    :param str name: Pyro name of the module (default: ``"model"``, made unique in the
        process, so two models never share parameters in Pyro's store).

    Calling ``model(x, size=N, beta=β)`` runs the generative story for the minibatch ``x``
    drawn from a data set of ``N`` points (Pyro scales the log-likelihood by N / len(x)) and
    weights the latent site by β (KL annealing: with the guide also scaled by β, the ELBO
    becomes E_q[log p(x|z)] − β KL(q‖p)). The likelihood also sees the observed ``x``, so
    padded positions of a sequence are masked out of log p(x | z).
    """

    def __init__(
        self, prior: Prior, decoder: Decoder, likelihood: Likelihood, *, name: str | None = None
    ):
        name = name or unique_name("model")
        super().__init__(name)
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        forget_params_when_collected(self, name)

    def forward(self, x, *, size=None, beta=1.0):
        with data_plate(x, size):
            with poutine.scale(scale=beta):
                z = pyro.sample(LATENT_SITE, self.prior(x.shape[:1]))
            pyro.sample(OBSERVED_SITE, self.likelihood(self.decoder(z, x), x), obs=x)
        return z
