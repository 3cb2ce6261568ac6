"""The training loop: epochs of minibatch steps over anything with ``step(x, size=, beta=)``.

``inference`` may be :class:`pyro.infer.SVI` (any ELBO), :class:`SemiAmortizedSVI`, or any
object whose ``step`` takes a minibatch plus the keyword arguments ``size`` (data-set size,
for the plate) and ``beta`` (KL weight) and returns the loss as a float. An inference whose
training has phases (:class:`~pyro_skipvae.infer.aggressive.AggressiveSVI`) may also have
``begin_epoch(draw, validation=...)``, given a function that draws a fresh random training
minibatch, and ``end_epoch(record)``, called after validation; the loop calls them if present.
An inference or guide may refuse a fit's data before its run folder is written with
``check_fit(data)`` (:meth:`FitData.check`).

Besides :func:`train`, the loop's inputs: :func:`prepare_data` turns a fit's data into
:class:`FitData` (the training tensor with its batching, the validation set), whose
:meth:`FitData.validation` is the loop's ``evaluate`` (a :class:`Validation`). The run
(:class:`pyro_skipvae.run.Run`) supplies ``on_epoch_end``.
"""

import logging
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pyro
import torch
from tqdm.auto import tqdm

from .. import checkpoint
from ..data import binarize, prepare
from ..data.text import bucket_batches, length_order, trim_collate
from ..diagnostics.elbo import evaluate_elbo, evaluation_batch_size
from ..diagnostics.latent import AU_THRESHOLD, Posteriors
from ..errors import NonFiniteLossError
from ..modes import evaluating
from . import distributed
from .annealing import LinearWarmup

logger = logging.getLogger(__name__)


def random_batches(size: int, batch_size: int) -> Callable[[torch.Generator], list[torch.Tensor]]:
    """The default batching: a fresh random permutation of ``range(size)`` each epoch, cut
    into minibatches of ``batch_size`` (the last one may be smaller)."""

    def batches(generator):
        order = torch.randperm(size, generator=generator)
        return list(order.split(batch_size))

    return batches


def _to_device(x: torch.Tensor, device) -> torch.Tensor:
    """``x`` on ``device``. A copy from pageable host memory to a GPU waits for the GPU to
    finish its queued work (a host round trip every step); from pinned memory it is queued
    like a kernel, so the host keeps running ahead."""
    if device is not None and torch.device(device).type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def train(
    inference,
    data: torch.Tensor,
    *,
    num_epochs: int,
    batch_size: int,
    generator: torch.Generator,
    start_epoch: int = 0,
    annealing: Callable[[float], float] | None = None,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    batches: Callable[[torch.Generator], Iterable[torch.Tensor]] | None = None,
    collate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    evaluate: Callable[[], dict] | None = None,
    on_epoch_end: Callable[[dict], bool | None] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    device=None,
    progress: bool = False,
) -> list[dict]:
    """Run epochs ``start_epoch + 1 … num_epochs`` and return one record per epoch.

    Each epoch: ``transform(data, generator)`` (e.g. dynamic binarisation), the epoch's
    minibatch indices from ``batches(generator)`` (default: :func:`random_batches`), one
    ``inference.step(collate(data, index), size=N, beta=annealing(fractional epoch))`` per
    minibatch (``collate`` defaults to ``data[index]``; text trims the padding), then
    ``evaluate()``. The record holds ``epoch``, ``train_elbo`` (the running average of the
    per-datapoint objective, −loss / N: the β-weighted bound while β < 1, the ELBO
    afterwards), ``beta``, ``seconds`` and whatever ``evaluate`` returns, keys prefixed
    ``val_``. ``on_epoch_end(record)`` is where callers checkpoint; it returns True to stop
    training early. ``on_step(step, values)``, if given, follows every step: ``step`` counts
    the steps done, epoch × ⌈N / batch_size⌉ + the minibatch's number from 1, so a resumed
    run continues the count; ``values`` holds the minibatch's ``train_elbo`` (−loss / N) and
    ``beta`` (live curves, :mod:`pyro_skipvae.loggers`).

    ``data`` may stay on the CPU (so ``generator`` can be a CPU generator); each minibatch
    is moved to ``device``. All randomness comes from ``generator`` and the global RNGs, so
    restoring both at an epoch boundary reproduces the rest of the run exactly.

    **Data-parallel** (inside a :mod:`torch.distributed` process group, see
    :mod:`~.distributed`): every rank draws the same global minibatches from an identically
    seeded ``generator`` and steps on its contiguous slice of each
    (:func:`~.distributed.shard_batches`), with the plate scale N / (its slice's size); the
    inference object averages the gradients (as ours do in ``apply_gradients``).
    ``train_elbo`` is summed over the ranks, so the record is the same on every rank and
    ``on_epoch_end`` decides alike everywhere; only rank 0 shows progress.

    :raises NonFiniteLossError: on a NaN/inf loss, naming the step; nothing is saved for the
        failing epoch, so the caller's last checkpoint stays the last good one.
    """
    annealing = annealing or LinearWarmup(num_epochs=0)
    size = data.shape[0]
    batches = distributed.shard_batches(batches or random_batches(size, batch_size))
    collate = collate or (lambda d, index: d[index])
    num_batches = math.ceil(size / batch_size)
    records = []
    bar = tqdm(
        total=num_epochs * num_batches,
        initial=start_epoch * num_batches,
        disable=not (progress and distributed.is_main()),
        # Redirected to a file, redraw rarely instead of writing thousands of updates.
        mininterval=0.1 if sys.stderr.isatty() else 15.0,
        unit="step",
        dynamic_ncols=True,
    )
    try:
        for epoch in range(start_epoch, num_epochs):
            started = time.perf_counter()
            epoch_data = transform(data, generator) if transform else data
            epoch_batches = list(batches(generator))
            if hasattr(inference, "begin_epoch"):
                draw = _minibatch_draw(epoch_data, epoch_batches, collate, generator, device)
                inference.begin_epoch(draw, validation=evaluate is not None)
            bar.set_description(f"epoch {epoch + 1}/{num_epochs}")
            steps = (collate(epoch_data, index) for index in epoch_batches)
            after_step = on_step and _numbered(on_step, epoch * num_batches)
            total, beta = _epoch_steps(
                inference, steps, epoch_batches, epoch, size, annealing, device, bar, after_step
            )
            (total,) = distributed.sum_across_ranks(total)
            record = {"epoch": epoch + 1, "train_elbo": total / size, "beta": beta}
            if evaluate is not None:
                for key, value in evaluate().items():
                    if _is_number(value) and not math.isfinite(float(value)):
                        raise NonFiniteLossError(
                            f"val_{key} is {value} after epoch {epoch + 1}; the last checkpoint is untouched"
                        )
                    record[f"val_{key}"] = value
            if hasattr(inference, "end_epoch"):
                inference.end_epoch(record)
            record["seconds"] = time.perf_counter() - started
            shown = {k: v for k, v in record.items() if k.startswith("val_") and _is_number(v)}
            bar.set_postfix({k: f"{float(v):.2f}" for k, v in shown.items()})
            # A timing means little without the machine's load (threads collapse when cores
            # are oversubscribed): the log gives the 1-minute load average beside each epoch.
            logger.info("epoch %d: %s (load average %.2f)", epoch + 1, record, _load_average())
            records.append(record)
            if on_epoch_end is not None and on_epoch_end(record):
                logger.info("training stopped after epoch %d", epoch + 1)
                break
    finally:
        bar.close()
    return records


@dataclass
class FitData:
    """A fit's data as the loop consumes them (made by :func:`prepare_data`).

    :ivar train: the training data, on the CPU (minibatches move to the device).
    :ivar val: this rank's share of the validation data on the device, or None.
    :ivar lengths: tokens per training sequence for a likelihood that counts tokens (padded
        text), else None; ``val_tokens`` likewise for the whole validation set.
    :ivar int eval_batch_size: minibatch size of validation.
    """

    train: torch.Tensor
    val: torch.Tensor | None
    lengths: torch.Tensor | None
    val_tokens: torch.Tensor | None
    binarization: str
    batch_size: int
    eval_batch_size: int

    @property
    def sequences(self) -> bool:
        return self.lengths is not None

    @property
    def steps_per_epoch(self) -> int:
        """Minibatches per epoch, ⌈N / batch_size⌉, as :func:`train` numbers its steps."""
        return math.ceil(self.train.shape[0] / self.batch_size)

    def loop_options(self) -> dict:
        """The ``transform``, ``batches`` and ``collate`` of :func:`train`: dynamic
        binarisation afresh each epoch; for sequences, minibatches of similar length trimmed
        to their longest sequence (:func:`~pyro_skipvae.data.text.bucket_batches`)."""
        sequences = self.lengths is not None
        return {
            "transform": _binarize_dynamic if self.binarization == "dynamic" else None,
            "batches": bucket_batches(self.lengths, self.batch_size) if sequences else None,
            "collate": trim_collate(self.lengths) if sequences else None,
        }

    @property
    def rank_batch_size(self) -> int:
        """Rows of a full minibatch's smallest share on this process (``batch_size`` split
        between the data-parallel ranks; ``batch_size`` itself in one process)."""
        return self.batch_size // distributed.world_size()

    def check(self, *parts) -> None:
        """Let each of ``parts`` (the inference, the guide) refuse these data before the run
        folder is written: its ``check_fit(data)``, where it has one, raises a ConfigError
        (e.g. aggressive training without validation data and without an epoch cap)."""
        for part in parts:
            if hasattr(part, "check_fit"):
                part.check_fit(self)

    def validation(self, inference, model, guide) -> "Validation | None":
        """The loop's ``evaluate``, or None without validation data."""
        if self.val is None:
            return None
        return Validation(
            inference,
            model,
            guide,
            self.val,
            batch_size=self.eval_batch_size,
            tokens=self.val_tokens,
        )


def prepare_data(
    train: torch.Tensor,
    val: torch.Tensor | None,
    likelihood,
    *,
    binarization: str,
    batch_size: int,
    eval_batch_size: int,
    device=None,
) -> FitData:
    """Check and prepare a fit's data (:func:`~pyro_skipvae.data.prepare`).

    Validation data are binarised once, sorted by length for sequences (their means do not
    depend on the order; a semi-amortized run's refinement minibatches then hold sentences of
    similar length, as the authors' do), split between the ranks of a data-parallel run and
    moved to ``device``. Validation minibatches are multiples of the training ``batch_size``:
    a semi-amortized evaluation refines in minibatches of that size, and a smaller remainder
    would take larger steps (:func:`~pyro_skipvae.diagnostics.elbo.evaluation_batch_size`).

    :raises DataError: data of the wrong shape, non-finite, or outside the likelihood's support.
    """
    train = prepare(
        train, likelihood, binarization=binarization, name="training data", training=True
    )
    lengths, val_tokens = likelihood.num_tokens(train), None
    if val is not None:
        val = prepare(val, likelihood, binarization=binarization, name="validation data")
        val_tokens = likelihood.num_tokens(val)
        if val_tokens is not None:
            val = val[length_order(val_tokens)]
        # each rank scores its share; the means are combined over the ranks
        val = distributed.shard(val).to(device)
    eval_batch_size = evaluation_batch_size(likelihood, eval_batch_size, multiple_of=batch_size)
    return FitData(train, val, lengths, val_tokens, binarization, batch_size, eval_batch_size)


class Validation:
    """Score the validation set after each epoch (the loop's ``evaluate``).

    The inference object's own ``evaluate_metrics`` if it has one (a semi-amortized run's
    refined bound beside the amortized one), else the amortized ``elbo`` and ``kl``
    (:func:`~pyro_skipvae.diagnostics.evaluate_elbo`, in ``eval()`` mode); means over the
    ranks of a data-parallel run. For sequences, ``ppl`` = exp(−Σ ELBO / Σ tokens) (and
    ``ppl_amortized``), with the whole validation set's tokens per sequence.

    ``au``: the active units of the encoder's q on the whole validation set,
    #{d : Var_x E_q[z_d | x] > δ} with δ = :data:`AU_THRESHOLD` (Burda et al. 2016), so
    collapse can be followed epoch by epoch. It is the amortized q's also in a semi-amortized
    run (refining again for it would double validation's cost; ``skipvae diagnose`` gives the
    refined one), and absent in ``svi`` mode, which has no encoder.
    """

    def __init__(self, inference, model, guide, data, *, batch_size, tokens=None):
        self.inference, self.model, self.guide = inference, model, guide
        self.data, self.batch_size, self.tokens = data, batch_size, tokens

    @torch.no_grad()
    def active_units(self) -> int:
        """Active units over all ranks' validation points: the variance of the posterior
        means from their sums and sums of squares (in float64), so a data-parallel run counts
        the same units as one process. Tracing the guide draws z, so the global random state
        is put back afterwards: the count changes no draw of training (a run resumed from a
        checkpoint written before it existed continues exactly)."""
        with checkpoint.rng_restored(), evaluating(self.model, self.guide):
            means = Posteriors(self.guide, self.data, chunk_size=self.batch_size).means()
        means = means.double()
        dim = means.shape[1]
        *sums, n = distributed.sum_across_ranks(
            *means.sum(0).tolist(), *means.square().sum(0).tolist(), means.shape[0]
        )
        first, second = torch.tensor(sums[:dim]), torch.tensor(sums[dim:])
        variance = (second - first.square() / n) / (n - 1)
        return int((variance > AU_THRESHOLD).sum())

    def __call__(self) -> dict:
        if hasattr(self.inference, "evaluate_metrics"):
            result = self.inference.evaluate_metrics(self.data, batch_size=self.batch_size)
        else:
            with evaluating(self.model, self.guide):
                result = evaluate_elbo(
                    self.model, self.guide, self.data, batch_size=self.batch_size
                )
            result = {"elbo": result["elbo"], "kl": result["kl"]}
        result = distributed.mean_across_ranks(result, self.data.shape[0])
        if self.tokens is not None:
            tokens_per_point = self.tokens.sum().item() / self.tokens.shape[0]
            for key in ("", "_amortized"):
                if f"elbo{key}" in result:
                    result[f"ppl{key}"] = math.exp(-result[f"elbo{key}"] / tokens_per_point)
        if getattr(self.inference, "mode", None) != "svi":
            result["au"] = self.active_units()
        return result


def _binarize_dynamic(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return binarize(x, "dynamic", generator)


def _minibatch_draw(data, batches, collate, generator, device):
    """A function returning one of the epoch's minibatches chosen at random (as the lagging
    encoder code draws its fresh minibatches): from the run's ``generator``, so every rank of
    a data-parallel run draws its share of the same global minibatch and a resumed run the
    same ones."""

    def draw():
        index = batches[torch.randint(len(batches), (1,), generator=generator).item()]
        return _to_device(collate(data, index), device)

    return draw


def _numbered(on_step, first):
    """``on_step`` called with the run's step number from the epoch's minibatch number."""
    return lambda batch, values: on_step(first + batch + 1, values)


def _epoch_steps(inference, minibatches, batches, epoch, size, annealing, device, bar, on_step):
    """One epoch's steps of :func:`train`: return the sum over its minibatches of
    −loss / N · (minibatch size), whose total over the ranks divided by N is ``train_elbo``,
    and the last step's β; ``on_step(batch, values)`` after each step, if given."""
    total, seen = 0.0, 0
    for batch, (index, x) in enumerate(zip(batches, minibatches, strict=True)):
        beta = annealing(epoch + batch / len(batches))
        x = _to_device(x, device)
        # Data were validated once up front; Pyro's per-step argument checks would
        # repeat that work on every step (a measurable share of a step's time).
        with pyro.validation_enabled(False):
            loss = inference.step(x, size=size, beta=beta)
        if not math.isfinite(loss):
            step = epoch * len(batches) + batch + 1
            raise NonFiniteLossError(
                f"loss is {loss} at step {step} (epoch {epoch + 1}, batch {batch + 1} "
                f"of {len(batches)}); training stopped, the last checkpoint is untouched"
            )
        # loss ≈ −N · (per-datapoint objective); weight each batch by its size.
        total += -loss / size * len(index)
        seen += len(index)
        if on_step is not None:
            on_step(batch, {"train_elbo": -loss / size, "beta": beta})
        bar.update()
        if batch % 20 == 0:
            bar.set_postfix(elbo=f"{total / seen:.2f}", beta=f"{beta:.2f}")
    return total, beta


def _load_average() -> float:
    """The 1-minute load average, or NaN where the platform has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def _is_number(value) -> bool:
    """A real number, as Python, NumPy or a one-element tensor holds it (not a string or a
    container, which a record may also carry)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real)
