r"""Semi-amortized variational inference (SA-VAE, Kim, Wiseman, Miller, Sontag & Rush 2018).

The amortized guide gives each datapoint its local variational parameters
λ₀ = (μ₀, log σ²₀) = enc(x). Semi-amortized inference then refines them with K steps of
stochastic gradient descent with momentum on the per-datapoint negative ELBO
(Kim et al. 2018, arXiv:1802.02550, Algorithm 1; the update is
:class:`~pyro_skipvae.infer.refine.Refinement`'s, shared with evaluation) and trains the
decoder on :math:`\mathrm{ELBO}(\lambda_K)`. How the encoder learns is the
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

import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from torch import nn

from ..checks import check_integer
from ..diagnostics.elbo import evaluate_elbo
from ..errors import ConfigError
from ..modes import evaluating
from . import distributed
from .refine import Refinement, refined_guide
from .svi import apply_gradients

logger = logging.getLogger(__name__)

MODES = ("end-to-end", "stop-gradient", "kl", "svi")


class SemiAmortizedSVI:
    r"""Semi-amortized SVI with the interface of :class:`pyro.infer.SVI`.

    ``step(x, size=N, beta=β)`` refines the guide's local parameters for the minibatch
    ``x``, takes one optimizer step on the model and guide parameters and returns the loss
    as a float: −(N/B) Σ_i ELBO_β(λ_{K,i}; x_i), the refined bound scaled like SVI's loss
    (in ``kl`` mode the KL term the encoder trains on is not included).

    **What the refinement ascends.** The β-weighted ELBO E_q[log p(x|z)] − β KL with the
    β of that step (the authors' code uses ``args.beta`` in its refinement loss too), with the
    KL analytic where prior and guide have one (the authors' estimator), whatever ``loss`` the
    decoder trains on: with free bits or an importance-weighted bound as ``loss``, λ_K still
    maximises the ELBO, the bound it is scored by (see :mod:`~pyro_skipvae.infer.refine`).
    Evaluation always refines and reports the plain ELBO (β = 1).

    **Refinement at evaluation** runs in minibatches of ``refine_batch_size`` (default: the
    largest training minibatch :meth:`step` has seen), because the update depends on B
    (see :mod:`~pyro_skipvae.infer.refine`).

    **Data-parallel training.** Each rank refines the local parameters of its own share of
    the global minibatch (they are per datapoint), dividing the refinement objective by the
    *global* minibatch size B, so each datapoint moves by η/B times its gradient as in one
    process; the refinement's gradient-norm clip acts on the rank's share of the gradient
    tensor, which is never larger than the whole, so with the clip inactive (or never
    binding) a W-process step equals the 1-process step on the same global minibatch. The
    parameter gradients, second-order ones included, are averaged by
    :func:`~pyro_skipvae.infer.svi.apply_gradients` (DDP's reducer would refuse the double
    backward). A ``step(x)`` without ``size`` scales the loss as one process would the whole
    global minibatch (``size`` = B, the sum of the ranks' minibatch sizes).

    **cuDNN and double backward.** cuDNN's RNN kernels have no double backward. In
    ``end-to-end`` mode on CUDA, when the model or guide contains an :class:`torch.nn.RNNBase`
    (e.g. an LSTM decoder), the step runs with cuDNN disabled, so PyTorch's native RNN kernels
    (which do support it) compute the exact gradient: slower, never approximate, never a crash.

    :param model: Pyro model ``model(x, *, size=None, beta=1.0)`` following the site contract.
    :param guide: :class:`~pyro_skipvae.guides.Guide` (anything with ``local_params(x)``
        returning (μ, log σ²) and a ``local_params=`` keyword).
    :param optim: :class:`~pyro_skipvae.infer.optim.Optimizer` or a :class:`pyro.optim.PyroOptim`.
    :param loss: a Pyro ELBO with ``differentiable_loss`` (:class:`~pyro.infer.Trace_ELBO`,
        :class:`~pyro.infer.TraceMeanField_ELBO`, ... with any ``num_particles``).
    :param str mode: ``"end-to-end"`` (default), ``"stop-gradient"``, ``"kl"`` or ``"svi"``.
    :param int refine_batch_size: minibatch size of the refinement at evaluation.
    :param refinement_options: ``num_refine_steps`` (K, default 20), ``refine_lr`` (1.0),
        ``refine_momentum`` (0.5), ``refine_max_grad_norm`` (5.0), ``refine_coordinates``
        (``"log-variance"``) and ``refine_kl`` (``"analytic"``): see
        :class:`~pyro_skipvae.infer.refine.Refinement`.

    Example::

        vae = SkipVAE((1, 28, 28))
        inference = SemiAmortizedSVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                                     Trace_ELBO(), num_refine_steps=20)
        loss = inference.step(x_batch, size=60000, beta=1.0)
        inference.evaluate_metrics(x_val)  # {"elbo": ..., "amortization_gap": ...}

    References: Kim et al., *Semi-Amortized Variational Autoencoders*, ICML 2018
    (arXiv:1802.02550), Algorithm 1 and §3; code at github.com/harvardnlp/sa-vae
    (``optim_n2n.py``, ``train_img.py``, ``train_text.py``).
    """

    def __init__(
        self,
        model,
        guide,
        optim,
        loss,
        *,
        mode="end-to-end",
        refine_batch_size=None,
        num_refine_steps=20,
        refine_lr=1.0,
        refine_momentum=0.5,
        refine_max_grad_norm=5.0,
        refine_coordinates="log-variance",
        refine_kl="analytic",
    ):
        if mode not in MODES:
            raise ConfigError(
                f"unknown semi-amortized mode {mode!r}; expected one of: {', '.join(MODES)}"
            )
        self.refinement = Refinement(
            num_refine_steps=num_refine_steps,
            refine_lr=refine_lr,
            refine_momentum=refine_momentum,
            refine_max_grad_norm=refine_max_grad_norm,
            refine_coordinates=refine_coordinates,
            refine_kl=refine_kl,
        )
        if num_refine_steps < 1:
            raise ConfigError(f"num_refine_steps must be at least 1, found {num_refine_steps}")
        check_integer("refine_batch_size", refine_batch_size, optional=True)
        if not callable(getattr(loss, "differentiable_loss", None)):
            raise ConfigError(
                f"semi-amortized inference needs an ELBO with differentiable_loss (Trace_ELBO, "
                f"TraceMeanField_ELBO, ...), found {type(loss).__name__}"
            )
        self.model = model
        self.guide = guide
        self.optim = optim
        self.loss = loss
        self.mode = mode
        self.refine_batch_size = refine_batch_size
        self._train_batch_size = None

    # ------------------------------------------------------------------ the refinement
    def initial_params(self, x):
        """λ₀: the encoder's (μ, log σ²), or zeros (the prior N(0, I)) in ``svi`` mode."""
        if self.mode == "svi":
            zeros = x.new_zeros((x.shape[0], self._latent_dim(x)), dtype=torch.get_default_dtype())
            return zeros, zeros.clone()
        return self.guide.local_params(x)

    def _latent_dim(self, x):
        encoder = getattr(self.guide, "encoder", None)
        if encoder is not None and hasattr(encoder, "latent_dim"):
            return encoder.latent_dim
        with torch.no_grad(), poutine.block():
            return self.guide.local_params(x[:1])[0].shape[-1]

    def refine(self, x, local_params=None, *, beta=1.0):
        r"""Refined local parameters λ_K = (μ_K, log σ²_K) for the batch ``x`` (no history).

        :param torch.Tensor x: minibatch of shape ``(B, ...)``.
        :param tuple local_params: λ₀; default :meth:`initial_params`.
        :param float beta: KL weight of the bound being ascended (default 1: the ELBO).
        """
        if local_params is None:
            with torch.no_grad():
                local_params = self.initial_params(x)
        return self.refinement(self.model, self.guide, self.loss, x, local_params, beta=beta)

    def refined_guide(self, batch_size=None):
        """The guide with this object's refinement applied on every call (for evaluation)."""
        return refined_guide(
            self.model,
            self.guide,
            self.loss,
            self.refinement,
            batch_size=self.refine_batch_size or self._train_batch_size or batch_size or 50,
            initial_params=self.initial_params,
        )

    # ------------------------------------------------------------------ SVI's interface
    def loss_and_surrogate(self, x, *, size=None, beta=1.0):
        r"""The loss (−(N/B) Σ_i ELBO_β(λ_K)) and the surrogate whose gradient is the update.

        * ``end-to-end``: surrogate = loss, with λ_K differentiable through the refinement;
        * ``stop-gradient``: loss at stopgrad λ_K (decoder) + (N/B) Σ_i u₀·stopgrad ∇_{u₀}
          (−ELBO_β) (encoder, on its own bound only: the authors backpropagate that gradient
          into the encoder alone, so the decoder never sees the amortized ELBO); the gradient
          at u₀ is the one the refinement's first step already computed, so it is the
          refinement's ELBO (analytic KL where there is one), whatever ``loss`` is;
        * ``kl``: loss at stopgrad λ_K + (N/B) Σ_i KL(q_{λ₀,i} ‖ stopgrad q_{λ_K,i});
        * ``svi``: loss at stopgrad λ_K from λ₀ = 0.

        :returns: ``(loss, surrogate)``, scalar tensors.
        """
        scale = (x.shape[0] if size is None else size) / x.shape[0]
        init = self.initial_params(x)
        end_to_end = self.mode == "end-to-end"
        # The refinement's 1/B is the global minibatch's in data-parallel training.
        batch = distributed.global_batch_size(x.shape[0])
        refined, start, first_grads = self.refinement.run(
            self.model,
            self.guide,
            self.loss,
            x,
            init,
            beta=beta,
            create_graph=end_to_end,
            batch_size=batch,
        )
        if not end_to_end:
            refined = tuple(p.detach() for p in refined)
        guide = functools.partial(self.guide, local_params=refined)
        loss = self.loss.differentiable_loss(self.model, guide, x, size=size, beta=beta)
        surrogate = loss
        if self.mode == "stop-gradient":
            # first_grads is ∇_{u₀} of the refinement objective (1/B) Σ −ELBO_β, the encoder's
            # own loss up to the factor B·scale that turns it into SVI's scale.
            surrogate = surrogate + batch * scale * sum(
                (u * g).sum() for u, g in zip(start, first_grads)
            )
        elif self.mode == "kl":
            q0 = self.guide.distribution(*init)
            q_refined = self.guide.distribution(*refined)
            try:
                kl = kl_divergence(q0, q_refined)
            except NotImplementedError:
                raise ConfigError(
                    f"semi-amortized mode 'kl' needs KL(q_λ0 ‖ q_λK) in closed form, which "
                    f"kl_divergence does not know for {_family(q0)}; use mode "
                    "'stop-gradient' or 'end-to-end'"
                ) from None
            surrogate = surrogate + scale * kl.sum()
        return loss, surrogate

    def step(self, x, *, size=None, beta=1.0):
        """Refine, take one optimizer step on the model and guide parameters, return the loss.

        Without ``size`` the loss is the minibatch's own sum (N = B); in data-parallel
        training B is then the global minibatch's, so the ranks' all-reduced step is the
        1-process step on it (not B/B_r times a rank's share).

        :returns: −(N/B) Σ_i ELBO_β(λ_K; x_i) as a float (the scale of :class:`pyro.infer.SVI`).
        """
        if size is None and distributed.active():
            size = distributed.global_batch_size(x.shape[0])
        self._train_batch_size = max(self._train_batch_size or 0, x.shape[0])
        with self._rnn_context(), poutine.trace(param_only=True) as param_capture:
            loss, surrogate = self.loss_and_surrogate(x, size=size, beta=beta)
            surrogate.backward()
        apply_gradients(
            self.optim, param_capture.trace, size=size or x.shape[0], batch_size=x.shape[0]
        )
        return loss.item()

    def evaluate_loss(self, x, *, size=None, beta=1.0):
        """The loss −(N/B) Σ_i ELBO_β(λ_K) after refinement, without updating parameters."""
        refined = self.refine(x, beta=beta)
        with torch.no_grad():
            guide = functools.partial(self.guide, local_params=refined)
            return self.loss.differentiable_loss(self.model, guide, x, size=size, beta=beta).item()

    def evaluate_metrics(self, data, *, batch_size=500):
        r"""Per-datapoint bounds on ``data`` in nats, with the networks in ``eval()`` mode.

        The local parameters are refined from λ₀ with β = 1 in minibatches of
        ``refine_batch_size`` (see the class docstring), then ELBO and KL are estimated by
        :func:`~pyro_skipvae.diagnostics.elbo.evaluate_elbo` (one reparameterised sample,
        analytic KL for Gaussian prior and guide: the estimator of the amortized bound).

        :returns: dict of floats: ``elbo`` and ``kl`` at λ_K (the run's bound, the one model
            selection uses, as in the authors' code) and, except in ``svi`` mode (no
            encoder), ``elbo_amortized``, ``kl_amortized`` and ``amortization_gap`` =
            ``elbo`` − ``elbo_amortized``.
        """
        with evaluating(self.model, self.guide):
            refined = evaluate_elbo(
                self.model, self.refined_guide(batch_size), data, batch_size=batch_size
            )
            metrics = {"elbo": refined["elbo"], "kl": refined["kl"]}
            if self.mode != "svi":
                amortized = evaluate_elbo(self.model, self.guide, data, batch_size=batch_size)
                metrics.update(
                    elbo_amortized=amortized["elbo"],
                    kl_amortized=amortized["kl"],
                    amortization_gap=refined["elbo"] - amortized["elbo"],
                )
        return metrics

    def _rnn_context(self):
        if self.mode == "end-to-end" and _has_cuda_rnn(self.model, self.guide):
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()


def _family(d) -> str:
    """A distribution's name with its wrappers: ``Independent(StudentT)``."""
    base = getattr(d, "base_dist", None)
    return type(d).__name__ + (f"({_family(base)})" if base is not None else "")


def _has_cuda_rnn(*modules) -> bool:
    for module in modules:
        if not isinstance(module, nn.Module):
            continue
        for m in module.modules():
            if isinstance(m, nn.RNNBase) and any(p.is_cuda for p in m.parameters(recurse=False)):
                return True
    return False


__all__ = ["MODES", "SemiAmortizedSVI"]
