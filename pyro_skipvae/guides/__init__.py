"""The inference side: encoders and the amortized Pyro guide."""

from .conv import ConvEncoder
from .encoders import ENCODERS, Encoder, MLPEncoder
from .guide import Guide

__all__ = ["ConvEncoder", "ENCODERS", "Encoder", "Guide", "MLPEncoder"]
