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


def stub_inference(metrics):
    """An inference object whose own validation returns fixed numbers (known answers)."""

    class Stub:
        def evaluate_metrics(self, data, *, batch_size):
            return dict(metrics, points=data.shape[0], batch_size=batch_size)

    return Stub()


def test_validation_uses_the_inference_and_adds_perplexities_per_token():
    data = torch.zeros(2, 7, dtype=torch.long)
    tokens = torch.tensor([3, 5])  # 4 tokens per sequence on average
    inference = stub_inference({"elbo": -20.0, "elbo_amortized": -30.0})
    result = Validation(inference, None, None, data, batch_size=10, tokens=tokens)()
    assert result["points"] == 2 and result["batch_size"] == 10
    assert result["ppl"] == pytest.approx(math.exp(20.0 / 4))
    assert result["ppl_amortized"] == pytest.approx(math.exp(30.0 / 4))
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
