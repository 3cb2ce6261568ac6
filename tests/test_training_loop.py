"""The training loop (``infer.fit.train``) driven by a recording inference object on tiny
synthetic data, and the outer optimizer's and the sync-free Trace_ELBO's finer contracts.

The data here are synthetic (row i holds the value i), chosen so every record has a closed
form: with ``step`` returning N · mean(x) the per-datapoint objective is −mean(x), and the
epoch's ``train_elbo`` is minus the data set's mean whatever the minibatches."""

import copy
import logging
import math
import os
import re
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.util import is_validation_enabled

from pyro_skipvae import ConfigError, NonFiniteLossError
from pyro_skipvae.infer import Optimizer, fit
from pyro_skipvae.infer.optim import _fusable
from pyro_skipvae.infer.trace_elbo import Trace_ELBO

N = 7  # synthetic data set size
B = 3  # minibatch size: batches of 3, 3 and 1


def synthetic(n=N):
    """Row i holds i (synthetic, one feature), so a minibatch names its own indices."""
    return torch.arange(n, dtype=torch.float64).unsqueeze(1)


class Recording:
    """An inference object with the interface ``train`` expects, recording its arguments.

    ``step`` returns N · mean(x) (the N-scaled loss of a per-datapoint objective −x), or
    what ``losses`` gives for the step number (1-based)."""

    def __init__(self, losses=None):
        self.calls = []
        self.losses = losses or {}

    def step(self, x, *, size, beta):
        self.calls.append(
            {"x": x.clone(), "size": size, "beta": beta, "validating": is_validation_enabled()}
        )
        if x.device.type == "meta":
            return 0.0
        return self.losses.get(len(self.calls), size * float(x.mean()))

    def rows(self, start=0, stop=None):
        return [c["x"][:, 0].long().tolist() for c in self.calls[start:stop]]


def run(inference=None, *, num_epochs=2, seed=0, **kwargs):
    inference = inference or Recording()
    records = fit.train(
        inference,
        synthetic(),
        num_epochs=num_epochs,
        batch_size=B,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return inference, records


# --- batching ---------------------------------------------------------------------------


def test_random_batches_cut_a_fresh_permutation_each_epoch():
    batches = fit.random_batches(N, B)
    gen = torch.Generator().manual_seed(5)
    first, second = batches(gen), batches(gen)
    assert [len(b) for b in first] == [3, 3, 1] == [len(b) for b in second]
    expected = torch.randperm(N, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.cat(first), expected)
    assert sorted(torch.cat(second).tolist()) == list(range(N))
    assert not torch.equal(torch.cat(first), torch.cat(second)), "a fresh order each epoch"


def test_every_epoch_steps_once_per_minibatch_over_the_whole_data_set():
    inference, records = run()
    gen = torch.Generator().manual_seed(0)
    orders = [torch.randperm(N, generator=gen).tolist() for _ in range(2)]
    assert len(inference.calls) == 6  # ceil(7 / 3) steps per epoch
    assert inference.rows() == [o[i : i + B] for o in orders for i in range(0, N, B)]
    assert all(c["size"] == N for c in inference.calls), "the plate size is the data set's"
    assert not any(c["validating"] for c in inference.calls), "Pyro's checks are off per step"
    assert is_validation_enabled(), "and back on afterwards"
    assert [r["epoch"] for r in records] == [1, 2]


def test_train_elbo_is_the_size_weighted_average_of_minus_loss_over_n():
    """Per-datapoint objective −x: the epoch average is −mean(data) = −3, whatever the
    uneven minibatches (3, 3, 1)."""
    _, records = run()
    assert [r["train_elbo"] for r in records] == [pytest.approx(-3.0, abs=1e-12)] * 2
    losses = {1: 14.0, 2: 7.0, 3: 70.0}  # per-datapoint −2, −1, −10 on 3, 3 and 1 rows
    _, records = run(Recording(losses), num_epochs=1)
    assert records[0]["train_elbo"] == pytest.approx((-2 * 3 - 1 * 3 - 10 * 1) / N, abs=1e-12)


def test_custom_batches_transform_and_collate():
    seen = {}

    def batches(generator):
        assert isinstance(generator, torch.Generator)
        return [torch.tensor([0, 1]), torch.tensor([2, 3, 4, 5, 6])]

    def transform(data, generator):
        seen.setdefault("transform", []).append(generator)
        return data * 10

    def collate(data, index):
        seen.setdefault("collate", []).append(index.tolist())
        return data[index][:1]  # text trims: only the first row

    gen = torch.Generator().manual_seed(0)
    inference = Recording()
    fit.train(
        inference,
        synthetic(),
        num_epochs=1,
        batch_size=B,
        generator=gen,
        batches=batches,
        transform=transform,
        collate=collate,
    )
    assert seen["transform"] == [gen]
    assert seen["collate"] == [[0, 1], [2, 3, 4, 5, 6]]
    assert inference.rows() == [[0], [20]], "collate sees the transformed data"


def test_without_transform_the_data_are_used_as_given():
    data = synthetic()
    before = data.clone()
    inference, _ = run(num_epochs=1)
    assert sorted(sum(inference.rows(), [])) == list(range(N))
    assert torch.equal(data, before)


# --- β schedule and epochs ---------------------------------------------------------------


def test_beta_follows_the_fractional_epoch_and_the_record_keeps_the_last():
    progress = []

    def annealing(t):
        progress.append(t)
        return 0.1 + t / 10

    inference, records = run(annealing=annealing)
    assert progress == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])
    assert [c["beta"] for c in inference.calls] == pytest.approx([0.1 + t / 10 for t in progress])
    assert [r["beta"] for r in records] == pytest.approx([0.1 + (2 / 3) / 10, 0.1 + (5 / 3) / 10])


def test_without_annealing_beta_is_one():
    inference, records = run()
    assert all(c["beta"] == 1.0 for c in inference.calls)
    assert [r["beta"] for r in records] == [1.0, 1.0]


def test_a_resumed_run_continues_at_start_epoch():
    progress = []
    _, records = run(num_epochs=3, start_epoch=1, annealing=lambda t: progress.append(t) or 1.0)
    assert [r["epoch"] for r in records] == [2, 3]
    assert progress[0] == 1.0 and progress[-1] == pytest.approx(2 + 2 / 3)
    _, records = run(num_epochs=2, start_epoch=2)
    assert records == []


# --- records, evaluation, early stopping ----------------------------------------------------


def test_the_record_holds_the_validation_metrics_and_the_seconds():
    values = iter([{"elbo": -1.5, "kl": 2.0, "units": 3}, {"elbo": -1.25, "kl": 1.0, "units": 4}])
    started = time.perf_counter()
    _, records = run(evaluate=lambda: next(values))
    elapsed = time.perf_counter() - started
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in records] == [
        {"epoch": 1, "train_elbo": pytest.approx(-3.0), "beta": 1.0, "val_elbo": -1.5,
         "val_kl": 2.0, "val_units": 3},
        {"epoch": 2, "train_elbo": pytest.approx(-3.0), "beta": 1.0, "val_elbo": -1.25,
         "val_kl": 1.0, "val_units": 4},
    ]  # fmt: skip
    assert list(records[0]) == ["epoch", "train_elbo", "beta", "val_elbo", "val_kl", "val_units",
                                "seconds"]  # fmt: skip
    assert all(0 <= r["seconds"] <= elapsed for r in records)


def test_on_epoch_end_sees_each_complete_record_and_may_stop_training(caplog):
    seen = []

    def on_epoch_end(record):
        seen.append(dict(record))
        return record["epoch"] == 2

    caplog.set_level(logging.INFO, logger="pyro_skipvae.infer.fit")
    inference, records = run(
        num_epochs=5, evaluate=lambda: {"elbo": -1.0}, on_epoch_end=on_epoch_end
    )
    assert [r["epoch"] for r in records] == [1, 2] and seen == records
    assert "seconds" in seen[0] and seen[0]["val_elbo"] == -1.0
    assert len(inference.calls) == 6
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-1] == "training stopped after epoch 2"
    assert re.fullmatch(
        re.escape(f"epoch 1: {records[0]} (load average ") + r"\d+\.\d\d\)", messages[0]
    )
    assert float(messages[0].rsplit(" ", 1)[1][:-1]) == pytest.approx(os.getloadavg()[0], abs=2)
    # a hook returning None (or False) never stops
    _, records = run(num_epochs=3, on_epoch_end=lambda record: None)
    assert len(records) == 3


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_names_the_step_and_stops_before_the_epoch_ends(bad):
    ends = []
    inference = Recording({5: bad})
    message = (
        rf"loss is {bad} at step 5 \(epoch 2, batch 2 of 3\); training stopped, the last "
        "checkpoint is untouched"
    )
    with pytest.raises(NonFiniteLossError, match=message):
        run(inference, num_epochs=3, on_epoch_end=ends.append)
    assert [r["epoch"] for r in ends] == [1], "nothing is reported for the failing epoch"
    assert len(inference.calls) == 5


def test_a_non_finite_validation_metric_stops_before_the_epoch_is_reported():
    ends = []
    values = iter([{"elbo": -1.0}, {"elbo": -1.0, "kl": math.nan}])
    with pytest.raises(
        NonFiniteLossError, match=r"^val_kl is nan after epoch 2; the last checkpoint is untouched$"
    ):
        run(num_epochs=3, evaluate=lambda: next(values), on_epoch_end=ends.append)
    assert [r["epoch"] for r in ends] == [1]


@pytest.mark.parametrize(
    "bad", [np.float32("inf"), torch.tensor(math.nan), torch.tensor([-math.inf])]
)
def test_non_finite_validation_metrics_of_any_numeric_type_stop_the_run(bad):
    with pytest.raises(NonFiniteLossError, match="^val_kl is .* after epoch 1"):
        run(num_epochs=2, evaluate=lambda: {"elbo": -1.0, "kl": bad})


def test_validation_values_that_are_not_numbers_are_recorded_and_not_shown(monkeypatch):
    bars = Bars(monkeypatch).bars
    run(
        num_epochs=1,
        progress=True,
        evaluate=lambda: {
            "elbo": torch.tensor(-2.5),
            "note": "refined",
            "n": 3,
            "per_dim": torch.ones(3),
        },
    )
    assert bars[0].postfixes[-1] == {"val_elbo": "-2.50", "val_n": "3.00"}


# --- progress bar -------------------------------------------------------------------------


class Bars:
    """Records the tqdm bars ``train`` opens (the real tqdm, so its output is real too)."""

    def __init__(self, monkeypatch):
        self.bars = []
        bars = self.bars

        class Bar(fit.tqdm):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.kwargs = kwargs
                self.postfixes = []
                self.closed = False
                bars.append(self)

            def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
                self.postfixes.append({**(ordered_dict or {}), **kwargs})
                super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

            def close(self):
                self.closed = True
                super().close()

        monkeypatch.setattr(fit, "tqdm", Bar)


def test_progress_counts_steps_and_shows_the_epoch_and_metrics(monkeypatch, capsys):
    bars = Bars(monkeypatch).bars
    inference, _ = run(
        num_epochs=3, start_epoch=1, progress=True, evaluate=lambda: {"elbo": -1.234}
    )
    (bar,) = bars
    first = [f"{-c['x'].mean().item():.2f}" for c in inference.calls[::3]]  # epochs' first steps
    assert (bar.total, bar.n, bar.initial) == (9, 9, 3)  # 3 steps an epoch, resumed at 1
    assert bar.kwargs["unit"] == "step" and bar.kwargs["dynamic_ncols"] is True
    assert bar.closed
    assert bar.postfixes == [
        {"elbo": first[0], "beta": "1.00"},  # first step of epoch 2 (every 20th step)
        {"val_elbo": "-1.23"},
        {"elbo": first[1], "beta": "1.00"},
        {"val_elbo": "-1.23"},
    ]
    err = capsys.readouterr().err
    assert "epoch 3/3" in err and "9/9" in err and "val_elbo=-1.23" in err
    assert "epoch 2/3" in err and f"beta=1.00, elbo={first[0]}" in err


def test_postfix_every_twentieth_step(monkeypatch):
    bars = Bars(monkeypatch).bars
    inference = Recording()
    fit.train(
        inference,
        synthetic(45),
        num_epochs=1,
        batch_size=1,
        generator=torch.Generator().manual_seed(0),
        progress=True,
    )
    x = torch.cat([c["x"][:, 0] for c in inference.calls])
    running = [f"{-x[:n].mean().item():.2f}" for n in (1, 21, 41)]  # the running averages
    assert bars[0].postfixes[:3] == [{"elbo": e, "beta": "1.00"} for e in running]
    assert len(bars[0].postfixes) == 3 + 1  # steps 1, 21 and 41, then the epoch's end


def test_no_progress_by_default(monkeypatch, capsys):
    bars = Bars(monkeypatch).bars
    run()
    assert bars[0].disable and bars[0].closed
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("tty, interval", [(True, 0.1), (False, 15.0)])
def test_progress_redraws_rarely_when_redirected(monkeypatch, tty, interval):
    class Stderr:
        def isatty(self):
            return tty

        def write(self, text):
            pass

        def flush(self):
            pass

    monkeypatch.setattr(fit.sys, "stderr", Stderr())
    bars = Bars(monkeypatch).bars
    run(num_epochs=1, progress=True)
    assert bars[0].mininterval == interval and not bars[0].kwargs["disable"]


def test_the_bar_is_closed_when_training_fails(monkeypatch):
    bars = Bars(monkeypatch).bars
    with pytest.raises(NonFiniteLossError):
        run(Recording({2: math.nan}), progress=True)
    assert bars[0].closed


# --- device -------------------------------------------------------------------------------


def test_minibatches_are_moved_to_the_device():
    inference, _ = run(num_epochs=1, device="meta")
    assert all(c["x"].device.type == "meta" for c in inference.calls)
    inference, _ = run(num_epochs=1, device=None)
    assert all(c["x"].device.type == "cpu" for c in inference.calls)


def test_a_host_minibatch_goes_to_a_gpu_through_pinned_memory():
    """Pinned memory lets the copy be queued (non_blocking) instead of waiting for the GPU.
    A stand-in tensor records the calls, so no GPU is needed."""

    class HostTensor:
        def __init__(self, kind="cpu", pinned=False):
            self.device = torch.device(kind)
            self.pinned = pinned
            self.moves = []

        def pin_memory(self):
            return HostTensor(pinned=True)

        def to(self, *args, **kwargs):
            self.moves.append((args, kwargs))
            return self

    moved = fit._to_device(HostTensor(), "cuda:1")
    assert moved.pinned and moved.moves == [(("cuda:1",), {"non_blocking": True})]
    for x, device in [(HostTensor(), "cpu"), (HostTensor(), None), (HostTensor("meta"), "cuda")]:
        moved = fit._to_device(x, device)
        assert not moved.pinned and moved.moves == [((device,), {})]


# --- the optimizer ------------------------------------------------------------------------


def param(*values, dtype=torch.float64):
    return torch.nn.Parameter(torch.tensor(values, dtype=dtype))


def test_optimizer_defaults_are_the_documented_ones():
    opt = Optimizer([param(0.0)])
    assert isinstance(opt.optimizer, torch.optim.Adam)
    assert opt.learning_rate == 1e-3
    assert (opt.clip_norm, opt.lr_decay, opt.min_learning_rate) == (None, "none", 0.0)
    assert opt.lr_decay_min_epochs == 15 and opt.decaying is False
    assert opt.end_epoch(100, improved=False) is False and opt.learning_rate == 1e-3
    assert not opt.exhausted


def test_plateau_waits_lr_decay_min_epochs_by_default_and_never_stops_at_min_zero():
    opt = Optimizer([param(0.0)], name="sgd", learning_rate=1.0, lr_decay="plateau")
    assert [opt.end_epoch(e, improved=False) for e in range(1, 16)] == [False] * 15
    assert opt.learning_rate == 1.0 and not opt.decaying
    assert opt.end_epoch(16, improved=False) is False and opt.learning_rate == 0.5
    for epoch in range(17, 60):
        assert opt.end_epoch(epoch, improved=True) is False  # decays on, never below 0
    assert opt.learning_rate == 2.0**-44 and not opt.exhausted


def test_plateau_stops_strictly_below_the_minimum():
    opt = Optimizer(
        [param(0.0)],
        name="sgd",
        learning_rate=1.0,
        lr_decay="plateau",
        lr_decay_min_epochs=0,
        min_learning_rate=0.25,
    )
    assert opt.end_epoch(1, improved=False) is False and opt.learning_rate == 0.5
    assert opt.end_epoch(2, improved=True) is False and opt.learning_rate == 0.25
    assert not opt.exhausted, "at the minimum itself training goes on"
    assert opt.end_epoch(3, improved=True) is True and opt.exhausted


def test_without_plateau_decay_the_rate_stays_and_nothing_is_exhausted():
    opt = Optimizer([param(0.0)], name="sgd", learning_rate=0.01, min_learning_rate=0.5)
    assert opt.end_epoch(20, improved=False) is False
    assert opt.learning_rate == 0.01 and not opt.exhausted and not opt.decaying


def test_optimizer_option_errors_name_the_value():
    p = param(0.0)
    with pytest.raises(
        ConfigError,
        match=r"^unknown lr_decay 'cosine'; expected one of: none, plateau, plateau-restore$",
    ):
        Optimizer([p], lr_decay="cosine")
    for bad in (0.0, -1.0):
        with pytest.raises(
            ConfigError, match=rf"^clip_norm must be positive or None, found {bad}$"
        ):
            Optimizer([p], clip_norm=bad)
    assert Optimizer([p], clip_norm=1e-300).clip_norm == 1e-300


@pytest.mark.parametrize("fused", [True, False])
def test_a_repeated_parameter_is_trained_once(fused):
    a, b = param(0.0), param(0.0)
    opt = Optimizer([a, b, a], name="sgd", learning_rate=1.0, fused=fused)
    assert opt.params == [a, b]
    a.grad, b.grad = (
        torch.tensor([2.0], dtype=torch.float64),
        torch.tensor([4.0], dtype=torch.float64),
    )
    opt.step(size=2)
    assert a.item() == -1.0 and b.item() == -2.0
    assert a.grad is None and b.grad is None, "gradients are released after the step"


def test_stray_parameters_are_counted_and_at_most_three_shapes_shown():
    p = param(0.0)
    opt = Optimizer([p])
    opt.check_params([p])  # its own: fine
    stray = [torch.zeros(i + 1, 2) for i in range(4)]
    with pytest.raises(
        ConfigError,
        match=r"^4 parameter\(s\) of shape\(s\) \[\(1, 2\), \(2, 2\), \(3, 2\)\] are used by the "
        r"model or guide but belong to neither module: declare them as nn.Parameter \(or "
        r"PyroParam\) attributes of a component, or pass your own inference object with a "
        r"pyro.optim optimizer$",
    ):
        opt.check_params([p, *stray])


@pytest.mark.parametrize("fused", [True, False])
def test_the_clip_factor_is_clip_grad_norms(fused):
    """min(1, c / (‖g‖ + 1e-6)) on the per-datapoint gradient g (here ‖g‖ = 1e-6: a factor
    of c / 2e-6, exactly)."""
    p = param(0.0, 0.0)
    opt = Optimizer([p], name="sgd", learning_rate=1.0, clip_norm=1e-6, fused=fused)
    g = torch.tensor([0.6e-6, 0.8e-6], dtype=torch.float64)
    p.grad = g * 1000
    opt.step(size=1000)
    torch.testing.assert_close(p.detach(), -g * 0.5, rtol=1e-12, atol=0)


@pytest.mark.parametrize("clip_norm", [None, 10.0])
def test_parameters_without_gradients_are_left_alone(clip_norm):
    a, b = param(1.0), param(2.0)
    opt = Optimizer([a, b], name="sgd", learning_rate=1.0, clip_norm=clip_norm)
    opt.step(size=10)  # no gradient at all: nothing moves, nothing fails
    b.grad = torch.tensor([30.0], dtype=torch.float64)
    opt.step(size=10)
    assert a.item() == 1.0 and b.item() == pytest.approx(-1.0, abs=1e-12)


def test_a_fused_step_follows_a_change_of_data_set_size():
    p = param(0.0)
    opt = Optimizer([p], name="sgd", learning_rate=1.0, fused=True)
    p.grad = torch.tensor([100.0], dtype=torch.float64)
    opt.step(size=100)
    scale = opt.optimizer.grad_scale  # the 1/N goes to the fused kernel as its grad_scale
    assert torch.is_tensor(scale) and scale.item() == 100.0
    assert p.item() == pytest.approx(-1.0, abs=1e-12) and p.grad is None
    p.grad = torch.tensor([100.0], dtype=torch.float64)
    opt.step(size=100)
    assert opt.optimizer.grad_scale is scale, "the scale tensor is made once per size"
    p.grad = torch.tensor([100.0], dtype=torch.float64)
    opt.step(size=10)
    assert p.item() == pytest.approx(-12.0, abs=1e-12)


def test_a_clipped_fused_step_folds_the_scale_in_itself():
    """With clipping the 1/N goes into the clip's multiplication; a grad_scale left from an
    unclipped step must not divide once more."""
    p = param(0.0)
    opt = Optimizer([p], name="sgd", learning_rate=1.0, fused=True)
    p.grad = torch.tensor([100.0], dtype=torch.float64)
    opt.step(size=100)
    opt.clip_norm = 1000.0
    p.grad = torch.tensor([100.0], dtype=torch.float64)
    opt.step(size=100)
    assert opt.optimizer.grad_scale is None and p.item() == pytest.approx(-2.0, abs=1e-12)


def test_state_round_trip_keeps_the_adam_moments_and_the_decay_flag():
    p, q = param(1.0), param(1.0)
    opt = Optimizer([p], learning_rate=0.1, lr_decay="plateau", lr_decay_min_epochs=0)
    p.grad = torch.tensor([5.0], dtype=torch.float64)
    opt.step(size=1)
    opt.end_epoch(1, improved=False)
    state = copy.deepcopy(opt.get_state())  # as saved in a checkpoint
    assert set(state) == {"optimizer", "decaying", "stalled_epochs"} and state["decaying"] is True
    restored = Optimizer([q], learning_rate=0.1, lr_decay="plateau", lr_decay_min_epochs=0)
    q.data.copy_(p.data)
    restored.set_state(state)
    assert restored.decaying is True and restored.learning_rate == 0.05
    for o, x in ((opt, p), (restored, q)):
        x.grad = torch.tensor([-3.0], dtype=torch.float64)
        o.step(size=1)
    assert p.item() == q.item()
    restored.set_state({**state, "decaying": 0})
    assert restored.decaying is False


def test_fusable_needs_a_fused_kernel_and_one_floating_cpu_or_cuda_device():
    cpu = torch.nn.Parameter(torch.zeros(2))
    meta = torch.nn.Parameter(torch.zeros(2, device="meta"))
    integer = torch.nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False)
    assert _fusable(torch.optim.Adam, [cpu]) is True
    assert _fusable(torch.optim.SGD, [cpu, cpu]) is True
    assert _fusable(torch.optim.Adam, []) is False
    assert _fusable(torch.optim.Adam, [meta]) is False
    assert _fusable(torch.optim.Adam, [cpu, meta]) is False
    assert _fusable(torch.optim.Adam, [integer]) is False
    assert _fusable(torch.optim.LBFGS, [cpu]) is False  # no fused implementation
    assert _fusable(dict, [cpu]) is False  # a signature inspect cannot read (ValueError)
    assert _fusable(42, [cpu]) is False  # not callable (TypeError)

    class CudaParameter:  # stands in for a parameter on a GPU (none needed)
        device = torch.device("cuda", 0)

        def is_floating_point(self):
            return True

    assert _fusable(torch.optim.Adam, [CudaParameter(), CudaParameter()]) is True
    assert _fusable(torch.optim.Adam, [CudaParameter(), cpu]) is False


# --- Trace_ELBO ---------------------------------------------------------------------------


def gaussian_model(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def gaussian_guide(x):
    m = pyro.param("m", torch.zeros(len(x)))
    s = pyro.param("s", torch.full((len(x),), 1.5))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(m, s))


def test_trace_elbo_loss_is_minus_the_particle_average_of_log_p_minus_log_q(float64):
    """Closed form for fixed draws: replaying the guide, loss = −mean_k [log p(x, z_k) −
    log q(z_k)]; the returned loss is a detached 0-dim tensor and backward happened."""
    x = torch.tensor([0.5, -1.0, 2.0])
    for num_particles in (1, 3):
        pyro.clear_param_store()
        elbo = Trace_ELBO(num_particles=num_particles)
        pyro.set_rng_seed(3)
        loss = elbo.loss_and_grads(gaussian_model, gaussian_guide, x)
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
        pyro.set_rng_seed(3)
        expected = 0.0
        for _ in range(num_particles):
            guide_trace = pyro.poutine.trace(gaussian_guide).get_trace(x)
            model_trace = pyro.poutine.trace(
                pyro.poutine.replay(gaussian_model, trace=guide_trace)
            ).get_trace(x)
            expected += (model_trace.log_prob_sum() - guide_trace.log_prob_sum()).item()
        assert loss.item() == pytest.approx(-expected / num_particles, rel=1e-12)
        params = [pyro.param(n).unconstrained() for n in ("loc", "m", "s")]
        # differentiable_loss: the same value, and its gradient is the surrogate's
        pyro.set_rng_seed(3)
        differentiable = elbo.differentiable_loss(gaussian_model, gaussian_guide, x)
        assert differentiable.item() == pytest.approx(loss.item(), rel=1e-12)
        for p, g in zip(params, torch.autograd.grad(differentiable, params)):
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)
            p.grad = None


def test_trace_elbo_gradient_matches_the_closed_form(float64):
    """Normal–Normal, one particle, reparameterised (z = m + sε, ε fixed): ∂loss/∂loc =
    −Σ (z − loc), ∂loss/∂m_i = (z_i − loc) + (z_i − x_i) (log q(m + sε; m, s) does not
    depend on m) and ∂loss/∂s_i = ε_i (z_i − loc + z_i − x_i) − 1/s_i (the entropy's)."""
    x = torch.tensor([0.5, -1.0])
    pyro.set_rng_seed(1)
    elbo = Trace_ELBO()
    differentiable = elbo.differentiable_loss(gaussian_model, gaussian_guide, x)
    pyro.set_rng_seed(1)
    guide_trace = pyro.poutine.trace(gaussian_guide).get_trace(x)
    z = guide_trace.nodes["z"]["value"].detach()
    loc, m, s = pyro.param("loc"), pyro.param("m"), pyro.param("s")
    dloc, dm, ds = torch.autograd.grad(
        differentiable, [loc.unconstrained(), m.unconstrained(), s.unconstrained()]
    )
    eps = (z - m.detach()) / s.detach()
    expected = eps * (2 * z - loc.detach() - x) - 1 / s.detach()
    torch.testing.assert_close(ds, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dloc, -(z - loc.detach()).sum().reshape(()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dm, (z - loc.detach()) + (z - x), rtol=1e-12, atol=1e-12)


def test_trace_elbo_without_parameters_returns_the_loss_and_backpropagates_nothing(float64):
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.tensor([0.5, -1.0])
    loss = Trace_ELBO(num_particles=2).loss_and_grads(model, guide, x)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and torch.isfinite(loss)


def test_trace_elbo_backpropagates_only_where_pyro_params_are_traced(float64):
    """As Pyro's Trace_ELBO: without a ``pyro.param`` site in either trace no backward pass
    runs, even when the surrogate depends on a tensor requiring a gradient."""
    w = torch.tensor(0.5, requires_grad=True)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(w, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(w, 1.0))

    x = torch.tensor([0.5, -1.0])
    for elbo in (Trace_ELBO(), pyro.infer.Trace_ELBO()):
        elbo.loss_and_grads(model, guide, x)
        assert w.grad is None


def test_trace_elbo_with_params_but_no_sample_sites_has_nothing_to_backpropagate():
    def model():
        pyro.param("a", torch.tensor(1.0))

    def guide():
        pass

    loss = Trace_ELBO().loss_and_grads(model, guide)
    assert isinstance(loss, torch.Tensor) and loss.item() == 0.0


def test_trace_elbo_retain_graph_keeps_a_shared_graph_for_a_second_pass():
    """A tensor computed once outside model and guide can feed two steps only with
    ``retain_graph=True``, passed on to the backward pass."""
    x = torch.tensor([0.5, -1.0])

    def run_twice(retain_graph):
        pyro.clear_param_store()
        pyro.param("loc", torch.tensor(0.0))
        shared = torch.exp(pyro.param("loc"))  # one graph, used by both steps

        def model(x):
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(shared, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

        elbo = Trace_ELBO(retain_graph=retain_graph)
        for _ in range(2):
            elbo.loss_and_grads(model, gaussian_guide, x)

    run_twice(True)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        run_twice(None)
