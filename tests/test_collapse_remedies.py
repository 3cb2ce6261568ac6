"""The field's collapse remedies as components: BN-VAE's guide (Zhu et al. 2020) and aggressive
encoder training (He et al. 2019), each against a case with a known answer.

The linear-Gaussian model here is synthetic (not a data set): z ~ N(0, I_D),
x | z ~ N(Wz + b, s² I_P) with orthogonal columns of W, whose exact posterior
N(Σ Wᵀ(x − b)/s², Σ), Σ = (I + WᵀW/s²)⁻¹, is diagonal, so a linear mean-field encoder can
match it exactly (closed forms in ``linear_gaussian.py``).
"""

import json
import math

import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from linear_gaussian import LinearDecoder, posterior
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_skipvae import CheckpointError, ConfigError, Guide, Model, SkipVAE
from pyro_skipvae.guides import GUIDES, BatchNormGuide, Encoder, MLPEncoder
from pyro_skipvae.infer import INFERENCES, AggressiveSVI, Optimizer
from pyro_skipvae.models.likelihoods import NormalLikelihood
from pyro_skipvae.models.priors import StandardNormalPrior

D, P, NOISE, EPS = 2, 5, 1.0, 1e-5


# ---------------------------------------------------------------------------------- BN-VAE
def _bn_guide(gamma, weight_scale, seed, latent_dim=6):
    torch.manual_seed(seed)
    encoder = MLPEncoder((10,), latent_dim, hidden_dims=(16,))
    with torch.no_grad():
        encoder.head.weight.mul_(weight_scale)
        encoder.head.bias.add_(torch.randn(2 * latent_dim) * weight_scale)
    guide = BatchNormGuide(encoder, gamma=gamma)
    with torch.no_grad():
        guide.shift.copy_(torch.randn(latent_dim) * 0.3)
    return guide


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("gamma", [0.3, 1.5])
@pytest.mark.parametrize("weight_scale", [0.01, 1.0, 30.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_bn_means_have_scale_gamma_and_the_minibatch_kl_is_at_least_d_gamma_squared_over_2(
    gamma, weight_scale, seed
):
    guide = _bn_guide(gamma, weight_scale, seed).train()
    x = torch.randn(64, 10) * 3
    raw, _ = guide.encoder(x)
    loc, log_var = guide.local_params(x)
    v = raw.var(0, unbiased=False)
    beta = guide.shift.detach()
    # batch norm fixes each dimension's minibatch mean at β_d and its second moment exactly
    assert torch.allclose(loc.mean(0), beta, atol=1e-10)
    second_moment = loc.pow(2).mean(0)
    assert torch.allclose(second_moment, gamma**2 * v / (v + EPS) + beta**2, rtol=1e-9)
    # KL(q || N(0, I)) >= ½ Σ μ̂² per datapoint, so its minibatch mean >= ½ Σ_d (γ² v/(v+ε) + β²)
    q = dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)
    p = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
    mean_kl = kl_divergence(q, p).mean()
    latent_dim = loc.shape[-1]
    assert mean_kl >= 0.5 * second_moment.sum() - 1e-10
    ratio = (v / (v + EPS)).min()  # what ε = 1e-5 leaves of the bound; ~1 unless μ barely varies
    assert mean_kl >= latent_dim * gamma**2 / 2 * ratio - 1e-10
    if weight_scale >= 1:
        assert ratio > 0.999


@pytest.mark.usefixtures("float64")
def test_without_batch_norm_the_same_encoder_falls_below_the_bound():
    """The check can fail: the plain Gaussian guide on the same small-weight encoder has a
    KL far under D γ² / 2."""
    bn = _bn_guide(1.0, 0.01, seed=0)
    plain = Guide(bn.encoder)
    x = torch.randn(64, 10)
    loc, log_var = plain.local_params(x)
    q = dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)
    mean_kl = kl_divergence(q, dist.Normal(0.0, 1.0).expand(loc.shape).to_event(1)).mean()
    assert mean_kl < 0.1 * loc.shape[-1] / 2


def test_bn_guide_is_selectable_its_gamma_is_a_constant_and_its_shift_is_learned():
    assert GUIDES.get("bn-normal") is BatchNormGuide
    assert GUIDES.options("bn-normal", filled=("encoder", "name")) == ["gamma"]
    vae = SkipVAE((6,), latent_dim=3, hidden_dims=(8,), guide="bn-normal", likelihood="normal")
    assert vae.config.guide_options == {"gamma": 0.5}  # the default is recorded
    guide = vae.guide
    assert any(p is guide.shift for p in vae.parameters())
    assert not any(p.shape == (3,) and torch.all(p == 0.5) for p in guide.parameters())
    before = guide.shift.detach().clone()
    vae.fit(torch.randn(40, 6) + 2.0, num_epochs=1, batch_size=10, learning_rate=0.05)
    assert guide.gamma == 0.5
    assert not torch.equal(guide.shift.detach(), before)
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ConfigError, match="gamma must be a positive number"):
            SkipVAE((6,), latent_dim=3, guide="bn-normal", guide_options={"gamma": bad})


def test_a_bn_vae_reloads_with_its_running_statistics(tmp_path):
    data = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)) * 2.0
    vae = SkipVAE((6,), latent_dim=3, hidden_dims=(8,), guide="bn-normal", likelihood="normal")
    vae.fit(data, num_epochs=2, batch_size=10, run_dir=tmp_path / "run")
    loaded = SkipVAE.load(tmp_path / "run")
    running = vae.guide.batch_norm.running_var
    assert not torch.equal(running, torch.ones_like(running))  # it has learned statistics
    assert torch.equal(loaded.guide.batch_norm.running_var, running)
    assert torch.equal(loaded.guide.shift, vae.guide.shift)
    loc, _ = vae.encode(data)
    assert torch.allclose(loaded.encode(data)[0], loc)


def test_a_training_minibatch_of_one_row_is_normalised_with_the_running_statistics():
    guide = BatchNormGuide(MLPEncoder((10,), 3, hidden_dims=(8,)), gamma=0.5)
    x = torch.randn(20, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="minibatch of one row came before any larger one"):
        guide.local_params(x[:1])  # no statistics yet
    guide.local_params(x)  # training mode: updates the running statistics
    norm = guide.batch_norm
    running = [norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.item()]
    one, _ = guide.local_params(x[:1])
    assert torch.equal(norm.running_mean, running[0]) and torch.equal(norm.running_var, running[1])
    assert norm.num_batches_tracked.item() == running[2]  # left unchanged
    guide.eval()
    assert torch.allclose(one, guide.local_params(x[:1])[0])  # as in eval mode


def test_a_bn_vae_fits_n_equal_to_batch_size_plus_one_and_refuses_rows_of_one(tmp_path):
    """N = batch_size + 1: each epoch's last minibatch holds one row."""
    data = torch.randn(11, 6, generator=torch.Generator().manual_seed(0)) * 2.0
    vae = SkipVAE((6,), latent_dim=3, hidden_dims=(8,), guide="bn-normal", likelihood="normal")
    history = vae.fit(data, num_epochs=2, batch_size=10, run_dir=tmp_path / "run")
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["train_elbo"]) for r in history)
    assert vae.guide.batch_norm.num_batches_tracked.item() == 2  # the rows of one: not counted
    # every minibatch a single row: refused before the run folder is written
    with pytest.raises(ConfigError, match="found batch_size 1 for N = 11 training rows"):
        vae.fit(data, num_epochs=1, batch_size=1, run_dir=tmp_path / "ones")
    assert not (tmp_path / "ones").exists()


# ------------------------------------------------------------------ aggressive training
class LinearEncoder(Encoder):
    """μ = A x + a, log σ² a learned constant: contains the linear-Gaussian posterior."""

    def __init__(self, data_shape, latent_dim):
        super().__init__(data_shape, latent_dim)
        self.linear = nn.Linear(data_shape[0], latent_dim)
        self.log_var = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x):
        return self.linear(x), self.log_var.expand(x.shape[0], self.latent_dim)


def linear_gaussian(seed=0):
    """Synthetic: W = Q diag(3, 1.5) (orthogonal columns), b ~ N(0, 1), s = 1; data from it."""
    torch.manual_seed(seed)
    decoder = LinearDecoder(D, (P,))
    q, _ = torch.linalg.qr(torch.randn(P, D))
    with torch.no_grad():
        decoder.linear.weight.copy_(q * torch.tensor([3.0, 1.5]))
        decoder.linear.bias.copy_(torch.randn(P))
    model = Model(StandardNormalPrior(D), decoder, NormalLikelihood((P,), init_scale=NOISE))
    guide = Guide(LinearEncoder((P,), D))
    z = torch.randn(200, D)
    x = decoder(z).detach() + NOISE * torch.randn(200, P)
    return model, guide, x


def posterior_gap(model, guide, x):
    """Mean over x of KL(q(z|x) ‖ p(z|x)), in closed form."""
    W, b = model.decoder.linear.weight.detach(), model.decoder.linear.bias.detach()
    mean, cov = posterior(W, b, NOISE)
    with torch.no_grad():
        loc, log_var = guide.local_params(x)
    q = dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)
    return kl_divergence(q, dist.MultivariateNormal(mean(x), cov)).mean().item()


def minibatches(x, batch_size=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return lambda: x[torch.randint(x.shape[0], (batch_size,), generator=generator)]


def params_of(module):
    return [p.detach().clone() for p in module.parameters()]


def test_aggressive_is_selectable_with_its_options():
    assert INFERENCES.get("aggressive") is AggressiveSVI
    options = INFERENCES.options("aggressive", filled=("model", "guide", "optim", "loss"))
    assert options == ["max_encoder_steps", "check_every", "max_aggressive_epochs"]
    for bad in ({"max_encoder_steps": 0}, {"check_every": 1.5}, {"max_aggressive_epochs": -1}):
        with pytest.raises(ConfigError, match="aggressive:"):
            AggressiveSVI(None, nn.Linear(1, 1), pyro.optim.Adam({}), Trace_ELBO(), **bad)


class RecordingOptimizer(Optimizer):
    """Records, at every step, which parameters hold a gradient (those it steps)."""

    def __init__(self, params, **options):
        super().__init__(params, **options)
        self.stepped = []

    def step(self, *, size):
        self.stepped.append({id(p) for p in self.params if p.grad is not None})
        super().step(size=size)


@pytest.mark.usefixtures("float64")
def test_encoder_steps_leave_the_decoder_alone_and_the_model_step_leaves_the_encoder_alone():
    model, guide, x = linear_gaussian()
    optim = RecordingOptimizer([*model.parameters(), *guide.parameters()], learning_rate=0.01)
    inference = AggressiveSVI(model, guide, optim, Trace_ELBO(), max_encoder_steps=12)
    decoder_before, encoder_before = params_of(model), params_of(guide)
    seen = []
    draw = minibatches(x)

    def recording_draw():  # called between encoder steps: the decoder must not have moved
        seen.append((params_of(model), params_of(guide)))
        return draw()

    inference.begin_epoch(recording_draw)
    assert math.isfinite(inference.step(x[:20], size=200))
    # the first check (after 10) has nothing to compare with, so it runs to the cap
    assert inference.encoder_steps == 12 and len(seen) == 11
    for decoder_now, encoder_now in seen:
        assert all(torch.equal(a, b) for a, b in zip(decoder_now, decoder_before))
        assert not all(torch.equal(a, b) for a, b in zip(encoder_now, encoder_before))
    encoder = {id(p) for p in guide.parameters()}
    decoder = {id(p) for p in model.parameters()}
    assert optim.stepped[:12] == [encoder] * 12  # 12 encoder-only steps
    assert optim.stepped[12] == decoder  # then one model step, without the encoder
    assert len(optim.stepped) == 13
    inference.aggressive = False  # plain steps move everything
    inference.step(x[:20], size=200)
    assert optim.stepped[13] == encoder | decoder


class Scripted(AggressiveSVI):
    """The encoder steps return scripted losses: the stopping rule alone decides."""

    def __init__(self, losses, counts=None, **options):
        super().__init__(None, nn.Linear(1, 1), pyro.optim.Adam({}), Trace_ELBO(), **options)
        self.losses, self.counts = list(losses), counts

    def _encoder_params(self):
        return set()

    def _partial_step(self, x, encoder, *, train_encoder, size, beta):
        return self.losses.pop(0) if train_encoder else 0.0

    def _count(self, x):
        return float(x.shape[0]) if self.counts is None else float(self.counts.pop(0))


@pytest.mark.parametrize(
    "block_means, expected",
    [
        ([5.0, 4.0, 4.5], 30),  # rose at the third check
        ([5.0, 5.0, 6.0], 30),  # equal does not stop (the authors' rule: it must rise)
        ([5.0, 4.0, 3.0, 2.0, 1.0], 50),  # kept improving: the cap
        ([5.0, 6.0], 20),
    ],
)
def test_the_encoder_loop_stops_when_a_block_of_10_steps_has_a_higher_mean_loss(
    block_means, expected
):
    losses = [m for m in block_means for _ in range(10)]
    inference = Scripted(losses, max_encoder_steps=50)
    x = torch.zeros(4, 1)
    inference.begin_epoch(lambda: x)
    inference.step(x, size=4)
    assert inference.encoder_steps == expected


def test_the_stopping_rule_averages_per_token_when_the_likelihood_counts_tokens():
    """Per-datapoint means fall (10 → 8), per-token ones rise (10/5 = 2 → 8/2 = 4): text stops."""
    losses = [10.0] * 2 + [8.0] * 2 + [1.0] * 6
    tokens = [5] * 2 + [2] * 2 + [1] * 6
    per_token = Scripted(list(losses), list(tokens), max_encoder_steps=6, check_every=2)
    per_point = Scripted(list(losses), None, max_encoder_steps=6, check_every=2)
    x = torch.zeros(1, 1)
    for inference in (per_token, per_point):
        inference.begin_epoch(lambda: x)
        inference.step(x, size=1)
    assert per_token.encoder_steps == 4
    assert per_point.encoder_steps == 6


def test_the_phase_ends_when_the_validation_mi_falls_or_after_max_aggressive_epochs():
    inference = Scripted([])
    records = [{"epoch": e + 1, "val_mi": mi} for e, mi in enumerate([0.1, 0.3, 0.2, 0.9])]
    for record in records:
        inference.end_epoch(record)
    assert [r["aggressive"] for r in records] == [True, True, True, False]
    assert inference.get_state() == {
        "aggressive": False,
        "previous_mi": 0.2,
        "aggressive_epochs": 3,
    }

    capped = Scripted([], max_aggressive_epochs=2)
    records = [{"epoch": e + 1, "val_mi": e} for e in range(3)]  # MI keeps rising
    for record in records:
        capped.end_epoch(record)
    assert [r["aggressive"] for r in records] == [True, True, False]

    with pytest.raises(ConfigError, match="validation data"):
        Scripted([]).begin_epoch(None, validation=False)
    Scripted([], max_aggressive_epochs=3).begin_epoch(None, validation=False)
    assert not Scripted([], max_aggressive_epochs=0).aggressive


@pytest.mark.usefixtures("float64")
@pytest.mark.filterwarnings("ignore:.*was not registered in the param store")
def test_aggressive_encoder_steps_bring_q_closer_to_the_exact_posterior():
    """Synthetic linear-Gaussian problem, decoder held fixed: one aggressive step (up to 100
    encoder steps) leaves q much closer to p(z|x) than one plain SVI step does."""
    gaps = {}
    for name in ("plain", "aggressive"):
        model, guide, x = linear_gaussian()
        for p in model.parameters():  # the exact posterior stays the one we measure against
            p.requires_grad_(False)
        optim = Optimizer([*model.parameters(), *guide.parameters()], learning_rate=0.05)
        inference = AggressiveSVI(model, guide, optim, Trace_ELBO())
        inference.aggressive = name == "aggressive"
        inference.begin_epoch(minibatches(x))
        before = posterior_gap(model, guide, x)
        inference.step(x[:20], size=200)
        gaps[name] = posterior_gap(model, guide, x)
    assert before > 1.0
    assert inference.encoder_steps >= 20
    assert gaps["aggressive"] < 0.3 * before
    assert gaps["aggressive"] < 0.5 * gaps["plain"]


def test_aggressive_with_a_pyro_optimizer_steps_only_one_side():
    model, guide, x = linear_gaussian()
    inference = AggressiveSVI(
        model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(), max_encoder_steps=3
    )
    decoder_before = params_of(model)
    snapshots = []
    inference.begin_epoch(lambda: snapshots.append(params_of(model)) or x[:20])
    inference.step(x[:20], size=200)
    assert snapshots and all(
        torch.equal(a, b) for s in snapshots for a, b in zip(s, decoder_before)
    )


def _fit(run_dir, num_epochs, resume=False, data_seed=0, **inference_options):
    data = torch.randn(50, 6, generator=torch.Generator().manual_seed(data_seed))
    data = data + torch.linspace(-2, 2, 6)
    vae = SkipVAE((6,), latent_dim=2, hidden_dims=(8,), likelihood="normal", seed=0)
    return vae.fit(
        data[:40],
        val=data[40:],
        num_epochs=num_epochs,
        batch_size=10,
        kl_warmup_epochs=0,
        inference="aggressive",
        inference_options={"max_encoder_steps": 10, "check_every": 5, **inference_options},
        run_dir=run_dir,
        resume=resume,
    )


def test_fit_records_the_phase_and_resumes_in_it_exactly(tmp_path):
    full = _fit(tmp_path / "full", 3, max_aggressive_epochs=1)
    assert [r["aggressive"] for r in full] == [True, False, False]
    assert "val_mi" in full[0] and "val_mi" not in full[1]
    _fit(tmp_path / "split", 1, max_aggressive_epochs=1)
    resumed = _fit(tmp_path / "split", 3, resume=True, max_aggressive_epochs=1)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    # without the saved phase the resumed run would train aggressively again in epoch 2
    assert [strip(r) for r in resumed] == [strip(r) for r in full]


def test_a_run_resumed_in_the_aggressive_phase_ends_it_by_the_mi_rule_at_the_same_epoch(tmp_path):
    # data seed 1: the validation MI falls in epoch 2, so the MI rule ends the phase there
    full = _fit(tmp_path / "full", 3, data_seed=1)
    assert [r["aggressive"] for r in full] == [True, True, False]
    assert full[1]["val_mi"] < full[0]["val_mi"]
    _fit(tmp_path / "split", 1, data_seed=1)  # interrupted after epoch 1, in the phase
    resumed = _fit(tmp_path / "split", 3, resume=True, data_seed=1)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    # without the restored previous MI, epoch 2's fall would go unnoticed
    assert [strip(r) for r in resumed] == [strip(r) for r in full]


def test_aggressive_without_validation_or_an_epoch_cap_is_refused_before_any_file(tmp_path):
    data = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    vae = SkipVAE((6,), latent_dim=2, hidden_dims=(8,), likelihood="normal", seed=0)
    options = {"num_epochs": 1, "batch_size": 10, "inference": "aggressive"}
    with pytest.raises(ConfigError, match="validation data"):
        vae.fit(data, run_dir=tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()  # the same command runs again without --resume
    capped = {"max_encoder_steps": 2, "max_aggressive_epochs": 1}
    history = vae.fit(data, run_dir=tmp_path / "run", inference_options=capped, **options)
    assert [r["aggressive"] for r in history] == [True]


def test_a_checkpoint_without_the_inference_state_is_refused_naming_the_file(tmp_path):
    _fit(tmp_path / "run", 1, max_aggressive_epochs=1)
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["inference"]  # as a checkpoint written before the phase was saved
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="holds no AggressiveSVI state") as error:
        _fit(tmp_path / "run", 2, resume=True, max_aggressive_epochs=1)
    assert str(path) in str(error.value)


def test_the_cli_selects_both_remedies_by_name(tmp_path, data_dir):
    from click.testing import CliRunner

    from pyro_skipvae.cli.main import cli

    out = tmp_path / "run"
    # real MNIST, tiny sizes
    arguments = ["fit", "--data-dir", str(data_dir), "--train-size", "100", "--val-size", "50"]
    arguments += ["--latent-dim", "3", "--hidden-dims", "16", "--num-epochs", "2", "--quiet"]
    arguments += ["--guide", "bn-normal", "--guide-option", "gamma=0.8", "--out", str(out)]
    arguments += ["--inference", "aggressive", "--inference-option", "max_encoder_steps=5"]
    arguments += ["--inference-option", "max_aggressive_epochs=1"]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["guide"] == "bn-normal"
    assert config["model"]["guide_options"] == {"gamma": 0.8}
    assert config["train"]["inference"] == "aggressive"
    # every setting is recorded, defaults included
    assert config["train"]["inference_options"] == {
        "max_encoder_steps": 5,
        "check_every": 10,
        "max_aggressive_epochs": 1,
    }
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["aggressive"] for r in records] == [True, False]
    # the diagnosis records the guide's options and how the model was trained
    quick = ["--eval-size", "40", "--num-samples", "0", "--no-plots", "--quiet"]
    result = CliRunner().invoke(cli, ["diagnose", str(out), *quick], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    diagnosis = json.loads((out / "diagnostics.json").read_text())
    assert diagnosis["guide"] == "bn-normal" and diagnosis["guide_options"] == {"gamma": 0.8}
    assert diagnosis["trained_with"] == "aggressive"
    bad = CliRunner().invoke(cli, [*arguments[:-4], "--inference-option", "mode=kl"])
    assert bad.exit_code != 0 and "inference 'aggressive' takes no such option" in bad.output
