"""KL annealing schedules β(t), with t the training progress in (fractional) epochs."""

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class LinearWarmup:
    """β rises linearly from ``start`` to 1 over ``num_epochs`` epochs, then stays at 1.

    The authors' scripts use ``start=0.1`` over 10 epochs (Kim et al. 2018; Dieng et al. 2019).
    ``num_epochs=0`` means no warm-up (β = 1 throughout).
    """

    num_epochs: float = 10.0
    start: float = 0.1

    def __call__(self, epoch: float) -> float:
        if self.num_epochs <= 0:
            return 1.0
        return min(1.0, self.start + (1.0 - self.start) * epoch / self.num_epochs)


@dataclass(frozen=True)
class CyclicalAnnealing:
    r"""The warm-up repeated every ``cycle_epochs`` epochs (Fu et al. 2019, eq. 5):

    .. math::

        \tau = \frac{t \bmod C}{C}, \qquad
        \beta(t) = \begin{cases} \beta_0 + (1 - \beta_0)\,\tau / R & \tau \le R \\
                                  1 & \tau > R \end{cases}

    with C = ``cycle_epochs``, R = ``warmup_epochs`` / C (Fu et al. use R = 0.5 and four
    cycles) and β₀ = ``start`` (they start from 0; β must stay positive here, because Pyro's
    ``poutine.scale`` rejects a zero scale).

    :param float cycle_epochs: length C of one cycle, in epochs (> 0).
    :param float warmup_epochs: epochs of each cycle over which β rises (≤ C).
    :param float start: β at the start of each cycle (default 0.1).

    Reference: H. Fu, C. Li, X. Liu, J. Gao, A. Celikyilmaz, L. Carin, *Cyclical Annealing
    Schedule: A Simple Approach to Mitigating KL Vanishing*, NAACL 2019.
    """

    cycle_epochs: float
    warmup_epochs: float
    start: float = 0.1

    def __post_init__(self):
        if not self.cycle_epochs > 0 or not 0 <= self.warmup_epochs <= self.cycle_epochs:
            raise ConfigError(
                "cyclical KL annealing needs kl_cycle_epochs > 0 and 0 <= kl_warmup_epochs <= "
                f"kl_cycle_epochs (β must reach 1 in each cycle), found {self.cycle_epochs} "
                f"and {self.warmup_epochs}"
            )

    def __call__(self, epoch: float) -> float:
        return LinearWarmup(self.warmup_epochs, self.start)(math.fmod(epoch, self.cycle_epochs))


def kl_schedule(warmup_epochs: float, start: float, cycle_epochs: float | None = None):
    """The β schedule of a fit: :class:`LinearWarmup`, or :class:`CyclicalAnnealing` when
    ``cycle_epochs`` is given."""
    if cycle_epochs is None:
        return LinearWarmup(warmup_epochs, start)
    return CyclicalAnnealing(cycle_epochs, warmup_epochs, start)
