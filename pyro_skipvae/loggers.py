"""Live training curves beside the run folder's files: loggers that a :class:`~.run.Run` calls.

``metrics.jsonl`` and ``train.log`` stay the run's record; a logger copies the same numbers
into another tool while training runs. Loggers are chosen by name from :data:`LOGGERS`
(``SkipVAE.fit(..., loggers=["tensorboard"])``, ``skipvae fit --logger tensorboard``) or
passed as objects with the four methods of :class:`TensorBoardLogger`:
``start(run, steps_per_epoch)``, ``log_step(step, values)``, ``log_epoch(step, record)`` and
``close()``. :class:`Loggers` holds a fit's loggers; the training loop calls its ``log_step``
after each step and the :class:`~.run.Run` its ``log_epoch`` after each epoch.

**Steps.** Step ``s`` counts the optimisation steps done: the ``b``-th minibatch (from 1) of
epoch ``e`` (from 0) is step ``e × steps_per_epoch + b``, and an epoch's values are logged at
its last step, so per-step and per-epoch curves share one axis. A resumed run restarts at an
epoch boundary, so its steps continue the curves; whatever an interrupted attempt logged after
the last checkpoint is purged (``purge_step``), and nothing appears twice.

**Data-parallel runs** log from rank 0 only (:func:`build_loggers` builds none elsewhere).
"""

import json
import logging
import numbers
from pathlib import Path

import torch

from . import checkpoint
from .diagnostics.latent import kl_per_dimension
from .errors import ConfigError, DataError, MissingDependencyError
from .infer import distributed
from .infer.optim import Optimizer
from .modes import evaluating
from .registry import Registry

logger = logging.getLogger(__name__)

#: where a run's TensorBoard event files go, inside its folder
TENSORBOARD_DIR = "tensorboard"
#: keys of an epoch record that are bookkeeping, not curves
_NOT_CURVES = {"epoch", "selected"}
#: record keys whose tag is not the rule's val/<key> or epoch/<key>
_TAGS = {"val_au": "val/active_units"}

LOGGERS = Registry("logger")


@LOGGERS.register("tensorboard")
class TensorBoardLogger:
    r"""Write a run's curves as TensorBoard event files (``torch.utils.tensorboard``).

    ========================  =============  ==========================================
    tag                       when           value
    ========================  =============  ==========================================
    ``train/elbo``            every N steps  the step's minibatch estimate of the
                                             training objective per datapoint, −loss / N
                                             (β-weighted while β < 1; rank 0's share of
                                             the minibatch in a data-parallel run)
    ``train/beta``            every N steps  the KL weight β of that step
    ``train/learning_rate``   every N steps  the learning rate (our optimizer's)
    ``epoch/train_elbo``      each epoch     ``metrics.jsonl``'s ``train_elbo``: the
                                             epoch's mean of ``train/elbo``
    ``epoch/<key>``           each epoch     the record's other numbers: ``beta``,
                                             ``learning_rate``, ``seconds``
    ``val/<key>``             each epoch     the record's ``val_<key>``: ``val/elbo``,
                                             ``val/kl``; semi-amortized runs: the refined
                                             bound as ``val/elbo``, and
                                             ``val/elbo_amortized``,
                                             ``val/kl_amortized``,
                                             ``val/amortization_gap``; text: ``val/ppl``
    ``val/active_units``      each epoch     the record's ``val_au``: active units of
                                             the amortized q on the validation set
                                             (threshold 0.01)
    ``val/kl_per_dim``        each epoch     a histogram over the latent dimensions of
                                             the mean KL(q(z_d|x) ‖ p(z_d))
    ``config``                once, step 0   ``config.json`` as text
    ========================  =============  ==========================================

    The KL histogram needs validation data and a guide and prior that factorise over the
    dimensions (diagonal Gaussians); it costs one encoder pass over the validation set per
    epoch and is left out otherwise. In a data-parallel run it covers rank 0's share of the
    validation set.

    :param log_dir: the folder of the event files; default ``<run folder>/tensorboard``
        (then ``tensorboard --logdir runs`` shows every run under ``runs/``).
    :param int log_every_n_steps: the per-step tags every this many steps (default 50).
    :param latent_data: the data of the KL histogram (``SkipVAE.fit`` passes the
        validation set); None leaves it out.
    :param int chunk_size: datapoints per encoder call for the KL histogram (default: all).
    :raises MissingDependencyError: TensorBoard is not installed.
    :raises ConfigError: ``log_every_n_steps`` < 1.

    Example::

        tensorboard --logdir runs/demo/tensorboard
    """

    def __init__(self, log_dir=None, *, log_every_n_steps=50, latent_data=None, chunk_size=None):
        if not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ConfigError(
                f"log_every_n_steps must be a positive integer, found {log_every_n_steps!r}"
            )
        self.summary_writer = _summary_writer_class()
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.log_every_n_steps = log_every_n_steps
        self.latent_data, self.chunk_size = latent_data, chunk_size
        self.writer = None
        self.run = None

    def start(self, run, steps_per_epoch: int) -> None:
        """Open the event file for ``run`` (a started :class:`~.run.Run`). A run that has
        epochs continues after its last one: events an interrupted attempt wrote after it
        are purged; a run without epochs purges everything and logs its configuration."""
        if self.log_dir is None:
            if run.path is None:
                raise ConfigError(
                    "the tensorboard logger writes into the run folder: pass run_dir=..., or "
                    "a TensorBoardLogger(log_dir=...)"
                )
            self.log_dir = run.path / TENSORBOARD_DIR
        self.run = run
        done = len(run.history) * steps_per_epoch
        self.writer = self.summary_writer(str(self.log_dir), purge_step=done + 1 if done else 0)
        if not done:
            # indented four spaces: TensorBoard renders text as Markdown, this as code
            text = "\n".join(
                "    " + line for line in json.dumps(run.config, indent=2).splitlines()
            )
            self.writer.add_text("config", text, 0)

    def log_step(self, step: int, values: dict) -> None:
        """The per-step tags, at every ``log_every_n_steps``-th step."""
        if step % self.log_every_n_steps:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"train/{'elbo' if key == 'train_elbo' else key}", value, step)

    def log_epoch(self, step: int, record: dict) -> None:
        """The per-epoch tags at ``step`` (the epoch's last), then flush, so that TensorBoard
        shows the epoch while the next one trains."""
        for key, value in record.items():
            if key in _NOT_CURVES or isinstance(value, bool) or not _is_scalar(value):
                continue
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"epoch/{key}"
            self.writer.add_scalar(_TAGS.get(key, tag), float(value), step)
        if self.latent_data is not None:
            self._log_latent(step)
        self.writer.flush()

    def _log_latent(self, step):
        model, guide, data = self.run.model, self.run.guide, self.latent_data
        # Tracing the guide draws z: the global RNGs are put back, so that a run with a
        # logger trains exactly as one without (and as its resumption, whose RNG states
        # were saved before this).
        try:
            with checkpoint.rng_restored(), evaluating(model, guide):
                kl = kl_per_dimension(model, guide, data, chunk_size=self.chunk_size).mean(0)
        except (ConfigError, DataError, NotImplementedError) as e:
            logger.info("tensorboard: no KL histogram (%s)", e)
            self.latent_data = None
            return
        self.writer.add_histogram("val/kl_per_dim", kl.double().cpu(), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Loggers:
    """The loggers of one fit, numbering its steps (see the module docstring).

    :param list loggers: logger objects.
    :param int steps_per_epoch: optimisation steps per epoch.
    """

    def __init__(self, loggers, steps_per_epoch: int):
        self.loggers, self.steps_per_epoch = list(loggers), steps_per_epoch
        self.run = None

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def start(self, run) -> None:
        """Start every logger on ``run``, after :meth:`Run.start <.run.Run.start>`."""
        self.run = run
        for each in self.loggers:
            each.start(run, self.steps_per_epoch)

    def log_step(self, step: int, values: dict) -> None:
        """The training loop's ``on_step``: the step's values with our optimizer's rate."""
        if isinstance(self.run.optimizer, Optimizer):
            values = {**values, "learning_rate": self.run.optimizer.learning_rate}
        for each in self.loggers:
            each.log_step(step, values)

    def log_epoch(self, record: dict) -> None:
        """An epoch's record, at the epoch's last step."""
        for each in self.loggers:
            each.log_epoch(record["epoch"] * self.steps_per_epoch, record)

    def close(self) -> None:
        """Close every logger, each in its own ``try``: one whose ``close`` raises does not
        leave the others' files open; the first error is raised after all are closed."""
        first = None
        for each in self.loggers:
            try:
                each.close()
            except Exception as e:  # re-raised below, once every logger is closed
                first = first or e
        if first is not None:
            raise first


def build_loggers(loggers, log_every_n_steps=50, data=None) -> Loggers:
    """The :class:`Loggers` of ``loggers`` (names in :data:`LOGGERS` or logger objects) for
    a fit's ``data`` (:class:`~.infer.fit.FitData`: its steps per epoch, and the validation
    set of the KL histogram); empty on the ranks other than 0 of a data-parallel run.

    :raises ConfigError: an unknown name (the valid ones are listed), or
        ``log_every_n_steps`` < 1.
    :raises MissingDependencyError: a logger's package is not installed.
    """
    if isinstance(loggers, str):
        loggers = [loggers]
    built = []
    for item in loggers or ():
        if not isinstance(item, str):
            built.append(item)
            continue
        options = {"log_every_n_steps": log_every_n_steps}
        if data is not None:
            options.update(latent_data=data.val, chunk_size=data.eval_batch_size)
        built.append(LOGGERS.get(item)(**options))
    steps_per_epoch = 1 if data is None else data.steps_per_epoch
    return Loggers(built if distributed.is_main() else [], steps_per_epoch)


def _summary_writer_class():
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard imports it lazily)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingDependencyError(
            "the tensorboard logger needs the tensorboard package, which is not installed: "
            "pip install 'pyro-skipvae[tensorboard]'"
        ) from None
    return SummaryWriter


def _is_scalar(value) -> bool:
    """A real number as Python, NumPy or a one-element tensor holds it (a record may also
    carry strings or lists)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real)


__all__ = ["LOGGERS", "TENSORBOARD_DIR", "Loggers", "TensorBoardLogger", "build_loggers"]
