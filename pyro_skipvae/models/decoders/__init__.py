"""Decoder families, chosen by name from :data:`DECODERS`.

Each family lives in its own module and implements :class:`Decoder`; registering it here
makes it available to :class:`~pyro_skipvae.SkipVAE`, the CLI and the registry-driven tests.
"""

from ...registry import Registry
from .base import Decoder
from .lstm import LSTMDecoder
from .mlp import MLPDecoder
from .pixelcnn import PixelCNNDecoder

DECODERS = Registry("decoder")
DECODERS.register("mlp", MLPDecoder)
DECODERS.register("pixelcnn", PixelCNNDecoder)
DECODERS.register("lstm", LSTMDecoder)

__all__ = ["DECODERS", "Decoder", "LSTMDecoder", "MLPDecoder", "PixelCNNDecoder"]
