"""Compiled networks (``SkipVAE(compile=...)``, ``skipvae fit --compile``): a compiled fit
gives the losses of an eager one, checkpoints move between the two, runs written before the
option existed still load and resume, and what cannot be compiled is refused up front."""

import json
import logging
import math

import pytest
import torch
from click.testing import CliRunner

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.data import load_dataset
from pyro_skipvae.infer import ELBOS, SVI, Optimizer, SemiAmortizedSVI
from pyro_skipvae.infer.compile import _cloning, check_training, compile_mode

# Compiling reorders float32 reductions and fuses kernels; it does not change the maths. A
# summed log-likelihood of D terms then differs by about sqrt(D) ulps of its terms (1e-6
# relative for D = 784), and a few Adam steps carry that forward without amplifying it
# (Adam's update is scale-free in the gradient); 1e-4 relative leaves a hundredfold margin and
# still catches any real change of the loss (a dropped or doubled term moves it by > 1%).
RTOL = 1e-4


@pytest.fixture(scope="module")
def ptb(data_dir):
    return load_dataset("ptb", data_dir=data_dir)


def build(case, splits, compile=False):
    """Tiny networks of each decoder family (compile time dominates these tests)."""
    if case == "mlp":
        return SkipVAE(splits.data_shape, latent_dim=3, hidden_dims=(16,), seed=0, compile=compile)
    if case == "pixelcnn":
        return SkipVAE(
            splits.data_shape,
            latent_dim=3,
            decoder="pixelcnn",
            encoder="conv",
            decoder_options={"num_layers": 2, "channels": 4, "kernel_sizes": 3},
            encoder_options={"channels": 4, "num_blocks": 2},
            seed=0,
            compile=compile,
        )
    options = splits.vocabulary.model_options()  # lstm: the text model, no dropout
    options["encoder_options"].update(embedding_dim=8, hidden_dim=8)
    options["decoder_options"] = {"embedding_dim": 8, "hidden_dim": 8, "dropout": 0.0}
    return SkipVAE(splits.data_shape, latent_dim=3, seed=0, compile=compile, **options)


def data(case, mnist, ptb):
    """Three training minibatches and a validation set (text: minibatches of different
    lengths, so the compiled decoder meets several shapes)."""
    if case == "lstm":
        return ptb, ptb.train[:48], ptb.val[:32], {"batch_size": 16, "kl_warmup_epochs": 1}
    fit = {"batch_size": 50, "binarize": "dynamic", "kl_warmup_epochs": 1}
    return mnist, mnist.train[:150], mnist.val[:100], fit


# Compilation dominates: with a cold Inductor cache on one loaded core, mlp 20 s, pixelcnn
# 58 s, lstm 19 s (warm: 3-6 s each); the two autoregressive decoders run with -m slow.
@pytest.mark.parametrize(
    "case",
    [
        "mlp",
        pytest.param("pixelcnn", marks=pytest.mark.slow),
        pytest.param("lstm", marks=pytest.mark.slow),
    ],
)
def test_a_compiled_fit_gives_the_losses_of_an_eager_one(case, mnist, request, tmp_path):
    ptb = request.getfixturevalue("ptb") if case == "lstm" else None
    splits, train, val, options = data(case, mnist, ptb)
    histories = {}
    for compiled in (False, True):
        vae = build(case, splits, compile=compiled)
        assert vae.compiled == ("default" if compiled else False)
        histories[compiled] = vae.fit(
            train, val=val, num_epochs=2, run_dir=tmp_path / str(compiled), seed=1, **options
        )
    assert len(histories[True]) == 2
    for eager, compiled in zip(histories[False], histories[True]):
        for key in ("train_elbo", "val_elbo"):
            assert math.isfinite(eager[key])
            assert compiled[key] == pytest.approx(eager[key], rel=RTOL), key
        # the KL is a small part of the bound (0.1 of 540 nats after a few steps): its
        # rounding error is the bound's, so its tolerance is too
        assert compiled["val_kl"] == pytest.approx(eager["val_kl"], abs=RTOL * -eager["val_elbo"])
    # the compiled networks did run compiled code
    assert vae.model.decoder._compiled_call_impl is not None
    assert vae.guide.encoder._compiled_call_impl is not None


def test_compiled_checkpoints_load_into_eager_models(mnist, tmp_path):
    for case in ("mlp", "pixelcnn"):  # no "_orig_mod." prefixes: compiled in place
        vae, eager = build(case, mnist, compile=True), build(case, mnist)
        for module in ("model", "guide"):  # (pixelcnn: the conv encoder's BatchNorm buffers)
            keys = list(getattr(vae, module).state_dict())
            assert keys == list(getattr(eager, module).state_dict())
    vae = build("mlp", mnist, compile=True)
    vae.fit(
        mnist.train[:100],
        val=mnist.val[:50],
        num_epochs=1,
        run_dir=tmp_path / "run",
        binarize="dynamic",
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["compile"] == "default"
    loaded = SkipVAE.load(tmp_path / "run", compile=False)
    assert loaded.compiled is False and loaded.config.compile is False
    x = torch.bernoulli(mnist.val[:20])
    with torch.no_grad():
        vae.guide.eval(), loaded.guide.eval()
        for a, b in zip(vae.guide.encoder(x), loaded.guide.encoder(x)):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-5)
    assert SkipVAE.load(tmp_path / "run").compiled == "default"  # the config is honoured


def test_a_run_saved_before_compile_existed_loads_and_resumes_compiled(mnist, tmp_path):
    run = tmp_path / "run"
    fit = {"batch_size": 50, "binarize": "dynamic", "run_dir": run}
    build("mlp", mnist).fit(mnist.train[:100], val=mnist.val[:50], num_epochs=1, **fit)
    path = run / "config.json"
    config = json.loads(path.read_text())
    assert config["model"].pop("compile") is False
    path.write_text(json.dumps(config))
    assert SkipVAE.load(run).compiled is False
    # compiling changes the speed, not the function: a run may resume with it either way
    vae = build("mlp", mnist, compile=True)
    history = vae.fit(mnist.train[:100], val=mnist.val[:50], num_epochs=2, resume=True, **fit)
    assert [r["epoch"] for r in history] == [1, 2]


def test_modes_are_checked_and_cuda_graphs_fall_back_off_cuda(mnist, caplog):
    assert compile_mode(None) is False and compile_mode(True) == "default"
    with pytest.raises(ConfigError, match="unknown compile mode 'fast'.*reduce-overhead"):
        SkipVAE(mnist.data_shape, compile="fast")
    with caplog.at_level(logging.WARNING, logger="pyro_skipvae.infer.compile"):
        vae = build("mlp", mnist, compile="reduce-overhead")
    assert vae.config.compile == "reduce-overhead"  # as asked, for a later run on a GPU
    assert vae.compiled == "default"  # what runs here
    assert "need a CUDA device" in caplog.text


def test_end_to_end_semi_amortized_training_is_refused(mnist):
    vae = build("mlp", mnist, compile=True)
    with pytest.raises(ConfigError, match="end-to-end.*double backward.*stop-gradient"):
        vae.fit(mnist.train[:50], num_epochs=1, inference="semi-amortized", binarize="dynamic")
    with pytest.raises(ConfigError, match="JIT-traced ELBO"):
        vae.fit(mnist.train[:50], num_epochs=1, elbo="jit", binarize="dynamic")


def test_torch_refuses_double_backward_through_a_compiled_network():
    """Why end-to-end semi-amortized training is refused: its gradient differentiates a
    gradient taken through the decoder. If a later torch lifts this limit, this test fails
    and the refusal in pyro_skipvae.infer.compile.check_training can go."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    net.compile()
    z = torch.randn(5, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(net(z).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.pow(2).sum().backward()


def test_cuda_graph_modes_refuse_refinement_and_variable_lengths(mnist):
    vae = build("mlp", mnist)
    optimizer = Optimizer(vae.parameters())
    svi = SVI(vae.model, vae.guide, optimizer, ELBOS.build("trace"))
    semi = SemiAmortizedSVI(
        vae.model, vae.guide, optimizer, ELBOS.build("trace"), mode="stop-gradient"
    )
    check_training("reduce-overhead", svi)  # fixed shapes, one pass each: accepted
    check_training("default", semi)
    check_training("default", svi, sequences=True)
    with pytest.raises(ConfigError, match="K \\+ 1 times"):
        check_training("reduce-overhead", semi)
    with pytest.raises(ConfigError, match="change length"):
        check_training("max-autotune", svi, sequences=True)


def test_cli_fit_takes_compile_with_or_without_a_mode(data_dir, tmp_path):
    from pyro_skipvae.cli.main import cli

    common = [
        "fit", "--dataset", "mnist", "--data-dir", str(data_dir), "--train-size", "100",
        "--val-size", "50", "--hidden-dims", "16", "--latent-dim", "2", "--num-epochs", "1",
        "--quiet",
    ]  # fmt: skip
    runner = CliRunner()
    for extra, stored in (([], False), (["--compile"], "default")):
        out = tmp_path / str(stored)
        result = runner.invoke(cli, [*common, *extra, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "config.json").read_text())["model"]["compile"] == stored
    result = runner.invoke(cli, [*common, "--compile", "fastest", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "'fastest' is not one of" in result.output


def test_cuda_graph_outputs_are_cloned_so_a_replay_cannot_overwrite_them():
    """Under the CUDA-graph modes every tensor a compiled network returns is cloned (a
    replay writes its outputs into the same memory); other values pass through. Checked on
    the wrapper itself, since CUDA graphs need a GPU."""
    shared = torch.arange(3.0)

    def network(x, *, scale):
        return {"loc": shared, "pair": (shared * scale, "tag")}, 7

    out, seven = _cloning(network)(None, scale=2.0)
    assert seven == 7 and out["pair"][1] == "tag"
    assert torch.equal(out["loc"], shared) and out["loc"].data_ptr() != shared.data_ptr()
    assert torch.equal(out["pair"][0], 2 * shared)
    shared += 1  # what a replay does to its output buffer
    assert torch.equal(out["loc"], torch.arange(3.0))
