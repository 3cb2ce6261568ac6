"""Inference: objectives, algorithms, the optimizer, the training loop and KL annealing."""

from .aggressive import AggressiveSVI
from .annealing import CyclicalAnnealing, LinearWarmup, kl_schedule
from .elbos import ELBOS, INFERENCES, JitELBO, PerDatapointBound
from .fit import train
from .free_bits import FreeBitsELBO
from .optim import OPTIMIZERS, Optimizer
from .refine import Refinement, refined_guide
from .semi_amortized import MODES as SEMI_AMORTIZED_MODES
from .semi_amortized import SemiAmortizedSVI
from .svi import SVI

__all__ = [
    "AggressiveSVI",
    "CyclicalAnnealing",
    "ELBOS",
    "FreeBitsELBO",
    "INFERENCES",
    "JitELBO",
    "LinearWarmup",
    "OPTIMIZERS",
    "Optimizer",
    "PerDatapointBound",
    "Refinement",
    "SEMI_AMORTIZED_MODES",
    "SVI",
    "SemiAmortizedSVI",
    "refined_guide",
    "kl_schedule",
    "train",
]
