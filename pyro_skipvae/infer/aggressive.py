r"""Aggressive training of the inference network (He, Spokoyny, Neubig & Berg-Kirkpatrick 2019).

Posterior collapse starts, on their account, when the encoder *lags*: early in training
q(z|x) is far from the model's posterior p_θ(z|x), so the decoder learns to ignore z before
the encoder has caught up. Aggressive training lets it catch up: before each model update,
the encoder alone is trained towards the current decoder's posterior,

.. math::

    \phi \leftarrow \phi - \eta\, \nabla_\phi \bigl(-\mathrm{ELBO}_\beta(\theta, \phi; x')\bigr)
    \quad \text{on fresh minibatches } x' \text{ until the bound stops improving,}

then the decoder (and any other model parameter) takes one step on the minibatch's own
−ELBO_β with the encoder held fixed (He et al. 2019, Algorithm 1). The phase ends when the
mutual information I_q(x; z) on validation data stops climbing; plain training follows.
"""

import logging
import math

import torch
from pyro import poutine
from torch import nn

from ..checks import check_integer
from ..diagnostics.latent import mutual_information
from ..errors import ConfigError
from ..modes import evaluating
from . import distributed
from .svi import SVI, apply_gradients

logger = logging.getLogger(__name__)


class AggressiveSVI(SVI):
    r"""SVI with aggressive encoder training in its first epochs (He et al. 2019, Algorithm 1).

    While the **aggressive phase** lasts, ``step(x, size=N, beta=β)``

    1. takes up to ``max_encoder_steps`` optimizer steps on the guide's parameters only (the
       encoder, and a flow or batch norm shift of q), each on the loss of a minibatch: ``x``
       first, then a fresh random minibatch of the epoch for each further step (drawn from
       the training loop's minibatches, see :meth:`begin_epoch`; without a loop, ``x`` again);
       every ``check_every`` steps the mean loss of those steps, per token for text and per
       datapoint otherwise, is compared with the previous block's, and the loop stops once it
       has increased (the authors' rule; their loop runs at most 99 steps, checking every 10);
    2. takes one optimizer step on every other parameter (decoder, learnable prior or
       likelihood) on ``x``, the guide's gradient dropped;
    3. returns that step's loss, −(N/B) Σ_i ELBO_β(x_i), like :class:`pyro.infer.SVI`.

    Afterwards ``step`` is :class:`~pyro_skipvae.infer.svi.SVI`'s: one step on everything.

    **End of the phase** (:meth:`end_epoch`, called by the training loop after validation):
    once the validation MI of an aggressive epoch is lower than the previous aggressive
    epoch's (the authors' rule: ``cur_mi < pre_mi``), or after ``max_aggressive_epochs``
    epochs if that comes first. MI is the full-set estimator
    (:func:`~pyro_skipvae.diagnostics.mutual_information`, two draws per datapoint) on the
    validation set, reported as ``val_mi`` for aggressive epochs; the authors use the
    minibatch estimator, which is capped at log B. Each epoch's record says
    ``aggressive: true/false``. Without validation data the phase needs
    ``max_aggressive_epochs``; a fit without either is refused before its run folder is
    written (:meth:`check_fit`).

    **Cost.** An aggressive step costs up to ``max_encoder_steps`` + 1 forward and backward
    passes (the decoder's weight gradients are computed in the encoder steps and discarded,
    as in the authors' code); the paper reports a total training time that is a small
    multiple of a plain VAE's (far below SA-VAE's), because the phase ends early. The
    validation MI costs O(N_val² D) per aggressive epoch.

    **Differences from the authors' code, on purpose.** They keep two optimizers (encoder,
    decoder); here one optimizer steps the parameters that hold a gradient, which is the
    same update for Adam and SGD (their states are per parameter). Their gradient-norm clip
    in an encoder step counts the decoder's discarded gradient too; here ``clip_norm``
    applies to the gradient that is stepped. They normalise the stopping rule's loss per
    word for text and per image otherwise, as here. In data-parallel training the ranks draw
    the same fresh minibatches (the run's generator), sum the block losses before deciding,
    and compute the MI each on its share of the validation set, averaged.

    **State** (checkpointed through :meth:`get_state`/:meth:`set_state` with the run, so a
    resumed run continues in the phase it was in): whether the phase is on, the previous
    validation MI and the number of aggressive epochs done.

    :param model: Pyro model ``model(x, *, size=None, beta=1.0)`` following the site contract.
    :param guide: the guide, a :class:`torch.nn.Module` (its parameters are the ones the
        encoder steps train).
    :param optim: :class:`~pyro_skipvae.infer.optim.Optimizer` or a :class:`pyro.optim.PyroOptim`.
    :param loss: any Pyro ELBO.
    :param int max_encoder_steps: most encoder steps per model update (default 100).
    :param int check_every: compare the mean loss every this many encoder steps (default 10).
    :param int max_aggressive_epochs: end the phase after this many epochs at the latest
        (default None: only the MI rule ends it).

    Example::

        vae.fit(train, val=val, inference="aggressive",
                inference_options={"max_aggressive_epochs": 5})
        # skipvae fit --inference aggressive --inference-option max_aggressive_epochs=5

    Reference: He, Spokoyny, Neubig, Berg-Kirkpatrick, *Lagging Inference Networks and
    Posterior Collapse in Variational Autoencoders*, ICLR 2019 (arXiv:1901.05534),
    Algorithm 1; code at github.com/jxhe/vae-lagging-encoder (``text.py``,
    ``image.py``).
    """

    def __init__(
        self,
        model,
        guide,
        optim,
        loss,
        *,
        max_encoder_steps=100,
        check_every=10,
        max_aggressive_epochs=None,
    ):
        check_integer("aggressive: max_encoder_steps", max_encoder_steps)
        check_integer("aggressive: check_every", check_every)
        check_integer(
            "aggressive: max_aggressive_epochs", max_aggressive_epochs, minimum=0, optional=True
        )
        if not isinstance(guide, nn.Module):
            raise ConfigError(
                "aggressive: the guide must be a torch module (its parameters are the encoder's), "
                f"found {type(guide).__name__}"
            )
        super().__init__(model, guide, optim, loss)
        self.max_encoder_steps = max_encoder_steps
        self.check_every = check_every
        self.max_aggressive_epochs = max_aggressive_epochs
        self.aggressive = max_aggressive_epochs != 0
        self.previous_mi = -math.inf
        self.aggressive_epochs = 0
        #: the number of encoder steps the last aggressive step took (for logs and tests)
        self.encoder_steps = 0
        self._draw = None

    # ------------------------------------------------------------------ the training loop's hooks
    def begin_epoch(self, draw=None, *, validation=True):
        """Called by :func:`~pyro_skipvae.infer.fit.train` before each epoch.

        :param draw: a function returning a fresh random training minibatch (on the device);
            None: the encoder steps reuse the step's own minibatch.
        :param bool validation: whether the epoch will be validated (the MI rule needs it).
        :raises ConfigError: no validation data and no ``max_aggressive_epochs``.
        """
        self._check_validation(validation)
        self._draw = draw

    def check_fit(self, data) -> None:
        """Called by :meth:`SkipVAE.fit <pyro_skipvae.SkipVAE.fit>` with its
        :class:`~pyro_skipvae.infer.fit.FitData` before the run folder is written, so that a
        fit this inference cannot finish is refused before it leaves a run behind.

        :raises ConfigError: no validation data and no ``max_aggressive_epochs``.
        """
        self._check_validation(data.val is not None)

    def _check_validation(self, validation: bool) -> None:
        if self.aggressive and not validation and self.max_aggressive_epochs is None:
            raise ConfigError(
                "aggressive training ends when the validation MI stops increasing; give "
                "validation data (val=...) or inference_options max_aggressive_epochs"
            )

    def end_epoch(self, record: dict) -> None:
        """Record whether the epoch was aggressive (``record["aggressive"]``) and apply the
        rule that ends the phase (see the class docstring)."""
        record["aggressive"] = self.aggressive
        if not self.aggressive:
            return
        self.aggressive_epochs += 1
        mi = record.get("val_mi")
        stop = mi is not None and mi < self.previous_mi
        if mi is not None:
            self.previous_mi = mi
        if self.max_aggressive_epochs is not None:
            stop = stop or self.aggressive_epochs >= self.max_aggressive_epochs
        if stop:
            self.aggressive = False
            logger.info(
                "aggressive training ends after epoch %s (validation MI %s)",
                record.get("epoch"),
                mi,
            )

    def get_state(self) -> dict:
        return {
            "aggressive": self.aggressive,
            "previous_mi": self.previous_mi,
            "aggressive_epochs": self.aggressive_epochs,
        }

    def set_state(self, state: dict) -> None:
        self.aggressive = bool(state["aggressive"])
        self.previous_mi = float(state["previous_mi"])
        self.aggressive_epochs = int(state["aggressive_epochs"])

    # ------------------------------------------------------------------ SVI's interface
    def step(self, x, *, size=None, beta=1.0):
        """One training step on the minibatch ``x`` (see the class docstring); returns the
        loss of the model update as a float."""
        if not self.aggressive:
            return super().step(x, size=size, beta=beta)
        if size is None and distributed.active():
            size = distributed.global_batch_size(x.shape[0])
        encoder = self._encoder_params()
        self.encoder_steps = self._encoder_loop(x, encoder, size=size, beta=beta)
        return self._partial_step(x, encoder, train_encoder=False, size=size, beta=beta)

    def evaluate_metrics(self, data, *, batch_size=500):
        """SVI's ``elbo`` and ``kl`` and, during the aggressive phase, ``mi``: the full-set
        estimate of I_q(x; z) on ``data`` (eval mode), the quantity whose stall ends it."""
        metrics = super().evaluate_metrics(data, batch_size=batch_size)
        if self.aggressive:
            with evaluating(self.model, self.guide):
                metrics["mi"] = float(mutual_information(self.guide, data, chunk_size=batch_size))
        return metrics

    # ------------------------------------------------------------------ the encoder steps
    def _encoder_params(self) -> set:
        return set(self.guide.parameters())

    def _encoder_loop(self, x, encoder, *, size, beta) -> int:
        """Encoder-only steps, ``x`` first and then fresh minibatches, until the mean loss of
        a block of ``check_every`` steps exceeds the previous block's; return the count."""
        previous, block_loss, block_count = math.inf, 0.0, 0.0
        batch = x
        for done in range(1, self.max_encoder_steps + 1):
            loss = self._partial_step(batch, encoder, train_encoder=True, size=size, beta=beta)
            # −Σ_i ELBO_β(x_i) of this minibatch: SVI's loss is N/B times it
            block_loss += loss * batch.shape[0] / (size or batch.shape[0])
            block_count += self._count(batch)
            if done % self.check_every == 0:
                block_loss, block_count = distributed.sum_across_ranks(block_loss, block_count)
                mean = block_loss / block_count
                if mean > previous:
                    return done
                previous, block_loss, block_count = mean, 0.0, 0.0
            if done < self.max_encoder_steps:
                batch = self._draw() if self._draw is not None else x
        return self.max_encoder_steps

    def _count(self, x) -> float:
        """What the stopping rule's loss is divided by: tokens for text, else datapoints."""
        likelihood = getattr(self.model, "likelihood", None)
        tokens = likelihood.num_tokens(x) if hasattr(likelihood, "num_tokens") else None
        return float(x.shape[0] if tokens is None else tokens.sum())

    def _partial_step(self, x, encoder, *, train_encoder, size, beta) -> float:
        """One optimizer step on the encoder's parameters (``train_encoder``) or on all the
        others, on the loss of ``x``; the other side's gradients are dropped before the step
        (an optimizer skips a parameter without a gradient, and clips only what it steps)."""
        with poutine.trace(param_only=True) as capture:
            loss = self.loss_and_grads(self.model, self.guide, x, size=size, beta=beta)
        for site in capture.trace.nodes.values():
            p = site["value"].unconstrained()
            if (p in encoder) != train_encoder:
                p.grad = None
        apply_gradients(self.optim, capture.trace, size=size or x.shape[0], batch_size=x.shape[0])
        return loss.item() if torch.is_tensor(loss) else float(loss)


__all__ = ["AggressiveSVI"]
