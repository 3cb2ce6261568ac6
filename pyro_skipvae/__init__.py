"""pyro-skipvae: collapse-resistant VAEs on Pyro.

Generative skip models (Dieng, Kim, Rush & Blei, AISTATS 2019), semi-amortized inference
(Kim et al., ICML 2018) and honest measurements of posterior collapse, written as Pyro
model/guide pairs. Most users need only :class:`SkipVAE`; the parts are exported for those
who assemble their own.

The names below are loaded on first use (PEP 562), so importing the package, or starting the
``skipvae`` command (which lives in ``pyro_skipvae.cli``), costs nothing until torch and Pyro
are actually needed.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": ".errors",
    "ConfigError": ".errors",
    "DataError": ".errors",
    "NonFiniteLossError": ".errors",
    "SkipVAEError": ".errors",
    "DATA_PLATE": ".sites",
    "LATENT_SITE": ".sites",
    "OBSERVED_SITE": ".sites",
    "Guide": ".guides",
    "Model": ".models",
    "ModelConfig": ".configs",
    "SkipVAE": ".skip_vae",
    "TrainConfig": ".configs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
