"""Live curves in TensorBoard, read back with TensorBoard's own reader: tags, steps and values,
across a resume, and the errors of a missing package or a bad option."""

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.errors import MissingDependencyError
from pyro_skipvae.infer import distributed
from pyro_skipvae.infer.annealing import kl_schedule
from pyro_skipvae.loggers import build_loggers

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the test extra installs tensorboard",
)

# 500 training images in minibatches of 50: 10 steps an epoch
FIT = {"batch_size": 50, "binarize": "dynamic", "kl_warmup_epochs": 2, "seed": 3}
STEPS_PER_EPOCH = 10
EVERY = 3
STEP_TAGS = {"train/elbo", "train/beta", "train/learning_rate"}
EPOCH_TAGS = {
    "epoch/train_elbo",
    "epoch/beta",
    "epoch/learning_rate",
    "epoch/seconds",
    "val/elbo",
    "val/kl",
    "val/active_units",
}


def fit(data, tiny_options, run_dir, num_epochs, resume=False, **overrides):
    vae = SkipVAE(data.data_shape, seed=0, **tiny_options)
    options = {**FIT, "loggers": ["tensorboard"], "log_every_n_steps": EVERY, **overrides}
    history = vae.fit(
        data.train, val=data.val, num_epochs=num_epochs, run_dir=run_dir, resume=resume, **options
    )
    return vae, history


def read(run_dir):
    """Every event under ``run_dir/tensorboard`` as TensorBoard shows it (orphans purged)."""
    events = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"),
        size_guidance={
            event_accumulator.SCALARS: 0,
            event_accumulator.HISTOGRAMS: 0,
            event_accumulator.TENSORS: 0,
        },
    )
    return events.Reload()


def metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def steps(events, tag):
    return [e.step for e in events.Scalars(tag)]


def values(events, tag):
    return {e.step: e.value for e in events.Scalars(tag)}


def test_tensorboard_curves_have_the_documented_tags_steps_and_values(
    mnist, tiny_options, tmp_path
):
    _, history = fit(mnist, tiny_options, tmp_path, num_epochs=2)
    events = read(tmp_path)
    assert set(events.Tags()["scalars"]) == STEP_TAGS | EPOCH_TAGS
    for tag in STEP_TAGS:
        assert steps(events, tag) == [3, 6, 9, 12, 15, 18]
    for tag in EPOCH_TAGS:
        assert steps(events, tag) == [10, 20]
    # each step's β is the schedule's at that step: epoch e, minibatch b (from 0)
    beta = kl_schedule(FIT["kl_warmup_epochs"], 0.1)
    for step, value in values(events, "train/beta").items():
        epoch, batch = divmod(step - 1, STEPS_PER_EPOCH)
        assert value == pytest.approx(beta(epoch + batch / STEPS_PER_EPOCH), rel=1e-6)
    assert list(values(events, "train/learning_rate").values()) == pytest.approx([1e-3] * 6)
    for record in history:
        step = record["epoch"] * STEPS_PER_EPOCH
        for key, tag in [("val_elbo", "val/elbo"), ("val_kl", "val/kl"), ("train_elbo", "epoch/train_elbo"), ("val_au", "val/active_units")]:  # fmt: skip
            assert values(events, tag)[step] == pytest.approx(record[key], rel=1e-5)
    assert "val/au" not in events.Tags()["scalars"]
    # one histogram entry per latent dimension; their sum is the analytic KL of val/kl
    histograms = events.Histograms("val/kl_per_dim")
    assert [h.step for h in histograms] == [10, 20]
    for h, record in zip(histograms, history, strict=True):
        assert h.histogram_value.num == tiny_options["latent_dim"]
        assert h.histogram_value.sum == pytest.approx(record["val_kl"], rel=1e-4)
    # a logger leaves the training as it is without one
    fit(mnist, tiny_options, tmp_path / "plain", num_epochs=2, loggers=())
    assert metrics(tmp_path / "plain") == metrics(tmp_path)
    (config,) = events.Tensors("config/text_summary")
    assert config.step == 0
    text = config.tensor_proto.string_val[0].decode()
    assert json.loads(text) == json.loads((tmp_path / "config.json").read_text())


def test_a_resumed_run_continues_its_curves_without_duplicated_steps(mnist, tiny_options, tmp_path):
    fit(mnist, tiny_options, tmp_path, num_epochs=1)
    # an attempt that died during epoch 2 after logging a step the resumed run redoes
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tensorboard")) as orphan:
        orphan.add_scalar("train/elbo", 12345.0, 12)
        orphan.add_scalar("train/elbo", 12345.0, 15)
    fit(mnist, tiny_options, tmp_path, num_epochs=2, resume=True)
    events = read(tmp_path)
    uninterrupted = tmp_path / "uninterrupted"
    fit(mnist, tiny_options, uninterrupted, num_epochs=2)
    expected = read(uninterrupted)
    assert steps(events, "train/elbo") == [3, 6, 9, 12, 15, 18]
    assert steps(events, "val/elbo") == [10, 20]
    assert values(events, "train/elbo") == values(expected, "train/elbo")
    assert values(events, "val/elbo") == values(expected, "val/elbo")
    assert [e.step for e in events.Tensors("config/text_summary")] == [0]


def test_a_semi_amortized_run_logs_the_refined_and_the_amortized_bound(
    mnist, tiny_options, tmp_path
):
    _, (record,) = fit(
        mnist,
        tiny_options,
        tmp_path,
        num_epochs=1,
        inference="semi-amortized",
        inference_options={"num_refine_steps": 2},
    )
    events = read(tmp_path)
    refined = {"val/elbo", "val/elbo_amortized", "val/kl_amortized", "val/amortization_gap"}
    assert refined <= set(events.Tags()["scalars"])
    assert values(events, "val/elbo")[10] == pytest.approx(record["val_elbo"], rel=1e-5)
    assert values(events, "val/elbo_amortized")[10] == pytest.approx(
        record["val_elbo_amortized"], rel=1e-5
    )


def test_skipvae_fit_logger_tensorboard(mnist, data_dir, tmp_path):
    from pyro_skipvae.cli.main import cli

    result = CliRunner().invoke(
        cli,
        [
            "fit", "--data-dir", str(data_dir), "--train-size", "100", "--val-size", "50",
            "--latent-dim", "2", "--hidden-dims", "8", "--num-epochs", "1", "--quiet",
            "--logger", "tensorboard", "--log-every-n-steps", "1", "--out", str(tmp_path),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    events = read(tmp_path)
    assert steps(events, "train/elbo") == [1, 2]
    assert steps(events, "val/elbo") == [2]
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "train.log").exists()


def test_a_missing_tensorboard_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'pyro-skipvae\[tensorboard\]'"):
        build_loggers(["tensorboard"])


@pytest.mark.parametrize(
    "loggers, every, message",
    [
        (["wandb"], 50, "unknown logger 'wandb'; expected one of: tensorboard"),
        (["tensorboard"], 0, "log_every_n_steps must be a positive integer, found 0"),
    ],
)
def test_bad_logger_options_say_what_was_expected(loggers, every, message):
    with pytest.raises(ConfigError, match=message):
        build_loggers(loggers, every)


def test_tensorboard_needs_a_folder(mnist, tiny_options):
    with pytest.raises(ConfigError, match="run_dir"):
        fit(mnist, tiny_options, None, num_epochs=1)


def test_only_rank_0_writes(monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert not build_loggers(["tensorboard"])


class Recording:
    """A logger object that records its calls and fails where told."""

    def __init__(self, calls, name, *, fail_start=False, fail_close=False):
        self.calls, self.name = calls, name
        self.fail_start, self.fail_close = fail_start, fail_close

    def start(self, run, steps_per_epoch):
        self.calls.append(("start", self.name))
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    def log_step(self, step, values):
        pass

    def log_epoch(self, step, record):
        pass

    def close(self):
        self.calls.append(("close", self.name))
        if self.fail_close:
            raise OSError(f"{self.name} cannot close")


def test_a_logger_that_fails_to_start_leaves_none_open(tmp_path):
    calls = []
    loggers = [Recording(calls, "a"), Recording(calls, "b", fail_start=True)]
    vae = SkipVAE((4,), latent_dim=2, hidden_dims=(8,), likelihood="normal", seed=0)
    with pytest.raises(RuntimeError, match="b cannot start"):
        vae.fit(torch.randn(10, 4), num_epochs=1, batch_size=5, loggers=loggers)
    assert ("close", "a") in calls and ("close", "b") in calls


def test_every_logger_is_closed_when_one_fails_to_close_and_the_first_error_is_raised():
    calls = []
    names = [("a", True), ("b", False), ("c", True)]
    built = build_loggers([Recording(calls, n, fail_close=f) for n, f in names])
    with pytest.raises(OSError, match="^a cannot close$"):
        built.close()
    assert calls == [("close", "a"), ("close", "b"), ("close", "c")]
