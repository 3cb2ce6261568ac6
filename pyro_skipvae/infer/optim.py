r"""The outer optimizer: one torch optimizer over every parameter of model and guide.

Pyro's loss for a minibatch of B out of N datapoints is the N-scaled sum
−(N/B) Σ_i ELBO_β(x_i). :class:`Optimizer` steps on 1/N of its gradient, i.e. on the
gradient of the per-datapoint loss −(1/B) Σ_i ELBO_β(x_i) that the papers' code minimises,
so their learning rates and gradient-norm clips transfer unchanged: Adam 1e-3 for images,
SGD with learning rate 1 for text, global norm clipped at 5 (Kim et al. 2018, code
``train_img.py``/``train_text.py``). Adam is almost invariant to that factor; SGD and the clip
are not.

The learning rate may be halved on a validation plateau as in the authors' text script: once
the validation bound fails to improve after ``lr_decay_min_epochs`` epochs, the rate is halved
at the end of that epoch *and every epoch after* (their ``args.decay`` flag stays set), and
training stops once it falls below ``min_learning_rate``.
"""

import torch

from ..errors import ConfigError
from ..registry import Registry

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("sgd", torch.optim.SGD)
LR_DECAYS = ("none", "plateau")


class Optimizer:
    """A torch optimizer (``"adam"`` or ``"sgd"`` from :data:`OPTIMIZERS`) with global-norm
    clipping of the per-datapoint gradient and learning-rate halving on a plateau.

    :param params: the parameters to train (model and guide).
    :param str name: ``"adam"`` (default) or ``"sgd"``.
    :param float learning_rate: initial learning rate (default 1e-3).
    :param float clip_norm: clip the global 2-norm of the per-datapoint gradient at this
        value (:func:`torch.nn.utils.clip_grad_norm_`; default None: no clipping).
    :param str lr_decay: ``"none"`` (default) or ``"plateau"`` (see the module docstring).
    :param int lr_decay_min_epochs: epochs before a stall may start the decay (default 15,
        the authors' ``min_epochs``).
    :param float min_learning_rate: with ``"plateau"``, stop once the rate falls below this
        (default 0: never; the authors' text script stops below 0.02 from 1).

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
        min_learning_rate=0.0,
    ):
        if lr_decay not in LR_DECAYS:
            raise ConfigError(
                f"unknown lr_decay {lr_decay!r}; expected one of: {', '.join(LR_DECAYS)}"
            )
        if clip_norm is not None and not clip_norm > 0:
            raise ConfigError(f"clip_norm must be positive or None, found {clip_norm}")
        self.params = list(dict.fromkeys(params))  # unique, in a stable order
        self.optimizer = OPTIMIZERS.get(name)(self.params, lr=learning_rate)
        self.clip_norm = clip_norm
        self.lr_decay = lr_decay
        self.lr_decay_min_epochs = lr_decay_min_epochs
        self.min_learning_rate = min_learning_rate
        self.decaying = False
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
        """Scale the gradients by 1/``size`` (per-datapoint loss), clip, step, release them."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / size)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def end_epoch(self, epoch: int, improved: bool) -> bool:
        """Apply the plateau rule after ``epoch`` (1-based); return True when training should
        stop because the learning rate fell below ``min_learning_rate``."""
        if self.lr_decay != "plateau":
            return False
        if not improved and epoch > self.lr_decay_min_epochs:
            self.decaying = True
        if self.decaying:
            for group in self.optimizer.param_groups:
                group["lr"] *= 0.5
        return self.learning_rate < self.min_learning_rate

    @property
    def exhausted(self) -> bool:
        """True once the plateau rule has taken the learning rate below its minimum."""
        return self.lr_decay == "plateau" and self.learning_rate < self.min_learning_rate

    def get_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "decaying": self.decaying}

    def set_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.decaying = bool(state["decaying"])
