"""Likelihoods p(x | decoder output) for the observed site ``"x"``.

A likelihood turns the decoder's output tensor (shape ``batch + param_shape``) into a Pyro
distribution over one datapoint of shape ``data_shape`` (``event_dim == len(data_shape)``).
``forward(params, x=None)`` also receives the observed data when there is any, so a likelihood
can mask positions that are not data (padding after the end of a sentence); generation calls
it without ``x``. A likelihood of sequences also counts each datapoint's tokens
(:meth:`Likelihood.num_tokens`), which per-token metrics (perplexity) divide by.
It also states what it needs from the decoder (:attr:`Likelihood.param_shape`) and checks
data against its support (:meth:`Likelihood.validate`), so bad data is rejected once,
up front, with a readable message instead of deep inside a training step.
"""

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
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

    def num_tokens(self, x: torch.Tensor) -> torch.Tensor | None:
        """The number of positions log p(x | z) scores in each datapoint of ``x`` (tokens of a
        padded sequence), shape ``(N,)``; ``None`` (the default) for data without tokens."""
        return None

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
    r"""x_i ~ Categorical(softmax(logits_i)) over ``num_categories`` values (tokens of text).

    The decoder's output has one extra trailing dimension of size ``num_categories``.

    **Sequences.** With ``pad_index`` set, a datapoint is a sequence of shape ``(T,)``:
    token ids, then ``pad_index`` up to T (padding is a suffix; see
    :mod:`pyro_skipvae.data.text`). Padding is not data, so it never counts:

    .. math::

        \log p(x \mid z) = \sum_{t < \ell(x)} \log \mathrm{softmax}(\eta_t)[x_t],
        \qquad \ell(x) = \#\{t : x_t \ne \mathrm{pad}\},

    a sum over the real tokens only (the end-of-sentence token included), computed with
    Pyro's masked distribution (:meth:`~pyro.distributions.TorchDistributionMixin.mask`)
    before ``to_event``, so the ELBO, the IW-NLL, the refinement and every estimator need
    nothing else. The decoder may return parameters for the first L ≤ T positions only
    (L: the longest sequence in the batch); the positions beyond are padding in every row
    (:class:`PaddedSequence`). :meth:`num_tokens` gives ℓ(x), the token count perplexity
    divides by.

    :param int num_categories: number of values (the vocabulary size), required.
    :param int pad_index: the padding id of sequence data (default None: every position is
        data).
    """

    def __init__(self, data_shape, num_categories: int | None = None, pad_index: int | None = None):
        super().__init__(data_shape)
        if num_categories is None or num_categories < 2:
            raise ConfigError(
                "categorical likelihood: expected the option num_categories >= 2 (e.g. "
                f"--likelihood-option num_categories=10000), found {num_categories}"
            )
        if pad_index is not None:
            if not 0 <= pad_index < num_categories:
                raise ConfigError(
                    f"categorical likelihood: pad_index must lie in [0, {num_categories}), "
                    f"found {pad_index}"
                )
            if len(self.data_shape) != 1:
                raise ConfigError(
                    "categorical likelihood: pad_index needs sequences, data of shape (N, T); "
                    f"found datapoints of shape {self.data_shape}"
                )
        self.num_categories = num_categories
        self.pad_index = pad_index
        self.support_description = f"integers in [0, {num_categories})"

    @property
    def param_shape(self):
        return self.data_shape + (self.num_categories,)

    def forward(self, params, x=None):
        if self.pad_index is None or x is None:
            return self._event(dist.Categorical(logits=params))
        length = params.shape[-2]
        d = TokenCategorical(params).mask(x[..., :length] != self.pad_index).to_event(1)
        if x.shape[-1] > length:
            d = PaddedSequence(d, x.shape[-1], self.pad_index)
        return d

    def validate(self, x, name="data"):
        super().validate(x, name)
        if self.pad_index is None:
            return
        real = x != self.pad_index
        for bad, what in (
            (~real[:, 0], "holds no token (only padding)"),
            ((real[:, 1:] & ~real[:, :-1]).any(-1), "has a token after padding"),
        ):
            if bad.any():
                row = int(bad.nonzero()[0, 0])
                raise DataError(
                    f"{name}: expected padded sequences (tokens, then pad id {self.pad_index} up to "
                    f"the end), found that row {row} {what} ({int(bad.sum())} such rows)"
                )

    def num_tokens(self, x):
        if self.pad_index is None:
            return None
        return (x != self.pad_index).sum(-1)

    def _check_support(self, x):
        integral = x == x.round() if x.is_floating_point() else torch.ones_like(x, dtype=torch.bool)
        return integral & (x >= 0) & (x < self.num_categories)


class TokenCategorical(TorchDistribution):
    """Categorical(softmax(logits)) scored by one fused log-softmax (``cross_entropy``).

    :class:`torch.distributions.Categorical` normalises all V logits of every position when
    built, then gathers: two passes over the largest tensor of a text model, and as many in
    the backward pass. This one reads the logits once for the tokens observed.
    """

    arg_constraints = {"logits": constraints.real_vector}

    def __init__(self, logits, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-1], torch.Size(), validate_args=validate_args)

    @property
    def support(self):
        return constraints.integer_interval(0, self.logits.shape[-1] - 1)

    def log_prob(self, value):
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        logits = self.logits.expand(*shape, self.logits.shape[-1])
        flat = logits.reshape(-1, logits.shape[-1])
        nll = nn.functional.cross_entropy(flat, value.expand(shape).reshape(-1), reduction="none")
        return -nll.view(shape)

    def sample(self, sample_shape=torch.Size()):
        return dist.Categorical(logits=self.logits).sample(sample_shape)


class PaddedSequence(TorchDistribution):
    r"""Sequences of length T whose first L positions follow ``base`` (event shape ``(L,)``)
    and whose last T − L positions are ``pad_index`` with probability one:

    .. math::

        \log p(x) = \log p_{\mathrm{base}}(x_{<L}) \text{ if } x_{\ge L} = \mathrm{pad},
        \text{ else } -\infty.

    It lets a decoder compute parameters only up to the longest sequence of a batch while the
    observed tensor keeps the data set's width T (a slice of an evaluation set, say).

    :param base: distribution over the first L positions, event shape ``(L,)``.
    :param int length: T ≥ L.
    :param int pad_index: the padding value.
    """

    arg_constraints = {}

    def __init__(self, base, length: int, pad_index: int):
        if len(base.event_shape) != 1 or base.event_shape[0] > length:
            raise ValueError(
                f"expected a base distribution over at most {length} positions, found event "
                f"shape {tuple(base.event_shape)}"
            )
        self.base = base
        self.pad_index = pad_index
        super().__init__(base.batch_shape, torch.Size((length,)), validate_args=False)

    @property
    def support(self):
        return self.base.support

    def log_prob(self, value):
        head = self.base.event_shape[0]
        log_prob = self.base.log_prob(value[..., :head])
        beyond = (value[..., head:] != self.pad_index).any(-1)
        return log_prob.masked_fill(beyond, -math.inf)

    def sample(self, sample_shape=torch.Size()):
        head = self.base.sample(sample_shape)
        tail = head.new_full(
            (*head.shape[:-1], self.event_shape[0] - head.shape[-1]), self.pad_index
        )
        return torch.cat([head, tail], -1)
