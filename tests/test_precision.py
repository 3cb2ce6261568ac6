"""Mixed precision (``SkipVAE(precision="bf16-mixed")``, ``--precision``): the networks run in
bfloat16, the probabilistic parts in float32, losses and gradients stay close to float32's,
checkpoints move between precisions, old run folders load, and what cannot run is refused."""

import json
import logging
import math

import pyro
import pytest
import torch
from click.testing import CliRunner
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.data import load_dataset
from pyro_skipvae.infer import precision as mixed
from pyro_skipvae.infer.precision import check_device, precision_mode
from pyro_skipvae.sites import LATENT_SITE, OBSERVED_SITE

# bfloat16 keeps 8 significant bits: unit roundoff u = 2**-8. Under autocast each product
# rounds its two inputs to bfloat16 (relative error <= u/2 each) and accumulates in float32,
# so each product adds at most about u of relative error to what flows through it. The loss
# is a sum of many independent such errors (D terms: about u·sqrt(D) of one term, far below
# u of the sum), so |Δloss| < u·|loss|. A gradient passes back through every product between
# the loss and its weight, and these errors add (the same rounded weights serve every
# datapoint, so they do not average out): at most about L·u for a path of L products. The
# longest path here has L <= 8 (the MLP: three decoder and three encoder layers, and the
# skip inputs), so |Δgrad| < 2·8·u·|grad| leaves a factor of two; measured: MLP 5.4u,
# PixelCNN and LSTM 0.6u. A wrong or dropped term moves either by percents of a different
# direction, and the exact-equality checks below catch autocast being off.
U = 2.0**-8


@pytest.fixture(scope="module")
def ptb(data_dir):
    return load_dataset("ptb", data_dir=data_dir, train_size=200, val_size=64)


def build(case, splits, precision="32"):
    """Small networks of each decoder family (wide enough that products have many terms)."""
    if case == "mlp":
        return SkipVAE(
            splits.data_shape, latent_dim=8, hidden_dims=(64, 64), seed=0, precision=precision
        )
    if case == "pixelcnn":
        return SkipVAE(
            splits.data_shape,
            latent_dim=4,
            decoder="pixelcnn",
            encoder="conv",
            decoder_options={"num_layers": 2, "channels": 8, "kernel_sizes": 3},
            encoder_options={"channels": 8, "num_blocks": 1},
            seed=0,
            precision=precision,
        )
    options = splits.vocabulary.model_options()
    options["encoder_options"].update(embedding_dim=32, hidden_dim=32)
    options["decoder_options"] = {"embedding_dim": 32, "hidden_dim": 32, "dropout": 0.0}
    return SkipVAE(splits.data_shape, latent_dim=8, seed=0, precision=precision, **options)


def batch(case, mnist, ptb):
    if case == "lstm":
        x = ptb.train[:16]
        return x[:, : int((x > 0).sum(1).max())]
    return torch.bernoulli(mnist.train[:16], generator=torch.Generator().manual_seed(0))


def loss_and_gradient(vae, x):
    """The negative ELBO (analytic KL) and its gradient, one fixed reparameterised draw."""
    vae.model.eval(), vae.guide.eval()
    pyro.set_rng_seed(3)
    loss = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    params = vae.parameters()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([g.flatten() for g in grads if g is not None])
    return loss.item(), flat


@pytest.mark.parametrize("case", ["mlp", "pixelcnn", "lstm"])
def test_loss_and_gradient_are_close_to_float32_on_a_fixed_batch(case, mnist, ptb):
    splits = ptb if case == "lstm" else mnist
    x = batch(case, mnist, ptb)
    loss32, grad32 = loss_and_gradient(build(case, splits), x)
    loss16, grad16 = loss_and_gradient(build(case, splits, "bf16-mixed"), x)
    assert grad16.dtype == torch.float32  # the weights' gradients: float32, like the weights
    assert loss16 == pytest.approx(loss32, rel=U)
    assert ((grad16 - grad32).norm() / grad32.norm()).item() < 2 * 8 * U
    # ...and it did run in bfloat16: the same numbers exactly would mean autocast was off
    assert loss16 != loss32


@pytest.mark.parametrize("case", ["mlp", "lstm"])
def test_networks_compute_in_bfloat16_and_hand_float32_to_pyro(case, mnist, ptb):
    splits = ptb if case == "lstm" else mnist
    vae = build(case, splits, "bf16-mixed")
    seen = []
    for module in (*vae.model.decoder.modules(), *vae.guide.encoder.modules()):
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    x = batch(case, mnist, ptb)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    assert seen and set(seen) == {torch.bfloat16}
    for trace, site in ((guide, LATENT_SITE), (model, LATENT_SITE), (model, OBSERVED_SITE)):
        node = trace.nodes[site]
        assert node["fn"].log_prob(node["value"]).dtype == torch.float32, site
    loc, log_var = vae.guide.local_params(x)  # what refinement starts from
    assert loc.dtype == log_var.dtype == torch.float32


def test_end_to_end_semi_amortized_training_runs_mixed(mnist):
    """Second-order autograd through autocast regions: the refinement's gradients are taken
    with create_graph=True through bfloat16 products; the step must stay finite and close."""
    histories = {}
    for precision in ("32", "bf16-mixed"):
        vae = build("mlp", mnist, precision)
        histories[precision] = vae.fit(
            mnist.train[:100],
            num_epochs=1,
            batch_size=50,
            binarize="dynamic",
            inference="semi-amortized",
            inference_options={"num_refine_steps": 2},
            seed=1,
        )
    a, b = histories["32"][0]["train_elbo"], histories["bf16-mixed"][0]["train_elbo"]
    assert b == pytest.approx(a, rel=10 * U)  # two Adam steps from the same start


def test_checkpoints_move_between_precisions_and_config_records_it(mnist, tmp_path, caplog):
    run = tmp_path / "run"
    fit = {"batch_size": 50, "binarize": "dynamic", "run_dir": run}
    vae = build("mlp", mnist, "bf16-mixed")
    vae.fit(mnist.train[:100], val=mnist.val[:50], num_epochs=1, **fit)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["precision"] == "bf16-mixed"
    state = torch.load(run / "best.pt", weights_only=True)
    dtypes = {t.dtype for t in state["model"].values() if t.is_floating_point()}
    assert dtypes == {torch.float32}  # the weights are float32 in either precision
    assert SkipVAE.load(run).config.precision == "bf16-mixed"  # the run's own by default
    loaded = SkipVAE.load(run, precision="32")
    x = torch.bernoulli(mnist.val[:20], generator=torch.Generator().manual_seed(0))
    scores = []
    for each in (vae, loaded):
        pyro.set_rng_seed(5)  # the same draws of z for both
        scores.append(each.evaluate(x)["elbo"])
    assert scores[1] == pytest.approx(scores[0], rel=U) and scores[1] != scores[0]
    # a resume in another precision is allowed (the epochs done stay done) and logged
    with caplog.at_level(logging.WARNING, logger="pyro_skipvae.run"):
        history = build("mlp", mnist, "32").fit(
            mnist.train[:100], val=mnist.val[:50], num_epochs=2, resume=True, **fit
        )
    assert [r["epoch"] for r in history] == [1, 2]
    assert "model.precision '32' (was 'bf16-mixed')" in caplog.text


def test_a_run_saved_before_precision_existed_is_float32(mnist, tmp_path):
    run = tmp_path / "run"
    fit = {"batch_size": 50, "binarize": "dynamic", "run_dir": run}
    build("mlp", mnist).fit(mnist.train[:100], val=mnist.val[:50], num_epochs=1, **fit)
    path = run / "config.json"
    config = json.loads(path.read_text())
    assert config["model"].pop("precision") == "32"
    path.write_text(json.dumps(config))
    assert SkipVAE.load(run).config.precision == "32"
    history = build("mlp", mnist).fit(
        mnist.train[:100], val=mnist.val[:50], num_epochs=2, resume=True, **fit
    )
    assert [r["epoch"] for r in history] == [1, 2]


def test_precisions_are_named_and_checked(mnist, monkeypatch):
    assert precision_mode(32) == precision_mode("fp32") == "32"
    assert precision_mode("bf16") == "bf16-mixed"
    for bad in ("16-mixed", True, None, 16):
        with pytest.raises(ConfigError, match="unknown precision.*expected one of: 32, bf16-mixed"):
            SkipVAE(mnist.data_shape, precision=bad)
    # a GPU without bfloat16 is refused, not silently run in float32
    capabilities = {0: (9, 0), 1: (7, 0)}  # an H100 beside a V100: each is asked about itself
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: capabilities[i])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: ["H100", "Tesla V100"][i])
    with pytest.raises(ConfigError, match="bfloat16 support.*found Tesla V100 on cuda:1"):
        check_device("bf16-mixed", "cuda:1")
    check_device("bf16-mixed", "cuda")  # the current device, cuda:0, has it
    check_device("32", "cuda")  # float32 needs nothing
    with pytest.raises(ConfigError, match="CPU and CUDA"):
        check_device("bf16-mixed", "mps")


def test_a_cpu_without_native_bfloat16_gets_a_warning(mnist, monkeypatch, caplog):
    monkeypatch.setattr(mixed, "native_cpu_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pyro_skipvae.infer.precision"):
        build("mlp", mnist, "bf16-mixed")
    assert "without native bfloat16" in caplog.text


def test_cli_fit_and_diagnose_take_precision(data_dir, tmp_path):
    from pyro_skipvae.cli.main import cli

    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "fit",
            "--dataset",
            "mnist",
            "--data-dir",
            str(data_dir),
            "--train-size",
            "100",
            "--val-size",
            "50",
            "--hidden-dims",
            "16",
            "--latent-dim",
            "2",
            "--num-epochs",
            "1",
            "--quiet",
            "--precision",
            "bf16-mixed",
            "--out",
            str(out),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["model"]["precision"] == "bf16-mixed"
    diagnosed = {}
    for precision in ("32", "bf16-mixed"):
        path = tmp_path / f"diag-{precision}.json"
        result = runner.invoke(
            cli,
            [
                "diagnose",
                str(out),
                "--data-dir",
                str(data_dir),
                "--split",
                "val",
                "--eval-size",
                "50",
                "--num-samples",
                "10",
                "--no-plots",
                "--quiet",
                "--precision",
                precision,
                "--out",
                str(path),
            ],  # fmt: skip
        )
        assert result.exit_code == 0, result.output
        diagnosed[precision] = json.loads(path.read_text())
    # the same weights scored both ways (same seed): the bounds agree to bfloat16 rounding
    assert diagnosed["bf16-mixed"]["elbo"] == pytest.approx(diagnosed["32"]["elbo"], rel=U)
    assert diagnosed["bf16-mixed"]["elbo"] != diagnosed["32"]["elbo"]
    result = runner.invoke(cli, ["fit", "--precision", "16", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "'16' is not one of" in result.output


# Every way of training a model, under bf16-mixed: each fit must run and score a finite
# bound within bfloat16's reach of the float32 fit from the same seed (one epoch, two Adam
# steps of a small MLP: the runs cannot drift apart further than the rounding carries).
TRAININGS = {
    "trace": {},
    "mean-field": {"elbo": "mean-field"},
    "iwae": {"elbo": "iwae", "num_particles": 3},
    "free-bits": {"elbo": "free-bits"},
    "jit": {"elbo": "jit"},
    **{
        f"semi-amortized {mode}": {
            "inference": "semi-amortized",
            "inference_options": {"mode": mode, "num_refine_steps": 2},
        }
        for mode in ("stop-gradient", "kl", "svi")
    },
    "aggressive": {"inference": "aggressive", "inference_options": {"max_aggressive_epochs": 1}},
    "flow guide": {"guide": "flow"},
    "bn-normal guide": {"guide": "bn-normal"},
}


@pytest.mark.parametrize("name", sorted(TRAININGS))
def test_every_elbo_inference_and_guide_trains_mixed(name, mnist):
    options = dict(TRAININGS[name])
    model = {k: options.pop(k) for k in ("guide",) if k in options}
    bounds = {}
    for precision in ("32", "bf16-mixed"):
        vae = SkipVAE(
            mnist.data_shape, latent_dim=4, hidden_dims=(32,), seed=0, precision=precision, **model
        )
        history = vae.fit(
            mnist.train[:100],
            val=mnist.val[:50],
            num_epochs=1,
            batch_size=50,
            binarize="dynamic",
            seed=1,
            **options,
        )
        bounds[precision] = history[-1]["val_elbo"]
    assert all(math.isfinite(b) for b in bounds.values())
    assert bounds["bf16-mixed"] == pytest.approx(bounds["32"], rel=10 * U)
