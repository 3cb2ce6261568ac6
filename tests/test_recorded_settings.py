"""config.json records every refinement setting, and an older semi-amortized run folder that
lacks them is read with the rule it was trained under or refused with a way forward
(issue 35, item 1)."""

import json

import pytest
import torch

from pyro_skipvae import SkipVAE
from pyro_skipvae.configs import recorded_train_config
from pyro_skipvae.errors import ConfigError
from pyro_skipvae.evaluation import run_refinement
from pyro_skipvae.infer.refine import refinement_elbo
from pyro_skipvae.infer.trace_elbo import Trace_ELBO

DATA = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def fit(run_dir, num_epochs=1, resume=False, elbo="trace", **inference_options):
    vae = SkipVAE((1, 4, 4), latent_dim=2, hidden_dims=(8,), seed=0)
    return vae.fit(
        DATA[:30],
        val=DATA[30:],
        num_epochs=num_epochs,
        batch_size=10,
        binarize="dynamic",
        elbo=elbo,
        inference="semi-amortized",
        inference_options={"num_refine_steps": 2, **inference_options},
        run_dir=run_dir,
        resume=resume,
    )


def make_old(run_dir, elbo="trace"):
    """A run folder as versions before the full record wrote it: only the options given."""
    fit(run_dir, elbo=elbo)
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    config["train"]["inference_options"] = {"num_refine_steps": 2}
    path.write_text(json.dumps(config))
    for name in ("checkpoint.pt", "best.pt"):
        state = torch.load(run_dir / name, weights_only=True)
        state["config"]["train"]["inference_options"] = {"num_refine_steps": 2}
        torch.save(state, run_dir / name)


def test_config_json_records_every_refinement_setting_defaults_included(tmp_path):
    fit(tmp_path / "run")
    options = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert options["inference_options"] == {
        "mode": "end-to-end",
        "refine_batch_size": 10,
        "num_refine_steps": 2,
        "refine_lr": 1.0,
        "refine_momentum": 0.5,
        "refine_max_grad_norm": 5.0,
        "refine_coordinates": "log-variance",
        "refine_kl": "analytic",
    }


def test_an_older_run_refining_the_trace_elbo_is_refused_with_a_way_forward(tmp_path):
    run = tmp_path / "old"
    make_old(run)
    with pytest.raises(ConfigError, match="records no refine_kl") as error:
        fit(run, num_epochs=2, resume=True)
    assert "'objective'" in str(error.value) and "'analytic'" in str(error.value)
    assert "a07db1e" in str(error.value) and str(run) in str(error.value)
    config = json.loads((run / "config.json").read_text())
    with pytest.raises(ConfigError, match="records no refine_kl"):
        run_refinement(SkipVAE.load(run), config, run_dir=run)
    # the amortized guide needs no refinement rule
    assert run_refinement(SkipVAE.load(run), config, 0, run_dir=run)[1] is None

    # recorded by hand, as the message says: resumed and diagnosed under that rule
    config["train"]["inference_options"]["refine_kl"] = "objective"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="refine_kl"):  # the default is another rule
        fit(run, num_epochs=2, resume=True)
    history = fit(run, num_epochs=2, resume=True, refine_kl="objective")
    assert [r["epoch"] for r in history] == [1, 2]
    _, settings = run_refinement(SkipVAE.load(run), config, run_dir=run)
    assert settings["refine_kl"] == "objective" and settings["refine_batch_size"] == 10


def test_an_older_mean_field_run_is_read_as_analytic_where_both_rules_agree(tmp_path):
    run = tmp_path / "old"
    make_old(run, elbo="mean-field")
    history = fit(run, num_epochs=2, resume=True, elbo="mean-field")
    assert [r["epoch"] for r in history] == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["inference_options"]["refine_kl"] == "analytic"
    _, settings = run_refinement(SkipVAE.load(run), config, run_dir=run)
    assert settings["refine_kl"] == "analytic"


def test_recorded_train_config_leaves_amortized_runs_and_complete_records_alone():
    svi = {"inference": "svi", "inference_options": {}, "elbo": "trace"}
    assert recorded_train_config(svi, "r") is svi
    complete = {
        "inference": "semi-amortized",
        "elbo": "iwae",
        "batch_size": 7,
        "inference_options": {"refine_kl": "monte-carlo"},
    }
    read = recorded_train_config(complete, "r")["inference_options"]
    assert read["refine_kl"] == "monte-carlo" and read["refine_batch_size"] == 7


def test_an_aggressive_run_recorded_with_only_its_given_options_resumes(tmp_path):
    """Aggressive runs written between commits 1334c10 and 576b958 recorded only the options
    given; their defaults are filled in as for semi-amortized runs."""
    run, given = tmp_path / "old", {"max_encoder_steps": 2, "max_aggressive_epochs": 1}
    aggressive = dict(inference="aggressive", inference_options=given, batch_size=10)
    options = dict(val=DATA[30:], binarize="dynamic", run_dir=run, **aggressive)
    SkipVAE((1, 4, 4), latent_dim=2, hidden_dims=(8,), seed=0).fit(
        DATA[:30], num_epochs=1, **options
    )
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["inference_options"] == {**given, "check_every": 10}
    config["train"]["inference_options"] = given
    (run / "config.json").write_text(json.dumps(config))
    for name in ("checkpoint.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)
        state["config"]["train"]["inference_options"] = dict(given)
        torch.save(state, run / name)
    vae = SkipVAE((1, 4, 4), latent_dim=2, hidden_dims=(8,), seed=0)
    history = vae.fit(DATA[:30], num_epochs=2, resume=True, **options)
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["aggressive"] for r in history] == [True, False]
    read = recorded_train_config({"inference": "aggressive", "inference_options": given}, run)
    assert read["inference_options"] == {**given, "check_every": 10}


def test_objective_rule_ascends_the_training_objective_itself():
    elbo = Trace_ELBO(num_particles=3)
    assert refinement_elbo(elbo, "objective") is elbo
    assert refinement_elbo(elbo, "analytic") is not elbo
