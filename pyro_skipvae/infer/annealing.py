"""KL annealing schedules β(t), with t the training progress in (fractional) epochs."""

from dataclasses import dataclass


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
