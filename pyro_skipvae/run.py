"""One training run: its history, model selection and, given a folder, its files.

A run folder holds

=================  ===============================================================
``config.json``    everything needed to rebuild the model and to check a resume
``checkpoint.pt``  the latest epoch: weights, optimizer, RNG states, history, selection
``best.pt``        the selected epoch's weights (what ``SkipVAE.load`` and ``diagnose`` use)
``metrics.jsonl``  one JSON object per epoch
``train.log``      the library's log records while training (:func:`train_log`; ``skipvae fit``)
=================  ===============================================================

Every file is written atomically (:mod:`pyro_skipvae.checkpoint`). :class:`Run` is the object
the training loop calls back after each epoch (as Lightning's ``ModelCheckpoint`` is called by
its ``Trainer``); :meth:`SkipVAE.fit <pyro_skipvae.SkipVAE.fit>` wires it up.

**Data-parallel runs** (:mod:`pyro_skipvae.infer.distributed`): only rank 0 writes; every
rank reads ``checkpoint.pt`` to resume. ``config.json`` records ``run.world_size`` and the
checkpoint holds every rank's RNG states (a list, one per rank), so a resume with the same
number of processes continues exactly; one with another number is refused.

**Model selection** is on the validation bound ``val_elbo``: the amortized ELBO for amortized
runs, the refined bound for semi-amortized ones (as the authors select). Without validation
data every epoch counts as an improvement, so ``best.pt`` is the last epoch: selecting on the
training objective would favour early epochs during KL warm-up, where β < 1 inflates it.
"""

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import checkpoint
from .configs import recorded_config
from .errors import CheckpointError, ConfigError
from .infer import distributed
from .infer.optim import Optimizer
from .names import optimizer_state, set_optimizer_state

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2
CONFIG_FILE, CHECKPOINT_FILE, BEST_FILE = "config.json", "checkpoint.pt", "best.pt"
METRICS_FILE, LOG_FILE = "metrics.jsonl", "train.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: options that may change between a run and its resumption without changing the result of
#: the epochs already done
RESUMABLE_CHANGES = {
    ("train", "num_epochs"),
    ("train", "early_stopping_patience"),
    ("run", "device"),
    # compiled and eager networks compute the same function (float rounding aside)
    ("model", "compile"),
    # the epochs done stay done; the rest run in the new precision (weights are float32 in both)
    ("model", "precision"),
}
SELECTION_METRIC = "val_elbo"


@contextmanager
def train_log(run_dir, *, level: int = logging.INFO) -> Iterator[Path | None]:
    """Append pyro_skipvae's log records of ``level`` and above (the epoch records, resumes,
    warnings) to ``<run_dir>/train.log`` while the block runs; yield its path.

    The file is appended to, so a resumed run continues its log. Only rank 0 of a
    data-parallel run writes (the others yield ``None``). The handler sits on the
    ``pyro_skipvae`` logger, whose level is lowered to ``level`` for the block if needed, so
    a handler elsewhere without a level of its own (``logging.basicConfig``'s) sees these
    records too; ``skipvae fit`` sets its console handler's level, which keeps the console
    as quiet as before::

        with train_log("runs/demo"):
            vae.fit(train, val=val, run_dir="runs/demo")
    """
    if not distributed.is_main():
        yield None
        return
    path = Path(run_dir) / LOG_FILE
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"expected a run directory, found a file at {path.parent}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    library = logging.getLogger(__name__.partition(".")[0])
    previous = library.level
    library.addHandler(handler)
    if library.getEffectiveLevel() > level:
        library.setLevel(level)
    try:
        yield path
    except BaseException as e:
        # into the file only: whoever catches the error reports it on the console
        handler.handle(
            library.makeRecord(
                library.name,
                logging.ERROR,
                __file__,
                0,
                "stopped: %s: %s",
                (type(e).__name__, e),
                None,
            )
        )
        raise
    finally:
        library.removeHandler(handler)
        library.setLevel(previous)
        handler.close()


def read_config(run_dir) -> dict:
    """The ``config.json`` of a run folder.

    :raises CheckpointError: if it is missing or unreadable.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{run_dir} is not a run directory: expected {CONFIG_FILE} there"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e})") from None


def config_differences(
    saved: dict, current: dict, defaults: dict | None = None
) -> list[tuple[str, object, object]]:
    """``(section.key, saved, current)`` for every setting that differs and matters on resume.

    :param dict defaults: per section, the value a setting had before it existed: a run saved
        by an older version lacks the settings added since, and those count as unchanged
        when the current value is that default.
    """
    differences = []
    for section in ("model", "train", "run"):
        a, b = saved.get(section, {}), current.get(section, {})
        old = (defaults or {}).get(section, {})
        for key in sorted(set(a) | set(b)):
            before = a[key] if key in a else old.get(key)
            if (section, key) not in RESUMABLE_CHANGES and before != b.get(key):
                differences.append((f"{section}.{key}", a.get(key), b.get(key)))
    return differences


class Run:
    """History, selection and checkpoints of one fit.

    :param path: the run folder, or ``None`` to keep everything in memory.
    :param dict config: the run's configuration (JSON-able; ``config.json``).
    :param model: the Pyro model module (weights saved under ``"model"``).
    :param guide: the guide module (``"guide"``).
    :param optimizer: anything with ``get_state``/``set_state`` (our
        :class:`~pyro_skipvae.infer.optim.Optimizer` or a :class:`pyro.optim.PyroOptim`).
    :param torch.Generator generator: the data-order generator.
    :param dict defaults: see :func:`config_differences`.
    :param int patience: early stopping (:meth:`stalled`); default None: never.
    :param float not_before: no early stop before this epoch (e.g. the end of KL warm-up).
    :param loggers: live curves (:class:`pyro_skipvae.loggers.Loggers`), given each epoch.
    :param inference: the inference object, checkpointed if it has ``get_state``/``set_state``.
    """

    def __init__(
        self,
        path,
        config,
        *,
        model,
        guide,
        optimizer,
        generator,
        defaults=None,
        patience=None,
        not_before=0.0,
        loggers=None,
        inference=None,
    ):
        self.path = None if path is None else Path(path)
        self.config = config
        self.defaults = defaults
        self.patience, self.not_before = patience, not_before
        self.model, self.guide = model, guide
        self.optimizer = optimizer
        self.generator = generator
        self.history: list[dict] = []
        self.best_score = -math.inf
        self.best_epoch = None
        self.loggers = loggers
        self.inference = inference if hasattr(inference, "get_state") else None
        self.best_weights = None  # a copy of best.pt's weights, kept for lr_decay plateau-restore

    # ------------------------------------------------------------------ start
    def start(self, *, resume: bool, init_from=None) -> None:
        """Write (or, to resume, check) ``config.json``; with ``resume``, restore every state
        from ``checkpoint.pt`` so the rest of the run is exactly an uninterrupted one's.

        :param init_from: a run folder (its ``best.pt``) or a weights file of a model with the
            same configuration, whose weights start a run that has no epoch yet (fine-tuning;
            :func:`initial_weights`). A resumed run with epochs restores its own instead.
        :raises ConfigError: the folder holds a run and ``resume`` is False (nothing is
            overwritten), or its configuration differs; ``init_from`` is another model.
        :raises CheckpointError: unreadable or mismatched files.
        """
        if self.path is None:
            self._initialise(init_from)
            return
        checkpoint_path = self.path / CHECKPOINT_FILE
        restoring = resume and checkpoint_path.exists()
        if not restoring:  # before config.json is written: a bad source leaves no run behind
            self._initialise(init_from)
        # Rank 0 checks and writes config.json; the others raise whatever it raised.
        error = None
        if distributed.is_main():
            try:
                self._check_and_write_config(resume)
            except (ConfigError, CheckpointError) as e:
                error = e
        error = distributed.broadcast_object(error)
        if error is not None:
            raise error
        if restoring:
            self._restore(checkpoint.load(checkpoint_path), checkpoint_path)
            logger.info("resuming %s after epoch %d", self.path, len(self.history))
        if distributed.is_main():
            self._write_metrics()

    def _check_and_write_config(self, resume):
        config_path, checkpoint_path = self.path / CONFIG_FILE, self.path / CHECKPOINT_FILE
        if config_path.exists() or checkpoint_path.exists():
            if not resume:
                raise ConfigError(
                    f"{self.path} already holds a run; pass resume=True (--resume) to continue it, "
                    "or choose another output directory (nothing was overwritten)"
                )
            saved = read_config(self.path)
            before, now = _world_size(saved), _world_size(self.config)
            if before != now:
                raise ConfigError(
                    f"cannot resume {self.path}: it was trained by {before} process(es), this is "
                    f"{now}; every process's random state is restored, so resume with the same "
                    f"number (torchrun --nproc_per_node {before}, or skipvae fit --nproc {before})"
                )
            saved = recorded_config(saved, self.path)
            differences = config_differences(saved, self.config, self.defaults)
            if differences:
                raise ConfigError(
                    f"cannot resume {self.path}: its configuration differs in "
                    + "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in differences)
                )
            # allowed, but the remaining epochs compute differently from those done: say so
            defaults = (self.defaults or {}).get("model", {})
            for key in sorted(key for section, key in RESUMABLE_CHANGES if section == "model"):
                old = saved.get("model", {}).get(key, defaults.get(key))
                new = self.config.get("model", {}).get(key)
                if old != new:
                    logger.warning(
                        "resuming %s with model.%s %r (was %r)", self.path, key, new, old
                    )
        checkpoint.atomic_write_json(config_path, self.config)

    def _initialise(self, init_from):
        if init_from is not None:
            initial_weights(init_from, self.model, self.guide, self.config["model"], self.defaults)

    def _restore(self, state, path):
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} has checkpoint format {state.get('format')}, this version reads "
                f"format {CHECKPOINT_FORMAT}; start a new run"
            )
        # config.json, checked before, vouches for the refine_kl an older checkpoint lacks
        refine_kl = self.config.get("train", {}).get("inference_options", {}).get("refine_kl")
        # the checkpoint's copy of config.json: an older one lacks settings added since, read
        # at their defaults as config.json's were
        saved = recorded_config(state["config"], path, refine_kl)
        if config_differences(saved, self.config, self.defaults):
            raise CheckpointError(
                f"{path} was written for a different configuration than {CONFIG_FILE}"
            )
        load_weights(self.model, self.guide, state, path)
        set_optimizer_state(self.optimizer, state["optimizer"], self.model, self.guide)
        rng = state["rng"]
        if isinstance(rng, list):  # one state per rank (data-parallel run)
            if len(rng) != distributed.world_size():
                raise CheckpointError(
                    f"{path} holds the random states of {len(rng)} processes, this run has "
                    f"{distributed.world_size()}"
                )
            rng = rng[distributed.rank()]
        checkpoint.set_rng_state(rng)
        self.generator.set_state(state["generator"])
        self.history = list(state["history"])
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        if self._restores_best() and self.best_epoch is not None:
            self.best_weights = read_weights(self.path)[1]
        if self.inference is not None:  # e.g. AggressiveSVI's phase
            inference_state = state.get("inference")
            if inference_state is None:  # e.g. written before the inference's state was saved
                name = type(self.inference).__name__
                raise CheckpointError(f"{path} holds no {name} state; start a new run")
            self.inference.set_state(inference_state)

    # ------------------------------------------------------------------ each epoch
    def finished(self) -> bool:
        """Whether a resumed run has nothing left to train: its learning rate decayed below
        the minimum, or it already stalled (early stopping)."""
        exhausted = isinstance(self.optimizer, Optimizer) and self.optimizer.exhausted
        return exhausted or self.stalled(self.patience, not_before=self.not_before)

    def end_epoch(self, record: dict) -> bool:
        """The training loop's ``on_epoch_end``: record and select the epoch, let our
        optimizer decay its rate (``record["learning_rate"]`` is the rate this epoch used),
        save, log, and return whether to stop (the rate fell below its minimum, or early
        stopping).
        """
        improved = self.select(record)
        stop = False
        if isinstance(self.optimizer, Optimizer):
            record["learning_rate"] = self.optimizer.learning_rate
            stop = self.optimizer.end_epoch(record["epoch"], improved)
            if self.optimizer.restore_best:
                load_weights(self.model, self.guide, self.best_weights, "the best weights")
                logger.info(
                    "epoch %d: learning rate halved to %g, weights of epoch %d restored",
                    record["epoch"],
                    self.optimizer.learning_rate,
                    self.best_epoch,
                )
        self.save(improved=improved)
        if self.loggers is not None:
            self.loggers.log_epoch(record)
        return stop or self.stalled(self.patience, not_before=self.not_before)

    def select(self, record: dict) -> bool:
        """Record an epoch; return whether it is the best so far (see the module docstring)."""
        self.history.append(record)
        score = record.get(SELECTION_METRIC)
        improved = score is None or score > self.best_score
        if improved:
            self.best_score = -math.inf if score is None else score
            self.best_epoch = record["epoch"]
            if self._restores_best():
                self.best_weights = {
                    name: {k: v.detach().clone() for k, v in module.state_dict().items()}
                    for name, module in (("model", self.model), ("guide", self.guide))
                }
        record["selected"] = self.best_epoch
        return improved

    def _restores_best(self) -> bool:
        return (
            isinstance(self.optimizer, Optimizer) and self.optimizer.lr_decay == "plateau-restore"
        )

    def stalled(self, patience: int | None, *, not_before: float = 0) -> bool:
        """Whether the last ``patience`` epochs all failed to improve on the selected one
        (early stopping; never with ``patience`` None, before the first epoch, or before
        epoch ``not_before``, e.g. the end of KL warm-up, while the plain bound that selects
        may dip as β rises)."""
        if patience is None or not self.history or self.best_epoch is None:
            return False
        last = self.history[-1]["epoch"]
        return last >= not_before and last - self.best_epoch >= patience

    def save(self, *, improved: bool) -> None:
        """Write ``best.pt`` (if ``improved``), ``checkpoint.pt`` and ``metrics.jsonl``
        (rank 0 only; every rank must call it, to hand over its RNG states)."""
        if self.path is None:
            return
        rng = checkpoint.get_rng_state()
        if distributed.active():
            rng = distributed.all_gather_objects(rng)
        if not distributed.is_main():
            return
        weights = self.weights()
        if improved:
            checkpoint.atomic_save(weights, self.path / BEST_FILE)
        state = dict(
            weights,
            optimizer=optimizer_state(self.optimizer),
            rng=rng,
            generator=self.generator.get_state(),
            history=self.history,
            best_score=self.best_score,
            best_epoch=self.best_epoch,
            **({"inference": self.inference.get_state()} if self.inference is not None else {}),
        )
        checkpoint.atomic_save(state, self.path / CHECKPOINT_FILE)
        self._write_metrics()

    def weights(self) -> dict:
        """The model and guide weights with the configuration, as ``best.pt`` holds them."""
        return weights_state(self.config, len(self.history), self.model, self.guide)

    def _write_metrics(self):
        checkpoint.atomic_write_text(
            self.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.history)
        )


def read_weights(source) -> tuple[Path, dict]:
    """The weights file named by ``source`` (a run folder means its ``best.pt``) and its
    contents, checked to hold a model configuration in this version's format.

    :raises CheckpointError: a missing, corrupt or older-format file, or one without a model
        configuration.
    """
    path = Path(source)
    if path.is_dir():
        path = path / BEST_FILE
    state = checkpoint.load(path)
    if not isinstance(state.get("config"), dict) or "model" not in state["config"]:
        raise CheckpointError(f"{path} holds no model configuration")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state.get('format')}; this version reads format "
            f"{CHECKPOINT_FORMAT} (the model or guide changed since it was written)"
        )
    return path, state


def initial_weights(source, model, guide, model_config: dict, defaults=None) -> int:
    """Load the model and guide weights of another run into ``model`` and ``guide``; return
    the epoch they were saved at.

    This is how a fit starts from a trained model, e.g. semi-amortized training from a
    converged amortized one (the SA-VAE's encoder then starts from an amortized q instead of
    from scratch). Only weights are taken: the optimizer, the random states and the history
    start afresh.

    :param source: a run folder (its ``best.pt``) or a weights file (``best.pt``,
        ``checkpoint.pt``, :meth:`SkipVAE.save <pyro_skipvae.SkipVAE.save>`'s).
    :param dict model_config: this run's ``config.json`` ``"model"``; the source's must equal
        it (whether the networks are compiled aside).
    :raises CheckpointError: a missing, corrupt or older-format file.
    :raises ConfigError: the source is another model (the differing options are named).
    """
    path, state = read_weights(source)
    differences = config_differences(
        {"model": state["config"]["model"]},
        {"model": model_config},
        defaults and {"model": defaults["model"]},
    )
    if differences:
        raise ConfigError(
            f"cannot start from {path}: it holds another model (differs in "
            + "; ".join(f"{k}: there {a!r}, here {b!r}" for k, a, b in differences)
            + ")"
        )
    load_weights(model, guide, state, path)
    logger.info("starting from the weights of %s (epoch %s)", path, state.get("epoch"))
    return state.get("epoch")


def _world_size(config) -> int:
    return config.get("run", {}).get("world_size", 1)


def weights_state(config, epoch, model, guide) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "epoch": epoch,
        "model": model.state_dict(),
        "guide": guide.state_dict(),
    }


def load_weights(model, guide, state, path="checkpoint") -> None:
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path} does not fit this model ({e})") from None


__all__ = [
    "Run",
    "config_differences",
    "initial_weights",
    "load_weights",
    "read_config",
    "read_weights",
    "weights_state",
]
