"""The names every model, guide, ELBO and diagnostic in pyro-skipvae agrees on.

A model/guide pair follows the *site contract* when

* the guide samples one latent site :data:`LATENT_SITE` (``"z"``) whose distribution has
  ``event_dim == 1`` (shape ``(batch, latent_dim)``);
* the model samples the same site from its prior and observes the data at
  :data:`OBSERVED_SITE` (``"x"``);
* both put those sites inside one plate named :data:`DATA_PLATE` (``"data"``) at ``dim=-1``,
  whose ``size`` is the size of the whole data set (so Pyro scales minibatch terms) and
  whose subsample is the minibatch.

Any pair that follows it can be trained by :func:`pyro_skipvae.infer.fit.train` and measured
by :mod:`pyro_skipvae.diagnostics`.
"""

import pyro

LATENT_SITE = "z"
OBSERVED_SITE = "x"
DATA_PLATE = "data"
DATA_DIM = -1


def data_plate(x, size=None):
    """The plate ``"data"`` for minibatch ``x`` out of ``size`` datapoints (default: all of x).

    Passing ``x`` as the subsample makes the plate's subsample size ``len(x)``; Pyro then
    scales every site inside by ``size / len(x)``.
    """
    return pyro.plate(DATA_PLATE, x.shape[0] if size is None else size, subsample=x, dim=DATA_DIM)
