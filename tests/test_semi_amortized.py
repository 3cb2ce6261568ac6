"""SemiAmortizedSVI: closed-form linear-Gaussian answers, exact end-to-end gradients, modes.

The linear-Gaussian model z ~ N(0, I_D), x | z ~ N(Wz + b, s² I_P) has the posterior
N(m, Σ) with Σ = (I + WᵀW/s²)⁻¹, m = Σ Wᵀ(x − b)/s², and the marginal x ~ N(b, WWᵀ + s² I).
With orthogonal columns of W, Σ is diagonal, so the mean-field guide contains the exact
posterior and the best ELBO equals log p(x).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearDecoder, marginal, posterior
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_skipvae import ConfigError, Guide, Model, SkipVAE
from pyro_skipvae.diagnostics.elbo import elbo_terms
from pyro_skipvae.guides import Encoder, MLPEncoder
from pyro_skipvae.infer import INFERENCES, SEMI_AMORTIZED_MODES, Refinement, SemiAmortizedSVI
from pyro_skipvae.models import Decoder
from pyro_skipvae.models.likelihoods import CategoricalLikelihood, NormalLikelihood
from pyro_skipvae.models.priors import StandardNormalPrior

D, P, NOISE = 2, 5, 1.0


# float64 throughout; conftest also clears the param store and seeds every test.
pytestmark = pytest.mark.usefixtures("float64")


class ConstantEncoder(Encoder):
    """A deliberately poor encoder: λ₀ = (0, 0) (the prior) for every x, plus learnable offsets."""

    def __init__(self, data_shape, latent_dim):
        super().__init__(data_shape, latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x):
        shape = (x.shape[0], self.latent_dim)
        return self.loc.expand(shape), self.log_scale.expand(shape)


def linear_gaussian(encoder=None):
    """Model and guide with W = Q diag(3, 1.5) (orthogonal columns), b ~ N(0, 1), s = 1."""
    decoder = LinearDecoder(D, (P,))
    q, _ = torch.linalg.qr(torch.randn(P, D))
    with torch.no_grad():
        decoder.linear.weight.copy_(q * torch.tensor([3.0, 1.5]))
        decoder.linear.bias.copy_(torch.randn(P))
    model = Model(StandardNormalPrior(D), decoder, NormalLikelihood((P,), init_scale=NOISE))
    guide = Guide(encoder or ConstantEncoder((P,), D))
    return model, guide


def exact_posterior(model, x):
    W, b = model.decoder.linear.weight.detach(), model.decoder.linear.bias.detach()
    mean, cov = posterior(W, b, NOISE)
    return mean(x), cov, marginal(W, b, NOISE).log_prob(x)


def test_registered_and_modes():
    assert INFERENCES.get("semi-amortized") is SemiAmortizedSVI
    assert set(SEMI_AMORTIZED_MODES) == {"end-to-end", "stop-gradient", "kl", "svi"}


@pytest.mark.parametrize(
    "options, match",
    [
        ({"mode": "amortized"}, "expected one of: end-to-end, stop-gradient, kl, svi"),
        ({"num_refine_steps": 0}, "num_refine_steps must be at least 1, found 0"),
        ({"num_refine_steps": 2.5}, "num_refine_steps"),
        ({"refine_lr": -1.0}, "refine_lr must be positive"),
        ({"refine_momentum": 1.0}, r"refine_momentum must lie in \[0, 1\)"),
        ({"refine_max_grad_norm": 0.0}, "refine_max_grad_norm must be positive or None"),
        ({"refine_batch_size": 0}, "refine_batch_size"),
    ],
)
def test_bad_options_raise_config_error(options, match):
    model, guide = linear_gaussian()
    with pytest.raises(ConfigError, match=match):
        SemiAmortizedSVI(model, guide, pyro.optim.Adam({}), Trace_ELBO(), **options)


def test_loss_without_differentiable_loss_is_rejected():
    model, guide = linear_gaussian()
    with pytest.raises(ConfigError, match="differentiable_loss"):
        SemiAmortizedSVI(model, guide, pyro.optim.Adam({}), object())


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
def test_refinement_reaches_exact_posterior_and_log_evidence(elbo_class):
    """From the prior (a poor encoder), K steps reach N(m, Σ) and ELBO ≈ log p(x).

    Tolerances: the refinement's gradients are 256-particle estimates, so λ_K jitters around
    the optimum. With per-datapoint step η/B = 0.1, momentum ρ = 0.5 and curvature h ≤ 10
    (posterior precision 1 + 3²), the stationary variance of μ is about
    (η/B)/(1 − ρ) · Var(ĝ) / (2h) ≈ 0.2 · (h/256) / (2h) ≈ 4e-4 per coordinate (σ ≈ 0.02,
    so 0.15 is > 5σ even allowing momentum's inflation), and KL(q_K ‖ posterior) ≈ ½ h Var(μ)
    summed over coordinates is ≈ 0.005 nats (measured 0.003-0.007 over seeds 0-5).
    """
    model, guide = linear_gaussian()
    x = model.likelihood(model.decoder(torch.randn(8, D))).sample()
    mean, cov, log_px = exact_posterior(model, x)
    inference = SemiAmortizedSVI(
        model,
        guide,
        pyro.optim.Adam({}),
        elbo_class(num_particles=256, vectorize_particles=True, max_plate_nesting=1),
        num_refine_steps=100,
        refine_lr=0.1 * x.shape[0],
        refine_max_grad_norm=None,
    )
    loc0, log_var0 = guide.local_params(x)
    loc, log_var = inference.refine(x)
    log_scale0, log_scale = 0.5 * log_var0, 0.5 * log_var
    post_log_scale = 0.5 * torch.log(torch.diagonal(cov)).expand_as(loc)

    assert (loc - mean).norm() < 0.2 * (loc0 - mean).norm()
    assert (loc - mean).abs().max() < 0.15
    assert (log_scale - post_log_scale).abs().max() < 0.12
    assert (log_scale0 - post_log_scale).abs().max() > 0.5

    # KL(q_K ‖ exact posterior): the ELBO's gap to log p(x), analytically.
    q = dist.Normal(loc, log_scale.exp())
    posterior = dist.Normal(mean, torch.diagonal(cov).sqrt())
    gap = kl_divergence(q, posterior).sum(-1)
    assert gap.mean() < 0.02

    # Monte-Carlo ELBO at λ_K (the package's estimator) vs log p(x): a 1000-sample estimate
    # per datapoint, compared within 4 standard errors plus a residual gap of 0.05 nats.
    samples = torch.stack(
        [
            elbo_terms(model, guide, x, guide_kwargs={"local_params": (loc, log_var)})[0]
            for _ in range(1000)
        ]
    )
    elbo, stderr = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    assert torch.all((elbo - log_px).abs() < 4 * stderr + 0.05), (elbo - log_px, stderr)
    assert torch.all(elbo <= log_px + 4 * stderr)
    # The poor encoder's ELBO was far below: log p(x) − ELBO(λ₀) = KL(q_λ₀ ‖ posterior).
    gap0 = kl_divergence(dist.Normal(loc0, log_scale0.exp()), posterior).sum(-1)
    assert torch.all(gap0 > 1.0)


def _tiny_mlp_problem(seed=1):
    """A Bernoulli MLP skip-VAE small enough for finite differences."""
    pyro.set_rng_seed(seed)
    vae = SkipVAE((6,), latent_dim=2, hidden_dims=(4,))
    vae.model.double()
    vae.guide.double()
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    return vae.model, vae.guide, x


def _surrogate_grads(inference, x, params, seed=7, size=10):
    pyro.set_rng_seed(seed)
    _, surrogate = inference.loss_and_surrogate(x, size=size, beta=0.7)
    grads = torch.autograd.grad(surrogate, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# 0.3: below the first gradient's norm (0.48 with the refinement's analytic KL), so the clip acts
@pytest.mark.parametrize("max_grad_norm", [None, 0.3])
def test_end_to_end_gradient_matches_finite_differences(max_grad_norm):
    """Exact second-order autograd through K steps (clipping included) = d loss / dθ."""
    model, guide, x = _tiny_mlp_problem()
    inference = SemiAmortizedSVI(
        model,
        guide,
        pyro.optim.Adam({}),
        Trace_ELBO(),
        num_refine_steps=4,
        refine_lr=0.5,
        refine_max_grad_norm=max_grad_norm,
    )
    params = list(guide.encoder.parameters()) + list(model.decoder.parameters())
    grads = _surrogate_grads(inference, x, params)
    if max_grad_norm is not None:  # the clip must be active for this case to test it
        pyro.set_rng_seed(7)
        local = guide.local_params(x)
        loss = inference.refinement.loss(model, guide, inference.loss, x, local, beta=0.7)
        g = torch.autograd.grad(loss, local)
        assert max(t.norm() for t in g) > max_grad_norm
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))

    def loss_at(t):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(t * d)
        pyro.set_rng_seed(7)
        loss, _ = inference.loss_and_surrogate(x, size=10, beta=0.7)
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(t * d)
        return loss.item()

    eps = 1e-5
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert analytic.item() == pytest.approx(numeric, rel=1e-5, abs=1e-6)
    # The second-order terms matter: the encoder gradient is not the stop-gradient one.
    encoder_grads = grads[: len(list(guide.encoder.parameters()))]
    assert any(g.abs().max() > 0 for g in encoder_grads)


def _encoder_grads(mode, **options):
    model, guide, x = _tiny_mlp_problem()
    options = {"num_refine_steps": 3, "refine_lr": 0.5, **options}
    inference = SemiAmortizedSVI(
        model, guide, pyro.optim.Adam({}), Trace_ELBO(), mode=mode, **options
    )
    encoder = list(guide.encoder.parameters())
    decoder = list(model.decoder.parameters())
    grads = _surrogate_grads(inference, x, encoder + decoder)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    return flat(grads[: len(encoder)]), flat(grads[len(encoder) :]), (model, guide, x)


def test_modes_give_the_encoder_gradients_theory_predicts():
    e2e, e2e_dec, _ = _encoder_grads("end-to-end")
    stop, stop_dec, (model, guide, x) = _encoder_grads("stop-gradient")
    kl, kl_dec, _ = _encoder_grads("kl")
    svi, _, _ = _encoder_grads("svi")

    # stop-gradient: the encoder is trained on its own (amortized) ELBO, exactly SVI's encoder
    # gradient with the same reparameterisation noise (the refinement's first draw) and the
    # refinement's estimator (analytic KL, whatever the run's ELBO).
    pyro.set_rng_seed(7)
    amortized = TraceMeanField_ELBO().differentiable_loss(model, guide, x, size=10, beta=0.7)
    expected = torch.cat(
        [g.flatten() for g in torch.autograd.grad(amortized, list(guide.encoder.parameters()))]
    )
    assert torch.allclose(stop, expected, rtol=1e-10, atol=1e-12)
    # stop-gradient and kl train the decoder identically (on stopgrad λ_K); end-to-end does
    # not (its decoder gradient also flows through the refinement).
    assert torch.allclose(stop_dec, kl_dec)
    assert not torch.allclose(e2e_dec, stop_dec, rtol=1e-3)
    # svi: no encoder at all.
    assert torch.all(svi == 0)
    # The three encoder gradients are different directions.
    cosine = lambda a, b: (a @ b / (a.norm() * b.norm())).item()  # noqa: E731
    for a, b in [(e2e, stop), (e2e, kl), (stop, kl)]:
        assert a.norm() > 0 and b.norm() > 0
        assert cosine(a, b) < 0.99


def test_kl_mode_gradient_vanishes_without_refinement():
    """KL(q_λ₀ ‖ q_λ_K) and its gradient → 0 as the refinement step → 0 (λ_K → λ₀)."""
    big, _, _ = _encoder_grads("kl", refine_lr=0.5)
    small, _, _ = _encoder_grads("kl", refine_lr=1e-6)
    assert small.norm() < 1e-4 * big.norm()


def test_step_trains_and_evaluation_leaves_parameters_alone():
    model, guide, x = _tiny_mlp_problem()
    optim = pyro.optim.Adam({"lr": 1e-2})
    inference = SemiAmortizedSVI(model, guide, optim, Trace_ELBO(), num_refine_steps=2)
    before = {
        k: v.detach().clone()
        for k, v in {**dict(model.named_parameters()), **dict(guide.named_parameters())}.items()
    }

    def unchanged():
        after = {**dict(model.named_parameters()), **dict(guide.named_parameters())}
        return all(torch.equal(before[k], after[k]) for k in before)

    assert isinstance(inference.evaluate_loss(x, size=10), float)
    metrics = inference.evaluate_metrics(x, batch_size=2)
    assert set(metrics) == {"elbo", "kl", "elbo_amortized", "kl_amortized", "amortization_gap"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert unchanged()
    assert all(p.grad is None for p in list(model.parameters()) + list(guide.parameters()))
    loss = inference.step(x, size=10, beta=0.5)
    assert isinstance(loss, float) and math.isfinite(loss)
    assert not unchanged()
    assert all(p.grad is None for p in list(model.parameters()) + list(guide.parameters()))
    # Every parameter of encoder and decoder was handed to the optimizer.
    assert set(optim.get_state()) == {
        f"{prefix}$$${name}"
        for prefix, module in [
            (f"{guide._pyro_name}.encoder", guide.encoder),
            (f"{model._pyro_name}.decoder", model.decoder),
        ]
        for name, _ in module.named_parameters()
    }


class TinyLSTMDecoder(Decoder):
    """Teacher-forced LSTM over a token sequence: η_t = f(LSTM([x_{<t}, z]))."""

    autoregressive = True

    def __init__(self, latent_dim, output_shape, *, skip=True, hidden=4):
        super().__init__(latent_dim, output_shape, skip=skip)
        self.length, self.vocab = output_shape
        self.embed = nn.Embedding(self.vocab + 1, 3)  # token `vocab` is the start symbol
        self.lstm = nn.LSTM(3 + latent_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, self.vocab)

    def forward(self, z, x=None):
        batch = z.shape[:-1]
        z2 = z.reshape(-1, z.shape[-1])
        x = x.long().expand(batch + x.shape[-1:]).reshape(-1, self.length)
        start = torch.full_like(x[:, :1], self.vocab)
        h = torch.cat(
            [self.embed(torch.cat([start, x[:, :-1]], 1)), z2[:, None].expand(-1, self.length, -1)],
            -1,
        )
        out, _ = self.lstm(h)
        return self.out(out).reshape(batch + (self.length, self.vocab))


def test_end_to_end_through_an_lstm_decoder_on_cpu():
    """Double backward through nn.LSTM works on the CPU; the gradient is exact."""
    length, vocab = 4, 3
    likelihood = CategoricalLikelihood((length,), num_categories=vocab)
    model = Model(StandardNormalPrior(2), TinyLSTMDecoder(2, likelihood.param_shape), likelihood)
    guide = Guide(MLPEncoder((length,), 2, hidden_dims=(4,)))
    x = torch.randint(0, vocab, (3, length)).double()
    inference = SemiAmortizedSVI(
        model, guide, pyro.optim.Adam({}), Trace_ELBO(), num_refine_steps=2
    )
    params = list(guide.encoder.parameters())
    grads = _surrogate_grads(inference, x, params)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()

    def loss_at(t):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(t * d)
        pyro.set_rng_seed(7)
        value = inference.loss_and_surrogate(x, size=10, beta=0.7)[0].item()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(t * d)
        return value

    numeric = (loss_at(1e-5) - loss_at(-1e-5)) / 2e-5
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-6)
    assert math.isfinite(inference.step(x, size=10))


def test_fit_semi_amortized_resumes_exactly(tmp_path):
    torch.set_default_dtype(torch.float32)
    data = torch.rand(40, 1, 4, 4)
    options = {"num_refine_steps": 2, "mode": "end-to-end"}

    def run(run_dir, num_epochs, resume=False):
        vae = SkipVAE((1, 4, 4), latent_dim=2, hidden_dims=(8,), seed=0)
        return vae.fit(
            data[:30],
            val=data[30:],
            num_epochs=num_epochs,
            batch_size=10,
            binarize="dynamic",
            inference="semi-amortized",
            inference_options=options,
            run_dir=run_dir,
            resume=resume,
        )

    full = run(tmp_path / "full", 2)
    run(tmp_path / "split", 1)
    resumed = run(tmp_path / "split", 2, resume=True)
    assert {"val_elbo", "val_kl", "val_elbo_amortized", "val_amortization_gap"} <= set(full[-1])
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in resumed] == [strip(r) for r in full]


class RecordingRefinement:
    """Wraps a Refinement: records each call's minibatch and starting point, then refines."""

    def __init__(self, refinement):
        self.refinement, self.calls, self.refined = refinement, [], []

    def __call__(self, model, guide, elbo, x, local_params, **kwargs):
        self.calls.append((x.shape[0], tuple(p.detach().clone() for p in local_params)))
        refined = self.refinement(model, guide, elbo, x, local_params, **kwargs)
        self.refined.append(refined)
        return refined

    def __getattr__(self, name):
        return getattr(self.refinement, name)


def _evaluation_problem(n, mode="end-to-end", **options):
    model, guide = linear_gaussian()
    with torch.no_grad():  # an encoder away from the prior: λ₀ = (1, log σ² = 0)
        guide.encoder.loc.fill_(1.0)
    x = model.likelihood(model.decoder(torch.randn(n, D))).sample()
    inference = SemiAmortizedSVI(
        model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO(), mode=mode, **options
    )
    inference.refinement = RecordingRefinement(inference.refinement)
    return model, guide, x, inference


def test_evaluation_refines_in_eval_mode_in_the_documented_minibatches_and_reports_the_gap():
    model, guide, x, inference = _evaluation_problem(10, num_refine_steps=2)
    modes = []
    for module in (model.decoder, guide.encoder):
        module.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    metrics = inference.evaluate_metrics(x, batch_size=4)
    assert modes and not any(modes)  # every network call in eval() mode ...
    assert model.training and guide.training  # ... and training mode restored after
    # the refinement's minibatch is the evaluation batch size before any training step ...
    assert [size for size, _ in inference.refinement.calls] == [4, 4, 2]
    # ... starting from the encoder's λ₀
    loc0, _ = inference.refinement.calls[0][1]
    assert torch.equal(loc0, torch.ones(4, D))
    assert metrics["amortization_gap"] == metrics["elbo"] - metrics["elbo_amortized"]
    assert metrics["kl_amortized"] == pytest.approx(D / 2)  # KL(N(1, 1) ‖ N(0, 1)) per dim
    # the bound is taken at the refined parameters: its (analytic) KL is theirs
    loc, log_var = (torch.cat(p) for p in zip(*inference.refinement.refined))
    kl = 0.5 * (log_var.exp() + loc**2 - 1 - log_var).sum(-1)
    assert metrics["kl"] == pytest.approx(kl.mean().item(), rel=1e-12)
    assert abs(metrics["kl"] - D / 2) > 0.01
    # ... then the largest training minibatch, unless refine_batch_size is given
    inference.step(x[:3], size=10)
    inference.refinement.calls.clear()
    inference.evaluate_metrics(x, batch_size=4)
    assert [size for size, _ in inference.refinement.calls] == [3, 1, 3, 1, 2]
    _, _, x, inference = _evaluation_problem(10, num_refine_steps=2, refine_batch_size=5)
    inference.step(x[:3], size=10)
    inference.evaluate_metrics(x, batch_size=4)
    assert [size for size, _ in inference.refinement.calls] == [4, 4, 2]  # chunks of ≤ 5


def test_evaluation_batches_default_to_500():
    _, _, x, inference = _evaluation_problem(501, num_refine_steps=1)
    inference.evaluate_metrics(x)
    assert [size for size, _ in inference.refinement.calls] == [500, 1]


def test_svi_mode_refines_from_the_prior_and_reports_no_amortized_bound():
    _, _, x, inference = _evaluation_problem(6, mode="svi", num_refine_steps=2)
    metrics = inference.evaluate_metrics(x, batch_size=6)
    assert set(metrics) == {"elbo", "kl"}
    (size, (loc0, log_var0)), *_ = inference.refinement.calls
    assert size == 6 and torch.equal(loc0, torch.zeros(6, D)) and torch.equal(log_var0, loc0)


def test_svi_mode_reads_the_latent_size_from_a_guide_without_an_encoder():
    model, guide = linear_gaussian()

    class BareGuide:  # local_params and the call, nothing else
        def local_params(self, x):
            return guide.local_params(x)

        def __call__(self, *args, **kwargs):
            return guide(*args, **kwargs)

    class EncoderWithoutSize(BareGuide):  # an encoder that does not say its latent size
        encoder = torch.nn.Identity()

    class BatchNormEncoder(torch.nn.Module):  # fails on one datapoint in training mode
        latent_dim = D

        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(P)

    class GuideWithBatchNorm(BareGuide):
        encoder = BatchNormEncoder()

        def local_params(self, x):
            self.encoder.norm(x.float())
            return guide.local_params(x)

    # the size is read from an encoder that says it, without running the network (which a
    # batch-normalised encoder could not do on the single datapoint the fallback uses)
    inference = SemiAmortizedSVI(
        model, GuideWithBatchNorm(), pyro.optim.Adam({}), Trace_ELBO(), mode="svi"
    )
    assert inference.initial_params(torch.zeros(3, P))[0].shape == (3, D)
    for bare in (BareGuide(), EncoderWithoutSize()):
        inference = SemiAmortizedSVI(model, bare, pyro.optim.Adam({}), Trace_ELBO(), mode="svi")
        # token ids (integers) still get floating-point λ₀
        loc0, log_var0 = inference.initial_params(torch.zeros(3, P, dtype=torch.long))
        assert loc0.shape == log_var0.shape == (3, D) and not loc0.any() and not log_var0.any()
        assert loc0.dtype == log_var0.dtype == torch.get_default_dtype()


def test_evaluate_loss_is_the_scaled_beta_bound_at_the_refined_parameters():
    """−(N/B) Σ_i ELBO_β(λ_K), λ_K refined at the same β (same draws: same seed)."""
    import functools

    model, guide, x, inference = _evaluation_problem(4, num_refine_steps=3)
    pyro.set_rng_seed(3)
    loss = inference.evaluate_loss(x, size=40, beta=0.3)
    pyro.set_rng_seed(3)
    refined = inference.refinement(model, guide, Trace_ELBO(), x, guide.local_params(x), beta=0.3)
    by_hand = Trace_ELBO().differentiable_loss(
        model, functools.partial(guide, local_params=refined), x, size=40, beta=0.3
    )
    assert loss == pytest.approx(by_hand.item(), rel=1e-12)
    pyro.set_rng_seed(3)
    plain = inference.evaluate_loss(x, size=40)
    pyro.set_rng_seed(3)
    refined = inference.refine(x)
    by_hand = Trace_ELBO().differentiable_loss(
        model, functools.partial(guide, local_params=refined), x, size=40
    )
    assert plain == pytest.approx(by_hand.item(), rel=1e-12) and plain != loss


def test_cudnn_is_switched_off_only_for_recurrent_networks_on_cuda():
    """_has_cuda_rnn decides whether end-to-end steps run without cuDNN (no double backward
    in its RNN kernels). A parameter reporting is_cuda stands in for a GPU."""
    from pyro_skipvae.infer.semi_amortized import _has_cuda_rnn

    class OnCuda(nn.Parameter):
        @property
        def is_cuda(self):
            return True

    cpu_lstm, gpu_lstm, gpu_linear = nn.LSTM(2, 3), nn.LSTM(2, 3), nn.Linear(2, 3)
    gpu_lstm.weight_hh_l0 = OnCuda(gpu_lstm.weight_hh_l0.detach())
    gpu_linear.weight = OnCuda(gpu_linear.weight.detach())
    assert not _has_cuda_rnn(cpu_lstm, nn.Sequential(gpu_linear))
    for model, guide in ((gpu_lstm, cpu_lstm), (cpu_lstm, gpu_lstm)):
        for mode, enabled in (("end-to-end", False), ("stop-gradient", True)):
            inference = SemiAmortizedSVI(model, guide, None, Trace_ELBO(), mode=mode)
            with inference._rnn_context():
                assert torch.backends.cudnn.enabled is enabled
            assert torch.backends.cudnn.enabled
    assert _has_cuda_rnn(nn.Sequential(nn.Linear(2, 2), gpu_lstm))
    assert _has_cuda_rnn(object(), gpu_lstm)  # anything that is not a module is passed over


def test_step_and_surrogate_carry_size_and_beta():
    """loss_and_surrogate's loss is −(N/B) Σ ELBO_β at λ_K (B-scaled without size); step
    returns that loss (β = 1 when not given) and moves each parameter by −η/N times the
    surrogate's gradient (plain SGD on the per-datapoint gradient)."""
    import functools

    from pyro_skipvae.infer.optim import Optimizer

    model, guide, x, inference = _evaluation_problem(4, num_refine_steps=2)
    for size, beta in ((40, 0.3), (None, 1.0)):
        pyro.set_rng_seed(6)
        loss, _ = inference.loss_and_surrogate(x, size=size, beta=beta)
        pyro.set_rng_seed(6)
        refined, _, _ = inference.refinement.run(
            model, guide, Trace_ELBO(), x, guide.local_params(x), beta=beta
        )
        by_hand = Trace_ELBO().differentiable_loss(
            model, functools.partial(guide, local_params=refined), x, size=size, beta=beta
        )
        assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)
    params = list(model.parameters()) + list(guide.parameters())
    inference.optim = Optimizer(params, name="sgd", learning_rate=0.1, clip_norm=None)
    for size, beta in ((40, {}), (None, {"beta": 0.3})):
        pyro.set_rng_seed(6)
        loss, surrogate = inference.loss_and_surrogate(x, size=size, beta=beta.get("beta", 1.0))
        grads = torch.autograd.grad(surrogate, params, allow_unused=True)
        before = [p.detach().clone() for p in params]
        pyro.set_rng_seed(6)
        assert inference.step(x, size=size, **beta) == pytest.approx(loss.item(), rel=1e-12)
        for p, p0, g in zip(params, before, grads):
            expected = p0 if g is None else p0 - 0.1 * g / (size or x.shape[0])
            assert torch.allclose(p.detach(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [40, None])
def test_kl_mode_adds_the_encoders_kl_to_the_refined_posterior(size):
    """surrogate − loss = (N/B) Σ_i KL(q_λ0 ‖ q_λK) (N = B without size), by hand from the
    same refinement (same seed)."""
    model, guide, x, inference = _evaluation_problem(4, mode="kl", num_refine_steps=3)
    pyro.set_rng_seed(8)
    loss, surrogate = inference.loss_and_surrogate(x, size=size)
    pyro.set_rng_seed(8)
    init = guide.local_params(x)
    (loc, log_var), _, _ = inference.refinement.run(model, guide, Trace_ELBO(), x, init)
    q0 = dist.Normal(init[0], (0.5 * init[1]).exp())
    kl = kl_divergence(q0, dist.Normal(loc, (0.5 * log_var).exp())).sum()
    assert kl > 0.01  # λ_K moved
    scale = (size or x.shape[0]) / x.shape[0]
    assert (surrogate - loss).item() == pytest.approx(scale * kl.item(), rel=1e-10)


def test_semi_amortized_defaults_are_the_authors_and_limits_are_inclusive():
    model, guide = linear_gaussian()
    inference = SemiAmortizedSVI(model, guide, pyro.optim.Adam({}), Trace_ELBO())
    assert inference.refinement == Refinement()  # K = 20, η = 1, ρ = 0.5, clip 5, log σ²
    scaled = SemiAmortizedSVI(
        model, guide, pyro.optim.Adam({}), Trace_ELBO(), refine_coordinates="log-scale"
    )
    assert scaled.refinement.refine_coordinates == "log-scale"
    assert inference.refine_batch_size is None
    one = SemiAmortizedSVI(
        model, guide, pyro.optim.Adam({}), Trace_ELBO(), num_refine_steps=1, refine_batch_size=1
    )
    assert one.refinement.num_refine_steps == 1 and one.refine_batch_size == 1
    with pytest.raises(ConfigError, match="refine_batch_size"):
        SemiAmortizedSVI(model, guide, pyro.optim.Adam({}), Trace_ELBO(), refine_batch_size="3")


def test_refined_guide_defaults_to_minibatches_of_50_and_passes_the_plate_size():
    from pyro import poutine

    from pyro_skipvae.infer.semi_amortized import _family

    _, _, x, inference = _evaluation_problem(51, num_refine_steps=1)
    trace = poutine.trace(inference.refined_guide()).get_trace(x, size=510)
    assert [size for size, _ in inference.refinement.calls] == [50, 1]
    assert trace.nodes["z"]["scale"] == 10.0
    assert _family(dist.StudentT(3.0, torch.zeros(2), 1.0).to_event(1)) == "Independent(StudentT)"
    model, guide = linear_gaussian()
    with pytest.raises(ConfigError, match="differentiable_loss .*found object$"):
        SemiAmortizedSVI(model, guide, pyro.optim.Adam({}), object())


def test_a_data_parallel_step_refines_with_the_global_b_and_averages_by_the_local_b(monkeypatch):
    """In data-parallel training the refinement's 1/B is the global minibatch's (here 3
    ranks' worth), while the gradient average weights this rank by its own B."""
    from pyro_skipvae.infer import distributed, semi_amortized

    model, guide, x, inference = _evaluation_problem(4, num_refine_steps=1)
    monkeypatch.setattr(distributed, "global_batch_size", lambda local: 3 * local)
    runs, steps = [], []
    run = inference.refinement.run

    def recording_run(*args, **kwargs):
        runs.append(kwargs.get("batch_size"))
        return run(*args, **kwargs)

    monkeypatch.setattr(inference.refinement, "run", recording_run, raising=False)
    monkeypatch.setattr(
        semi_amortized, "apply_gradients", lambda optim, trace, **sizes: steps.append(sizes)
    )
    inference.step(x, size=40)
    inference.step(x)
    assert runs == [12, 12]
    assert steps == [{"size": 40, "batch_size": 4}, {"size": 4, "batch_size": 4}]


@pytest.mark.parametrize("inference_class", ["svi", "semi-amortized"])
def test_a_data_parallel_step_without_size_scales_by_the_global_minibatch(
    monkeypatch, inference_class
):
    """Rank 0 of a group holding 3 of a global minibatch of 5, stepping without ``size``:
    its loss is the plate-scaled −(5/3) Σ_{i∈rank} ELBO_i (N = B = 5, as one process with
    the whole minibatch and no size), and the optimizer steps with size 5 and weight 3, so
    the all-reduce Σ_r (B_r/B) G_r is the 1-process gradient (with size 3 the ranks' shares
    would be weighted 3/5 · 1 and 2/5 · 1: unequal shards then drift apart)."""
    from pyro_skipvae.infer import distributed, semi_amortized, svi

    model, guide, x, inference = _evaluation_problem(3, num_refine_steps=2)
    if inference_class == "svi":
        inference = INFERENCES.build("svi", model, guide, pyro.optim.Adam({}), Trace_ELBO())
    steps = []
    module = svi if inference_class == "svi" else semi_amortized
    monkeypatch.setattr(module, "apply_gradients", lambda optim, trace, **s: steps.append(s))
    # the refinement divides by the global B in both calls (checked by the test above)
    monkeypatch.setattr(distributed, "global_batch_size", lambda local: local + 2)
    pyro.set_rng_seed(3)
    one_process = inference.step(x, size=5)
    monkeypatch.setattr(distributed, "active", lambda: True)
    pyro.set_rng_seed(3)
    assert inference.step(x) == pytest.approx(one_process, rel=1e-12)
    assert steps == [{"size": 5, "batch_size": 3}] * 2
