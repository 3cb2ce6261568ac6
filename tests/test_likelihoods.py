"""Behaviour of the likelihoods p(x | decoder output) (pyro_skipvae.models.likelihoods):
closed-form log-densities computed by hand (float64), shapes, documented defaults and the
exact messages of validation. Every tensor here is a tiny synthetic value chosen by hand."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_skipvae.errors import ConfigError, DataError
from pyro_skipvae.models.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    CategoricalLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    DiscretizedLogisticMixture,
    Likelihood,
    NormalLikelihood,
    PaddedSequence,
    TokenCategorical,
)

pytestmark = pytest.mark.usefixtures("float64")


# ----------------------------------------------------------------------- the base class
def test_base_likelihood_stores_the_shape_and_accepts_any_finite_value():
    lik = Likelihood([2, 3])  # any sequence: stored as a tuple
    assert lik.data_shape == (2, 3) and isinstance(lik.data_shape, tuple)
    assert lik.param_shape == (2, 3)
    assert lik.support_description == "any finite real value"
    assert lik.num_tokens(torch.zeros(1, 2, 3)) is None
    with pytest.raises(NotImplementedError):
        lik(torch.zeros(1, 2, 3))
    lik.validate(torch.tensor([[[-1e30, 0.0, 3.5], [1.0, 2.0, -7.0]]]))
    lik.validate(torch.zeros(1, 2, 3, dtype=torch.long))  # integers are always finite
    assert lik._check_support(torch.tensor([-1e300, 0.5])).tolist() == [True, True]
    assert lik._check_support(torch.zeros(2)).dtype == torch.bool


def test_validate_refuses_what_is_not_a_tensor_naming_the_data():
    lik = Likelihood((2,))
    with pytest.raises(DataError, match=r"^data: expected a torch.Tensor, found list$"):
        lik.validate([[0.0, 1.0]])
    with pytest.raises(DataError, match=r"^train: expected a torch.Tensor, found tuple$"):
        lik.validate((0.0, 1.0), name="train")


def test_validate_checks_the_shape_of_one_datapoint():
    lik = Likelihood((2, 3))
    lik.validate(torch.zeros(4, 2, 3))
    with pytest.raises(DataError, match=r"^data: expected shape \(N, 2, 3\), found \(4, 6\)$"):
        lik.validate(torch.zeros(4, 6))
    with pytest.raises(DataError, match=r"^val: expected shape \(N, 2, 3\), found \(2, 3\)$"):
        lik.validate(torch.zeros(2, 3), name="val")


def test_validate_needs_at_least_one_datapoint():
    lik = Likelihood((2,))
    lik.validate(torch.zeros(1, 2))  # one is enough
    with pytest.raises(DataError, match=r"^data: expected at least one datapoint, found none$"):
        lik.validate(torch.zeros(0, 2))


def test_validate_counts_the_non_finite_entries():
    lik = Likelihood((3,))
    x = torch.tensor([[0.0, math.nan, 1.0], [-math.inf, 5.0, 2.0]])
    with pytest.raises(DataError, match=r"^data: expected finite values, found 2 NaN/inf entries$"):
        lik.validate(x)


def test_validate_reports_the_support_the_count_and_the_first_bad_value():
    lik = BernoulliLikelihood((4,))
    x = torch.tensor([[0.0, 0.5, 1.0, 2.0], [1.0, 1.0, 0.0, 0.0]])
    message = (
        r"^data: BernoulliLikelihood expects binary values in \{0, 1\}, "
        r"found 2 entries outside it \(e.g. 0.5\)$"
    )
    with pytest.raises(DataError, match=message):
        lik.validate(x)


def test_event_dims_are_the_data_dims():
    lik = BernoulliLikelihood((2, 3))
    d = lik(torch.zeros(5, 2, 3))
    assert d.batch_shape == (5,) and d.event_shape == (2, 3)


# ------------------------------------------------------------------------- bernoulli
def test_bernoulli_log_prob_is_the_sum_of_log_sigmoids():
    logits = torch.tensor([[0.3, -1.2, 2.0], [0.0, 4.0, -0.5]])
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    expected = (x * torch.sigmoid(logits).log() + (1 - x) * torch.sigmoid(-logits).log()).sum(-1)
    d = BernoulliLikelihood((3,))(logits)
    assert torch.allclose(d.log_prob(x), expected, rtol=1e-12)


def test_bernoulli_support_is_exactly_zero_and_one():
    lik = BernoulliLikelihood((3,))
    assert lik._check_support(torch.tensor([0.0, 1.0, 0.5])).tolist() == [True, True, False]
    assert lik._check_support(torch.tensor([-1.0, 2.0, 1e-9])).tolist() == [False] * 3


# -------------------------------------------------------------- continuous bernoulli
def test_continuous_bernoulli_log_prob_is_the_normalised_density():
    logits = torch.tensor([[0.8, -1.5, 2.5]])
    x = torch.tensor([[0.2, 0.9, 0.0]])
    lam = torch.sigmoid(logits)
    log_norm = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = (log_norm + x * lam.log() + (1 - x) * (1 - lam).log()).sum(-1)
    d = ContinuousBernoulliLikelihood((3,))(logits)
    assert d.event_shape == (3,)
    assert torch.allclose(d.log_prob(x), expected, rtol=1e-10)


def test_continuous_bernoulli_accepts_the_closed_unit_interval():
    lik = ContinuousBernoulliLikelihood((4,))
    lik.validate(torch.tensor([[0.0, 0.25, 0.999, 1.0]]))
    inside = lik._check_support(torch.tensor([0.0, 1.0, -1e-6, 1 + 1e-6]))
    assert inside.tolist() == [True, True, False, False]
    with pytest.raises(DataError, match=r"expects values in \[0, 1\], found 1 entries .*1.5"):
        lik.validate(torch.tensor([[0.0, 0.25, 1.5, 1.0]]))


# ---------------------------------------------------------------------------- normal
def test_normal_scale_starts_at_init_scale_default_one():
    lik = NormalLikelihood((2, 3))
    assert isinstance(lik.log_scale, torch.nn.Parameter)
    assert torch.equal(lik.log_scale.detach(), torch.zeros(2, 3))
    lik2 = NormalLikelihood((3,), init_scale=2.0)
    assert torch.allclose(lik2.log_scale.detach(), torch.full((3,), math.log(2.0)))


def test_normal_log_prob_uses_the_learned_scales():
    lik = NormalLikelihood((2,), init_scale=0.5)
    with torch.no_grad():
        lik.log_scale.copy_(torch.tensor([math.log(0.5), math.log(3.0)]))
    mu = torch.tensor([[0.1, -2.0]])
    x = torch.tensor([[0.6, 1.0]])
    s = torch.tensor([0.5, 3.0])
    expected = (-0.5 * ((x - mu) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    d = lik(mu)
    assert d.event_shape == (2,)
    assert torch.allclose(d.log_prob(x), expected, rtol=1e-12)


# ----------------------------------------------------------------------- categorical
@pytest.mark.parametrize("bad", [None, 1, 0])
def test_categorical_needs_at_least_two_categories(bad):
    message = (
        r"^categorical likelihood: expected the option num_categories >= 2 \(e.g. "
        rf"--likelihood-option num_categories=10000\), found {bad}$"
    )
    with pytest.raises(ConfigError, match=message):
        CategoricalLikelihood((3,), num_categories=bad)
    CategoricalLikelihood((3,), num_categories=2)  # the limit itself is fine


def test_categorical_defaults_and_shapes():
    lik = CategoricalLikelihood((2, 3), num_categories=5)
    assert lik.num_categories == 5 and lik.pad_index is None
    assert lik.param_shape == (2, 3, 5)
    assert lik.support_description == "integers in [0, 5)"
    assert lik.num_tokens(torch.zeros(1, 2, 3, dtype=torch.long)) is None


@pytest.mark.parametrize("pad_index", [-1, 5, 6])
def test_categorical_pad_index_must_be_a_category(pad_index):
    message = rf"^categorical likelihood: pad_index must lie in \[0, 5\), found {pad_index}$"
    with pytest.raises(ConfigError, match=message):
        CategoricalLikelihood((3,), num_categories=5, pad_index=pad_index)


@pytest.mark.parametrize("pad_index", [0, 4])
def test_categorical_pad_index_limits_are_accepted(pad_index):
    lik = CategoricalLikelihood((3,), num_categories=5, pad_index=pad_index)
    assert lik.pad_index == pad_index


def test_categorical_pad_index_needs_sequences():
    message = (
        r"^categorical likelihood: pad_index needs sequences, data of shape \(N, T\); "
        r"found datapoints of shape \(2, 3\)$"
    )
    with pytest.raises(ConfigError, match=message):
        CategoricalLikelihood((2, 3), num_categories=5, pad_index=0)


def test_categorical_without_padding_scores_every_position():
    logits = torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    x = torch.tensor([[[0, 3, 1], [2, 2, 0]], [[1, 0, 0], [3, 3, 3]]])
    d = CategoricalLikelihood((2, 3), num_categories=4)(logits, x)
    assert d.batch_shape == (2,) and d.event_shape == (2, 3)
    expected = logits.log_softmax(-1).gather(-1, x.unsqueeze(-1)).squeeze(-1).sum((-1, -2))
    assert torch.allclose(d.log_prob(x), expected, rtol=1e-12)


def test_categorical_generation_without_data_scores_every_position():
    """Without x there is nothing to mask: all T positions count, padding ids included."""
    lik = CategoricalLikelihood((3,), num_categories=4, pad_index=3)
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    x = torch.tensor([[1, 3, 3], [0, 2, 3]])
    d = lik(logits)
    assert d.batch_shape == (2,) and d.event_shape == (3,)
    expected = logits.log_softmax(-1).gather(-1, x.unsqueeze(-1)).squeeze(-1).sum(-1)
    assert torch.allclose(d.log_prob(x), expected, rtol=1e-12)


def test_categorical_masks_the_padding_id_it_was_given():
    lik = CategoricalLikelihood((4,), num_categories=5, pad_index=4)
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(3))
    x = torch.tensor([[0, 2, 4, 4], [1, 0, 3, 2]])
    d = lik(logits, x)
    assert d.batch_shape == (2,) and d.event_shape == (4,)
    ls = logits.log_softmax(-1)
    expected = torch.stack([ls[0, 0, 0] + ls[0, 1, 2], ls[1, [0, 1, 2, 3], [1, 0, 3, 2]].sum()])
    assert torch.allclose(d.log_prob(x), expected, rtol=1e-12)


def test_categorical_with_parameters_for_the_first_positions_only():
    lik = CategoricalLikelihood((5,), num_categories=4, pad_index=1)
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4))
    x = torch.tensor([[0, 2, 1, 1, 1], [3, 3, 0, 1, 1]])
    d = lik(logits, x)
    assert isinstance(d, PaddedSequence)
    assert d.batch_shape == (2,) and d.event_shape == (5,) and d.pad_index == 1
    ls = logits.log_softmax(-1)
    expected = torch.stack([ls[0, 0, 0] + ls[0, 1, 2], ls[1, [0, 1, 2], [3, 3, 0]].sum()])
    assert torch.allclose(d.log_prob(x), expected, rtol=1e-12)
    # a token beyond the positions the decoder covered has probability zero
    y = torch.tensor([[0, 2, 1, 1, 1], [3, 3, 0, 1, 2]])
    assert d.log_prob(y)[1] == -math.inf and d.log_prob(y)[0] == expected[0]


def test_categorical_padding_with_a_two_dimensional_batch():
    """A batch of shape (2, 2) of sequences of length T = 4, parameters for L = 3 positions."""
    lik = CategoricalLikelihood((4,), num_categories=4, pad_index=0)
    logits = torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(7))
    x = torch.tensor([[[1, 2, 0, 0], [3, 0, 0, 0]], [[2, 2, 2, 0], [1, 3, 0, 0]]])
    d = lik(logits, x)
    assert d.batch_shape == (2, 2) and d.event_shape == (4,)
    ls = logits.log_softmax(-1)
    real = x[..., :3] != 0
    expected = (ls.gather(-1, x[..., :3, None]).squeeze(-1) * real).sum(-1)
    assert torch.allclose(d.log_prob(x), expected, rtol=1e-12)


def test_categorical_counts_the_tokens_of_each_sequence():
    lik = CategoricalLikelihood((4,), num_categories=6, pad_index=5)
    x = torch.tensor([[0, 5, 5, 5], [1, 2, 3, 4], [0, 0, 5, 5]])
    assert lik.num_tokens(x).tolist() == [1, 4, 2]
    # a batch of shape (2, 3): one count per sequence
    assert lik.num_tokens(torch.stack([x, x.flip(0)])).tolist() == [[1, 4, 2], [2, 4, 1]]


def test_categorical_support_is_the_integers_below_num_categories():
    lik = CategoricalLikelihood((3,), num_categories=5)
    floats = torch.tensor([0.0, 4.0, 2.5, -1.0, 5.0])
    assert lik._check_support(floats).tolist() == [True, True, False, False, False]
    longs = torch.tensor([0, 4, 5, -1])
    assert lik._check_support(longs).tolist() == [True, True, False, False]
    lik.validate(torch.tensor([[0.0, 0.0, 4.0]]))  # without pad_index, zeros are data
    message = (
        r"^data: CategoricalLikelihood expects integers in \[0, 5\), "
        r"found 2 entries outside it \(e.g. 7\)$"
    )
    with pytest.raises(DataError, match=message):
        lik.validate(torch.tensor([[1, 7, 0], [5, 0, 0]]))


def test_categorical_checks_the_support_before_the_padding():
    lik = CategoricalLikelihood((3,), num_categories=5, pad_index=0)
    with pytest.raises(DataError, match="^train: CategoricalLikelihood expects integers"):
        lik.validate(torch.tensor([[0, 0, 9]]), name="train")
    with pytest.raises(DataError, match=r"^val: expected shape \(N, 3\), found \(1, 4\)$"):
        lik.validate(torch.tensor([[1, 2, 0, 0]]), name="val")


@pytest.mark.parametrize(
    "rows, row, what, count",
    [
        ([[1, 2, 2], [2, 2, 2], [2, 2, 2]], 1, r"holds no token \(only padding\)", 2),
        ([[1, 3, 2], [1, 2, 0]], 1, "has a token after padding", 1),
        ([[1, 0, 2], [1, 2, 0], [4, 2, 1]], 1, "has a token after padding", 2),
    ],
)
def test_categorical_padding_must_be_a_non_empty_suffix(rows, row, what, count):
    lik = CategoricalLikelihood((3,), num_categories=5, pad_index=2)
    message = (
        r"^train: expected padded sequences \(tokens, then pad id 2 up to the end\), "
        rf"found that row {row} {what} \({count} such rows\)$"
    )
    with pytest.raises(DataError, match=message):
        lik.validate(torch.tensor(rows), name="train")


def test_categorical_accepts_well_padded_sequences():
    lik = CategoricalLikelihood((3,), num_categories=5, pad_index=2)
    lik.validate(torch.tensor([[1, 2, 2], [0, 1, 3], [4, 4, 2]]))
    longer = CategoricalLikelihood((5,), num_categories=5, pad_index=2)
    longer.validate(torch.tensor([[1, 2, 2, 2, 2], [0, 1, 3, 4, 0], [4, 4, 1, 2, 2]]))
    with pytest.raises(DataError, match="row 1 has a token after padding"):
        longer.validate(torch.tensor([[1, 2, 2, 2, 2], [0, 1, 2, 2, 4]]))


# ----------------------------------------------------------------- token categorical
def test_token_categorical_matches_the_categorical():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(5))
    d = TokenCategorical(logits)
    assert d.batch_shape == (2, 3) and d.event_shape == ()
    ref = dist.Categorical(logits=logits)
    x = torch.tensor([[0, 4, 2], [1, 1, 3]])
    assert torch.allclose(d.log_prob(x), ref.log_prob(x), rtol=1e-12)
    # values with extra sample dimensions broadcast against the batch
    xs = torch.tensor([[[0, 4, 2], [1, 1, 3]], [[4, 4, 4], [0, 0, 0]], [[2, 3, 1], [3, 2, 1]]])
    assert d.log_prob(xs).shape == (3, 2, 3)
    assert torch.allclose(d.log_prob(xs), ref.log_prob(xs), rtol=1e-12)
    # a value broadcast over the batch
    one = torch.tensor([3, 0, 1])
    assert torch.allclose(d.log_prob(one), ref.log_prob(one), rtol=1e-12)


def test_token_categorical_support_and_samples():
    logits = torch.full((2, 4), -math.inf)
    logits[0, 3] = logits[1, 0] = 0.0
    d = TokenCategorical(logits)
    assert d.support.check(torch.tensor(3)) and not d.support.check(torch.tensor([4]))
    assert not d.support.check(torch.tensor(-1))
    draws = d.sample((6,))
    assert draws.shape == (6, 2) and (draws == torch.tensor([3, 0])).all()


def test_token_categorical_honours_validate_args():
    bad = torch.tensor([[math.nan, 0.0, 1.0]])
    with pytest.raises(ValueError, match="logits"):
        TokenCategorical(bad, validate_args=True)
    assert TokenCategorical(bad, validate_args=False).batch_shape == (1,)


# ------------------------------------------------------------------ padded sequence
def _base(logits, x):
    return CategoricalLikelihood((logits.shape[-2],), logits.shape[-1], pad_index=0)(logits, x)


def test_padded_sequence_refuses_a_base_longer_than_the_sequence():
    base = dist.Categorical(logits=torch.zeros(2, 4, 3)).to_event(1)  # event shape (4,)
    PaddedSequence(base, 4, pad_index=0)  # as long as the sequence: fine
    message = r"^expected a base distribution over at most 3 positions, found event shape \(4,\)$"
    with pytest.raises(ValueError, match=message):
        PaddedSequence(base, 3, pad_index=0)
    with pytest.raises(ValueError, match=r"found event shape \(\)$"):
        PaddedSequence(dist.Categorical(logits=torch.zeros(2, 3)), 3, pad_index=0)
    with pytest.raises(ValueError, match=r"found event shape \(2, 2\)$"):
        PaddedSequence(dist.Categorical(logits=torch.zeros(2, 2, 3)).to_event(2), 5, pad_index=0)


def test_padded_sequence_log_prob_is_the_base_when_the_tail_is_padding():
    logits = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(6))
    base = dist.Categorical(logits=logits).to_event(1)
    d = PaddedSequence(base, 4, pad_index=3)
    assert d.batch_shape == (2,) and d.event_shape == (4,)
    assert d.support.check(torch.tensor([0, 3, 3, 3])) and not d.support.check(torch.tensor([4]))
    x = torch.tensor([[0, 1, 3, 3], [2, 2, 3, 3]])
    assert torch.allclose(d.log_prob(x), base.log_prob(x[:, :2]), rtol=1e-12)
    y = torch.tensor([[0, 1, 3, 0], [2, 2, 3, 3]])
    lp = d.log_prob(y)
    assert lp[0] == -math.inf and lp[1] == base.log_prob(x[:, :2])[1]
    # values with a leading sample dimension: one verdict per sequence
    both = d.log_prob(torch.stack([x, y, y.flip(0)]))
    assert both.shape == (3, 2)
    assert torch.equal(both[0], d.log_prob(x)) and torch.equal(both[1], lp)
    assert both[2, 0] == base.log_prob(y.flip(0)[:, :2])[0] and both[2, 1] == -math.inf


def test_padded_sequence_samples_end_in_padding():
    logits = torch.full((2, 2, 4), -math.inf)
    logits[0, :, 1] = logits[1, :, 2] = 0.0
    d = PaddedSequence(dist.Categorical(logits=logits).to_event(1), 5, pad_index=3)
    draws = d.sample((3,))
    assert draws.shape == (3, 2, 5)
    expected = torch.tensor([[1, 1, 3, 3, 3], [2, 2, 3, 3, 3]])
    assert (draws == expected).all()


# ------------------------------------------------------- discretized logistic mixture
def _logistic_bins(locs, log_scales, logits, num_bins):
    """P(v) for every grid value v, by hand from the logistic CDF: (*batch, num_bins)."""
    grid = torch.linspace(0, 1, num_bins)
    half = 0.5 / (num_bins - 1)
    upper = torch.sigmoid((grid[:, None, None] + half - locs) / log_scales.exp())
    lower = torch.sigmoid((grid[:, None, None] - half - locs) / log_scales.exp())
    upper[-1], lower[0] = 1.0, 0.0
    probs = ((upper - lower) * torch.softmax(logits, -1)).sum(-1)  # (num_bins, *batch)
    return probs.movedim(0, -1)


def test_discretized_logistic_on_a_coarse_grid_by_hand():
    logits = torch.tensor([[0.5, -0.5], [0.0, 2.0]])
    locs = torch.tensor([[0.3, 0.8], [0.05, 0.6]])
    log_scales = torch.tensor([[-1.5, -2.0], [-3.0, -1.0]])
    d = DiscretizedLogisticMixture(logits, locs, log_scales, num_bins=5)
    assert d.num_bins == 5 and d.batch_shape == (2,)
    expected = _logistic_bins(locs, log_scales, logits, 5)  # (2, 5)
    grid = torch.linspace(0, 1, 5)
    probs = d.log_prob(grid[:, None].expand(5, 2)).exp().T
    assert torch.allclose(probs, expected, rtol=1e-10)
    assert torch.allclose(probs.sum(-1), torch.ones(2), rtol=1e-12)
    assert torch.allclose(d.mean, (expected * grid).sum(-1), rtol=1e-10)


def test_discretized_logistic_default_grid_has_256_values():
    d = DiscretizedLogisticMixture(torch.zeros(1, 1), torch.full((1, 1), 0.5), torch.zeros(1, 1))
    assert d.num_bins == 256
    x = torch.tensor([[100 / 255]])
    h = 0.5 / 255
    by_hand = torch.sigmoid(x + h - 0.5) - torch.sigmoid(x - h - 0.5)
    assert torch.allclose(d.log_prob(x[:, 0]).exp(), by_hand[:, 0], rtol=1e-10)


def test_discretized_logistic_extreme_bins_take_the_tails():
    locs, log_scales, logits = torch.tensor([[0.5]]), torch.tensor([[-1.0]]), torch.zeros(1, 1)
    d = DiscretizedLogisticMixture(logits, locs, log_scales, num_bins=3)
    s = math.exp(-1.0)
    low = torch.sigmoid(torch.tensor((0.25 - 0.5) / s))
    high = 1 - torch.sigmoid(torch.tensor((0.75 - 0.5) / s))
    assert torch.allclose(d.log_prob(torch.tensor([0.0])).exp(), low, rtol=1e-12)
    assert torch.allclose(d.log_prob(torch.tensor([1.0])).exp(), high, rtol=1e-12)
    mid = d.log_prob(torch.tensor([0.5])).exp()
    assert torch.allclose(mid, 1 - low - high, rtol=1e-12)


def test_discretized_logistic_midpoints_next_to_the_ends_are_interior():
    """Only the end values themselves take the tails: at x = h (half-way between the two
    lowest grid values) and x = 1 − h, P(x) is the formula's σ((x+h−m)/s) − σ((x−h−m)/s)."""
    m, s = 0.4, math.exp(-1.0)
    d = DiscretizedLogisticMixture(torch.zeros(1), torch.tensor([m]), torch.tensor([-1.0]), 3)
    h = 0.25
    for x in (h, 1 - h):
        by_hand = torch.sigmoid(torch.tensor((x + h - m) / s)) - torch.sigmoid(
            torch.tensor((x - h - m) / s)
        )
        assert torch.allclose(d.log_prob(torch.tensor([x])).exp(), by_hand, rtol=1e-12)


def test_discretized_logistic_interior_bins_keep_precision_in_both_tails():
    """A bin 40 scales away on either side of the location: log P is still finite and equals
    the log of the difference of the two CDF values computed by hand in the far tail."""
    d = DiscretizedLogisticMixture(
        torch.zeros(2, 1), torch.tensor([[0.1], [0.9]]), torch.full((2, 1), math.log(0.01)), 11
    )
    x = torch.tensor([0.5, 0.5])  # 40 scales above the first location, below the second
    lp = d.log_prob(x)
    # σ(a) − σ(b) = e^{-b}(1 − e^{b−a}) / ((1 + e^{-a})(1 + e^{-b})) for a > b > 0
    a, b = (0.55 - 0.1) / 0.01, (0.45 - 0.1) / 0.01
    by_hand = (
        -b + math.log1p(-math.exp(b - a)) - math.log1p(math.exp(-a)) - math.log1p(math.exp(-b))
    )
    assert math.isfinite(lp[0]) and lp[0].item() == pytest.approx(by_hand, rel=1e-10)
    assert lp[1].item() == pytest.approx(by_hand, rel=1e-10)  # the mirror image


def test_discretized_logistic_far_tails_keep_precision_in_float32():
    """200 scales from the location on either side, in single precision (where e^-200
    underflows): log P is computed on the side where it does not, so it stays exact."""
    d = DiscretizedLogisticMixture(
        torch.zeros(2, 1, dtype=torch.float32),
        torch.tensor([[0.1], [0.9]], dtype=torch.float32),
        torch.full((2, 1), math.log(0.002), dtype=torch.float32),
        11,
    )
    lp = d.log_prob(torch.tensor([0.5, 0.5], dtype=torch.float32))
    assert lp.dtype == torch.float32
    # σ(a) − σ(b) for a = 225 > b = 175 (and the mirror image), in float64 by hand
    a, b = 225.0, 175.0
    by_hand = (
        -b + math.log1p(-math.exp(b - a)) - math.log1p(math.exp(-a)) - math.log1p(math.exp(-b))
    )
    assert lp.tolist() == pytest.approx([by_hand, by_hand], rel=1e-5)


def test_discretized_logistic_samples_keep_the_parameters_dtype():
    d = DiscretizedLogisticMixture(
        torch.zeros(3, 2, dtype=torch.float32),
        torch.full((3, 2), 0.5, dtype=torch.float32),
        torch.full((3, 2), -2.0, dtype=torch.float32),
    )
    assert d.sample((4,)).dtype == torch.float32  # the default dtype here is float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_discretized_logistic_samples_on_the_parameters_device():
    d = DiscretizedLogisticMixture(
        torch.zeros(3, 2, device="cuda"),
        torch.full((3, 2), 0.5, device="cuda"),
        torch.full((3, 2), -2.0, device="cuda"),
    )
    draws = d.sample((4,))
    assert draws.device.type == "cuda" and draws.shape == (4, 3)


def test_discretized_logistic_clamps_the_log_scales_at_minus_seven():
    logits, locs = torch.zeros(3, 1), torch.full((3, 1), 0.2)
    d = DiscretizedLogisticMixture(logits, locs, torch.tensor([[-10.0], [-7.0], [-6.5]]), 11)
    assert d.log_scales.flatten().tolist() == [-7.0, -7.0, -6.5]
    ref = DiscretizedLogisticMixture(logits, locs, torch.tensor([[-7.0], [-7.0], [-6.5]]), 11)
    x = torch.tensor([0.2, 0.2, 0.2])
    assert torch.equal(d.log_prob(x), ref.log_prob(x))


def test_discretized_logistic_expand_keeps_the_grid():
    d = DiscretizedLogisticMixture(
        torch.tensor([0.0, 1.0]), torch.tensor([0.2, 0.7]), torch.tensor([-2.0, -1.0]), 5
    )
    e = d.expand((3, 2))
    assert e.batch_shape == (3, 2) and e.num_bins == 5
    x = torch.tensor([0.0, 0.25, 0.5]).view(3, 1).expand(3, 2)
    assert torch.allclose(e.log_prob(x), d.log_prob(x), rtol=1e-12)


def test_discretized_logistic_samples_lie_on_a_coarse_grid_with_the_bin_frequencies():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0]])
    locs = torch.tensor([[0.2, 0.7]])
    log_scales = torch.tensor([[-2.0, -1.5]])
    d = DiscretizedLogisticMixture(logits, locs, log_scales, num_bins=5)
    draws = d.sample((20000,))
    assert draws.shape == (20000, 1)
    assert not draws.requires_grad
    k = draws[:, 0] * 4
    assert torch.equal(k, k.round()) and draws.min() >= 0 and draws.max() <= 1
    freq = torch.bincount(k.round().long(), minlength=5) / 20000
    probs = _logistic_bins(locs, log_scales, logits, 5)[0]
    assert ((freq - probs).abs() <= 5 * (probs * (1 - probs) / 20000).sqrt() + 1e-4).all()


def test_discretized_logistic_samples_follow_each_mixture_component():
    """Two far-apart components with nearly all the weight on one, per batch element."""
    torch.manual_seed(1)
    logits = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    locs = torch.tensor([[0.1, 0.9], [0.1, 0.9]])
    log_scales = torch.tensor([[-6.0, -6.0], [-6.0, -6.0]])
    d = DiscretizedLogisticMixture(logits, locs, log_scales, num_bins=11)
    draws = d.sample((50,))
    assert draws.shape == (50, 2)
    assert torch.allclose(draws[:, 0], torch.full((50,), 0.1))
    assert torch.allclose(draws[:, 1], torch.full((50,), 0.9))


def test_discretized_logistic_samples_are_spread_by_the_scale():
    """One logistic at 0.5 with scale 0.1 on 101 bins: the sample's standard deviation is the
    logistic's, π s / √3 (the grid and the clamp at 0 and 1 change it by well under 2%)."""
    torch.manual_seed(2)
    d = DiscretizedLogisticMixture(
        torch.zeros(1), torch.tensor([0.5]), torch.tensor([math.log(0.1)]), num_bins=101
    )
    draws = d.sample((20000,))
    assert draws.shape == (20000,)
    assert abs(draws.mean().item() - 0.5) < 0.01
    assert draws.std().item() == pytest.approx(math.pi * 0.1 / math.sqrt(3), rel=0.03)


# ---------------------------------------------------- discretized logistic likelihood
def test_discretized_logistic_likelihood_defaults():
    lik = DiscretizedLogisticLikelihood((1, 2))
    assert lik.num_components == 1 and lik.num_bins == 256
    assert lik.param_shape == (1, 2, 3)
    assert lik.support_description == (
        "values on the grid {0, 1/255, ..., 1} (e.g. 8-bit intensities / 255)"
    )
    assert LIKELIHOODS.build("discretized-logistic", (1, 2), options={}).num_bins == 256


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_components": 0}, "num_components must be an integer >= 1, found 0"),
        ({"num_components": True}, "num_components must be an integer >= 1, found True"),
        ({"num_components": 2.0}, "num_components must be an integer >= 1, found 2.0"),
        ({"num_bins": 1}, "num_bins must be an integer >= 2, found 1"),
        ({"num_bins": False}, "num_bins must be an integer >= 2, found False"),
        ({"num_bins": "5"}, "num_bins must be an integer >= 2, found '5'"),
    ],
)
def test_discretized_logistic_likelihood_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        DiscretizedLogisticLikelihood((3,), **options)


def test_discretized_logistic_likelihood_smallest_options():
    lik = DiscretizedLogisticLikelihood((3,), num_components=1, num_bins=2)
    assert lik.support_description.startswith("values on the grid {0, 1/1, ..., 1}")
    lik.validate(torch.tensor([[0.0, 1.0, 1.0]]))


def test_discretized_logistic_likelihood_splits_logits_locs_and_log_scales():
    lik = DiscretizedLogisticLikelihood((2,), num_components=2, num_bins=5)
    assert lik.param_shape == (2, 6)
    params = torch.tensor([[[0.5, -0.5, 0.3, 0.8, -1.5, -2.0], [0.0, 2.0, 0.05, 0.6, -3.0, -1.0]]])
    d = lik(params)
    assert d.batch_shape == (1,) and d.event_shape == (2,)
    x = torch.tensor([[0.25, 0.75]])
    logits, locs, log_scales = params[..., :2], params[..., 2:4], params[..., 4:]
    probs = _logistic_bins(locs[0], log_scales[0], logits[0], 5)  # (2, 5)
    expected = probs[0, 1].log() + probs[1, 3].log()
    assert torch.allclose(d.log_prob(x), expected.view(1), rtol=1e-10)


def test_discretized_logistic_likelihood_support_is_the_grid_within_rounding():
    lik = DiscretizedLogisticLikelihood((1,), num_bins=5)
    x = torch.tensor([0.0, 1.0, 0.25 + 2e-4, 0.25 + 3e-4, -0.25, 1.25, 0.5])
    assert lik._check_support(x).tolist() == [True, True, True, False, False, False, True]
    # the rounding allowance is strictly below a thousandth of a grid step
    two = DiscretizedLogisticLikelihood((1,), num_bins=2)
    assert two._check_support(torch.tensor([0.0009, 0.001, 0.999])).tolist() == [True, False, False]
    message = (
        r"^data: DiscretizedLogisticLikelihood expects values on the grid \{0, 1/4, \.\.\., 1\} "
        r"\(e.g. 8-bit intensities / 255\), found 1 entries outside it \(e.g. 0.3\)$"
    )
    with pytest.raises(DataError, match=message):
        lik.validate(torch.tensor([[0.0], [0.3], [1.0]]))
