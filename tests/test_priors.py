"""Behaviour of the priors p(z) (pyro_skipvae.models.priors): closed-form log-densities
computed by hand (float64), shapes, documented defaults and the exact error messages.
Every tensor here is a tiny synthetic value chosen by hand."""

import math

import pytest
import torch
from pyro.distributions.transforms import AffineAutoregressive, SplineAutoregressive
from torch import nn

from pyro_skipvae.errors import ConfigError
from pyro_skipvae.models.priors import (
    PRIORS,
    FlowPrior,
    LearnedNormalPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
)

pytestmark = pytest.mark.usefixtures("float64")

LOG_2PI = math.log(2 * math.pi)


def normal_log_density(z, loc, scale):
    """log N(z; loc, diag scale²) summed over the last dimension, by hand."""
    return (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * LOG_2PI).sum(-1)


def test_base_prior_stores_the_latent_dim_and_has_no_density():
    prior = Prior(3)
    assert prior.latent_dim == 3
    with pytest.raises(NotImplementedError):
        prior((2,))
    assert prior.attach_encoder(nn.Linear(1, 1)) is None  # a no-op


@pytest.mark.parametrize("cls", [StandardNormalPrior, LearnedNormalPrior, MixturePrior, FlowPrior])
def test_every_prior_knows_its_latent_dim(cls):
    assert cls(3).latent_dim == 3


def test_standard_normal_is_n_0_i_with_buffers():
    prior = StandardNormalPrior(3)
    assert dict(prior.named_buffers()).keys() == {"loc", "scale"}
    assert torch.equal(prior.loc, torch.zeros(3)) and torch.equal(prior.scale, torch.ones(3))
    assert list(prior.parameters()) == []
    d = prior((4, 2))
    assert d.batch_shape == (4, 2) and d.event_shape == (3,)
    z = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.5, 3.0]])
    expected = -0.5 * (z**2).sum(-1) - 1.5 * LOG_2PI
    assert torch.allclose(prior((2,)).log_prob(z), expected, rtol=1e-12)
    assert prior([5]).batch_shape == (5,)  # any sequence of sizes


def test_learned_normal_starts_at_n_0_i_and_uses_exp_log_scale():
    prior = LearnedNormalPrior(2)
    assert torch.equal(prior.loc.detach(), torch.zeros(2))
    assert torch.equal(prior.log_scale.detach(), torch.zeros(2))
    assert {n for n, _ in prior.named_parameters()} == {"loc", "log_scale"}
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([1.0, -1.0]))
        prior.log_scale.copy_(torch.tensor([math.log(2.0), math.log(0.5)]))
    d = prior((3,))
    assert d.batch_shape == (3,) and d.event_shape == (2,)
    z = torch.tensor([[0.0, 0.0], [1.0, -1.0], [3.0, 2.0]])
    expected = normal_log_density(z, torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5]))
    assert torch.allclose(d.log_prob(z), expected, rtol=1e-12)


def test_mixture_prior_defaults_and_initialisation():
    prior = MixturePrior(3)
    assert prior.latent_dim == 3
    assert prior.logits.shape == (10,) and torch.equal(prior.logits.detach(), torch.zeros(10))
    assert prior.locs.shape == (10, 3)
    assert torch.equal(prior.log_scales.detach(), torch.zeros(10, 3))
    # means drawn apart, not identical
    assert torch.unique(prior.locs.detach(), dim=0).shape == (10, 3)
    assert MixturePrior(2, num_components=4).locs.shape == (4, 2)


def test_mixture_prior_log_prob_by_hand():
    prior = MixturePrior(2, num_components=3)
    logits = torch.tensor([0.0, 1.0, -1.0])
    locs = torch.tensor([[0.0, 0.0], [1.0, -2.0], [-1.0, 3.0]])
    log_scales = torch.tensor([[0.0, 0.0], [math.log(0.5), math.log(2.0)], [0.3, -0.2]])
    with torch.no_grad():
        prior.logits.copy_(logits)
        prior.locs.copy_(locs)
        prior.log_scales.copy_(log_scales)
    d = prior((4,))
    assert d.batch_shape == (4,) and d.event_shape == (2,)
    z = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-0.5, 2.0], [2.0, 2.0]])
    per_component = normal_log_density(z[:, None], locs, log_scales.exp())  # (4, 3)
    expected = (per_component + logits.log_softmax(-1)).logsumexp(-1)
    assert torch.allclose(d.log_prob(z), expected, rtol=1e-12)


# ------------------------------------------------------------------------- VampPrior
class FixedEncoder(nn.Module):
    """A stand-in encoder: loc and log-variance fixed per pseudo-input, plus the input's mean
    in the first coordinate so that the pseudo-inputs matter."""

    def __init__(self, data_shape, latent_dim, loc, log_var, discrete_inputs=False):
        super().__init__()
        self.data_shape, self.latent_dim = data_shape, latent_dim
        self.loc, self.log_var = loc, log_var
        if discrete_inputs:
            self.discrete_inputs = True

    def forward(self, x):
        shift = torch.zeros_like(self.loc)
        shift[:, 0] = x.flatten(1).mean(-1)
        return self.loc + shift, self.log_var


def test_vamp_prior_defaults_to_500_pseudo_inputs():
    prior = VampPrior(2)
    assert prior.num_pseudo == 500 and prior.pseudo_logits is None
    assert list(prior.parameters()) == []
    assert PRIORS.build("vamp", 2, options={}).num_pseudo == 500


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "5", None])
def test_vamp_prior_num_pseudo_must_be_a_positive_integer(bad):
    with pytest.raises(
        ConfigError, match=rf"^num_pseudo must be a positive integer, found {bad!r}$"
    ):
        VampPrior(2, num_pseudo=bad)


def test_vamp_prior_with_one_pseudo_input_is_that_gaussian():
    loc, log_var = torch.tensor([[0.5, -1.0]]), torch.tensor([[math.log(4.0), 0.0]])
    prior = VampPrior(2, num_pseudo=1)
    prior.attach_encoder(FixedEncoder((3,), 2, loc, log_var))
    assert prior.pseudo_logits.shape == (1, 3)
    u = prior.pseudo_inputs
    z = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    expected = normal_log_density(
        z, torch.tensor([0.5 + u.mean().item(), -1.0]), torch.tensor([2.0, 1.0])
    )
    d = prior((2,))
    assert d.batch_shape == (2,) and d.event_shape == (2,)
    assert torch.allclose(d.log_prob(z), expected, rtol=1e-12)


def test_vamp_prior_is_the_equal_mixture_of_its_components():
    loc = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-1.0, 1.0]])
    log_var = torch.tensor([[0.0, 0.0], [math.log(0.25), math.log(9.0)], [1.0, -1.0]])
    prior = VampPrior(2, num_pseudo=3)
    prior.attach_encoder(FixedEncoder((2, 2), 2, loc, log_var))
    assert prior.pseudo_inputs.shape == (3, 2, 2)
    assert torch.equal(prior.pseudo_inputs, torch.sigmoid(prior.pseudo_logits))
    means = loc.clone()
    means[:, 0] += prior.pseudo_inputs.flatten(1).mean(-1)
    z = torch.tensor([[0.0, 0.0], [1.0, -1.0], [3.0, 2.0]])
    per_component = normal_log_density(z[:, None], means, (0.5 * log_var).exp())
    expected = per_component.logsumexp(-1) - math.log(3)
    assert torch.allclose(prior((3,)).log_prob(z), expected, rtol=1e-12)


def test_vamp_prior_without_encoder_says_how_to_attach_one():
    message = (
        r"^VampPrior has no encoder: build it through SkipVAE, or call "
        r"prior.attach_encoder\(encoder\) first$"
    )
    with pytest.raises(ConfigError, match=message):
        VampPrior(2, num_pseudo=3)((1,))


def test_vamp_prior_refuses_an_encoder_of_another_latent_dim():
    encoder = FixedEncoder((2,), 3, torch.zeros(4, 3), torch.zeros(4, 3))
    message = r"^VampPrior: encoder latent_dim 3 != prior latent_dim 2$"
    with pytest.raises(ConfigError, match=message):
        VampPrior(2, num_pseudo=4).attach_encoder(encoder)


def test_vamp_prior_accepts_an_encoder_that_does_not_state_its_latent_dim():
    encoder = FixedEncoder((2,), 2, torch.zeros(4, 2), torch.zeros(4, 2))
    del encoder.latent_dim
    prior = VampPrior(2, num_pseudo=4)
    prior.attach_encoder(encoder)
    assert prior((1,)).event_shape == (2,)


def test_vamp_prior_refuses_an_encoder_of_token_ids():
    encoder = FixedEncoder((2,), 2, torch.zeros(4, 2), torch.zeros(4, 2), discrete_inputs=True)
    message = (
        r"^VampPrior: the FixedEncoder reads token ids, so it cannot encode learned continuous "
        r"pseudo-inputs; use another prior with this encoder$"
    )
    with pytest.raises(ConfigError, match=message):
        VampPrior(2, num_pseudo=4).attach_encoder(encoder)


def test_vamp_prior_keeps_its_pseudo_inputs_when_attached_again():
    encoder = FixedEncoder((2,), 2, torch.zeros(4, 2), torch.zeros(4, 2))
    prior = VampPrior(2, num_pseudo=4)
    prior.attach_encoder(encoder)
    first = prior.pseudo_logits
    assert isinstance(first, nn.Parameter) and first.shape == (4, 2)
    assert [p is first for p in prior.parameters()] == [True]
    other = FixedEncoder((2,), 2, torch.ones(4, 2), torch.zeros(4, 2))
    prior.attach_encoder(other)
    assert prior.pseudo_logits is first
    # the new encoder is the one used, and it is not a submodule
    assert list(prior.children()) == []
    loc = prior((1,)).component_distribution.base_dist.loc
    assert torch.allclose(loc[0, :, 1], torch.ones(4))


# ------------------------------------------------------------------------- FlowPrior
def test_flow_prior_defaults_two_affine_layers_with_pyros_widths():
    prior = FlowPrior(3)
    assert len(prior.flows) == 2
    assert all(isinstance(f, AffineAutoregressive) for f in prior.flows)
    # Pyro's default MADE width for an affine flow on D dimensions: [3 D + 1]
    first = prior.flows[0].arn.layers[0]
    assert first.out_features == 10
    assert dict(prior.named_buffers(recurse=False)).keys() == {"loc", "scale"}
    assert torch.equal(prior.loc, torch.zeros(3)) and torch.equal(prior.scale, torch.ones(3))


def test_flow_prior_options_reach_the_flows():
    prior = FlowPrior(2, flow="spline", num_flows=3, hidden_dims=(7,))
    assert len(prior.flows) == 3 and all(isinstance(f, SplineAutoregressive) for f in prior.flows)
    assert prior.flows[0].arn.layers[0].out_features == 7
    with pytest.raises(ConfigError, match="latent_dim >= 2, found 1"):
        FlowPrior(1)


def test_flow_prior_log_prob_is_the_change_of_variables_in_order():
    """log p(z) = log N(f_K ∘ … ∘ f_1(z); 0, I) + Σ_k log|det ∂f_k|, with the flows applied in
    their stored order (they do not commute)."""
    torch.manual_seed(0)
    prior = FlowPrior(2, num_flows=2, hidden_dims=(6,))
    with torch.no_grad():
        for p in prior.flows.parameters():
            p.normal_(0, 0.5)
    z = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-1.5, 1.5]])
    u, log_det = z, torch.zeros(3)
    for f in prior.flows:
        v = f(u)
        log_det = log_det + f.log_abs_det_jacobian(u, v)
        u = v
    expected = -0.5 * (u**2).sum(-1) - LOG_2PI + log_det
    d = prior((3,))
    assert d.batch_shape == (3,) and d.event_shape == (2,)
    assert torch.allclose(d.log_prob(z), expected.detach(), rtol=1e-8)
    # draws invert the flows: u = f(z) of a draw is standard normal in distribution
    draws = prior((4000,)).sample()
    assert draws.shape == (4000, 2)
    u = draws
    for f in prior.flows:
        u = f(u)
    u = u.detach()
    assert (u.mean(0).abs() < 4 / math.sqrt(4000)).all()
    assert ((u.var(0) - 1).abs() < 0.1).all()
