"""The installed ``skipvae`` command: fit on real MNIST, exit codes, and kill -9 + --resume."""

import json
import os
import signal
import subprocess
import time

import click
import pytest
import torch
from click.testing import CliRunner

from pyro_skipvae.cli.main import cli

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
    "--quiet",
]


def run_cli(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("skip", ["--skip", "--no-skip"])
def test_fit_on_real_mnist(tmp_path, data_dir, skip):
    result = run_cli(
        "fit",
        "--data-dir",
        str(data_dir),
        *SMALL,
        "--num-epochs",
        "2",
        skip,
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code == 0, result.output
    last_line = result.output.strip().splitlines()[-1]
    assert last_line == f"results in {tmp_path / 'run'}"
    assert "validation ELBO" in result.output
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [1, 2]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["skip"] is (skip == "--skip")


@pytest.mark.parametrize(
    "args, status, message",
    [
        (["--latent-dim", "0"], 2, "0 is not in the range x>=1"),
        (["--hidden-dims", "64,x"], 2, "comma-separated integers"),
        (["--prior", "laplace"], 2, "error: unknown prior 'laplace'; expected one of:"),
        (["--likelihood", "categorical"], 2, "expected the option num_categories >= 2"),
        (
            ["--decoder-option", "width=3"],
            2,
            "unknown option(s) width for decoder 'mlp'; valid options: hidden_dims",
        ),
        (["--decoder-option", "hidden_dims"], 2, "expected KEY=VALUE"),
        (["--device", "gpu"], 2, "expected cpu, cuda or cuda:N"),
        (["--elbo", "iwae", "--num-particles", "1"], 2, "num_particles must be an integer >= 2"),
        (["--dataset", "cifar"], 2, "error: unknown dataset 'cifar'"),
        (["--data-dir", "/nonexistent"], 1, "error: no data directory holding MNIST/raw/"),
        (
            ["--likelihood", "bernoulli", "--binarize", "none"],
            1,
            "error: training data: BernoulliLikelihood expects binary values",
        ),
    ],
)
def test_bad_input_gives_one_readable_line_and_an_exit_status(
    tmp_path, data_dir, args, status, message
):
    base = ["fit", *SMALL, "--num-epochs", "1", "--out", str(tmp_path / "run")]
    if "--data-dir" not in args:
        base += ["--data-dir", str(data_dir)]
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code == status, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_out_naming_a_file_is_a_usage_error_and_the_file_is_kept(tmp_path, data_dir):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    result = run_cli("fit", "--data-dir", str(data_dir), *SMALL, "--out", str(out))
    assert result.exit_code == 2
    assert f"Directory '{out}' is a file" in result.output
    assert out.read_text() == "mine"


def test_resume_against_another_config_is_a_usage_error(tmp_path, data_dir):
    out = str(tmp_path / "run")
    assert (
        run_cli(
            "fit", "--data-dir", str(data_dir), *SMALL, "--num-epochs", "1", "--out", out
        ).exit_code
        == 0
    )
    result = CliRunner().invoke(
        cli,
        [
            "fit",
            "--data-dir",
            str(data_dir),
            *SMALL,
            "--num-epochs",
            "2",
            "--latent-dim",
            "5",
            "--out",
            out,
            "--resume",
        ],
    )
    assert result.exit_code == 2
    # the refused attempt is recorded in the run's log, after the first run's records
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert "epoch 1: {'epoch': 1" in log[-3] and "--latent-dim 5" in log[-2]
    assert log[-1].endswith(
        "stopped: ConfigError: cannot resume " + out + ": its "
        "configuration differs in model.latent_dim: saved 4, now 5"
    )
    assert (
        result.output.strip()
        == "error: cannot resume "
        + out
        + ": its configuration differs in model.latent_dim: saved 4, now 5"
    )


def test_fit_init_from_fine_tunes_another_run_semi_amortized(tmp_path, data_dir):
    source, tuned = str(tmp_path / "amortized"), str(tmp_path / "tuned")
    fit = ["fit", "--data-dir", str(data_dir), *SMALL, "--num-epochs", "1"]
    assert run_cli(*fit, "--out", source).exit_code == 0
    sa = ["--inference", "semi-amortized", "--num-refine-steps", "2", "--init-from", source]
    result = CliRunner().invoke(cli, [*fit, *sa, "--latent-dim", "5", "--out", tuned])
    assert result.exit_code == 2
    assert result.output.startswith(
        f"error: cannot start from {source}/best.pt: it holds another model"
    )
    assert not (tmp_path / "tuned" / "config.json").exists()
    result = run_cli(*fit, *sa, "--out", tuned)
    assert result.exit_code == 0, result.output
    assert "refined validation ELBO" in result.output
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["train"]["init_from"] == source
    assert config["train"]["inference"] == "semi-amortized"
    log = (tmp_path / "tuned" / "train.log").read_text()
    assert f"starting from the weights of {source}/best.pt (epoch 1)" in log


def start_and_wait_for_epochs(command, run, epochs, env, **popen):
    """Start ``skipvae fit`` and return once ``epochs`` epochs are in its metrics.jsonl."""
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen}
    process = subprocess.Popen(command, env=env, **popen)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be stopped; make it longer"
    return process


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, data_dir, skipvae_exe):
    """A run killed with SIGKILL mid-training and resumed ends identical to one never stopped."""
    exe = skipvae_exe
    args = ["fit", "--data-dir", str(data_dir), *SMALL, "--num-epochs", "6", "--seed", "5"]
    env = {**os.environ, "SKIPVAE_CACHE_DIR": os.environ["SKIPVAE_CACHE_DIR"]}
    subprocess.run(
        [exe, *args, "--out", str(tmp_path / "full")], check=True, env=env, capture_output=True
    )

    killed = tmp_path / "killed"
    process = start_and_wait_for_epochs([exe, *args, "--out", str(killed)], killed, 2, env)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 2 <= done < 6

    resumed = subprocess.run(
        [exe, *args, "--out", str(killed), "--resume"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    # train.log: every epoch's record, across the kill, appended to by the resumed process;
    # the console (without -v) shows none of these INFO records.
    log = (killed / "train.log").read_text()
    assert log.count("INFO pyro_skipvae.cli.fit: skipvae fit ") == 2
    assert f"resuming {killed} after epoch {done}" in log
    for epoch in range(1, 7):
        assert f"INFO pyro_skipvae.infer.fit: epoch {epoch}: {{'epoch': {epoch}, " in log
    assert "epoch 6: {" not in resumed.stderr and "resuming" not in resumed.stderr
    assert "epoch 6: {'epoch': 6" in (tmp_path / "full" / "train.log").read_text()

    def records(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert records(killed) == records(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    for part in ("model", "guide"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_installed_command_help(skipvae_exe):
    result = subprocess.run(
        [skipvae_exe, "fit", "--help"], capture_output=True, text=True, check=True
    )
    for flag in (
        "--skip / --no-skip",
        "--latent-dim",
        "--hidden-dims",
        "--kl-warmup-epochs",
        "--train-size",
        "--resume",
        "--device",
    ):
        assert flag in result.stdout


@pytest.mark.slow
def test_full_mnist_epoch_trains_skip_and_plain_vaes(tmp_path, data_dir):
    """One epoch on all 50,000 training images through the CLI, for both decoders:
    the bound must already be far above the ~-543 nats of an untrained model
    (784 · log 2) and neither model may have collapsed (KL well above 0)."""
    for skip in ("--skip", "--no-skip"):
        out = tmp_path / skip
        result = run_cli(
            "fit",
            "--data-dir",
            str(data_dir),
            "--num-epochs",
            "1",
            "--quiet",
            skip,
            "--out",
            str(out),
        )
        assert result.exit_code == 0, result.output
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert record["val_elbo"] > -160 and record["val_kl"] > 5, record


def test_component_options_reach_config_json_and_the_reloaded_model(tmp_path, data_dir):
    out = tmp_path / "run"
    result = run_cli(
        "fit",
        "--data-dir",
        str(data_dir),
        *SMALL,
        "--num-epochs",
        "1",
        "--out",
        str(out),
        "--decoder-option",
        "hidden_dims=[16, 8]",
        "--encoder-option",
        "hidden-dims=[12]",
        "--prior",
        "mixture",
        "--prior-option",
        "num_components=3",
    )
    assert result.exit_code == 0, result.output
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["decoder_options"] == {"hidden_dims": [16, 8]}  # explicit beats --hidden-dims
    assert model["encoder_options"] == {"hidden_dims": [12]}
    assert model["prior_options"] == {"num_components": 3}
    from pyro_skipvae import SkipVAE

    vae = SkipVAE.load(out)
    assert [m.out_features for m in vae.model.decoder.layers] == [16, 8, 784]
    assert vae.model.prior.logits.shape == (3,)


def test_click_errors_raised_inside_a_command_keep_clicks_status_and_message():
    """A usage check inside a command body is click's to report (exit 2 with the usage
    line), not an "unexpected" error of the library (exit 1)."""
    from pyro_skipvae.cli.options import handle_errors

    @click.command()
    @handle_errors
    def command():
        raise click.UsageError("--cell takes one cell; found --jobs 2")

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 2
    assert "Usage:" in result.output and "--cell takes one cell" in result.output
    assert "unexpected" not in result.output


def test_sigterm_stops_a_fit_like_ctrl_c(tmp_path, data_dir, skipvae_exe):
    """SIGTERM (a batch scheduler's time limit) unwinds like Ctrl-C: exit status 143, one line
    saying so, the run lock released, the last epoch's checkpoint intact and resumable."""
    run = tmp_path / "run"
    args = ["fit", "--data-dir", str(data_dir), *SMALL, "--num-epochs", "6", "--out", str(run)]
    env = {**os.environ, "SKIPVAE_CACHE_DIR": os.environ["SKIPVAE_CACHE_DIR"]}
    with open(tmp_path / "stderr", "w") as stderr:
        process = start_and_wait_for_epochs([skipvae_exe, *args], run, 1, env, stderr=stderr)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert (tmp_path / "stderr").read_text() == (
        "error: terminated by SIGTERM; the last completed epoch's checkpoint is intact"
        " (use --resume)\n"
    )
    assert not (run / ".lock").exists()  # released, not left for a takeover
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 6
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == done
    resumed = subprocess.run([skipvae_exe, *args, "--resume"], env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6


def test_terminate_as_interrupt_raises_in_the_block_and_keeps_ignored_signals_ignored():
    from pyro_skipvae.cli.options import Terminated, terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    ignored = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with pytest.raises(Terminated) as stopped, terminate_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread before the sleep ends
        assert stopped.value.signum == signal.SIGTERM
        assert str(stopped.value) == "terminated by SIGTERM"
        assert isinstance(stopped.value, KeyboardInterrupt)  # unwinds as Ctrl-C does
        assert signal.getsignal(signal.SIGTERM) is before  # put back after the block
    finally:
        signal.signal(signal.SIGHUP, ignored)
