"""The inference side: encoders and the amortized Pyro guide."""

from .encoders import ENCODERS, Encoder, MLPEncoder
from .guide import Guide

__all__ = ["ENCODERS", "Encoder", "Guide", "MLPEncoder"]
