"""Plug-ins by import path: the Registry imports ``module:attribute`` (class, factory function or
nested attribute), introspects its options like a registered name's, and a run stores the path
so ``SkipVAE.load``, ``--resume`` and ``skipvae diagnose`` rebuild it in a new process."""

import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.cli.main import cli
from pyro_skipvae.models import PRIORS

MODULE = "skipvae_test_plugin"
SOURCE = textwrap.dedent(
    """
    import pyro.distributions as dist
    import torch

    from pyro_skipvae.models import Prior


    class LaplacePrior(Prior):
        def __init__(self, latent_dim, scale=1.0):
            super().__init__(latent_dim)
            self.register_buffer("scale", torch.full((latent_dim,), float(scale)))

        def forward(self, batch_shape):
            zeros = torch.zeros_like(self.scale)
            return dist.Laplace(zeros, self.scale).to_event(1).expand(tuple(batch_shape))


    def wide_laplace(latent_dim, scale=3.0):
        return LaplacePrior(latent_dim, scale)


    class Holder:
        Nested = LaplacePrior


    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder holding the plug-in module, on sys.path for the test only."""
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield tmp_path
    sys.modules.pop(MODULE, None)


@pytest.mark.parametrize(
    "path, scale", [("LaplacePrior", 1.0), ("wide_laplace", 3.0), ("Holder.Nested", 1.0)]
)
def test_an_import_path_builds_and_introspects_like_a_name(plugin_dir, path, scale):
    name = f"{MODULE}:{path}"
    assert PRIORS.options(name, filled=("latent_dim",)) == ["scale"]
    assert PRIORS.defaults(name, filled=("latent_dim",)) == {"scale": scale}
    prior = PRIORS.build(name, 4, options={"scale": 2.5})
    assert type(prior).__name__ == "LaplacePrior" and torch.all(prior.scale == 2.5)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) width .* valid options: scale"):
        PRIORS.build(name, 4, options={"width": 1})


@pytest.mark.parametrize(
    "path, message",
    [
        (
            "no_such_module_xyz:Prior",
            "cannot import module 'no_such_module_xyz' (ModuleNotFoundError",
        ),
        (f"{MODULE}:Missing", f"module '{MODULE}' has no attribute 'Missing'"),
        (f"{MODULE}:Holder.Missing", "has no attribute 'Holder.Missing'"),
        (f"{MODULE}:NOT_CALLABLE", "expected a class or function, found int"),
        (":LaplacePrior", "expected an import path module:attribute"),
        (f"{MODULE}:", "expected an import path module:attribute"),
    ],
)
def test_a_bad_path_names_what_failed(plugin_dir, path, message):
    with pytest.raises(ConfigError) as e:
        PRIORS.build(path, 4)
    assert str(e.value).startswith(f"prior {path!r}: ") and message in str(e.value)


def test_a_module_that_fails_on_import_is_reported(tmp_path, monkeypatch):
    (tmp_path / "skipvae_broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    with pytest.raises(ConfigError, match=r"cannot import module .*RuntimeError: boom"):
        PRIORS.get("skipvae_broken_plugin:X")


def test_names_with_a_colon_cannot_be_registered():
    with pytest.raises(ConfigError, match="reserved for import paths"):
        PRIORS.register("my:prior", object)


def test_the_path_is_stored_and_load_rebuilds_it(plugin_dir, mnist, tiny_options, tmp_path):
    name = f"{MODULE}:LaplacePrior"
    vae = SkipVAE(mnist.data_shape, prior=name, prior_options={"scale": 0.5}, **tiny_options)
    run = tmp_path / "run"
    vae.fit(mnist.train, val=mnist.val, num_epochs=1, binarize="dynamic", run_dir=run)
    config = json.loads((run / "config.json").read_text())["model"]
    assert config["prior"] == name and config["prior_options"] == {"scale": 0.5}
    loaded = SkipVAE.load(run)
    assert type(loaded.model.prior).__name__ == "LaplacePrior"
    assert torch.all(loaded.model.prior.scale == 0.5)


def test_cli_fit_resume_and_diagnose_with_a_plugin_from_the_current_directory(
    tmp_path, data_dir, monkeypatch
):
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.chdir(tmp_path)  # the CLI looks for plug-ins in the current directory
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    small = ["--data-dir", str(data_dir), "--train-size", "300", "--val-size", "100"]
    small += ["--latent-dim", "4", "--hidden-dims", "32,32", "--quiet", "--out", "run"]
    plugin = ["--prior", f"{MODULE}:LaplacePrior", "--prior-option", "scale=2"]

    def run(*args):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    result = run("fit", *small, *plugin, "--num-epochs", "1")
    assert result.exit_code == 0, result.output
    result = run("fit", *small, *plugin, "--num-epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert [json.loads(r)["epoch"] for r in open("run/metrics.jsonl")] == [1, 2]
    sys.modules.pop(MODULE)  # diagnose must import it again from config.json
    result = run(
        "diagnose",
        "run",
        "--data-dir",
        str(data_dir),
        "--eval-size",
        "100",
        "--num-samples",
        "0",
        "--no-plots",
        "--classifier-train-size",
        "200",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(open("run/diagnostics.json").read())["kl"] > 0

    bad = run("fit", *small, "--prior", "no_such_module_xyz:Prior", "--out", "bad")
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        "error: prior 'no_such_module_xyz:Prior': cannot import module 'no_such_module_xyz' "
        "(ModuleNotFoundError: No module named 'no_such_module_xyz')"
    ]


def test_the_cli_help_lists_every_built_in_component():
    import pyro_skipvae.cli.options as cli_options
    from pyro_skipvae.guides import ENCODERS, GUIDES
    from pyro_skipvae.infer import ELBOS, INFERENCES
    from pyro_skipvae.models import DECODERS, LIKELIHOODS

    registries = {
        "decoder": DECODERS,
        "encoder": ENCODERS,
        "guide": GUIDES,
        "prior": PRIORS,
        "likelihood": LIKELIHOODS,
        "elbo": ELBOS,
        "inference": INFERENCES,
    }
    for kind, registry in registries.items():
        # built-ins only (tests and examples register their own), less the refused one
        built_in = {n for n in registry if registry.get(n).__module__.startswith("pyro_skipvae")}
        assert set(cli_options.COMPONENTS[kind].split(" | ")) == built_in - {"jit-mean-field"}, kind
