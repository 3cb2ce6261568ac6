"""Inference: objectives, algorithms, the training loop and KL annealing."""

from .annealing import LinearWarmup
from .elbos import ELBOS, INFERENCES
from .fit import train
from .semi_amortized import MODES as SEMI_AMORTIZED_MODES
from .semi_amortized import SemiAmortizedSVI

__all__ = [
    "ELBOS",
    "INFERENCES",
    "LinearWarmup",
    "SEMI_AMORTIZED_MODES",
    "SemiAmortizedSVI",
    "train",
]
