"""The inference side: encoders and the amortized Pyro guides."""

from .conv import ConvEncoder
from .encoders import ENCODERS, Encoder, MLPEncoder
from .guide import GUIDES, BatchNormGuide, FlowGuide, Guide
from .lstm import LSTMEncoder

__all__ = [
    "BatchNormGuide",
    "ConvEncoder",
    "ENCODERS",
    "Encoder",
    "FlowGuide",
    "GUIDES",
    "Guide",
    "LSTMEncoder",
    "MLPEncoder",
]
