"""The generative side: priors, decoders, likelihoods and the Pyro model."""

from .decoders import DECODERS, Decoder, LSTMDecoder, MLPDecoder, PixelCNNDecoder
from .likelihoods import LIKELIHOODS, Likelihood
from .model import Model
from .priors import PRIORS, Prior

__all__ = [
    "DECODERS",
    "Decoder",
    "LIKELIHOODS",
    "LSTMDecoder",
    "Likelihood",
    "MLPDecoder",
    "Model",
    "PixelCNNDecoder",
    "PRIORS",
    "Prior",
]
