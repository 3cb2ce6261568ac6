"""The generative model p(z) p(x | z) as a Pyro model."""

import pyro
from pyro import poutine
from pyro.nn import PyroModule

from ..sites import LATENT_SITE, OBSERVED_SITE, data_plate
from .decoders import Decoder
from .likelihoods import Likelihood
from .priors import Prior


class Model(PyroModule):
    r"""p(x, z) = p(z) p(x | decoder(z)), one datapoint per element of plate ``"data"``.

    :param Prior prior: returns p(z) for a batch shape (event_dim 1).
    :param Decoder decoder: z (and, for autoregressive decoders, x) → likelihood parameters.
    :param Likelihood likelihood: likelihood parameters → distribution over x.

    Calling ``model(x, size=N, beta=β)`` runs the generative story for the minibatch ``x``
    drawn from a data set of ``N`` points (Pyro scales the log-likelihood by N / len(x)) and
    weights the latent site by β (KL annealing: with the guide also scaled by β, the ELBO
    becomes E_q[log p(x|z)] − β KL(q‖p)).
    """

    def __init__(self, prior: Prior, decoder: Decoder, likelihood: Likelihood):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(self, x, *, size=None, beta=1.0):
        with data_plate(x, size):
            with poutine.scale(scale=beta):
                z = pyro.sample(LATENT_SITE, self.prior(x.shape[:1]))
            pyro.sample(OBSERVED_SITE, self.likelihood(self.decoder(z, x)), obs=x)
        return z
