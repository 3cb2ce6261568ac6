r"""Semi-amortized variational inference (SA-VAE, Kim, Wiseman, Miller, Sontag & Rush 2018).

The amortized guide gives each datapoint its local variational parameters
λ₀ = (μ₀, log σ₀) = enc(x). Semi-amortized inference then refines them with K steps of
stochastic gradient descent with momentum on the per-datapoint negative ELBO
(Kim et al. 2018, arXiv:1802.02550, Algorithm 1):

.. math::

    g_k &= \operatorname{clip}_c\big(\nabla_\lambda \tfrac{1}{B}\textstyle\sum_i
           -\mathrm{ELBO}_\beta(\lambda_{k,i}; x_i)\big) \\
    m_k &= \rho\, m_{k-1} + g_k, \qquad m_{-1} = 0 \\
    \lambda_{k+1} &= \lambda_k - \eta\, m_k, \qquad k = 0, \dots, K-1

and trains the decoder on :math:`\mathrm{ELBO}(\lambda_K)`. How the encoder learns is the
*mode* (§3 of the paper; the four options of the authors' code):

``end-to-end`` (SA-VAE)
    λ_K is a differentiable function of the encoder and decoder parameters; the loss
    −ELBO(λ_K) is backpropagated through all K steps (exact second-order autograd,
    ``create_graph=True``; the authors approximate the same Hessian-vector products by
    finite differences, eq. 7–9).
``stop-gradient`` (VAE+SVI)
    The encoder is trained on its own ELBO at λ₀; the decoder on ELBO(stopgrad λ_K).
``kl`` (VAE+SVI+KL)
    The encoder minimises KL(q_{λ₀} ‖ stopgrad q_{λ_K}); the decoder as in stop-gradient.
``svi`` (no encoder)
    λ₀ = 0 for every datapoint; only the decoder (and prior/likelihood parameters) learn.
"""

import contextlib
import functools
import logging
import math

import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from torch import nn

from ..diagnostics.elbo import elbo_terms
from ..errors import ConfigError
from .svi import apply_gradients

logger = logging.getLogger(__name__)

MODES = ("end-to-end", "stop-gradient", "kl", "svi")


def _clip(grad: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    # The authors' code clips the norm of the whole (B, D) gradient tensor of μ and of
    # log σ² separately (optim_n2n.py, clip_grad_norm), so we do too, per tensor. The clip
    # factor is kept in the graph (not detached), so the end-to-end gradient is the exact
    # derivative of the λ_K actually computed; the authors treat it as a constant.
    if max_norm is None:
        return grad
    factor = (max_norm / (grad.norm() + 1e-6)).clamp(max=1.0)
    return grad * factor


class SemiAmortizedSVI:
    r"""Semi-amortized SVI with the interface of :class:`pyro.infer.SVI`.

    ``step(x, size=N, beta=β)`` refines the guide's local parameters for the minibatch
    ``x`` (see the module docstring for the update), takes one optimizer step on the model
    and guide parameters and returns the loss as a float: −(N/B) Σ_i ELBO_β(λ_{K,i}; x_i),
    the refined bound scaled like SVI's loss (in ``kl`` mode the KL term the encoder
    trains on is not included).

    **Scale of the refinement step.** The refinement objective is the *mean* over the B
    datapoints of the minibatch of the per-datapoint negative ELBO, exactly the authors'
    ``variational_loss`` (their losses are batch averages). Datapoints are independent,
    so each λ_i moves along its own per-datapoint gradient, scaled by η / B; with the
    authors' defaults (η = 1, momentum 0.5, clip 5, B = 50 for images) this reproduces
    their refinement step for step. The clipping acts on the whole minibatch's gradient
    tensor, as theirs does. Both make the refinement depend on B, so evaluation refines in
    minibatches of ``refine_batch_size`` (default: the largest training minibatch
    :meth:`step` has seen), whatever batch size the caller evaluates with.

    **β during refinement.** The refinement ascends the same β-weighted bound
    E_q[log p(x|z)] − β KL that the decoder is trained on at that step (the authors' code
    uses ``args.beta`` in its refinement loss too), so λ_K optimises the objective being
    trained; evaluation always refines and reports the plain ELBO (β = 1).

    **cuDNN and double backward.** cuDNN's RNN kernels have no double backward. In
    ``end-to-end`` mode on CUDA, when the model or guide contains an :class:`torch.nn.RNNBase`
    (e.g. an LSTM decoder), the step runs with cuDNN disabled, so PyTorch's native RNN kernels
    (which do support it) compute the exact gradient: slower, never approximate, never a crash.

    :param model: Pyro model ``model(x, *, size=None, beta=1.0)`` following the site contract.
    :param guide: :class:`~pyro_skipvae.guides.Guide` (anything with ``local_params(x)`` and a
        ``local_params=(loc, log_scale)`` keyword).
    :param pyro.optim.PyroOptim optim: optimizer of the model and guide parameters.
    :param loss: a Pyro ELBO with ``differentiable_loss`` (:class:`~pyro.infer.Trace_ELBO`,
        :class:`~pyro.infer.TraceMeanField_ELBO`, ... with any ``num_particles``).
    :param int num_refine_steps: K (default 20).
    :param float refine_lr: η (default 1.0).
    :param float refine_momentum: ρ in [0, 1) (default 0.5).
    :param float refine_max_grad_norm: clip c of each gradient tensor's norm (default 5.0;
        ``None`` disables clipping).
    :param str mode: ``"end-to-end"`` (default), ``"stop-gradient"``, ``"kl"`` or ``"svi"``.
    :param int refine_batch_size: minibatch size of the refinement at evaluation (default:
        the largest training minibatch seen, else the caller's batch size).

    Example::

        vae = SkipVAE((1, 28, 28))
        inference = SemiAmortizedSVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                                     Trace_ELBO(), num_refine_steps=20)
        loss = inference.step(x_batch, size=60000, beta=1.0)
        inference.evaluate_metrics(x_val)  # {"elbo_refined": ..., "amortization_gap": ...}

    References: Kim et al., *Semi-Amortized Variational Autoencoders*, ICML 2018
    (arXiv:1802.02550), Algorithm 1 and §3; code at github.com/harvardnlp/sa-vae
    (``optim_n2n.py``, ``train_img.py``).
    """

    def __init__(
        self,
        model,
        guide,
        optim,
        loss,
        *,
        num_refine_steps=20,
        refine_lr=1.0,
        refine_momentum=0.5,
        refine_max_grad_norm=5.0,
        mode="end-to-end",
        refine_batch_size=None,
    ):
        if mode not in MODES:
            raise ConfigError(
                f"unknown semi-amortized mode {mode!r}; expected one of: {', '.join(MODES)}"
            )
        if (
            isinstance(num_refine_steps, bool)
            or not isinstance(num_refine_steps, int)
            or num_refine_steps < 1
        ):
            raise ConfigError(
                f"num_refine_steps must be a positive integer, found {num_refine_steps!r}"
            )
        if not _positive(refine_lr):
            raise ConfigError(f"refine_lr must be positive, found {refine_lr!r}")
        if not isinstance(refine_momentum, int | float) or not 0 <= refine_momentum < 1:
            raise ConfigError(f"refine_momentum must lie in [0, 1), found {refine_momentum!r}")
        if refine_max_grad_norm is not None and not _positive(refine_max_grad_norm):
            raise ConfigError(
                f"refine_max_grad_norm must be positive or None, found {refine_max_grad_norm!r}"
            )
        if refine_batch_size is not None and (
            not isinstance(refine_batch_size, int) or refine_batch_size < 1
        ):
            raise ConfigError(
                f"refine_batch_size must be a positive integer or None, found {refine_batch_size!r}"
            )
        if not callable(getattr(loss, "differentiable_loss", None)):
            raise ConfigError(
                f"semi-amortized inference needs an ELBO with differentiable_loss (Trace_ELBO, "
                f"TraceMeanField_ELBO, ...), found {type(loss).__name__}"
            )
        self.model = model
        self.guide = guide
        self.optim = optim
        self.loss = loss
        self.num_refine_steps = num_refine_steps
        self.refine_lr = float(refine_lr)
        self.refine_momentum = float(refine_momentum)
        self.refine_max_grad_norm = (
            None if refine_max_grad_norm is None else float(refine_max_grad_norm)
        )
        self.mode = mode
        self.refine_batch_size = refine_batch_size
        self._train_batch_size = None

    # ------------------------------------------------------------------ the refinement
    def initial_params(self, x):
        """λ₀: the encoder's (μ, log σ), or zeros in ``svi`` mode (shape ``(B, latent_dim)``)."""
        if self.mode == "svi":
            latent_dim = self._latent_dim(x)
            zeros = x.new_zeros((x.shape[0], latent_dim), dtype=torch.get_default_dtype())
            return zeros, zeros.clone()
        return self.guide.local_params(x)

    def _latent_dim(self, x):
        encoder = getattr(self.guide, "encoder", None)
        if encoder is not None and hasattr(encoder, "latent_dim"):
            return encoder.latent_dim
        with torch.no_grad(), poutine.block():
            return self.guide.local_params(x[:1])[0].shape[-1]

    def _refine_loss(self, x, loc, log_scale, beta):
        """(1/B) Σ_i −ELBO_β(λ_i; x_i) through the Pyro ELBO object (plate scale 1)."""
        guide = functools.partial(self.guide, local_params=(loc, log_scale))
        return self.loss.differentiable_loss(self.model, guide, x, beta=beta) / x.shape[0]

    def _refine(self, x, init, *, beta=1.0, create_graph=False):
        """Run the K refinement steps from ``init``; return λ_K and the raw gradient at λ₀.

        With ``create_graph`` the returned λ_K is differentiable w.r.t. ``init`` and every
        parameter the ELBO touches; otherwise ``init`` is detached and λ_K is a leaf-free
        tensor with no history. Gradients are taken w.r.t. the local parameters only
        (``torch.autograd.grad``), so no parameter's ``.grad`` changes.
        """
        if create_graph:
            params = list(init)
        else:
            params = [p.detach().requires_grad_() for p in init]
        momenta = [None] * len(params)
        first_grads = None
        with torch.enable_grad():
            for _ in range(self.num_refine_steps):
                loss = self._refine_loss(x, *params, beta)
                grads = torch.autograd.grad(loss, params, create_graph=create_graph)
                if first_grads is None:
                    first_grads = [g.detach() for g in grads]
                new_params = []
                for i, (p, g) in enumerate(zip(params, grads)):
                    g = _clip(g, self.refine_max_grad_norm)
                    momenta[i] = g if momenta[i] is None else self.refine_momentum * momenta[i] + g
                    new_params.append(p - self.refine_lr * momenta[i])
                if not create_graph:
                    # Without create_graph nothing needs the history; cut it each step so
                    # memory stays that of one step.
                    momenta = [m.detach() for m in momenta]
                    new_params = [p.detach().requires_grad_() for p in new_params]
                params = new_params
        return tuple(params), first_grads

    def refine(self, x, local_params=None, *, beta=1.0):
        r"""Refined local parameters λ_K = (μ_K, log σ_K) for the batch ``x`` (no history).

        :param torch.Tensor x: minibatch of shape ``(B, ...)``.
        :param tuple local_params: λ₀ = (loc, log_scale); default :meth:`initial_params`.
        :param float beta: KL weight of the bound being ascended (default 1: the ELBO).
        :returns: ``(loc, log_scale)``, detached, each ``(B, latent_dim)``.
        """
        if local_params is None:
            with torch.no_grad():
                local_params = self.initial_params(x)
        params, _ = self._refine(x, local_params, beta=beta, create_graph=False)
        return tuple(p.detach() for p in params)

    # ------------------------------------------------------------------ SVI's interface
    def loss_and_surrogate(self, x, *, size=None, beta=1.0):
        r"""The loss (−(N/B) Σ_i ELBO_β(λ_K)) and the surrogate whose gradient is the update.

        * ``end-to-end``: surrogate = loss, with λ_K differentiable through the refinement;
        * ``stop-gradient``: loss at stopgrad λ_K (decoder) + (N/B) Σ_i λ₀·stopgrad ∇_{λ₀}
          (−ELBO_β(λ₀)) (encoder, on its own bound only: the authors backpropagate that
          gradient into the encoder alone, so the decoder never sees the amortized ELBO);
          the gradient at λ₀ is the one the refinement's first step already computed;
        * ``kl``: loss at stopgrad λ_K + (N/B) Σ_i KL(q_{λ₀,i} ‖ stopgrad q_{λ_K,i});
        * ``svi``: loss at stopgrad λ_K from λ₀ = 0.

        :returns: ``(loss, surrogate)``, scalar tensors.
        """
        scale = (x.shape[0] if size is None else size) / x.shape[0]
        init = self.initial_params(x)
        end_to_end = self.mode == "end-to-end"
        refined, first_grads = self._refine(x, init, beta=beta, create_graph=end_to_end)
        guide = functools.partial(self.guide, local_params=refined)
        loss = self.loss.differentiable_loss(self.model, guide, x, size=size, beta=beta)
        surrogate = loss
        if self.mode == "stop-gradient":
            # first_grads is ∇_{λ₀} of the refinement objective (1/B) Σ −ELBO_β, the
            # encoder's own loss up to the factor B·scale that turns it into SVI's scale.
            surrogate = surrogate + x.shape[0] * scale * sum(
                (p * g).sum() for p, g in zip(init, first_grads)
            )
        elif self.mode == "kl":
            q0 = self.guide.distribution(*init)
            q_refined = self.guide.distribution(*(p.detach() for p in refined))
            surrogate = surrogate + scale * kl_divergence(q0, q_refined).sum()
        return loss, surrogate

    def step(self, x, *, size=None, beta=1.0):
        """Refine, take one optimizer step on the model and guide parameters, return the loss.

        :returns: −(N/B) Σ_i ELBO_β(λ_K; x_i) as a float (the scale of :class:`pyro.infer.SVI`).
        """
        self._train_batch_size = max(self._train_batch_size or 0, x.shape[0])
        with self._rnn_context(), poutine.trace(param_only=True) as param_capture:
            loss, surrogate = self.loss_and_surrogate(x, size=size, beta=beta)
            surrogate.backward()
        apply_gradients(self.optim, param_capture.trace)
        return loss.item()

    def evaluate_loss(self, x, *, size=None, beta=1.0):
        """The loss −(N/B) Σ_i ELBO_β(λ_K) after refinement, without updating parameters."""
        refined = self.refine(x, beta=beta)
        with torch.no_grad():
            guide = functools.partial(self.guide, local_params=refined)
            return self.loss.differentiable_loss(self.model, guide, x, size=size, beta=beta).item()

    def evaluate_metrics(self, data, *, batch_size=500):
        r"""Per-datapoint ELBO after refinement, and the amortization gap, in nats.

        For each minibatch (of ``refine_batch_size``, see the class docstring; ``batch_size``
        only when no training step has fixed it) the local parameters are refined from
        λ₀ with β = 1, then ELBO and KL are estimated by
        :func:`~pyro_skipvae.diagnostics.elbo.elbo_terms` (one reparameterised sample,
        analytic KL for Gaussian prior and guide: the estimator of ``val_elbo``).

        :returns: dict of floats: ``elbo_refined`` (mean ELBO at λ_K), ``kl_refined`` (mean
            KL(q_{λ_K} ‖ p)) and ``amortization_gap`` = ``elbo_refined`` − the ELBO of the
            encoder's λ (estimated on the same minibatches with independent samples; in
            ``svi`` mode the encoder is untrained and the gap is against it all the same).
        """
        chunk = self.refine_batch_size or self._train_batch_size or batch_size
        refined_elbo = refined_kl = amortized_elbo = 0.0
        for start in range(0, data.shape[0], chunk):
            x = data[start : start + chunk]
            refined = self.refine(x)  # no create_graph: cuDNN's RNNs are fine here
            with torch.no_grad():
                elbo, kl = elbo_terms(
                    self.model, self.guide, x, guide_kwargs={"local_params": refined}
                )
                amortized, _ = elbo_terms(self.model, self.guide, x)
            refined_elbo += elbo.sum().item()
            refined_kl += kl.sum().item()
            amortized_elbo += amortized.sum().item()
        n = data.shape[0]
        return {
            "elbo_refined": refined_elbo / n,
            "kl_refined": refined_kl / n,
            "amortization_gap": (refined_elbo - amortized_elbo) / n,
        }

    def _rnn_context(self):
        if self.mode == "end-to-end" and _has_cuda_rnn(self.model, self.guide):
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()


def _positive(value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _has_cuda_rnn(*modules) -> bool:
    for module in modules:
        if not isinstance(module, nn.Module):
            continue
        for m in module.modules():
            if isinstance(m, nn.RNNBase) and any(p.is_cuda for p in m.parameters(recurse=False)):
                return True
    return False


__all__ = ["MODES", "SemiAmortizedSVI"]
