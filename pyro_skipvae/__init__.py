"""pyro-skipvae: collapse-resistant VAEs on Pyro.

Generative skip models (Dieng, Kim, Rush & Blei, AISTATS 2019), semi-amortized inference
(Kim et al., ICML 2018) and honest measurements of posterior collapse, written as Pyro
model/guide pairs. Most users need only :class:`SkipVAE`; the parts are exported for those
who assemble their own.
"""

from .errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, SkipVAEError
from .guides import Guide
from .models import Model
from .sites import DATA_PLATE, LATENT_SITE, OBSERVED_SITE
from .skip_vae import ModelConfig, SkipVAE

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DATA_PLATE",
    "DataError",
    "Guide",
    "LATENT_SITE",
    "Model",
    "ModelConfig",
    "NonFiniteLossError",
    "OBSERVED_SITE",
    "SkipVAE",
    "SkipVAEError",
]
