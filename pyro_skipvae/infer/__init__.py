"""Inference: objectives, algorithms, the training loop and KL annealing."""

from .annealing import LinearWarmup
from .elbos import ELBOS, INFERENCES
from .fit import train

__all__ = ["ELBOS", "INFERENCES", "LinearWarmup", "train"]
