"""The inference side: encoders and the amortized Pyro guide."""

from .conv import ConvEncoder
from .encoders import ENCODERS, Encoder, MLPEncoder
from .guide import Guide
from .lstm import LSTMEncoder

__all__ = ["ConvEncoder", "ENCODERS", "Encoder", "Guide", "LSTMEncoder", "MLPEncoder"]
