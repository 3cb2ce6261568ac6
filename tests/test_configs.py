"""The configurations of a run (pyro_skipvae.configs): their old import path, and the
option checks that live here once, for the Python API and the ``skipvae`` command alike."""

import warnings

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO

import pyro_skipvae
from pyro_skipvae import SkipVAE, configs
from pyro_skipvae.configs import ModelConfig, TrainConfig, resolve_components
from pyro_skipvae.data.text import PAD_INDEX, SPECIALS, Vocabulary
from pyro_skipvae.errors import ConfigError, DataError
from pyro_skipvae.infer import ELBOS, INFERENCES


@pytest.fixture(autouse=True)
def clean_store():
    pyro.clear_param_store()


# ---------------------------------------------------------------- where the classes live
@pytest.mark.parametrize("name", ["ModelConfig", "TrainConfig"])
def test_the_old_path_warns_and_returns_the_same_class(name):
    from pyro_skipvae import skip_vae

    assert name not in vars(skip_vae)  # else the module's __getattr__ would never run
    with pytest.warns(DeprecationWarning, match=f"skip_vae.{name} moved to pyro_skipvae.configs"):
        old = getattr(skip_vae, name)
    assert old is getattr(configs, name) is getattr(pyro_skipvae, name)
    with pytest.warns(DeprecationWarning):  # the from-import form goes through it too
        exec(f"from pyro_skipvae.skip_vae import {name}", {})


def test_the_new_paths_do_not_warn_and_other_names_still_fail():
    from pyro_skipvae import skip_vae

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pyro_skipvae.TrainConfig is TrainConfig and pyro_skipvae.ModelConfig is ModelConfig
        assert skip_vae.SkipVAE is SkipVAE
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchConfig'"):
        skip_vae.NoSuchConfig  # noqa: B018


# ---------------------------------------------------------------- option combinations
def test_an_option_of_another_elbo_names_the_field_and_the_elbo_that_takes_it():
    """`skipvae fit --elbo iwae --renyi-alpha 0.2` used to be refused by the command only."""
    with pytest.raises(ConfigError) as error:
        TrainConfig(elbo="iwae", num_particles=2, elbo_options={"alpha": 0.2})
    assert str(error.value) == (
        "elbo_options['alpha']: elbo 'iwae' takes no such option (its options: "
        "num_particles); 'alpha' is an option of elbo 'renyi'"
    )
    assert TrainConfig(elbo="renyi", num_particles=2, elbo_options={"alpha": 0.2})


def test_semi_amortized_options_with_svi_are_a_config_error_not_a_type_error():
    """Before, SVI passed ``mode`` on to Pyro, which raised a TypeError deep inside."""
    options = {"mode": "kl", "num_refine_steps": 3}
    with pytest.raises(ConfigError) as error:
        TrainConfig(inference="svi", inference_options=options)
    message = str(error.value)
    assert message.startswith(
        "inference_options['mode'], inference_options['num_refine_steps']: inference 'svi' "
        "takes no such option"
    )
    assert message.endswith("'mode', 'num_refine_steps' are options of inference 'semi-amortized'")
    assert TrainConfig(inference="semi-amortized", inference_options=options)


@pytest.mark.parametrize("name", ELBOS.names())
def test_every_elbo_accepts_its_own_options_and_refuses_an_unknown_one(name):
    own = ELBOS.options(name)
    assert TrainConfig(elbo=name, elbo_options=dict.fromkeys(own, 2)).elbo_options.keys() == set(
        own
    )
    with pytest.raises(ConfigError, match=rf"elbo_options\['width'\]: elbo '{name}' takes no"):
        TrainConfig(elbo=name, elbo_options={"width": 3})


@pytest.mark.parametrize("name", INFERENCES.names())
def test_every_inference_refuses_an_unknown_option(name):
    with pytest.raises(ConfigError, match=rf"inference_options\['width'\]: inference '{name}'"):
        TrainConfig(inference=name, inference_options={"width": 3})


def test_a_config_read_back_with_a_custom_component_is_accepted():
    """config.json records a user's ELBO object as "custom:ClassName"; reading the "train"
    section back into a TrainConfig must not try to import a module named "custom"."""
    saved = TrainConfig(elbo=RenyiELBO(alpha=0.5), num_particles=2).to_json()
    assert saved["elbo"] == "custom:RenyiELBO"
    assert TrainConfig(**saved).elbo == "custom:RenyiELBO"


def test_options_with_an_elbo_object_are_refused():
    with pytest.raises(ConfigError, match=r"elbo_options \['alpha'\] apply to a elbo chosen by"):
        TrainConfig(elbo=RenyiELBO(alpha=0.5), elbo_options={"alpha": 0.2})


@pytest.fixture
def vae():
    return SkipVAE((4,), latent_dim=2, hidden_dims=(8,), seed=0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"elbo": "iwae", "elbo_options": {"alpha": 0.2}}, r"elbo_options\['alpha'\]"),
        ({"inference_options": {"refine_lr": 2.0}}, r"inference_options\['refine_lr'\]"),
        ({"num_epochs": 0}, "num_epochs must be positive, found 0"),
    ],
)
def test_fit_refuses_bad_combinations_before_it_reads_the_data(vae, options, message):
    """The same checks at the front door, before the data are looked at (a string here
    would otherwise be a DataError), so a bad combination costs no data loading."""
    with pytest.raises(ConfigError, match=message):
        vae.fit("not data", **options)
    with pytest.raises(DataError):  # the data check itself is still there
        vae.fit("not data")


def test_empty_training_data_is_refused_so_a_fit_always_has_an_epoch(vae):
    """`skipvae fit` printed 'nothing to do: no epochs' when a fit returned no history; a
    fit needs num_epochs >= 1 (above) and at least one datapoint (here)."""
    with pytest.raises(DataError, match="expected at least one datapoint, found none"):
        vae.fit(torch.zeros(0, 4), num_epochs=1)


# ---------------------------------------------------------------- components of the data
def vocabulary(size):
    return Vocabulary(SPECIALS + tuple(f"w{i}" for i in range(size - len(SPECIALS))))


def test_text_data_imply_lstms_and_a_categorical_likelihood_over_the_vocabulary():
    components = resolve_components(vocabulary(10))
    assert components == {
        "decoder": "lstm",
        "decoder_options": {},
        "encoder": "lstm",
        "encoder_options": {"num_categories": 10},
        "prior": "normal",
        "prior_options": {},
        "likelihood": "categorical",
        "likelihood_options": {"num_categories": 10, "pad_index": PAD_INDEX},
    }


def test_named_components_win_and_drop_the_implied_options_given_options_win_key_by_key():
    components = resolve_components(
        vocabulary(10),
        encoder="mlp",
        encoder_options={"hidden_dims": [8]},
        likelihood_options={"num_categories": 12},
        decoder=None,  # not named: the implied one
    )
    assert components["encoder"] == "mlp"
    assert components["encoder_options"] == {"hidden_dims": [8]}  # no num_categories
    assert components["decoder"] == "lstm"
    assert components["likelihood_options"] == {"num_categories": 12, "pad_index": PAD_INDEX}


def test_without_a_vocabulary_the_components_are_model_configs_defaults():
    components = resolve_components(None, prior="mixture")
    defaults = ModelConfig((1,))
    assert components["decoder"] == defaults.decoder and components["encoder"] == defaults.encoder
    assert components["likelihood"] == defaults.likelihood == "bernoulli"
    assert components["prior"] == "mixture"
    with pytest.raises(ConfigError, match="unknown component argument.*guide"):
        resolve_components(None, guide="flow")


def test_a_minimum_learning_rate_above_the_start_is_refused_before_training():
    """With the plateau rule, training stops once the rate is below the minimum: a minimum
    above the starting rate would end the run before its first step (an empty history)."""
    with pytest.raises(
        ConfigError, match="min_learning_rate must not exceed learning_rate.*0.5 and 0.1"
    ):
        TrainConfig(optimizer="sgd", learning_rate=0.1, lr_decay="plateau", min_learning_rate=0.5)
    TrainConfig(optimizer="sgd", learning_rate=0.5, lr_decay="plateau", min_learning_rate=0.5)
    TrainConfig(learning_rate=0.1, min_learning_rate=0.5)  # no decay: the minimum never acts


@pytest.mark.parametrize(
    "value, options, message",
    [
        (0, {}, "n must be a positive integer, found 0"),
        (True, {}, "n must be a positive integer, found True"),
        (2.0, {}, "n must be a positive integer, found 2.0"),
        (None, {}, "n must be a positive integer, found None"),
        (
            -1,
            {"minimum": 0, "optional": True},
            "n must be a non-negative integer or None, found -1",
        ),
        (1, {"minimum": 2}, "n must be an integer of at least 2, found 1"),
    ],
)
def test_check_integer_says_what_was_expected(value, options, message):
    from pyro_skipvae.checks import check_integer

    with pytest.raises(ConfigError, match=f"^{message}$"):
        check_integer("n", value, **options)
    assert check_integer("n", None, optional=True) is None
    assert check_integer("n", 0, minimum=0) == 0


@pytest.mark.parametrize(
    "inference, options, message",
    [
        ("aggressive", {"check_every": 0}, "aggressive: check_every must be a positive integer"),
        (
            "aggressive",
            {"max_aggressive_epochs": -1},
            "aggressive: max_aggressive_epochs must be a non-negative integer or None",
        ),
        (
            "semi-amortized",
            {"refine_batch_size": True},
            "refine_batch_size must be a positive integer or None, found True",
        ),
    ],
)
def test_both_inferences_check_their_counts_with_the_shared_helper(inference, options, message):
    vae = SkipVAE((4,), latent_dim=2, hidden_dims=(8,))
    with pytest.raises(ConfigError, match=message):
        INFERENCES.build(inference, vae.model, vae.guide, None, None, options=options)
