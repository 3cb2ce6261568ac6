r"""The outer optimizer: one torch optimizer over every parameter of model and guide.

Pyro's loss for a minibatch of B out of N datapoints is the N-scaled sum
−(N/B) Σ_i ELBO_β(x_i). :class:`Optimizer` steps on 1/N of its gradient, i.e. on the
gradient of the per-datapoint loss −(1/B) Σ_i ELBO_β(x_i) that the papers' code minimises,
so their learning rates and gradient-norm clips transfer unchanged: Adam 1e-3 for images,
SGD with learning rate 1 for text, global norm clipped at 5 (Kim et al. 2018, code
``train_img.py``/``train_text.py``). Adam is almost invariant to that factor; SGD and the clip
are not.

**Cost.** The 1/N costs no pass over the gradients of its own: with a fused torch optimizer
(the default where torch has one, on CPU and CUDA) it is handed to the optimizer's kernel as
its ``grad_scale``, the hook torch's AMP uses to unscale gradients; with clipping it is folded
into the clip's multiplication. ``benchmarks/overhead.py`` measures what this buys.

The learning rate may be halved on a validation plateau, by one of two published rules:

* ``"plateau"``, the SA-VAE / Skip-VAE text scripts' (Kim et al. 2018, ``train_text.py``): once
  the validation bound fails to improve after ``lr_decay_min_epochs`` epochs, the rate is
  halved at the end of that epoch *and every epoch after* (their ``args.decay`` flag stays
  set). One noisy epoch thus starts a fixed countdown: from 1 to below 0.03 in six epochs.
* ``"plateau-restore"``, the lagging-encoder text script's (He et al. 2019, ``text.py``):
  after ``lr_decay_min_epochs`` epochs, each time the bound has failed to improve on the best
  so far for ``lr_decay_patience`` (2) epochs in a row, the rate is halved, the best weights
  are restored and the optimizer's state is reset (their code reloads the saved model and
  builds a new optimizer); then the count starts again. Every rate is used until it stops
  paying, so training lasts as long as it improves.

Either way training stops once the rate falls below ``min_learning_rate`` (He et al. stop
after five halvings from 1, i.e. a minimum of 0.035; Kim et al. below 0.03).
"""

import inspect

import torch

from ..errors import ConfigError
from ..registry import Registry

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("sgd", torch.optim.SGD)
LR_DECAYS = ("none", "plateau", "plateau-restore")


class Optimizer:
    """A torch optimizer (``"adam"`` or ``"sgd"`` from :data:`OPTIMIZERS`) with global-norm
    clipping of the per-datapoint gradient and learning-rate halving on a plateau.

    :param params: the parameters to train (model and guide).
    :param str name: ``"adam"`` (default) or ``"sgd"``.
    :param float learning_rate: initial learning rate (default 1e-3).
    :param float clip_norm: clip the global 2-norm of the per-datapoint gradient at this
        value (:func:`torch.nn.utils.clip_grad_norm_`; default None: no clipping).
    :param str lr_decay: ``"none"`` (default), ``"plateau"`` or ``"plateau-restore"`` (see
        the module docstring).
    :param int lr_decay_min_epochs: epochs before a stall may start the decay (default 15,
        the authors' ``min_epochs``).
    :param int lr_decay_patience: with ``"plateau-restore"``, epochs in a row without a better
        validation bound before each halving (default 2, He et al.'s ``decay_epoch``).
    :param float min_learning_rate: with either plateau rule, stop once the rate falls below
        this (default 0: never; the authors' text script stops below 0.03 from 1).
    :param bool fused: use the torch optimizer's fused (single-kernel) implementation
        (default None: where it has one and every parameter is a floating-point tensor on
        the CPU or a CUDA device). Same update, different rounding in the last bits.

    Used through :func:`~pyro_skipvae.infer.svi.apply_gradients`, it has the two methods of
    :class:`pyro.optim.PyroOptim` that checkpoints need, :meth:`get_state` / :meth:`set_state`.
    """

    def __init__(
        self,
        params,
        *,
        name="adam",
        learning_rate=1e-3,
        clip_norm=None,
        lr_decay="none",
        lr_decay_min_epochs=15,
        lr_decay_patience=2,
        min_learning_rate=0.0,
        fused=None,
    ):
        if lr_decay not in LR_DECAYS:
            raise ConfigError(
                f"unknown lr_decay {lr_decay!r}; expected one of: {', '.join(LR_DECAYS)}"
            )
        if clip_norm is not None and not clip_norm > 0:
            raise ConfigError(f"clip_norm must be positive or None, found {clip_norm}")
        self.params = list(dict.fromkeys(params))  # unique, in a stable order
        factory = OPTIMIZERS.get(name)
        if fused is None:
            fused = _fusable(factory, self.params)
        self.optimizer = factory(
            self.params, lr=learning_rate, **({"fused": True} if fused else {})
        )
        self._grad_scale = None  # (size, tensor) handed to a fused optimizer
        self.clip_norm = clip_norm
        self.lr_decay = lr_decay
        self.lr_decay_min_epochs = lr_decay_min_epochs
        self.min_learning_rate = min_learning_rate
        self.lr_decay_patience = lr_decay_patience
        self.decaying = False  # "plateau": the countdown has started
        self.stalled_epochs = 0  # "plateau-restore": epochs in a row without a better bound
        #: set by :meth:`end_epoch` when the caller must restore the best weights now
        self.restore_best = False
        self._ids = {id(p) for p in self.params}

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def check_params(self, params) -> None:
        """Every parameter a step touches must be one this optimizer trains."""
        missing = [p for p in params if id(p) not in self._ids]
        if missing:
            raise ConfigError(
                f"{len(missing)} parameter(s) of shape(s) {[tuple(p.shape) for p in missing][:3]} "
                "are used by the model or guide but belong to neither module: declare them as "
                "nn.Parameter (or PyroParam) attributes of a component, or pass your own "
                "inference object with a pyro.optim optimizer"
            )

    def step(self, *, size: int) -> None:
        """Step on 1/``size`` of the gradients (the per-datapoint loss's), clipped; release them.

        The clip is :func:`torch.nn.utils.clip_grad_norm_`'s, factor min(1, c / (‖g‖ + 1e-6))
        on the per-datapoint gradient g, multiplied in together with the 1/``size``.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        scale = 1.0 / size
        if grads and self.clip_norm is not None:
            norms = [n.to(grads[0].device) for n in torch._foreach_norm(grads)]
            norm = torch.linalg.vector_norm(torch.stack(norms)) / size
            scale = (self.clip_norm / (norm + 1e-6)).clamp(max=1.0) / size
        if grads and self.optimizer.param_groups[0].get("fused") and not torch.is_tensor(scale):
            self.optimizer.grad_scale = self._fused_grad_scale(size, grads[0].device)
        elif grads:
            self.optimizer.grad_scale = None
            torch._foreach_mul_(grads, scale)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _fused_grad_scale(self, size, device):
        # A fused optimizer divides every gradient by `grad_scale` inside its kernel; the
        # tensor is made once (N is fixed for a run), so no step copies it to the device.
        if self._grad_scale is None or self._grad_scale[0] != (size, device):
            self._grad_scale = (
                (size, device),
                torch.tensor(float(size), dtype=torch.float32, device=device),
            )
        return self._grad_scale[1]

    def end_epoch(self, epoch: int, improved: bool) -> bool:
        """Apply the plateau rule after ``epoch`` (1-based); return True when training should
        stop because the learning rate fell below ``min_learning_rate``."""
        self.restore_best = False
        if self.lr_decay == "none":
            return False
        halve = False
        if self.lr_decay == "plateau":
            self.decaying = self.decaying or (not improved and epoch > self.lr_decay_min_epochs)
            halve = self.decaying
        else:  # plateau-restore
            self.stalled_epochs = 0 if improved else self.stalled_epochs + 1
            if self.stalled_epochs >= self.lr_decay_patience and epoch > self.lr_decay_min_epochs:
                halve = self.restore_best = True
                self.stalled_epochs = 0
                self.optimizer.state.clear()  # a fresh optimizer, as He et al. build one
        if halve:
            for group in self.optimizer.param_groups:
                group["lr"] *= 0.5
        return self.learning_rate < self.min_learning_rate

    @property
    def exhausted(self) -> bool:
        """True once a plateau rule has taken the learning rate below its minimum."""
        return self.lr_decay != "none" and self.learning_rate < self.min_learning_rate

    def get_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "decaying": self.decaying,
            "stalled_epochs": self.stalled_epochs,
        }

    def set_state(self, state: dict) -> None:
        # The saved implementation flags (fused or not) come back with the state, so a resumed
        # run continues with the kernels it started with: exactly the uninterrupted run.
        self.optimizer.load_state_dict(state["optimizer"])
        self.decaying = bool(state["decaying"])
        self.stalled_epochs = int(state.get("stalled_epochs", 0))  # absent before plateau-restore


def _fusable(factory, params) -> bool:
    """Whether ``factory`` (a torch optimizer class) takes ``fused=True`` for ``params``."""
    try:
        takes_fused = "fused" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return (
        takes_fused
        and bool(params)
        and len({p.device for p in params}) == 1
        and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    )
