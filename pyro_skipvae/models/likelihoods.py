"""Likelihoods p(x | decoder output) for the observed site ``"x"``.

A likelihood turns the decoder's output tensor (shape ``batch + param_shape``) into a Pyro
distribution over one datapoint of shape ``data_shape`` (``event_dim == len(data_shape)``).
``forward(params, x=None)`` also receives the observed data when there is any, so a likelihood
can mask positions that are not data (padding after the end of a sentence); generation calls
it without ``x``.
It also states what it needs from the decoder (:attr:`Likelihood.param_shape`) and checks
data against its support (:meth:`Likelihood.validate`), so bad data is rejected once,
up front, with a readable message instead of deep inside a training step.
"""

import math

import pyro.distributions as dist
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..registry import Registry

LIKELIHOODS = Registry("likelihood")


class Likelihood(nn.Module):
    """Base class. Subclasses implement :meth:`forward` and :meth:`_check_support`."""

    #: what the data's values must be, in words, for error messages
    support_description = "any finite real value"

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Shape of the decoder output for one datapoint."""
        return self.data_shape

    def forward(
        self, params: torch.Tensor, x: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        raise NotImplementedError

    def validate(self, x: torch.Tensor, name: str = "data") -> None:
        """Raise :class:`DataError` unless ``x`` has shape ``(N, *data_shape)`` and lies in the support."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
        if tuple(x.shape[1:]) != self.data_shape:
            raise DataError(
                f"{name}: expected shape (N, {', '.join(map(str, self.data_shape))}), "
                f"found {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise DataError(f"{name}: expected at least one datapoint, found none")
        if x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(f"{name}: expected finite values, found {bad} NaN/inf entries")
        bad = ~self._check_support(x)
        if bad.any():
            example = x[bad].flatten()[0].item()
            raise DataError(
                f"{name}: {type(self).__name__} expects {self.support_description}, "
                f"found {int(bad.sum())} entries outside it (e.g. {example!r})"
            )

    def _check_support(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x, dtype=torch.bool)

    def _event(self, d):
        return d.to_event(len(self.data_shape))


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """x_i ~ Bernoulli(sigmoid(logit_i)), for binary data (e.g. binarised MNIST)."""

    support_description = "binary values in {0, 1}"

    def forward(self, params, x=None):
        return self._event(dist.Bernoulli(logits=params))

    def _check_support(self, x):
        return (x == 0) | (x == 1)


@LIKELIHOODS.register("continuous-bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """x_i ~ ContinuousBernoulli(logit_i) on [0, 1] (Loaiza-Ganem & Cunningham, 2019): the
    properly normalised density for grey-scale intensities."""

    support_description = "values in [0, 1]"

    def forward(self, params, x=None):
        return self._event(dist.ContinuousBernoulli(logits=params))

    def _check_support(self, x):
        return (x >= 0) & (x <= 1)


@LIKELIHOODS.register("normal")
class NormalLikelihood(Likelihood):
    """x_i ~ N(μ_i, s_i²): the decoder gives μ, the scales s are learned per feature
    (one global parameter each, initialised at ``init_scale``)."""

    def __init__(self, data_shape, init_scale: float = 1.0):
        super().__init__(data_shape)
        self.log_scale = nn.Parameter(torch.full(self.data_shape, math.log(init_scale)))

    def forward(self, params, x=None):
        return self._event(dist.Normal(params, self.log_scale.exp()))


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(Likelihood):
    """x_i ~ Categorical(softmax(logits_i)) over ``num_categories`` values (tokens of text).

    The decoder's output has one extra trailing dimension of size ``num_categories``.
    """

    def __init__(self, data_shape, num_categories: int | None = None):
        super().__init__(data_shape)
        if num_categories is None or num_categories < 2:
            raise ConfigError(
                "categorical likelihood: expected the option num_categories >= 2 (e.g. "
                f"--likelihood-option num_categories=10000), found {num_categories}"
            )
        self.num_categories = num_categories
        self.support_description = f"integers in [0, {num_categories})"

    @property
    def param_shape(self):
        return self.data_shape + (self.num_categories,)

    def forward(self, params, x=None):
        return self._event(dist.Categorical(logits=params))

    def _check_support(self, x):
        integral = x == x.round() if x.is_floating_point() else torch.ones_like(x, dtype=torch.bool)
        return integral & (x >= 0) & (x < self.num_categories)
