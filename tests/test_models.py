"""The model/guide contract, for every registry entry × skip on/off."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_skipvae import ConfigError, DataError, SkipVAE
from pyro_skipvae.diagnostics import elbo_terms
from pyro_skipvae.infer.svi import SVI
from pyro_skipvae.models import DECODERS, LIKELIHOODS, PRIORS, Decoder
from pyro_skipvae.sites import DATA_PLATE, LATENT_SITE, OBSERVED_SITE

DATA_SHAPE = (1, 4, 3)
SEQUENCE_SHAPE = (5,)
NUM_CATEGORIES = 5
#: the data each decoder family models: its likelihoods, encoder and datapoint shape
FAMILIES = {
    "mlp": {"likelihoods": LIKELIHOODS.names(), "encoder": "mlp", "shape": DATA_SHAPE},
    "pixelcnn": {"likelihoods": LIKELIHOODS.names(), "encoder": "conv", "shape": DATA_SHAPE},
    "lstm": {"likelihoods": ["categorical"], "encoder": "lstm", "shape": SEQUENCE_SHAPE},
}
CASES = [(d, lik) for d in DECODERS.names() for lik in FAMILIES.get(d, {}).get("likelihoods", [])]
#: priors a family cannot take: the VampPrior's continuous pseudo-inputs need an encoder of
#: real values, not of token ids (test_vamp_prior_refuses_an_encoder_of_tokens)
REFUSED = {("vamp", "lstm")}


def test_every_decoder_family_is_covered():
    assert set(FAMILIES) == set(DECODERS.names()), "add the new decoder family to FAMILIES"


def synthetic_data(likelihood, n=6, decoder="mlp"):
    """Synthetic values inside each likelihood's support (shape tests only)."""
    g = torch.Generator().manual_seed(1)
    if decoder == "lstm":  # padded sequences of tokens 3..4 (0 pads), lengths 1..5, one full
        # real tokens: neither padding (0) nor BOS (2), which the LSTM decoder never predicts
        tokens = torch.randint(3, NUM_CATEGORIES, (n, *SEQUENCE_SHAPE), generator=g)
        lengths = torch.randint(1, SEQUENCE_SHAPE[0] + 1, (n,), generator=g)
        lengths[0] = SEQUENCE_SHAPE[0]
        return tokens.masked_fill(torch.arange(SEQUENCE_SHAPE[0]) >= lengths[:, None], 0)
    if likelihood == "bernoulli":
        return torch.bernoulli(torch.full((n, *DATA_SHAPE), 0.5), generator=g)
    if likelihood == "continuous-bernoulli":
        return torch.rand((n, *DATA_SHAPE), generator=g)
    if likelihood == "normal":
        return torch.randn((n, *DATA_SHAPE), generator=g)
    if likelihood == "categorical":
        return torch.randint(NUM_CATEGORIES, (n, *DATA_SHAPE), generator=g)
    if likelihood == "discretized-logistic":
        return torch.randint(256, (n, *DATA_SHAPE), generator=g) / 255
    raise AssertionError(f"add synthetic data for the new likelihood {likelihood!r}")


def build(prior="normal", likelihood="bernoulli", decoder="mlp", skip=True, latent_dim=3):
    options = {"num_categories": NUM_CATEGORIES} if likelihood == "categorical" else {}
    if decoder == "lstm":
        sizes = {"embedding_dim": 4, "hidden_dim": 6}
        return SkipVAE(
            SEQUENCE_SHAPE,
            latent_dim=latent_dim,
            skip=skip,
            decoder=decoder,
            encoder="lstm",
            prior=prior,
            likelihood=likelihood,
            decoder_options={**sizes, "num_layers": 2},
            encoder_options={**sizes, "num_categories": NUM_CATEGORIES},
            likelihood_options={**options, "pad_index": 0},
            seed=0,
        )
    return SkipVAE(
        DATA_SHAPE,
        latent_dim=latent_dim,
        hidden_dims=None if decoder == "pixelcnn" else (8, 8),
        skip=skip,
        decoder=decoder,
        decoder_options={"num_layers": 2, "channels": 4} if decoder == "pixelcnn" else None,
        encoder=FAMILIES.get(decoder, FAMILIES["mlp"])["encoder"],
        encoder_options={"channels": 4, "num_blocks": 1} if decoder == "pixelcnn" else None,
        prior=prior,
        likelihood=likelihood,
        likelihood_options=options,
        seed=0,
    )


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize(
    "prior, decoder, likelihood",
    [(p, d, lik) for p in PRIORS.names() for d, lik in CASES if (p, d) not in REFUSED],
)
def test_sites_shapes_and_a_training_step(prior, likelihood, decoder, skip):
    vae = build(prior, likelihood, decoder, skip)
    x = synthetic_data(likelihood, decoder=decoder)
    shape = FAMILIES[decoder]["shape"]
    guide_trace = poutine.trace(vae.guide).get_trace(x, size=60)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, size=60)
    z_site, x_site = model_trace.nodes[LATENT_SITE], model_trace.nodes[OBSERVED_SITE]
    assert z_site["value"].shape == (6, 3)
    assert z_site["fn"].event_shape == (3,) and z_site["fn"].batch_shape == (6,)
    assert guide_trace.nodes[LATENT_SITE]["fn"].event_shape == (3,)
    assert x_site["fn"].event_shape == shape and x_site["fn"].batch_shape == (6,)
    for site in (z_site, x_site, guide_trace.nodes[LATENT_SITE]):
        frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
        assert len(frames) == 1 and frames[0].dim == -1 and frames[0].full_size == 60
        assert site["scale"] == 10.0  # minibatch of 6 out of 60
    elbo, kl = elbo_terms(vae.model, vae.guide, x)
    assert elbo.shape == kl.shape == (6,) and torch.isfinite(elbo).all()
    # only the analytic KL (Gaussian prior) is >= 0 per point; Monte-Carlo KL may be negative
    assert (kl >= 0).all() or prior in ("mixture", "vamp", "flow")
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    before = [p.detach().clone() for p in vae.model.parameters()]
    assert torch.isfinite(torch.tensor(svi.step(x, size=60)))
    changed = [not torch.equal(a, p) for a, p in zip(before, vae.model.parameters())]
    assert any(changed), "SVI must update the model's own parameters"


def test_vamp_prior_refuses_an_encoder_of_tokens():
    with pytest.raises(ConfigError, match="reads token ids"):
        build("vamp", "categorical", "lstm")


def test_decoder_accepts_extra_leading_dimensions():
    vae = build()
    z = torch.randn(7, 6, 3)
    assert vae.model.decoder(z).shape == (7, 6, *DATA_SHAPE)


@pytest.mark.parametrize("skip", [True, False])
def test_skip_connections_carry_z_past_the_first_layer(skip):
    """With the first layer's z weights zeroed, z still changes the output only with skip."""
    decoder = build(skip=skip).model.decoder
    with torch.no_grad():
        decoder.layers[0].weight.zero_()
    z1, z2 = torch.zeros(1, 3), torch.ones(1, 3)
    differs = not torch.allclose(decoder(z1), decoder(z2))
    assert differs == skip


def test_skip_has_its_own_weights_per_layer_and_same_sizes_otherwise():
    skip, plain = build(skip=True).model.decoder, build(skip=False).model.decoder
    assert [tuple(m.weight.shape) for m in skip.layers] == [
        tuple(m.weight.shape) for m in plain.layers
    ]
    # hidden layer 2 and the output layer each get their own U_l
    assert [tuple(u.weight.shape) for u in skip.skips] == [(8, 3), (12, 3)]
    assert len(plain.skips) == 0


@pytest.mark.parametrize("registry_name", ["prior", "likelihood", "decoder"])
def test_unknown_names_list_the_valid_ones(registry_name):
    with pytest.raises(ConfigError, match="expected one of") as info:
        build(**{registry_name: "nonsense"})
    assert "nonsense" in str(info.value)


def test_objects_can_replace_registry_names():
    from pyro_skipvae.models.priors import LearnedNormalPrior

    prior = LearnedNormalPrior(3)
    vae = SkipVAE(DATA_SHAPE, latent_dim=3, hidden_dims=(8,), prior=prior)
    assert vae.model.prior is prior and vae.config.prior == "custom:LearnedNormalPrior"
    with pytest.raises(ConfigError, match="pass it again as prior="):
        SkipVAE.from_config(vae.config)
    assert SkipVAE.from_config(vae.config, prior=LearnedNormalPrior(3)).model.prior is not prior


@pytest.mark.parametrize(
    "likelihood, values, message",
    [
        ("bernoulli", [0.0, 0.5], "binary values"),
        ("continuous-bernoulli", [0.2, 1.5], r"values in \[0, 1\]"),
        ("normal", [0.0, float("nan")], "finite values"),
        ("categorical", [1, 7], r"integers in \[0, 5\)"),
    ],
)
def test_likelihoods_reject_data_outside_their_support(likelihood, values, message):
    vae = build(likelihood=likelihood)
    x = synthetic_data(likelihood)
    x.view(-1)[: len(values)] = torch.tensor(values, dtype=x.dtype)
    with pytest.raises(DataError, match=message):
        vae.model.likelihood.validate(x)


def test_wrong_feature_shape_is_a_data_error():
    with pytest.raises(DataError, match=r"expected shape \(N, 1, 4, 3\), found \(6, 12\)"):
        build().model.likelihood.validate(torch.zeros(6, 12))


def test_save_load_round_trip(tmp_path):
    vae = build(prior="mixture", skip=True)
    x = synthetic_data("bernoulli")
    vae.save(tmp_path / "model.pt")
    loaded = SkipVAE.load(tmp_path / "model.pt")
    assert loaded.config == vae.config
    for a, b in zip(vae.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(vae.encode(x)[0], loaded.encode(x)[0])
    assert torch.equal(vae.reconstruct(x), loaded.reconstruct(x))


def test_non_positive_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="latent_dim must be positive, found 0"):
        build(latent_dim=0)
    with pytest.raises(ConfigError, match="hidden_dims"):
        SkipVAE(DATA_SHAPE, hidden_dims=(8, 0))


def test_two_models_keep_their_own_parameters_under_stock_pyro_svi():
    """Pyro's parameter store is global: modules of the same name would share tensors.
    Every Model/Guide gets a process-unique name, so stock pyro.infer.SVI on each of two
    models trains that model alone, whatever the other did before."""
    a, b = build(), build()
    x = synthetic_data("bernoulli")
    a.encode(x)  # registers a's parameters in the store first
    assert a.model._pyro_name != b.model._pyro_name and a.guide._pyro_name != b.guide._pyro_name

    def snapshot(vae):
        return [p.detach().clone() for p in vae.parameters()]

    for trained, other in ((b, a), (a, b)):
        before, before_other = snapshot(trained), snapshot(other)
        svi = pyro.infer.SVI(
            trained.model, trained.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()
        )
        for _ in range(3):
            svi.step(x)
        changed = [not torch.equal(p0, p) for p0, p in zip(before, trained.parameters())]
        assert all(changed), "every parameter of the trained model must move"
        assert all(torch.equal(p0, p) for p0, p in zip(before_other, other.parameters()))


def test_parameters_leave_pyro_store_with_their_model():
    import gc

    vae = build()
    vae.encode(synthetic_data("bernoulli"))
    prefix = vae.guide._pyro_name
    assert any(name.startswith(prefix + ".") for name in pyro.get_param_store().keys())
    del vae
    gc.collect()
    assert not any(name.startswith(prefix + ".") for name in pyro.get_param_store().keys())


class CopyPreviousDecoder(Decoder):
    """A toy autoregressive decoder (synthetic, for the generation hook): pixel 0 is
    Bernoulli(sigmoid(20 z_0)) and every later pixel copies its predecessor (logit ±20)."""

    autoregressive = True

    def forward(self, z, x=None):
        flat = x.reshape(*x.shape[: x.dim() - len(self.output_shape)], -1).expand(*z.shape[:-1], -1)
        logits = 40.0 * flat.roll(1, -1) - 20.0
        logits[..., 0] = 20.0 * z[..., 0]
        return logits.reshape(*z.shape[:-1], *self.output_shape)


def test_sampling_an_autoregressive_decoder_draws_position_by_position():
    """SkipVAE.sample and reconstruct go through Decoder.sample: each image is constant
    (all 0 or all 1, set by z_0), which a teacher-forced mean could never produce."""
    decoder = CopyPreviousDecoder(3, DATA_SHAPE, skip=False)
    vae = SkipVAE(DATA_SHAPE, latent_dim=3, decoder=decoder, seed=0)
    images = vae.sample(64)
    flat = images.reshape(64, -1)
    assert set(flat.unique().tolist()) == {0.0, 1.0}
    assert torch.all(flat == flat[:, :1]), "every later pixel must copy the first"
    assert 10 < flat[:, 0].sum() < 54  # z_0 ~ N(0, 1): about half the images are ones
    z = torch.tensor([[5.0, 0, 0], [-5.0, 0, 0]])
    drawn = decoder.sample(z, vae.model.likelihood).reshape(2, -1)
    assert torch.all(drawn[0] == 1) and torch.all(drawn[1] == 0)
    x = synthetic_data("bernoulli")
    assert vae.reconstruct(x).shape == x.shape


def test_component_options_round_trip_and_unknown_options_are_named(tmp_path):
    vae = SkipVAE(
        DATA_SHAPE,
        latent_dim=3,
        decoder_options={"hidden_dims": [7, 5]},
        encoder_options={"hidden_dims": [6]},
        prior="mixture",
        prior_options={"num_components": 3},
        likelihood="categorical",
        likelihood_options={"num_categories": NUM_CATEGORIES},
    )
    c = vae.config
    assert c.decoder_options == {"hidden_dims": [7, 5]} and c.encoder_options == {
        "hidden_dims": [6]
    }
    assert c.prior_options == {"num_components": 3}
    assert [m.out_features for m in vae.model.decoder.layers] == [7, 5, 12 * NUM_CATEGORIES]
    vae.save(tmp_path / "m.pt")
    loaded = SkipVAE.load(tmp_path / "m.pt")
    assert loaded.config == vae.config
    assert loaded.model.prior.logits.shape == (3,)
    # defaults are filled in, so a run rebuilds identically even if a default changes later
    assert SkipVAE(DATA_SHAPE).config.decoder_options == {"hidden_dims": [1024, 1024]}
    # --hidden-dims is a shorthand for every component that takes it, unless set explicitly
    both = SkipVAE(DATA_SHAPE, hidden_dims=(9,), decoder_options={"hidden_dims": [4]})
    assert both.config.decoder_options == {"hidden_dims": [4]}
    assert both.config.encoder_options == {"hidden_dims": [9]}
    with pytest.raises(
        ConfigError,
        match="unknown option.*hidden_dim for decoder 'mlp'; valid options: hidden_dims",
    ):
        SkipVAE(DATA_SHAPE, decoder_options={"hidden_dim": [4]})
    with pytest.raises(ConfigError, match="valid options: init_scale"):
        SkipVAE(DATA_SHAPE, likelihood="normal", likelihood_options={"scale": 1.0})
    with pytest.raises(ConfigError, match="expected the option num_categories >= 2"):
        SkipVAE(DATA_SHAPE, likelihood="categorical")
