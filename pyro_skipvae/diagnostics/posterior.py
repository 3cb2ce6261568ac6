r"""The true posterior p(z | x) of one datapoint by NUTS, to check a guide against it.

For a trained model the networks are fixed, so p(z | x) ∝ p(z) p(x | z) is a
``latent_dim``-dimensional density that Hamiltonian Monte Carlo samples exactly in the limit
(Hoffman & Gelman 2014, NUTS). Comparing its moments with q(z | x) shows what the ELBO's
gap, KL(q ‖ p(z|x)), is made of (a wrong mean, a too-narrow variance). Practical for small
latent dimensions and one datapoint at a time: each gradient evaluation runs the decoder.
"""

import pyro
from pyro import poutine
from pyro.infer import MCMC, NUTS

from ..errors import DataError
from ..sites import LATENT_SITE


def nuts_posterior(model, x, *, num_samples=500, warmup_steps=300, seed=0, **nuts_options):
    """Draws from p(z | x) for one datapoint ``x`` (shape ``(1, ...)``) by NUTS, the model's
    parameters held fixed.

    :param model: Pyro model following the site contract, called as ``model(x)``.
    :param int num_samples: draws kept after warm-up (default 500).
    :param int warmup_steps: adaptation steps (step size, diagonal mass matrix; default 300).
    :param nuts_options: further :class:`pyro.infer.NUTS` options (e.g. ``target_accept_prob``).
    :returns: tensor ``(num_samples, latent_dim)``; MCMC's diagnostics (``r_hat``, ESS) are
        for the caller to check on several chains if needed.
    """
    if x.dim() < 1 or x.shape[0] != 1:
        raise DataError(f"expected one datapoint of shape (1, ...), found {tuple(x.shape)}")
    pyro.set_rng_seed(seed)
    # Parameters are constants here: hidden from MCMC, which would otherwise treat them as
    # part of the state to sample.
    fixed = poutine.block(model, hide_types=["param"])
    kernel = NUTS(fixed, jit_compile=False, **nuts_options)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=True)
    mcmc.run(x)
    return mcmc.get_samples()[LATENT_SITE].reshape(num_samples, -1).detach()
