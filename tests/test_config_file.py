"""``skipvae fit --config FILE``: YAML or JSON sets any option, flags override it, the
resolved values land in config.json, and unknown keys are a usage error naming the valid ones."""

import json

import pytest
from click.testing import CliRunner

from pyro_skipvae.cli.main import cli

YAML = """\
train-size: 300
val_size: 100
latent_dim: 3
hidden-dims: [32, 32]
num_epochs: 1
kl_warmup_epochs: 0
quiet: true
decoder_options: {hidden_dims: [16, 8]}
elbo: renyi
elbo_options: {alpha: 0.2}
num_particles: 2
"""


def fit(*args):
    return CliRunner().invoke(cli, ["fit", *args], catch_exceptions=False)


def saved(run):
    return json.loads((run / "config.json").read_text())


def test_a_yaml_file_sets_options_and_flags_override_it(tmp_path, data_dir):
    (tmp_path / "run.yaml").write_text(YAML)
    run = tmp_path / "run"
    result = fit(
        "--config",
        str(tmp_path / "run.yaml"),
        "--data-dir",
        str(data_dir),
        "--latent-dim",
        "5",
        "--decoder-option",
        "hidden_dims=[24]",
        "--elbo-option",
        "alpha=0.3",
        "--out",
        str(run),
    )
    assert result.exit_code == 0, result.output
    config = saved(run)
    assert config["model"]["latent_dim"] == 5  # the flag wins over the file's 3
    assert config["model"]["decoder_options"] == {"hidden_dims": [24]}  # pair by pair
    assert config["model"]["encoder_options"] == {"hidden_dims": [32, 32]}  # from the file
    assert config["train"]["elbo"] == "renyi" and config["train"]["num_particles"] == 2
    assert config["train"]["elbo_options"] == {"alpha": 0.3}
    assert config["train"]["kl_warmup_epochs"] == 0 and config["run"]["train_size"] == 300


def test_a_json_file_works_the_same(tmp_path, data_dir):
    options = {
        "train_size": 300,
        "val_size": 100,
        "latent_dim": 2,
        "hidden_dims": [16],
        "num_epochs": 1,
        "quiet": True,
        "skip": False,
        "out": str(tmp_path / "run"),
        "elbo": "renyi",
        "num_particles": 2,
    }
    (tmp_path / "run.json").write_text(json.dumps(options))
    config_file = str(tmp_path / "run.json")
    result = fit("--config", config_file, "--data-dir", str(data_dir), "--renyi-alpha", "0.1")
    assert result.exit_code == 0, result.output
    config = saved(tmp_path / "run")
    assert config["model"]["skip"] is False and config["model"]["latent_dim"] == 2
    assert config["train"]["elbo_options"] == {"alpha": 0.1}


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--elbo", "iwae", "--renyi-alpha", "0.2"],
            "error: elbo_options['alpha']: elbo 'iwae' takes no such option (its options: "
            "num_particles); 'alpha' is an option of elbo 'renyi'",
        ),
        (
            ["--sa-mode", "kl", "--refine-lr", "2"],
            "error: inference_options['mode'], inference_options['refine_lr']: inference 'svi' "
            "takes no such option",
        ),
        (
            ["--inference", "svi", "--num-refine-steps", "5"],
            "'num_refine_steps' is an option of inference 'semi-amortized'",
        ),
    ],
)
def test_option_combinations_are_the_librarys_usage_errors_before_any_data_are_read(args, message):
    """The library (TrainConfig) refuses these, in its own words, the same for Python users
    (tests/test_configs.py); the command asks it before loading data, so a missing data
    folder is not what the user hears about."""
    result = fit("--data-dir", "/nonexistent", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.splitlines()) == 1


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("run.yaml", "latent_dim: 4\nlatnet_dim: 3\n", "unknown key 'latnet_dim'"),
        ("run.yaml", "- 1\n- 2\n", "expected a mapping at the top level, found list"),
        ("run.yaml", "a: [1\n", "is not valid YAML"),
        ("run.json", "{", "is not valid JSON"),
        ("run.toml", "x = 1", "expected a .yaml, .yml, .json file"),
        ("run.yaml", "decoder_options: 3\n", "expected a mapping such as"),
        ("run.yaml", "latent_dim: zero\n", "'zero' is not a valid integer"),
    ],
)
def test_bad_files_are_usage_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    result = fit("--config", str(tmp_path / name))
    assert result.exit_code == 2
    assert message in result.output


def test_the_unknown_key_error_lists_the_valid_keys(tmp_path):
    (tmp_path / "run.yaml").write_text("latnet_dim: 3\n")
    output = fit("--config", str(tmp_path / "run.yaml")).output
    valid = output.split("valid keys:")[1]
    for key in ("latent_dim", "num_epochs", "decoder_options", "elbo", "out", "skip"):
        assert key in valid
