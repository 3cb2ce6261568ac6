"""Inference: objectives, algorithms, the optimizer, the training loop and KL annealing."""

from .annealing import LinearWarmup
from .elbos import ELBOS, INFERENCES, PerDatapointBound
from .fit import train
from .optim import OPTIMIZERS, Optimizer
from .refine import Refinement, refined_guide
from .semi_amortized import MODES as SEMI_AMORTIZED_MODES
from .semi_amortized import SemiAmortizedSVI
from .svi import SVI

__all__ = [
    "ELBOS",
    "INFERENCES",
    "LinearWarmup",
    "OPTIMIZERS",
    "Optimizer",
    "PerDatapointBound",
    "Refinement",
    "SEMI_AMORTIZED_MODES",
    "SVI",
    "SemiAmortizedSVI",
    "refined_guide",
    "train",
]
