"""Decoder families, chosen by name from :data:`DECODERS`.

Each family lives in its own module and implements :class:`Decoder`; registering it here
makes it available to :class:`~pyro_skipvae.SkipVAE`, the CLI and the registry-driven tests.
"""

from ...registry import Registry
from .base import Decoder
from .mlp import MLPDecoder
from .pixelcnn import PixelCNNDecoder

DECODERS = Registry("decoder")
DECODERS.register("mlp", MLPDecoder)
DECODERS.register("pixelcnn", PixelCNNDecoder)

__all__ = ["DECODERS", "Decoder", "MLPDecoder", "PixelCNNDecoder"]
