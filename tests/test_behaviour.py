"""Behaviour, not convergence: each test pins down one thing a realistic bug would break.

The skip wiring layer by layer, β and the plate's data size in the loss, what the training
loop hands to every step, the direction of the ``kl`` mode's KL, crash-safe writes and the
source of binarisation noise. Synthetic tensors here are labelled as such; they stand for no
data set.
"""

import math
import os
import stat

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_skipvae import Guide, Model, checkpoint
from pyro_skipvae.data import binarize
from pyro_skipvae.guides import MLPEncoder
from pyro_skipvae.infer import LinearWarmup, SemiAmortizedSVI, train
from pyro_skipvae.models import Decoder, MLPDecoder
from pyro_skipvae.models.likelihoods import NormalLikelihood
from pyro_skipvae.models.priors import StandardNormalPrior

pytestmark = pytest.mark.usefixtures("float64")


# ---------------------------------------------------------------- the skip MLP, by hand
@pytest.mark.parametrize("skip", [True, False])
def test_mlp_decoder_is_the_papers_formula_layer_by_layer(skip):
    """h_1 = relu(W_1 z + b_1); h_l = relu(W_l h_{l−1} + U_l z + b_l); η = W h_L + U z + b,
    with every U_l its own and present only with skip (Dieng et al. 2019, eq. 5)."""
    torch.manual_seed(0)
    decoder = MLPDecoder(3, (5,), hidden_dims=(4, 6, 7), skip=skip)
    z = torch.randn(2, 3)
    W = [(layer.weight, layer.bias) for layer in decoder.layers]
    U = [u.weight for u in decoder.skips]
    h = torch.relu(z @ W[0][0].T + W[0][1])
    for i, (w, b) in enumerate(W[1:], start=1):
        h_next = h @ w.T + b + (z @ U[i - 1].T if skip else 0)
        h = h_next if i == len(W) - 1 else torch.relu(h_next)
    assert torch.allclose(decoder(z), h, rtol=1e-12)
    assert len(U) == (3 if skip else 0)
    # each U_l matters: zeroing any one changes the output (with skip)
    if skip:
        for u in decoder.skips:
            with torch.no_grad():
                saved = u.weight.clone()
                u.weight.zero_()
                assert not torch.allclose(decoder(z), h)
                u.weight.copy_(saved)


# ---------------------------------------------------------------- β and the plate's size
def linear_model_and_guide():
    torch.manual_seed(1)

    class Linear(Decoder):
        def __init__(self):
            super().__init__(2, (3,), skip=False)
            self.linear = nn.Linear(2, 3)

        def forward(self, z, x=None):
            return self.linear(z)

    model = Model(StandardNormalPrior(2), Linear(), NormalLikelihood((3,), init_scale=0.8))
    guide = Guide(MLPEncoder((3,), 2, hidden_dims=(4,)))
    return model, guide


@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_loss_is_n_over_b_times_expected_log_likelihood_minus_beta_kl(beta):
    """TraceMeanField_ELBO's loss with size N and β equals −(N/B) Σ_i (log p(x_i|z_i) −
    β KL(q_i ‖ p)), the reparameterised draw z_i = μ_i + σ_i ε_i reproduced from the seed."""
    model, guide = linear_model_and_guide()
    x = torch.randn(5, 3)  # synthetic
    N = 1000
    pyro.set_rng_seed(4)
    loss = TraceMeanField_ELBO().loss(model, guide, x, size=N, beta=beta)
    pyro.set_rng_seed(4)
    eps = torch.empty(5, 2).normal_()
    with torch.no_grad():
        loc, log_var = guide.encoder(x)
        scale = (0.5 * log_var).exp()
        z = loc + scale * eps
        log_lik = dist.Normal(model.decoder(z), 0.8).log_prob(x).sum(-1)
        kl = kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0)).sum(-1)
    expected = -(N / 5) * (log_lik - beta * kl).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-10)


class Recorder:
    """An inference object that records what the training loop gives each step."""

    def __init__(self):
        self.calls = []

    def step(self, x, *, size, beta):
        self.calls.append((x.shape[0], size, beta))
        return 0.0


def test_train_hands_every_step_the_schedule_and_the_full_data_size():
    data = torch.zeros(10, 1)  # synthetic: the recorder never looks at it
    recorder = Recorder()
    warmup = LinearWarmup(num_epochs=2, start=0.1)
    records = train(
        recorder, data, num_epochs=3, batch_size=4, generator=torch.Generator(), annealing=warmup
    )
    # 3 minibatches an epoch (4, 4, 2), each told N = 10 and β at its fractional epoch
    assert [c[0] for c in recorder.calls] == [4, 4, 2] * 3
    assert all(c[1] == 10 for c in recorder.calls)
    expected = [warmup(epoch + b / 3) for epoch in range(3) for b in range(3)]
    assert [c[2] for c in recorder.calls] == pytest.approx(expected)
    assert expected[0] == 0.1 and expected[3] == pytest.approx(0.55) and expected[-1] == 1.0
    # the record's β is the last step's β of that epoch
    assert [r["beta"] for r in records] == pytest.approx([warmup(2 / 3), warmup(5 / 3), 1.0])


# ---------------------------------------------------------------- the kl mode's direction
def test_kl_mode_trains_the_encoder_on_kl_from_initial_to_refined():
    """The encoder's gradient in ``kl`` mode is autograd's gradient of
    (N/B) Σ_i KL(q_{λ₀,i} ‖ stopgrad q_{λ_K,i}); the reverse direction differs (large
    refinement steps, so q_λK is far from q_λ₀ and the asymmetry shows)."""
    model, guide = linear_model_and_guide()
    x = torch.randn(6, 3) * 3  # synthetic
    inference = SemiAmortizedSVI(
        model, guide, None, Trace_ELBO(), mode="kl", num_refine_steps=5, refine_lr=3.0
    )
    encoder = list(guide.encoder.parameters())
    pyro.set_rng_seed(9)
    loss, surrogate = inference.loss_and_surrogate(x, size=60)
    grads = torch.autograd.grad(surrogate - loss, encoder)  # the KL term alone
    pyro.set_rng_seed(9)
    refined = inference.refine(x)  # same draws: the refinement consumes them first
    init = guide.local_params(x)
    q0, qk = guide.distribution(*init), guide.distribution(*refined)
    forward = torch.autograd.grad(10 * kl_divergence(q0, qk).sum(), encoder, retain_graph=True)
    reverse = torch.autograd.grad(10 * kl_divergence(qk, q0).sum(), encoder)
    for g, f in zip(grads, forward):
        assert torch.allclose(g, f, rtol=1e-8, atol=1e-10)
    assert not all(torch.allclose(f, r, rtol=1e-2) for f, r in zip(forward, reverse))


# ---------------------------------------------------------------- crash-safe writes
def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.atomic_save({"format": 2, "epoch": 1}, path)

    class Exploding:
        def __reduce__(self):
            raise RuntimeError("disk full")  # torch.save fails after it started writing

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.atomic_save(
            {"format": 2, "epoch": 2, "w": torch.zeros(1000), "x": Exploding()}, path
        )
    assert checkpoint.load(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    with pytest.raises(RuntimeError, match="disk full"):
        with checkpoint.atomic_path(tmp_path / "metrics.jsonl") as tmp:
            open(tmp, "w").write("half a line")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_atomic_writes_get_the_mode_a_plain_write_would(tmp_path):
    # mkstemp's private 0600 must not leak into results users share (reports, JSON)
    old = os.umask(0o022)
    try:
        checkpoint.atomic_write_text(tmp_path / "report.html", "<p>hi</p>")
        (tmp_path / "plain.html").write_text("<p>hi</p>")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "report.html").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.html").stat().st_mode) == 0o644


# ---------------------------------------------------------------- binarisation noise
def test_dynamic_binarisation_draws_only_from_the_generator_it_is_given():
    x = torch.rand(50, 20)  # synthetic intensities
    a = binarize(x, "dynamic", torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    b = binarize(x, "dynamic", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    c = binarize(x, "dynamic", torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)
    state = torch.get_rng_state()
    binarize(x, "dynamic", torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be consumed"
    assert math.isclose(a.mean().item(), x.mean().item(), abs_tol=0.05)


def test_mlp_encoder_is_its_formula_layer_by_layer():
    """h = ReLU(W_2 ReLU(W_1 x + b_1) + b_2); (μ, log σ²) = the two halves of A h + a."""
    from pyro_skipvae.errors import ConfigError
    from pyro_skipvae.guides import MLPEncoder

    torch.manual_seed(0)
    encoder = MLPEncoder((2, 3), 2, hidden_dims=(5, 4)).double()
    x = torch.rand(7, 2, 3, dtype=torch.float64)
    linears = [m for m in encoder.body if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 5), (5, 4)]
    h = x.reshape(7, 6)
    for m in linears:
        h = torch.relu(h @ m.weight.T + m.bias)
    out = h @ encoder.head.weight.T + encoder.head.bias
    loc, log_var = encoder(x)
    assert torch.allclose(loc, out[:, :2], rtol=1e-12) and torch.allclose(log_var, out[:, 2:])
    with pytest.raises(ConfigError, match="^hidden_dims must be one or more positive widths"):
        MLPEncoder((2, 3), 2, hidden_dims=(5, 0))


def test_mlp_decoder_defaults_to_skip_and_keeps_its_latent_size():
    from pyro_skipvae.errors import ConfigError
    from pyro_skipvae.models import MLPDecoder

    decoder = MLPDecoder(2, (3,), hidden_dims=(4,))
    assert decoder.skip and decoder.latent_dim == 2
    with pytest.raises(ConfigError, match="^hidden_dims must be one or more positive widths"):
        MLPDecoder(2, (3,), hidden_dims=(0,))


def test_flow_guide_builds_the_flows_it_is_asked_for():
    from pyro.distributions.transforms import AffineAutoregressive, SplineAutoregressive

    from pyro_skipvae.guides import MLPEncoder
    from pyro_skipvae.guides.guide import FlowGuide

    encoder = MLPEncoder((4,), 3, hidden_dims=(5,))
    guide = FlowGuide(encoder, flow="spline", num_flows=3, hidden_dims=(7,), name="my_guide")
    assert guide._pyro_name == "my_guide"
    assert len(guide.flows) == 3 and all(isinstance(f, SplineAutoregressive) for f in guide.flows)
    assert all(f.arn.layers[0].out_features == 7 for f in guide.flows)
    default = FlowGuide(MLPEncoder((4,), 3, hidden_dims=(5,)))
    assert len(default.flows) == 2 and all(
        isinstance(f, AffineAutoregressive) for f in default.flows
    )


def test_models_and_guides_are_named_for_what_they_are_and_forgotten_when_collected():
    import gc

    from pyro_skipvae import SkipVAE

    vae = SkipVAE((6,), latent_dim=2, hidden_dims=(4,))
    assert vae.model._pyro_name.split("_")[0] == "model"
    assert vae.guide._pyro_name.split("_")[0] == "guide"
    from pyro.infer import Trace_ELBO

    Trace_ELBO().loss(vae.model, vae.guide, torch.zeros(2, 6))  # puts the parameters in the store
    names = (vae.model._pyro_name + ".", vae.guide._pyro_name + ".")
    assert [n for n in pyro.get_param_store().keys() if n.startswith(names)]
    del vae
    gc.collect()
    assert not [n for n in pyro.get_param_store().keys() if n.startswith(names)]
