r"""Data-parallel training on :mod:`torch.distributed`: every helper the loop needs, in one place.

A run launched by ``torchrun --nproc_per_node W`` (or ``skipvae fit --nproc W``) trains one
model replica per process. Each process ("rank") takes its own contiguous slice of every
global minibatch (:func:`shard_batches`); after the backward pass the gradients are averaged
over the ranks (:func:`all_reduce_gradients`, called from
:func:`~pyro_skipvae.infer.svi.apply_gradients`), so every replica takes the same optimizer
step and the parameters stay identical without ever being sent again.

**Why an explicit all-reduce and not DistributedDataParallel.** DDP averages gradients from
hooks that its wrapper's ``forward`` arms; Pyro calls the model's and guide's ``forward``
itself (inside traces and replays), so those hooks would never fire. DDP's reducer also
refuses double backward, which end-to-end semi-amortized training needs
(``autograd.grad(create_graph=True)`` through the refinement). Averaging the finished
``.grad`` tensors once per step, in buckets, works for any Pyro ELBO and any inference object
that steps through ``apply_gradients``; what it gives up is DDP's overlap of communication with
the backward pass (measured cost: ``benchmarks/results/distributed.md``).

**What the average is.** On rank r with B_r of the B datapoints of a global minibatch, Pyro's
loss is the plate-scaled −(N/B_r) Σ_{i∈r} ELBO_i. The all-reduce forms

.. math::

    G = \sum_r \frac{B_r}{B}\, G_r, \qquad B = \sum_r B_r,

the gradient of −(N/B) Σ_i ELBO_i over the whole global minibatch, exactly: the 1-process
gradient, also when B is not a multiple of W. The counts B_r travel with the gradients (no
extra round trip), on a CPU (gloo) group, so the host never waits on the GPU for them.

With ``torch.distributed`` not initialised, or a world of one process, every helper is the
identity (or a constant) and costs nothing: single-process training is unchanged.

Reference: Li et al., *PyTorch Distributed: Experiences on Accelerating Data Parallel
Training*, VLDB 2020 (gradient bucketing, §3.2).
"""

import contextlib
import io
import logging
import os

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

#: bytes per gradient bucket (DDP's default ``bucket_cap_mb`` is 25 MiB)
BUCKET_BYTES = 25 * 2**20


# ---------------------------------------------------------------------- who am I
def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes training together (1 without torch.distributed)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True on the rank that writes files, logs and shows progress (rank 0)."""
    return rank() == 0


def launched_world_size() -> int:
    """The ``WORLD_SIZE`` a launcher such as torchrun put in the environment (1 if none)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(device) -> torch.device:
    """``torch.device(device)`` (default CPU); a bare ``"cuda"`` under torchrun means this
    process's own GPU, ``cuda:$LOCAL_RANK``. An explicit ``cuda:N`` is kept as given."""
    device = torch.device(device or "cpu")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextlib.contextmanager
def process_group(device=None):
    """Join the process group a launcher (torchrun) describes in the environment, for the
    duration of the block, then leave it.

    Nothing happens outside a launcher (``WORLD_SIZE`` unset or 1) or if the group already
    exists (the caller owns it). The backend is NCCL for CUDA devices, gloo for the CPU; with
    NCCL the process's current CUDA device is set to ``device`` first.
    """
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    device = resolve_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """The seed of this rank's reparameterisation noise: ``seed`` itself on rank 0 (so a
    1-process run is unchanged), an independent stream derived from (seed, rank) elsewhere."""
    r = rank()
    if r == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**63, r]).generate_state(1)[0])


# ---------------------------------------------------------------------- data
def shard_batches(batches):
    """Wrap a ``batches(generator)`` hook (:func:`~pyro_skipvae.infer.fit.train`) so that
    each rank gets its contiguous slice of every global minibatch the hook yields.

    Every rank runs the hook with an identically seeded generator, so all see the same global
    minibatches; ``index.tensor_split(W)[rank]`` then gives disjoint slices that differ in
    size by at most one. A global minibatch smaller than W (possible only for a short last
    batch) is skipped on every rank, since a rank without data cannot take the step.
    Returns ``batches`` itself at world size 1.
    """
    if not active():
        return batches
    size, me = world_size(), rank()

    def sharded(generator):
        for index in batches(generator):
            if len(index) < size:
                logger.info(
                    "skipping a minibatch of %d points: fewer than %d ranks", len(index), size
                )
                continue
            yield index.tensor_split(size)[me]

    return sharded


def shard(data: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of the rows of ``data`` (``data`` at world size 1)."""
    return data.tensor_split(world_size())[rank()] if active() else data


# ---------------------------------------------------------------------- reductions
def _cpu_group():
    """A gloo group over all ranks for small host-side reductions: the default group when it
    is gloo, else one created once (collectively) beside the NCCL group."""
    if dist.get_backend() == dist.Backend.GLOO:
        return None  # the default group
    default = dist.group.WORLD
    if getattr(_cpu_group, "for_group", None) is not default:
        _cpu_group.group = dist.new_group(backend="gloo")
        _cpu_group.for_group = default
    return _cpu_group.group


def sum_across_ranks(*values: float) -> list[float]:
    """Each of ``values`` summed over the ranks (returned as given at world size 1)."""
    if not active():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total, group=_cpu_group())
    return total.tolist()


def global_batch_size(local_batch_size: int) -> int:
    """B = Σ_r B_r: the size of the global minibatch this rank holds ``local_batch_size`` of."""
    return int(sum_across_ranks(local_batch_size)[0])


def mean_across_ranks(metrics: dict, count: int) -> dict:
    """Per-datapoint means computed on each rank's ``count`` points, combined into the mean
    over all ranks' points (weighted by the counts); non-float entries are kept as they are."""
    if not active():
        return metrics
    keys = [k for k, v in metrics.items() if isinstance(v, float)]
    *sums, total = sum_across_ranks(*(metrics[k] * count for k in keys), count)
    return {**metrics, **{k: s / total for k, s in zip(keys, sums)}}


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` at world size 1) for ``obj`` made of
    tensors and plain containers (what a checkpoint holds, e.g. RNG states).

    Sent as ``torch.save`` bytes and read back with ``weights_only=True``: tensors pickled
    inside ``all_gather_object`` itself do not unpickle on current torch.
    """
    if not active():
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, buffer.getvalue(), group=_cpu_group())
    return [torch.load(io.BytesIO(data), weights_only=True) for data in gathered]


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself at world size 1)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_cpu_group())
    return box[0]


@torch.no_grad()
def broadcast_states(*modules) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``modules`` (a safeguard at the
    start of training: replicas seeded alike start alike anyway)."""
    if not active():
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def all_reduce_gradients(params, *, batch_size: int, bucket_bytes: int = BUCKET_BYTES) -> None:
    r"""Replace every parameter's ``.grad`` by the batch-size-weighted average over the ranks,
    G = Σ_r (B_r / B) G_r (see the module docstring), in place of a DDP wrapper.

    Gradients are packed into flat buckets of at most ``bucket_bytes`` per (device, dtype),
    all buckets are all-reduced concurrently, and each ``.grad`` becomes a view of its bucket
    (no copy back). A parameter without a gradient on this rank contributes zeros; one without a
    gradient on *every* rank keeps ``grad = None``, so optimizers skip it as they would in one
    process. Every rank must pass the same parameters in the same order.

    :param params: the parameters, in an order shared by all ranks.
    :param int batch_size: B_r, the number of datapoints behind this rank's gradients.
    :param int bucket_bytes: bucket size cap (default 25 MiB, DDP's).
    """
    if not active():
        return
    params = list(params)
    # Host-side bookkeeping on the CPU group: which ranks hold a gradient, and the counts.
    meta = torch.tensor([float(p.grad is not None) for p in params] + [float(batch_size)])
    meta_work = dist.all_reduce(meta, group=_cpu_group(), async_op=True)

    buckets, current, current_bytes, key = [], [], 0, None
    for i, p in enumerate(params):
        nbytes = p.numel() * p.element_size()
        if current and ((p.device, p.dtype) != key or current_bytes + nbytes > bucket_bytes):
            buckets.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += nbytes
        key = (p.device, p.dtype)
    if current:
        buckets.append(current)

    flats, works = [], []
    for bucket in buckets:
        flat = torch.cat(
            [
                (
                    params[i].grad if params[i].grad is not None else torch.zeros_like(params[i])
                ).reshape(-1)
                for i in bucket
            ]
        )
        flat.mul_(batch_size)
        flats.append(flat)
        works.append(dist.all_reduce(flat, async_op=True))
    meta_work.wait()
    held, total = meta[:-1].tolist(), meta[-1].item()
    for bucket, flat, work in zip(buckets, flats, works):
        work.wait()
        flat.div_(total)
        offset = 0
        for i in bucket:
            p = params[i]
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p) if held[i] else None
            offset += n


__all__ = [
    "BUCKET_BYTES",
    "active",
    "all_gather_objects",
    "all_reduce_gradients",
    "broadcast_object",
    "broadcast_states",
    "global_batch_size",
    "is_main",
    "launched_world_size",
    "mean_across_ranks",
    "process_group",
    "rank",
    "rank_seed",
    "resolve_device",
    "shard",
    "shard_batches",
    "sum_across_ranks",
    "world_size",
]
