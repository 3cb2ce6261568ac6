"""The named parts ``SkipVAE.fit`` is composed of: the loop's inputs (``prepare_data``,
``FitData``, ``Validation``), the run's callbacks (``Run.end_epoch``, ``Run.finished``) and the
inference builders (``build_elbo``, ``check_inference``). Each with known answers; the
composition itself is exercised by test_fit.py, test_training_loop.py and test_old_runs.py."""

import math

import pytest
import torch
from pyro.infer import RenyiELBO

from pyro_skipvae.errors import ConfigError
from pyro_skipvae.infer.elbos import PerDatapointBound, build_elbo, check_inference
from pyro_skipvae.infer.fit import FitData, Validation, prepare_data
from pyro_skipvae.infer.optim import Optimizer
from pyro_skipvae.models import LIKELIHOODS
from pyro_skipvae.run import Run


def in_memory_run(patience=None, not_before=0.0):
    net = torch.nn.Linear(2, 2)
    return Run(
        None,
        {},
        model=net,
        guide=torch.nn.Linear(2, 2),
        optimizer=Optimizer(list(net.parameters()), learning_rate=1e-3),
        generator=torch.Generator().manual_seed(0),
        patience=patience,
        not_before=not_before,
    )


@pytest.mark.parametrize(
    "not_before,stops", [(0.0, [False, False, False, True]), (5.0, [False] * 4)]
)
def test_end_epoch_selects_records_the_rate_and_stops_after_patience(not_before, stops):
    run = in_memory_run(patience=2, not_before=not_before)
    scores = [-10.0, -9.0, -9.5, -9.6]  # best at epoch 2, then two epochs without improvement
    records = [{"epoch": e, "val_elbo": v} for e, v in enumerate(scores, 1)]
    assert not run.finished()
    assert [run.end_epoch(r) for r in records] == stops
    assert [r["selected"] for r in records] == [1, 2, 2, 2]
    assert all(r["learning_rate"] == 1e-3 for r in records)
    assert run.history == records and run.best_epoch == 2
    # a resumed run in this state has nothing left to train exactly when it stopped
    assert run.finished() == stops[-1]


def test_end_epoch_without_patience_never_stops():
    run = in_memory_run()
    assert not any(run.end_epoch({"epoch": e, "val_elbo": -float(e)}) for e in range(1, 6))
    assert not run.finished()


@pytest.fixture
def seven_active_units(monkeypatch):
    """Validation's active-unit count stubbed to 7: these tests check the other metrics and
    that the count is reported (test_fit.py checks the count itself)."""
    monkeypatch.setattr(Validation, "active_units", lambda self: 7)


def stub_inference(metrics):
    """An inference object whose own validation returns fixed numbers (known answers)."""

    class Stub:
        def evaluate_metrics(self, data, *, batch_size):
            return dict(metrics, points=data.shape[0], batch_size=batch_size)

    return Stub()


def test_validation_uses_the_inference_and_adds_perplexities_per_token(seven_active_units):
    data = torch.zeros(2, 7, dtype=torch.long)
    tokens = torch.tensor([3, 5])  # 4 tokens per sequence on average
    inference = stub_inference({"elbo": -20.0, "elbo_amortized": -30.0})
    result = Validation(inference, None, None, data, batch_size=10, tokens=tokens)()
    assert result["points"] == 2 and result["batch_size"] == 10
    assert result["ppl"] == pytest.approx(math.exp(20.0 / 4))
    assert result["ppl_amortized"] == pytest.approx(math.exp(30.0 / 4)) and result["au"] == 7
    without_tokens = Validation(inference, None, None, data, batch_size=10)()
    assert "ppl" not in without_tokens and without_tokens["elbo"] == -20.0


def test_prepare_data_for_images():
    likelihood = LIKELIHOODS.build("bernoulli", (1, 2, 2))
    # synthetic intensities in [0, 1] (a shape and binarisation check, not a data set)
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    data = prepare_data(
        x, x[:3], likelihood, binarization="dynamic", batch_size=2, eval_batch_size=500
    )
    assert isinstance(data, FitData) and not data.sequences
    assert torch.equal(data.train, x)  # binarised afresh every epoch by the loop
    assert set(data.val.unique().tolist()) <= {0.0, 1.0}  # binarised once
    assert data.eval_batch_size % 2 == 0
    options = data.loop_options()
    assert options["batches"] is None and options["collate"] is None
    binary = options["transform"](x, torch.Generator().manual_seed(1))
    assert binary.shape == x.shape and set(binary.unique().tolist()) <= {0.0, 1.0}
    assert (
        prepare_data(
            x, None, likelihood, binarization="threshold", batch_size=2, eval_batch_size=4
        ).validation(stub_inference({}), None, None)
        is None
    )


def test_build_elbo_wraps_nonlinear_bounds_and_builds_names():
    assert isinstance(build_elbo(RenyiELBO(alpha=0.5)), PerDatapointBound)
    assert build_elbo("trace", num_particles=3).num_particles == 3
    with pytest.raises(ConfigError, match="elbo"):
        build_elbo("no-such-elbo")


def test_check_inference_needs_an_optimizer():
    with pytest.raises(ConfigError, match="`optim` attribute"):
        check_inference(object())
    inference = stub_inference({})
    inference.optim = None
    assert check_inference(inference) is inference


class ModeRecorder(torch.nn.Module):
    """A module that records whether it was in training mode each time it was called."""

    def __init__(self):
        super().__init__()
        self.dropout = torch.nn.Dropout(0.5)
        self.seen = []

    def forward(self, *args, **kwargs):
        self.seen.append((self.training, self.dropout.training))


def test_validation_of_an_amortized_fit_scores_the_elbo_and_kl_in_eval_mode(
    monkeypatch, seven_active_units
):
    """Without the inference's own evaluate_metrics: evaluate_elbo on the validation data at
    the evaluation batch size, model and guide in eval() mode meanwhile (restored after),
    reporting exactly elbo and kl."""
    from pyro_skipvae.infer import fit

    model, guide, data = ModeRecorder(), ModeRecorder(), torch.zeros(6, 2)
    calls = []

    def fake_evaluate_elbo(m, g, x, *, batch_size):
        calls.append((m, g, x, batch_size))
        m(), g()
        return {"elbo": -12.5, "kl": 3.25, "recon": -9.25}

    monkeypatch.setattr(fit, "evaluate_elbo", fake_evaluate_elbo)
    result = Validation(object(), model, guide, data, batch_size=4)()
    assert result == {"elbo": -12.5, "kl": 3.25, "au": 7}
    assert len(calls) == 1
    m, g, x, batch_size = calls[0]
    assert m is model and g is guide and x is data and batch_size == 4
    assert model.seen == [(False, False)] and guide.seen == [(False, False)]
    assert model.training and guide.training and model.dropout.training


def padded(rows, width):
    """Synthetic token sequences (ids ≥ 4, then pad id 0 up to ``width``)."""
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, n in enumerate(rows):
        out[i, :n] = torch.arange(4, 4 + n)
    return out


def test_prepare_data_for_sequences_batches_by_length_and_trims_the_padding(seven_active_units):
    likelihood = LIKELIHOODS.build("categorical", (9,), num_categories=20, pad_index=0)
    lengths = [2, 9, 3, 8, 2, 9, 3, 8]
    train, val = padded(lengths, 9), padded([5, 2, 7], 9)
    data = prepare_data(
        train, val, likelihood, binarization="none", batch_size=2, eval_batch_size=4
    )
    assert data.sequences and data.lengths.tolist() == lengths
    assert data.val_tokens.sum() == 14 and data.val.shape == (3, 9)
    options = data.loop_options()
    assert options["transform"] is None
    epoch = options["batches"](torch.Generator().manual_seed(0))
    # sentences of equal length share a minibatch, in a random order of minibatches
    assert sorted(sorted(data.lengths[b].tolist()) for b in epoch) == [
        [2, 2],
        [3, 3],
        [8, 8],
        [9, 9],
    ]
    for index in epoch:
        x = options["collate"](train, index)
        assert x.shape == (2, int(data.lengths[index].max()))
        assert torch.equal(x, train[index][:, : x.shape[1]])
    inference, model, guide = stub_inference({"elbo": -10.0}), object(), object()
    validation = data.validation(inference, model, guide)
    assert validation.inference is inference and validation.model is model
    assert validation.guide is guide and validation.data is data.val
    assert validation.tokens is data.val_tokens and validation.batch_size == 4
    # the whole validation set's tokens: 14 over 3 sentences
    assert validation()["ppl"] == pytest.approx(math.exp(10.0 / (14 / 3)))


@pytest.mark.parametrize("binarization", ["threshold", "none"])
def test_only_dynamic_binarisation_transforms_each_epoch(binarization):
    likelihood = LIKELIHOODS.build("bernoulli", (1, 2, 2))
    x = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(1, 1, 2, 2).expand(4, 1, 2, 2)
    data = prepare_data(
        x, None, likelihood, binarization=binarization, batch_size=2, eval_batch_size=4
    )
    assert data.loop_options()["transform"] is None


def test_dynamic_binarisation_draws_from_the_loop_generator_alone():
    """A resumed run restores the loop's generator: the epoch's binarisation must come from
    it, not from the global RNG."""
    likelihood = LIKELIHOODS.build("bernoulli", (1, 4, 4))
    # synthetic intensities in [0, 1] (a reproducibility check, not a data set)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    transform = prepare_data(
        x, None, likelihood, binarization="dynamic", batch_size=2, eval_batch_size=4
    ).loop_options()["transform"]
    torch.manual_seed(0)
    first = transform(x, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    assert torch.equal(transform(x, torch.Generator().manual_seed(5)), first)
    assert not torch.equal(transform(x, torch.Generator().manual_seed(6)), first)
