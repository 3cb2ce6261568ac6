"""Training on real MNIST: run directories, exact resume, and errors that lose nothing."""

import gzip
import json
import shutil

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_skipvae import CheckpointError, ConfigError, DataError, NonFiniteLossError, SkipVAE
from pyro_skipvae.data import load_dataset
from pyro_skipvae.diagnostics import active_units
from pyro_skipvae.infer.fit import Validation
from pyro_skipvae.run import train_log

FIT = {"batch_size": 50, "binarize": "dynamic", "kl_warmup_epochs": 2, "seed": 3}


def fit(mnist, tiny_options, run_dir=None, num_epochs=2, resume=False, **overrides):
    vae = SkipVAE(mnist.data_shape, seed=0, **tiny_options)
    history = vae.fit(
        mnist.train,
        val=mnist.val,
        num_epochs=num_epochs,
        run_dir=run_dir,
        resume=resume,
        **{**FIT, **overrides},
    )
    return vae, history


def metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_mnist_is_split_as_in_the_papers(data_dir):
    splits = load_dataset("mnist", data_dir=data_dir)
    assert splits.train.shape == (50_000, 1, 28, 28) and splits.val.shape == (10_000, 1, 28, 28)
    assert splits.test.shape == (10_000, 1, 28, 28) and splits.test_labels.shape == (10_000,)
    assert 0.0 == splits.train.min() and splits.train.max() == 1.0


def test_fit_writes_a_complete_run_directory(mnist, tiny_options, tmp_path):
    vae, history = fit(mnist, tiny_options, tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
    ]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert {"epoch", "train_elbo", "val_elbo", "val_kl", "val_au", "seconds", "beta"} <= set(
            record
        )
        assert record["val_elbo"] < 0 and record["val_kl"] >= 0 and 0 <= record["val_au"] <= 4
    assert records[1]["val_elbo"] > records[0]["val_elbo"], "two epochs of training must help"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 4 and config["train"]["binarize"] == "dynamic"
    best = SkipVAE.load(run)
    assert best.config == vae.config


def test_resume_is_exact(mnist, tiny_options, tmp_path):
    full, _ = fit(mnist, tiny_options, tmp_path / "full", num_epochs=3)
    fit(mnist, tiny_options, tmp_path / "parts", num_epochs=1)
    resumed, _ = fit(mnist, tiny_options, tmp_path / "parts", num_epochs=3, resume=True)
    assert metrics(tmp_path / "full") == metrics(tmp_path / "parts")
    for module in ("model", "guide"):
        a, b = getattr(full, module).state_dict(), getattr(resumed, module).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_saved_before_a_setting_existed_resumes_at_its_default(mnist, tiny_options, tmp_path):
    # config.json of an older version lacks settings added since (here: the guide and the
    # cyclical annealing); resuming with their defaults continues the run, and any other
    # value is still a change.
    fit(mnist, tiny_options, tmp_path / "run", num_epochs=1)
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text())
    del config["model"]["guide"], config["train"]["kl_cycle_epochs"]
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"train.kl_cycle_epochs: saved None, now 4"):
        fit(mnist, tiny_options, tmp_path / "run", num_epochs=2, resume=True, kl_cycle_epochs=4)
    fit(mnist, tiny_options, tmp_path / "run", num_epochs=2, resume=True)
    assert len(metrics(tmp_path / "run")) == 2


def weights(vae):
    return {
        f"{m}.{k}": v for m in ("model", "guide") for k, v in getattr(vae, m).state_dict().items()
    }


def test_a_fit_can_start_from_another_runs_weights(mnist, tiny_options, tmp_path):
    # Semi-amortized fine-tuning of a trained amortized model: the run starts from the
    # source's best.pt (not from the new seed's initialisation), with a fresh history.
    source, _ = fit(mnist, tiny_options, tmp_path / "amortized", num_epochs=1)
    fresh = SkipVAE(mnist.data_shape, seed=5, **tiny_options)
    # SGD at a vanishing rate leaves every weight where the run started
    history = fresh.fit(
        mnist.train,
        val=mnist.val,
        num_epochs=1,
        run_dir=tmp_path / "tuned",
        init_from=tmp_path / "amortized",
        optimizer="sgd",
        learning_rate=1e-30,
        inference="semi-amortized",
        inference_options={"num_refine_steps": 2},
        **FIT,
    )
    assert [r["epoch"] for r in history] == [1]
    start = weights(source)
    own = weights(SkipVAE(mnist.data_shape, seed=5, **tiny_options))
    assert any(not torch.equal(w, start[k]) for k, w in own.items())
    for name, value in weights(fresh).items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=1e-20, msg=name)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["train"]["init_from"] == str(tmp_path / "amortized")

    # An interrupted fine-tuning resumes from its own checkpoint, not from the source again:
    # exactly as if uninterrupted.
    source = {"init_from": tmp_path / "amortized"}
    whole, _ = fit(mnist, tiny_options, tmp_path / "whole", num_epochs=2, **source)
    fit(mnist, tiny_options, tmp_path / "parts", num_epochs=1, **source)
    resumed, _ = fit(mnist, tiny_options, tmp_path / "parts", num_epochs=2, resume=True, **source)
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "parts")
    assert all(torch.equal(w, weights(resumed)[k]) for k, w in weights(whole).items())
    with pytest.raises(ConfigError, match=r"train.init_from: saved '.*amortized', now None"):
        fit(mnist, tiny_options, tmp_path / "parts", num_epochs=3, resume=True)


def test_starting_from_another_model_or_a_missing_file_says_so_and_writes_nothing(
    mnist, tiny_options, tmp_path
):
    fit(mnist, tiny_options, tmp_path / "source", num_epochs=1)
    with pytest.raises(
        ConfigError, match=r"another model \(differs in model.latent_dim: there 4, here 3\)"
    ):
        fit(mnist, {**tiny_options, "latent_dim": 3}, tmp_path / "a", init_from=tmp_path / "source")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        fit(mnist, tiny_options, tmp_path / "b", init_from=tmp_path / "nowhere")
    old = torch.load(tmp_path / "source" / "best.pt", weights_only=True)
    torch.save({**old, "format": 1}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="old.pt has checkpoint format 1; this version"):
        fit(mnist, tiny_options, tmp_path / "c", init_from=tmp_path / "old.pt")
    torch.save({"format": 2, "model": old["model"]}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare.pt holds no model configuration"):
        fit(mnist, tiny_options, tmp_path / "c", init_from=tmp_path / "bare.pt")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_train_log_refuses_a_file_where_the_run_folder_goes(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="expected a run directory, found a file"):
        with train_log(tmp_path / "notes.txt"):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_existing_run_is_never_overwritten(mnist, tiny_options, tmp_path):
    fit(mnist, tiny_options, tmp_path / "run", num_epochs=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(mnist, tiny_options, tmp_path / "run", num_epochs=1)
    with pytest.raises(ConfigError, match=r"train.learning_rate: saved 0.001, now 0.01"):
        fit(mnist, tiny_options, tmp_path / "run", num_epochs=2, resume=True, learning_rate=1e-2)
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}


def test_a_corrupt_checkpoint_is_reported_and_kept(mnist, tiny_options, tmp_path):
    fit(mnist, tiny_options, tmp_path / "run", num_epochs=1)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        fit(mnist, tiny_options, tmp_path / "run", num_epochs=2, resume=True)
    assert checkpoint.stat().st_size == 1000
    with pytest.raises(CheckpointError, match="corrupt"):
        SkipVAE.load(checkpoint)


class NaNAfter(Trace_ELBO):
    """Trace_ELBO whose loss turns NaN after a number of steps (fault injection)."""

    def __init__(self, good_steps):
        super().__init__()
        self.remaining = good_steps

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        self.remaining -= 1
        return loss if self.remaining >= 0 else float("nan")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(mnist, tiny_options, tmp_path):
    # 500 images / batch 50 = 10 steps an epoch: step 13 is the third of epoch 2.
    with pytest.raises(NonFiniteLossError, match=r"step 13 \(epoch 2, batch 3 of 10\)"):
        fit(mnist, tiny_options, tmp_path / "run", num_epochs=3, elbo=NaNAfter(12))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(metrics(tmp_path / "run")) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize(
    "corrupt, error",
    [
        (
            lambda x: x.reshape(len(x), -1)[:, :700],
            r"expected shape \(N, 1, 28, 28\), found \(500, 700\)",
        ),
        (lambda x: x.index_fill(0, torch.tensor([3]), float("nan")), "expected finite values"),
        (lambda x: x * 2, r"intensities in \[0, 1\]"),
    ],
)
def test_bad_training_data_is_rejected_before_training(mnist, tiny_options, corrupt, error):
    vae = SkipVAE(mnist.data_shape, **tiny_options)
    with pytest.raises(DataError, match=error):
        vae.fit(corrupt(mnist.train), num_epochs=1, binarize="dynamic")


def test_non_binary_data_for_bernoulli_without_binarisation(mnist, tiny_options):
    vae = SkipVAE(mnist.data_shape, **tiny_options)
    with pytest.raises(DataError, match=r"binary values in \{0, 1\}, found \d+ entries outside it"):
        vae.fit(mnist.train, num_epochs=1, binarize="none")


@pytest.mark.parametrize("option", ["num_epochs", "batch_size", "learning_rate"])
def test_non_positive_options(mnist, tiny_options, option):
    vae = SkipVAE(mnist.data_shape, **tiny_options)
    with pytest.raises(ConfigError, match=f"{option} must be positive, found 0"):
        vae.fit(mnist.train, **{**{"num_epochs": 1}, option: 0})


def test_missing_and_corrupt_data_files(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPVAE_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(data_dir / "MNIST" / "raw", copy)
    (copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz .* does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "data")
    (copy / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a valid gzip file"):
        load_dataset("mnist", data_dir=tmp_path / "data")
    (copy / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20)
    )
    with pytest.raises(DataError, match="corrupt: expected content md5"):
        load_dataset("mnist", data_dir=tmp_path / "data")
    with pytest.raises(
        DataError, match="no data directory holding MNIST/raw/.*searched: .*nowhere"
    ):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")


def test_users_own_files(tmp_path, tiny_options):
    import numpy as np

    # Synthetic binary data, labelled as such: this checks the file loader, not a model.
    array = np.random.default_rng(0).integers(0, 2, size=(40, 6)).astype("float32")
    np.save(tmp_path / "toy.npy", array)
    splits = load_dataset(str(tmp_path / "toy.npy"))
    assert splits.train.shape == (36, 6) and splits.val.shape == (4, 6)
    vae = SkipVAE(splits.data_shape, **tiny_options)
    assert len(vae.fit(splits.train, val=splits.val, num_epochs=1, batch_size=10)) == 1
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could not be read"):
        load_dataset(str(tmp_path / "bad.pt"))
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("cifar")


def test_rng_state_carries_every_gpu_generator_where_there_are_gpus(monkeypatch):
    """The checkpoint's RNG state holds each CUDA device's generator when CUDA is present (faked
    here: the CPU suite has no GPU) and restores it only where CUDA is present again."""
    from pyro_skipvae import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([1, 2])])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = checkpoint.get_rng_state()
    assert [s.tolist() for s in state["cuda"]] == [[1, 2]]
    checkpoint.set_rng_state(state)
    assert restored == [state["cuda"]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    without = checkpoint.get_rng_state()
    assert without["cuda"] == []
    checkpoint.set_rng_state(state)  # written on a GPU machine, resumed on a CPU-only one
    assert len(restored) == 1


def test_checkpoints_load_onto_the_cpu_whatever_device_wrote_them(tmp_path, monkeypatch):
    """A checkpoint written on a GPU must open on a CPU-only machine (resume, diagnose): its
    tensors are mapped to the CPU as they are read (no GPU here to write one, so the call
    is checked)."""
    from pyro_skipvae import checkpoint

    path = tmp_path / "c.pt"
    torch.save({"format": 1, "w": torch.ones(2)}, path)
    calls = []
    load = torch.load
    monkeypatch.setattr(
        checkpoint.torch, "load", lambda *a, **kw: calls.append(kw) or load(*a, **kw)
    )
    assert checkpoint.load(path)["w"].tolist() == [1.0, 1.0]
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_checkpoint_load_says_what_is_wrong_and_unpickles_no_code(tmp_path):
    from pyro_skipvae import checkpoint
    from pyro_skipvae.errors import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoint not found: expected a file at"):
        checkpoint.load(tmp_path / "missing.pt")
    torch.save({"step": 3}, tmp_path / "plain.pt")
    with pytest.raises(
        CheckpointError, match="not a pyro-skipvae checkpoint \\(no 'format' key\\)"
    ):
        checkpoint.load(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match=r"is corrupt .*\((Unpickling|Runtime|Bad)\w*Error: "):
        checkpoint.load(tmp_path / "junk.pt")
    import datetime

    torch.save({"format": 1, "object": datetime.date(2020, 1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="is corrupt"):
        checkpoint.load(tmp_path / "pickled.pt")


def test_json_files_are_written_sorted_and_indented(tmp_path):
    """config.json and friends: stable key order (diffs between runs) and one key a line."""
    from pyro_skipvae.checkpoint import atomic_write_json

    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": {"d": [1, 2], "c": "é"}})
    text = (tmp_path / "a.json").read_text(encoding="utf-8")
    assert (
        text
        == '{\n  "a": {\n    "c": "\\u00e9",\n    "d": [\n      1,\n      2\n    ]\n  },\n  "b": 1\n}\n'
    )


def test_early_stopping_stops_after_patience_epochs_without_improvement(
    mnist, tiny_options, tmp_path, monkeypatch
):
    """Scripted validation bounds: epoch 2 is the best, epochs 3 and 4 do not beat it, so
    patience 2 stops after epoch 4; a resume does not train on, a larger patience does."""
    from pyro_skipvae.infer import SVI

    scores = iter([-100.0, -90.0, -95.0, -90.5, -80.0, -85.0])
    monkeypatch.setattr(SVI, "evaluate_metrics", lambda *a, **k: {"elbo": next(scores), "kl": 1.0})
    run = tmp_path / "run"
    _, history = fit(mnist, tiny_options, run, num_epochs=10, early_stopping_patience=2)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["selected"] for r in history] == [1, 2, 2, 2]
    _, resumed = fit(
        mnist, tiny_options, run, num_epochs=10, resume=True, early_stopping_patience=2
    )
    assert len(resumed) == 4, "a stalled run resumed with the same patience trains no further"
    _, longer = fit(mnist, tiny_options, run, num_epochs=6, resume=True, early_stopping_patience=3)
    assert [r["epoch"] for r in longer] == [1, 2, 3, 4, 5, 6]
    assert [r["selected"] for r in longer][-2:] == [5, 5]


def test_early_stopping_waits_for_the_end_of_the_kl_warmup(
    mnist, tiny_options, tmp_path, monkeypatch
):
    """The bound stalls from epoch 2 on, but β rises until epoch 5: patience 1 stops at 5."""
    from pyro_skipvae.infer import SVI

    scores = iter([-90.0, -95.0, -96.0, -97.0, -98.0, -99.0])
    monkeypatch.setattr(SVI, "evaluate_metrics", lambda *a, **k: {"elbo": next(scores), "kl": 1.0})
    _, history = fit(
        mnist, tiny_options, num_epochs=6, early_stopping_patience=1, kl_warmup_epochs=5
    )
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]


def test_early_stopping_needs_validation_data(mnist, tiny_options):
    with pytest.raises(ConfigError, match="early_stopping_patience needs validation data"):
        SkipVAE(mnist.data_shape, **tiny_options).fit(mnist.train, early_stopping_patience=2)
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        SkipVAE(mnist.data_shape, **tiny_options).fit(
            mnist.train, val=mnist.val, early_stopping_patience=0
        )


def test_validation_counts_the_active_units_of_the_whole_set():
    # Synthetic data with a known answer: q(z | x) = N(x * s, 1), x ~ N(0, I), so
    # Var_x E[z_d | x] = s_d²: 0.25, 0.04, 0.0025 and 0 against δ = 0.01. At N = 4,000 the
    # sample variance's relative SE is √(2/N) ≈ 2 %, far from flipping any of them.
    scales = torch.tensor([0.5, 0.2, 0.05, 0.0])
    x = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x * scales, 1.0).to_event(1))

    validation = Validation(None, None, guide, x, batch_size=64)  # chunked: sums over chunks
    assert validation.active_units() == 2 == active_units(guide, x)
