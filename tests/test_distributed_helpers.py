"""The torch.distributed helpers rank by rank, in one process: each rank is a thread, and the
collectives are exchanged through a barrier (:class:`ThreadWorld`, a stand-in for
``torch.distributed`` with the same call signatures).

``tests/test_distributed.py`` runs the same checks (:func:`check_helpers`) on a real gloo
group of two processes, and whole runs under torchrun; this file is the fast, in-process
specification (and the one mutation testing runs: a spawned process's calls are not seen by
mutmut's per-test bookkeeping).
"""

import pickle
import threading
import types

import pytest
import torch
import torch.distributed

from pyro_skipvae.infer import distributed


class _Done:
    """What an ``async_op=True`` collective returns: the exchange is already complete."""

    def wait(self):
        return True


class ThreadWorld:
    """``size`` ranks as threads of this process. Each collective puts every rank's value in a
    slot, waits for all ranks, combines, and waits again before the slots are reused: ranks
    that call different collectives, or a different number of them, break the barrier
    (a failure, as a hang would be in a real group)."""

    Backend = torch.distributed.Backend

    def __init__(self, size, backend="gloo"):
        self.size, self.backend = size, backend
        self.local = threading.local()
        self.barrier = threading.Barrier(size, timeout=120)  # generous: a loaded machine
        self.slots = [None] * size
        self.group = types.SimpleNamespace(WORLD=object())
        self.new_groups, self.calls = [], []

    # who am I
    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_world_size(self, group=None):
        return self.size

    def get_rank(self, group=None):
        return self.local.rank

    def get_backend(self, group=None):
        return self.backend

    def new_group(self, backend):
        self.new_groups.append(backend)
        return f"{backend} group {len(self.new_groups)}"

    # collectives
    def _exchange(self, value, name, group):
        if self.local.rank == 0:
            self.calls.append((name, group, getattr(value, "shape", None)))
        self.slots[self.local.rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values

    def all_reduce(self, tensor, group=None, async_op=False):
        values = self._exchange(tensor.clone(), "all_reduce", group)
        tensor.copy_(torch.stack(values).sum(0))
        return _Done() if async_op else None

    def all_gather_object(self, out, obj, group=None):
        out[:] = self._exchange(obj, "all_gather_object", group)

    def broadcast_object_list(self, box, src, group=None):
        box[:] = self._exchange(list(box), "broadcast_object_list", group)[src]

    def broadcast(self, tensor, src, group=None):
        tensor.copy_(self._exchange(tensor.clone(), "broadcast", group)[src])

    def run(self, fn):
        """``[fn(0), fn(1), ...]``, each rank in its own thread; the first error is raised."""
        results, errors = [None] * self.size, []

        def main(r):
            self.local.rank = r
            try:
                results[r] = fn(r)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=main, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        if real or errors:
            raise (real or errors)[0]
        return results


@pytest.fixture
def world(monkeypatch):
    def make(size=2, backend="gloo"):
        w = ThreadWorld(size, backend)
        monkeypatch.setattr(distributed, "dist", w)
        return w

    return make


def check_helpers(rank):
    """Every helper on ``rank`` of a two-rank world (run here on threads and in
    ``tests/test_distributed.py`` on two processes)."""
    assert distributed.active() and distributed.world_size() == 2
    assert distributed.rank() == rank and distributed.is_main() == (rank == 0)

    # shard_batches: disjoint contiguous slices of every global minibatch; a minibatch smaller
    # than the world is skipped on every rank
    batches = distributed.shard_batches(
        lambda g: [torch.arange(5), torch.arange(5, 10), torch.tensor([10])]
    )
    got = list(batches(None))
    assert [t.tolist() for t in got] == ([[0, 1, 2], [5, 6, 7]] if rank == 0 else [[3, 4], [8, 9]])
    assert distributed.shard(torch.arange(5)).tolist() == ([0, 1, 2] if rank == 0 else [3, 4])

    # all_reduce_gradients: Σ_r B_r G_r / Σ_r B_r; a gradient on one rank only counts as
    # zero elsewhere; a parameter without gradient anywhere keeps None; several buckets
    shared, one_sided, unused = (
        torch.zeros(3, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    batch = [3, 1][rank]
    shared.grad = torch.full((3,), [1.0, 5.0][rank], dtype=torch.float64)
    if rank == 1:
        one_sided.grad = torch.ones(3, dtype=torch.float64)
    distributed.all_reduce_gradients([shared, one_sided, unused], batch_size=batch, bucket_bytes=8)
    torch.testing.assert_close(
        shared.grad, torch.full((3,), (3 * 1.0 + 1 * 5.0) / 4, dtype=torch.float64)
    )
    torch.testing.assert_close(one_sided.grad, torch.full((3,), 1 * 1.0 / 4, dtype=torch.float64))
    assert unused.grad is None

    metrics = distributed.mean_across_ranks({"elbo": [-1.0, -4.0][rank], "name": "x"}, [1, 2][rank])
    assert metrics == {"elbo": pytest.approx((-1.0 - 8.0) / 3), "name": "x"}
    assert distributed.global_batch_size(batch) == 4
    assert distributed.sum_across_ranks(1.5, [2.0, 3.0][rank]) == [3.0, 5.0]
    assert distributed.all_gather_objects({"t": torch.tensor([rank])}) == [
        {"t": torch.tensor([0])},
        {"t": torch.tensor([1])},
    ]
    assert distributed.broadcast_object(f"rank {rank}") == "rank 0"
    if rank == 0:
        assert distributed.rank_seed(7) == 7
    else:
        assert distributed.rank_seed(7) != 7


def test_helpers_on_two_thread_ranks(world):
    world(2).run(check_helpers)


def test_three_ranks_split_a_minibatch_into_sizes_that_differ_by_at_most_one(world):
    def shards(rank):
        batches = distributed.shard_batches(lambda g: [torch.arange(8), torch.arange(8, 10)])
        return [t.tolist() for t in batches(None)]

    # 8 points → 3, 3, 2; the batch of 2 < 3 ranks is skipped everywhere
    assert world(3).run(shards) == [[[0, 1, 2]], [[3, 4, 5]], [[6, 7]]]


def test_gradients_are_bucketed_by_size_and_by_dtype(world):
    w = world(2)

    def step(rank):
        params = [torch.zeros(3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        params.append(torch.zeros(2, dtype=torch.float32, requires_grad=True))
        for k, p in enumerate(params):
            p.grad = torch.full_like(p, float(k + 10 * rank))
        distributed.all_reduce_gradients(params, batch_size=1 + rank, bucket_bytes=48)
        return [p.grad.tolist() for p in params]

    got = w.run(step)
    # G = (1·G_0 + 2·G_1) / 3 for every parameter, on both ranks
    expected = [[(k + 2 * (k + 10)) / 3] * n for k, n in enumerate([3, 3, 3, 2])]
    for grads in got:
        for g, e in zip(grads, expected):
            assert g == pytest.approx(e)
    # one bookkeeping reduction, then buckets: 24 + 24 bytes fit 48, the third float64 opens a
    # new one, and the float32 parameter its own (another dtype) although 8 more bytes fit
    sizes = [(group, shape[0]) for name, group, shape in w.calls]
    assert sizes == [(None, 5), (None, 6), (None, 3), (None, 2)]


def test_gradients_are_views_of_their_bucket(world):
    def step(rank):
        a, b = (torch.zeros(2, requires_grad=True) for _ in range(2))
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        distributed.all_reduce_gradients([a, b], batch_size=1)
        # one bucket: b's gradient starts where a's ends, in the same storage
        return b.grad.data_ptr() - a.grad.data_ptr() == 2 * a.element_size()

    assert world(2).run(step) == [True, True]


def test_host_side_reductions_use_a_gloo_group_beside_nccl(world, monkeypatch):
    w = world(2, backend="nccl")
    monkeypatch.delattr(distributed._cpu_group, "for_group", raising=False)  # a fresh process

    def sums(rank):
        return distributed.sum_across_ranks(1.0) + distributed.sum_across_ranks(2.0)

    assert w.run(sums) == [[2.0, 4.0], [2.0, 4.0]]
    assert [group for _, group, _ in w.calls] == ["gloo group 1", "gloo group 1"]
    # created once per default group (the threads share the module's cache, so one or both
    # ranks create it), then reused
    created = len(w.new_groups)
    assert set(w.new_groups) == {"gloo"} and created in (1, 2)
    w.run(sums)
    assert len(w.new_groups) == created
    w.group.WORLD = object()  # a new default group (a new process group) needs a new one
    w.run(sums)
    assert len(w.new_groups) > created and w.calls[-1][1] != "gloo group 1"
    # objects travel on the gloo group too; gradients on the default (NCCL) group
    w.calls.clear()

    def objects(rank):
        distributed.all_gather_objects(rank)
        distributed.broadcast_object(rank)
        p = torch.zeros(1, requires_grad=True)
        p.grad = torch.ones(1)
        distributed.all_reduce_gradients([p], batch_size=1)

    w.run(objects)
    cpu_group = w.calls[0][1]
    assert cpu_group.startswith("gloo group")
    assert [(name, group) for name, group, _ in w.calls] == [
        ("all_gather_object", cpu_group),
        ("broadcast_object_list", cpu_group),
        ("all_reduce", cpu_group),  # the counts
        ("all_reduce", None),  # the gradients
    ]


class Opaque:
    """Not a tensor or a plain container: refused by a weights-only load."""


def test_gathered_objects_are_read_back_weights_only(world):
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        world(2).run(lambda rank: distributed.all_gather_objects({"x": Opaque()}))


def test_a_world_of_one_process_is_not_distributed(world):
    world(1)
    assert not distributed.active() and distributed.world_size() == 1
    data = torch.arange(3)
    assert distributed.shard(data) is data


def test_broadcast_states_copies_rank_zero_parameters_and_buffers(world):
    def replica(rank):
        net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        with torch.no_grad():
            for k, t in enumerate([*net.parameters(), *net.buffers()]):
                t.fill_(10 * rank + k)
        distributed.broadcast_states(net)
        return [t.detach().reshape(-1).tolist() for t in [*net.parameters(), *net.buffers()]]

    zero, one = world(2).run(replica)
    assert zero == one
    assert [set(t) for t in zero] == [{float(k)} for k in range(len(zero))]


def test_rank_seed_is_a_function_of_seed_and_rank(world):
    seeds = world(3).run(lambda r: [distributed.rank_seed(s) for s in (7, 8, 7 + 2**63, 9)])
    assert seeds[0] == [7, 8, 7 + 2**63, 9]  # rank 0 keeps the seed: a 1-process run is unchanged
    for rank in (1, 2):
        s7, s8, s7_wrapped, _ = seeds[rank]
        assert s7 != s8 and s7 == s7_wrapped  # a seed is read modulo 2**63
        assert s7 != seeds[rank][3]  # 7 and 9: seeds of the same parity differ too
        assert 0 <= s7 < 2**32
    assert seeds[1][0] != seeds[2][0]


def test_process_group_joins_what_the_launcher_describes(monkeypatch):
    events = []
    fake = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: bool(events) and events[-1][0] == "init",
        init_process_group=lambda backend: events.append(("init", backend)),
        destroy_process_group=lambda: events.append(("destroy",)),
    )
    monkeypatch.setattr(distributed, "dist", fake)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: events.append(("set_device", d)))

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.launched_world_size() == 1
    with distributed.process_group("cpu"):
        pass
    assert events == []  # no launcher: nothing to join

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched_world_size() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with distributed.process_group("cpu"):
            assert events == [("init", "gloo")]
            with distributed.process_group("cpu"):  # the caller's group: not joined twice
                pass
            raise RuntimeError("boom")
    assert events == [("init", "gloo"), ("destroy",)]  # left even after an error

    events.clear()
    with distributed.process_group("cuda"):
        pass
    assert events == [("set_device", torch.device("cuda", 1)), ("init", "nccl"), ("destroy",)]

    monkeypatch.setenv("WORLD_SIZE", "1")
    events.clear()
    with distributed.process_group("cuda"):
        pass
    assert events == []


def test_cuda_means_this_process_gpu_under_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.resolve_device("cuda") == torch.device("cuda", 3)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert distributed.resolve_device(None) == torch.device("cpu")
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.resolve_device("cuda") == torch.device("cuda")


def test_helpers_are_the_identity_in_one_process():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.rank() == 0
    batches = lambda g: [torch.arange(3)]  # noqa: E731
    assert distributed.shard_batches(batches) is batches
    data = torch.arange(4)
    assert distributed.shard(data) is data
    p = torch.zeros(2, requires_grad=True)
    p.grad = g = torch.ones(2)
    distributed.all_reduce_gradients([p], batch_size=7)
    assert p.grad is g
    assert distributed.sum_across_ranks(1.5, 2.0) == [1.5, 2.0]
    assert distributed.global_batch_size(5) == 5
    metrics = {"elbo": -3.0}
    assert distributed.mean_across_ranks(metrics, 4) is metrics
    assert distributed.all_gather_objects("x") == ["x"]
    assert distributed.broadcast_object("x") == "x"
    assert distributed.rank_seed(11) == 11


def test_apply_gradients_averages_over_ranks_even_where_a_rank_skips_a_parameter(world):
    """Each rank steps on Σ_r B_r G_r / Σ_r B_r (here B = 3 and 1): with our optimizer the
    all-reduce runs over the optimizer's parameters, the same list on every rank, so a rank
    whose trace lacks a parameter (data-dependent control flow) still joins its reduction;
    with a Pyro optimizer, over the trace's parameters."""
    import pyro
    import pyro.optim
    from pyro import poutine

    from pyro_skipvae.infer import Optimizer
    from pyro_skipvae.infer.svi import apply_gradients

    grads = {0: {"a": 2.0, "b": 4.0}, 1: {"a": 6.0}}  # rank 1 never touched b
    batch = {0: 3, 1: 1}
    ranks = {}
    for rank in (0, 1):  # built outside the threads: Pyro's handler stack is process-global
        pyro.param(f"rank{rank}_b", torch.zeros(1))
        with poutine.trace(param_only=True) as trace:
            pyro.param(f"rank{rank}_a", torch.zeros(1))
            if "b" in grads[rank]:
                pyro.param(f"rank{rank}_b")
        a, b = (pyro.param(f"rank{rank}_{n}").unconstrained() for n in "ab")
        for name, p in (("a", a), ("b", b)):
            p.grad = torch.tensor([grads[rank][name]]) if name in grads[rank] else None
        ranks[rank] = (a, b, trace.trace)

    def step(rank):
        a, b, trace = ranks[rank]
        optim = Optimizer([a, b], name="sgd", learning_rate=1.0, clip_norm=None)
        apply_gradients(optim, trace, size=10, batch_size=batch[rank])
        return a.item(), b.item()

    # a: (3·2 + 1·6)/4 = 3, b: (3·4 + 0)/4 = 3; the step is on the per-datapoint gradient (/10)
    assert world(2).run(step) == [pytest.approx((-0.3, -0.3))] * 2

    pyro_ranks = {}
    for rank in (0, 1):
        with poutine.trace(param_only=True) as trace:
            pyro.param(f"pyro_rank{rank}", torch.zeros(1))
        p = pyro.param(f"pyro_rank{rank}").unconstrained()
        p.grad = torch.tensor([[2.0, 6.0][rank]])
        pyro_ranks[rank] = (p, trace.trace)

    def pyro_step(rank):
        p, trace = pyro_ranks[rank]
        apply_gradients(pyro.optim.SGD({"lr": 1.0}), trace, size=10, batch_size=batch[rank])
        return p.item(), p.grad

    # Pyro's step on the N-scaled gradient as given: −(3·2 + 1·6)/4; gradients released
    assert world(2).run(pyro_step) == [(pytest.approx(-3.0), None)] * 2


def test_free_bits_refuse_to_train_data_parallel(world):
    """Free bits take max(λ, mean KL_j) over the whole minibatch, which no rank holds: in a
    group of two the objective is refused, naming the reason, before any gradient."""
    import pyro
    import pyro.distributions as dist

    from pyro_skipvae.errors import ConfigError
    from pyro_skipvae.infer import FreeBitsELBO

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))

    x = torch.ones(3, 2)
    assert FreeBitsELBO(0.5).loss(model, guide, x) > 0  # one process: trains
    world(2)
    with pytest.raises(ConfigError, match="free bits cannot train data-parallel .*2 processes"):
        FreeBitsELBO(0.5).differentiable_loss(model, guide, x)
