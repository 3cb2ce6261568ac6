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


class DiscretizedLogisticMixture(dist.TorchDistribution):
    r"""A mixture of K logistics discretised to ``num_bins`` equally spaced values in [0, 1]
    (Salimans et al. 2017, PixelCNN++, eq. 2), independently for every element of the batch.

    With bin half-width h = 1 / (2 (num_bins − 1)) and σ the logistic CDF,

    .. math::

        P(x) = \sum_k \pi_k \left[\sigma\!\left(\frac{x + h - m_k}{s_k}\right)
               - \sigma\!\left(\frac{x - h - m_k}{s_k}\right)\right],

    where the lowest bin takes all the mass below (its first σ term alone) and the highest all
    the mass above (1 minus its second term), so the probabilities of the bins sum to one.

    :param torch.Tensor logits: mixture logits, shape ``(*batch, K)``.
    :param torch.Tensor locs: component locations m_k, shape ``(*batch, K)``.
    :param torch.Tensor log_scales: log s_k, shape ``(*batch, K)``, clamped below at −7.
    :param int num_bins: number of values (default 256: 8-bit intensities / 255).
    """

    arg_constraints = {}
    support = dist.constraints.unit_interval
    has_rsample = False

    def __init__(self, logits, locs, log_scales, num_bins=256, validate_args=None):
        self.logits, self.locs = logits, locs
        self.log_scales = log_scales.clamp(min=-7.0)
        self.num_bins = num_bins
        super().__init__(logits.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = tuple(batch_shape) + self.logits.shape[-1:]
        return DiscretizedLogisticMixture(
            self.logits.expand(shape),
            self.locs.expand(shape),
            self.log_scales.expand(shape),
            self.num_bins,
        )

    def log_prob(self, value):
        half = 0.5 / (self.num_bins - 1)
        x = value.unsqueeze(-1)
        inv_scale = torch.exp(-self.log_scales)
        plus = inv_scale * (x + half - self.locs)
        minus = inv_scale * (x - half - self.locs)
        log_cdf_plus = nn.functional.logsigmoid(plus)  # the lowest bin: P = σ(plus)
        log_survival_minus = -nn.functional.softplus(minus)  # the highest bin: P = 1 − σ(minus)
        # Interior bins: σ(plus) − σ(minus) = σ(−minus) − σ(−plus); take the side where both
        # terms are below 1/2, so their logs keep full precision far out in either tail, and
        # log(σ(a) − σ(b)) = log σ(a) + log(−expm1(log σ(b) − log σ(a))) is exact.
        flip = plus + minus > 0
        high = nn.functional.logsigmoid(torch.where(flip, -minus, plus))
        low = nn.functional.logsigmoid(torch.where(flip, -plus, minus))
        interior = high + torch.log((-torch.expm1(low - high)).clamp(min=1e-30))
        log_bin = torch.where(
            x < half, log_cdf_plus, torch.where(x > 1 - half, log_survival_minus, interior)
        )
        return (log_bin + torch.log_softmax(self.logits, -1)).logsumexp(-1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            k = dist.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
            loc = self.locs.expand(shape + self.locs.shape[-1:]).gather(-1, k).squeeze(-1)
            log_scale = self.log_scales.expand(shape + self.locs.shape[-1:]).gather(-1, k)
            u = torch.rand(shape, device=loc.device, dtype=loc.dtype).clamp(1e-5, 1 - 1e-5)
            x = loc + log_scale.squeeze(-1).exp() * (u.log() - (-u).log1p())
            # Rounding the clamped continuous draw to the grid is exactly the discretisation.
            steps = self.num_bins - 1
            return (x.clamp(0, 1) * steps).round() / steps

    @property
    def mean(self):
        """Σ_v v P(v) over all ``num_bins`` values (exact; memory num_bins × batch × K)."""
        grid = torch.linspace(0, 1, self.num_bins, dtype=self.locs.dtype, device=self.locs.device)
        values = grid.reshape((-1,) + (1,) * len(self.batch_shape))
        return (values * self.log_prob(values.expand((-1,) + self.batch_shape)).exp()).sum(0)


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """x_i ~ a mixture of ``num_components`` discretised logistics on the grid
    {0, 1/255, …, 1} (Salimans et al. 2017): a proper likelihood for grey-level images
    (MNIST intensities are k / 255; fit with ``binarize="none"``), in nats comparable to
    discrete-data log-likelihoods.

    The decoder's output has one extra trailing dimension of 3K values: mixture logits,
    locations and log-scales (see :class:`DiscretizedLogisticMixture`).

    :param int num_components: K (default 1, the single logistic of Kingma et al. 2016).
    :param int num_bins: grid size (default 256).
    """

    def __init__(self, data_shape, num_components: int = 1, num_bins: int = 256):
        super().__init__(data_shape)
        for name, value, low in (("num_components", num_components, 1), ("num_bins", num_bins, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, found {value!r}")
        self.num_components = num_components
        self.num_bins = num_bins
        self.support_description = (
            f"values on the grid {{0, 1/{num_bins - 1}, ..., 1}} (e.g. 8-bit intensities / 255)"
        )

    @property
    def param_shape(self):
        return self.data_shape + (3 * self.num_components,)

    def forward(self, params, x=None):
        logits, locs, log_scales = params.chunk(3, dim=-1)
        return self._event(DiscretizedLogisticMixture(logits, locs, log_scales, self.num_bins))

    def _check_support(self, x):
        scaled = x * (self.num_bins - 1)
        return (x >= 0) & (x <= 1) & ((scaled - scaled.round()).abs() < 1e-3)
