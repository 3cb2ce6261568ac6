"""Registries of the objectives and inference algorithms a fit can use, by name.

``ELBOS`` maps names to Pyro ELBO classes; ``INFERENCES`` maps names to factories
``(model, guide, optim, loss, **options) -> object with step()``, the signature of
:class:`pyro.infer.SVI`. New algorithms register themselves here.
"""

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ..registry import Registry
from .semi_amortized import SemiAmortizedSVI
from .svi import SVI

ELBOS = Registry("elbo")
ELBOS.register("trace", Trace_ELBO)  # Monte-Carlo KL: works with any prior
ELBOS.register("mean-field", TraceMeanField_ELBO)  # analytic KL where kl_divergence knows it

INFERENCES = Registry("inference")
INFERENCES.register("svi", SVI)  # pyro.infer.SVI, without a per-step gradient re-allocation
INFERENCES.register("semi-amortized", SemiAmortizedSVI)  # Kim et al. 2018; options in its docstring
