"""Data-parallel training on torch.distributed (gloo on localhost): a 2-process run equals
the 1-process run on the same global minibatches, trains as well on real MNIST, and resumes
exactly after kill -9.

Processes are started with ``torch.multiprocessing.spawn`` (rendezvous through a file in the
test's temporary folder) or, for the command line, with torchrun's ``--standalone``
rendezvous on localhost; every process group is destroyed before its process exits.
"""

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback

import pyro.distributions as dist
import pyro.infer
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
from click.testing import CliRunner
from test_distributed_helpers import check_helpers

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.cli.main import cli
from pyro_skipvae.guides import Guide

# ---------------------------------------------------------------------- helpers


def spawn(worker, *args, world_size=2, tmp_path):
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` fresh processes joined in a
    gloo group."""
    init_file = tmp_path / f"rendezvous-{time.monotonic_ns()}"
    mp.spawn(_join, args=(world_size, str(init_file), worker, args), nprocs=world_size, join=True)


def _join(rank, world_size, init_file, worker, args):
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        worker(rank, world_size, *args)
    finally:
        torch.distributed.destroy_process_group()


class _FixedNoiseNormal(dist.Normal):
    """Normal(loc, scale) whose draws are loc + scale · ε with ε given: the sampling noise
    held fixed, so runs that split a minibatch differently can be compared exactly."""

    def __init__(self, loc, scale, eps):
        super().__init__(loc, scale)
        self.eps = eps

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return _FixedNoiseNormal(
            self.loc.expand(shape), self.scale.expand(shape), self.eps.expand(shape)
        )

    def rsample(self, sample_shape=torch.Size()):
        return self.loc + self.scale * self.eps

    def sample(self, sample_shape=torch.Size()):
        return self.rsample().detach()


class FixedNoiseGuide(Guide):
    """The amortized guide with ε a fixed function of the datapoint (a random projection of
    x), the same whichever process and minibatch x falls in."""

    def __init__(self, encoder, data_size):
        super().__init__(encoder)
        g = torch.Generator().manual_seed(123)
        self.projection = torch.randn(data_size, encoder.latent_dim, generator=g) / 10

    def distribution(self, loc, log_var, eps=None):
        return _FixedNoiseNormal(loc, (0.5 * log_var).exp(), eps).to_event(1)

    def forward(self, x, *, size=None, beta=1.0, local_params=None):
        import pyro
        from pyro import poutine

        from pyro_skipvae.sites import LATENT_SITE, data_plate

        loc, log_var = self.local_params(x) if local_params is None else local_params
        eps = x.flatten(1).to(self.projection.dtype) @ self.projection
        with data_plate(x, size), poutine.scale(scale=beta):
            return pyro.sample(LATENT_SITE, self.distribution(loc, log_var, eps))


def fit_fixed_noise(train, val, options):
    """A tiny float64 skip-VAE with fixed sampling noise, fitted; returns (history, weights)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train, val = train.double(), val.double()
        vae = SkipVAE(train.shape[1:], latent_dim=3, hidden_dims=(16, 16), seed=0)
        vae.guide = FixedNoiseGuide(vae.guide.encoder, train[0].numel())
        history = vae.fit(train, val=val, **options)
    finally:
        torch.set_default_dtype(dtype)
    weights = {**vae.model.state_dict(), **vae.guide.state_dict()}
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history], weights


FIT = {"num_epochs": 2, "binarize": "dynamic", "kl_warmup_epochs": 1, "seed": 4, "batch_size": 51}
INFERENCES = {
    "svi": {"inference": "svi"},
    "sa-end-to-end": {
        "inference": "semi-amortized",
        "inference_options": {
            "mode": "end-to-end",
            "num_refine_steps": 2,
            # the clip sees each rank's share of the refinement gradient (see
            # SemiAmortizedSVI); without it the steps are the 1-process steps exactly
            "refine_max_grad_norm": None,
        },
    },
}


def step_without_size(x, inference):
    """One plain-SGD step of a tiny float64 skip-VAE with fixed sampling noise on ``x``,
    called as ``step(x)`` (no ``size``); returns the weights after it."""
    from pyro_skipvae.infer import Optimizer, SemiAmortizedSVI
    from pyro_skipvae.infer.svi import SVI

    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        vae = SkipVAE(x.shape[1:], latent_dim=3, hidden_dims=(16, 16), seed=0)
        vae.guide = FixedNoiseGuide(vae.guide.encoder, x[0].numel())
        params = [*vae.model.parameters(), *vae.guide.parameters()]
        optim = Optimizer(params, name="sgd", learning_rate=0.5, clip_norm=None)
        if inference == "svi":
            step = SVI(vae.model, vae.guide, optim, pyro.infer.Trace_ELBO())
        else:
            step = SemiAmortizedSVI(
                vae.model,
                vae.guide,
                optim,
                pyro.infer.Trace_ELBO(),
                num_refine_steps=2,
                refine_max_grad_norm=None,
            )
        step.step(x.double())
    finally:
        torch.set_default_dtype(dtype)
    return {**vae.model.state_dict(), **vae.guide.state_dict()}


#: a synthetic binary minibatch of B = 5 (shards of 3 and 2 on two ranks)
STEP_DATA = (torch.rand(5, 12, generator=torch.Generator().manual_seed(1)) < 0.5).float()


def _worker(rank, world_size, train, val, out):
    """Everything the 2-process checks need, in one start of the processes (they are slow
    to start): the helpers' checks (their failure recorded, not raised), the fits and one
    step without ``size`` on unequal shards."""
    try:
        check_helpers(rank)
        helpers = None
    except Exception:
        helpers = traceback.format_exc()
    fits = {name: fit_fixed_noise(train, val, {**FIT, **o}) for name, o in INFERENCES.items()}
    share = STEP_DATA.tensor_split(world_size)[rank]
    steps = {name: step_without_size(share, name) for name in ("svi", "semi-amortized")}
    torch.save({"helpers": helpers, "fits": fits, "steps": steps}, f"{out}.{rank}")


@pytest.fixture(scope="module")
def two_process_results(mnist, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("spawned")
    # train: global minibatches of 51, 51, 51, 47 (shards 26/25 and 24/23); val: two whole
    # refinement chunks of 51, so 1 and 2 processes refine the same chunks at evaluation
    train, val = mnist.train[:200], mnist.val[:102]
    spawn(_worker, train, val, str(tmp_path / "out"), tmp_path=tmp_path)
    return train, val, [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=True) for r in (0, 1)]


# ---------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("inference", INFERENCES)
def test_two_process_steps_equal_one_process_steps(two_process_results, float64, inference):
    """With the sampling noise fixed, two gloo processes sharing each global minibatch of 51
    (unequal shards) reach the parameters, train ELBO and validation metrics of one process
    stepping on the whole minibatches, to float64 rounding."""
    train, val, results = two_process_results
    expected_history, expected_weights = fit_fixed_noise(
        train, val, {**FIT, **INFERENCES[inference]}
    )
    for result in results:
        history, weights = result["fits"][inference]
        assert len(history) == len(expected_history) == 2
        # Adam divides by sqrt(v) + 1e-8: where a gradient is nearly zero, a rounding
        # difference δ of the rank-summed gradient moves the weight by up to lr·δ/1e-8
        # (lr 1e-3, δ ~ 1e-14 for N-scaled gradients of size ~1e2): atol 1e-7; validation
        # metrics computed from those weights then agree to ~1e-7 relative.
        for name, value in expected_weights.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-9, atol=1e-7)
        for got, want in zip(history, expected_history):
            assert got.keys() == want.keys()
            for key in want:
                # `prepare` keeps data in float32, so log p(x|z), and with it the reported
                # loss (not its gradient), is a float32 sum whose rounding depends on how
                # the minibatch is split: relative error ~1e-7 in train_elbo.
                rel = 1e-6 if key == "train_elbo" else 1e-7
                assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-9), key
    # the run actually moved the weights (the comparison is not of two initialisations)
    fresh = SkipVAE(train.shape[1:], latent_dim=3, hidden_dims=(16, 16), seed=0)
    name = "decoder.layers.2.weight"
    assert not torch.allclose(fresh.model.state_dict()[name], expected_weights[name])


@pytest.mark.parametrize("inference", ["svi", "semi-amortized"])
def test_a_step_without_size_on_unequal_shards_is_the_one_process_step(
    two_process_results, inference
):
    """``step(x)`` without ``size`` on shards of 3 and 2 of a minibatch of 5 moves both
    replicas exactly as one process stepping on all 5 (to float64 rounding): the plate
    scale is the global B/B_r, matching the all-reduce's weights B_r/B."""
    expected = step_without_size(STEP_DATA, inference)
    fresh = SkipVAE(STEP_DATA.shape[1:], latent_dim=3, hidden_dims=(16, 16), seed=0)
    name = "decoder.layers.2.weight"
    assert not torch.allclose(fresh.model.state_dict()[name].double(), expected[name])
    for result in two_process_results[2]:
        weights = result["steps"][inference]
        for key, value in expected.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-9, atol=1e-12)


def test_distributed_helpers_on_two_processes(two_process_results):
    for rank, result in enumerate(two_process_results[2]):
        assert result["helpers"] is None, f"rank {rank}: {result['helpers']}"


# ---------------------------------------------------------------------- the command line

SMALL = [
    "--train-size",
    "500",
    "--val-size",
    "200",
    "--latent-dim",
    "4",
    "--hidden-dims",
    "32,32",
    "--kl-warmup-epochs",
    "1",
    "--batch-size",
    "50",
    "--num-epochs",
    "4",
    "--quiet",
]


def torchrun(exe, *args):
    """``torchrun --standalone --nproc_per_node 2 $(which skipvae) fit ...`` (localhost)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        exe,
        "fit",
        *args,
    ]


def records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data_dir, skipvae_exe):
    """A 2-process run through `skipvae fit --nproc 2` (4 epochs of 500 MNIST images), with
    TensorBoard curves (a logger leaves the training as it is)."""
    out = tmp_path_factory.mktemp("two-process") / "run"
    args = ["fit", "--data-dir", str(data_dir), *SMALL, "--seed", "5", "--out", str(out)]
    args += ["--logger", "tensorboard", "--log-every-n-steps", "5"]
    done = subprocess.run(
        [skipvae_exe, *args, "--nproc", "2"], env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_two_process_fit_writes_one_run_folder(two_process_run):
    out, stdout = two_process_run
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "tensorboard",
        "train.log",
    ]
    assert stdout.count("results in") == 1, "only rank 0 prints"
    (events,) = (out / "tensorboard").iterdir()  # only rank 0 writes
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = EventAccumulator(str(events)).Reload()
    # the global minibatches of 50 count the steps: 10 an epoch, whatever the processes
    assert [e.step for e in curves.Scalars("train/elbo")] == list(range(5, 41, 5))
    assert [e.step for e in curves.Scalars("val/elbo")] == [10, 20, 30, 40]
    log = (out / "train.log").read_text()
    for epoch in (1, 2, 3, 4):
        assert log.count(f"epoch {epoch}: {{'epoch': {epoch}, ") == 1, "only rank 0 logs"
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["world_size"] == 2
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(state["rng"]) == 2, "every rank's random state is saved"
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"]), (
        "ranks draw independent noise"
    )
    assert [r["epoch"] for r in records(out)] == [1, 2, 3, 4]


def test_two_processes_train_as_well_as_one(two_process_run, mnist):
    """The validation ELBO after 4 epochs with 2 processes lies within the seed-to-seed noise
    of the 1-process run: inside the 99.9% prediction interval of 8 single-process seeds
    (Student t with 7 degrees of freedom, t = 5.408)."""
    out, _ = two_process_run
    two = records(out)[-1]["val_elbo"]
    ones = []
    for seed in range(8):
        vae = SkipVAE(mnist.data_shape, latent_dim=4, hidden_dims=(32, 32), seed=seed)
        history = vae.fit(
            mnist.train,
            val=mnist.val,
            num_epochs=4,
            batch_size=50,
            binarize="dynamic",
            kl_warmup_epochs=1,
            seed=seed,
        )
        ones.append(history[-1]["val_elbo"])
    mean, sd = statistics.mean(ones), statistics.stdev(ones)
    half_width = 5.408 * sd * math.sqrt(1 + 1 / len(ones))
    assert abs(two - mean) < half_width, (two, ones)


def test_two_process_run_killed_and_resumed_equals_an_uninterrupted_one(
    two_process_run, tmp_path, data_dir, skipvae_exe
):
    """torchrun with 2 processes, SIGKILL to the whole process group after epoch 2, then
    --resume: metrics and weights equal the uninterrupted 2-process run's exactly."""
    full, _ = two_process_run
    killed = tmp_path / "killed"
    args = ["--data-dir", str(data_dir), *SMALL, "--seed", "5", "--out", str(killed)]
    process = subprocess.Popen(
        torchrun(skipvae_exe, *args),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the launcher and both workers
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            metrics = killed / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run finished before it could be killed"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 2 <= done < 4

    resumed = subprocess.run(
        torchrun(skipvae_exe, *args, "--resume"), env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert records(killed) == records(full)
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    for part in ("model", "guide"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_resume_with_another_number_of_processes_is_refused(two_process_run, tmp_path, data_dir):
    out = tmp_path / "run"
    shutil.copytree(two_process_run[0], out)
    args = ["fit", "--data-dir", str(data_dir), *SMALL, "--seed", "5", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--num-epochs", "5", "--resume"])
    assert result.exit_code == 2
    assert "trained by 2 process(es), this is 1" in result.output
    assert "--nproc 2" in result.output
    with pytest.raises(ConfigError, match="trained by 2 process"):
        SkipVAE((1, 28, 28), latent_dim=4, hidden_dims=(32, 32)).fit(
            torch.zeros(10, 1, 28, 28), run_dir=out, resume=True, num_epochs=5
        )


def test_nproc_under_a_launcher_is_a_usage_error(monkeypatch, data_dir):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["fit", "--data-dir", str(data_dir), "--nproc", "2"])
    assert result.exit_code == 2
    assert "omit --nproc" in result.output
