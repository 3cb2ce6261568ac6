"""The outer optimizer: per-datapoint gradient, global-norm clipping, plateau halving, and the
model selection it works with."""

import math

import pytest
import torch

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.configs import TrainConfig
from pyro_skipvae.infer import Optimizer
from pyro_skipvae.run import Run

N = 1000


def params_with_grads(*grads):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


@pytest.mark.parametrize("fused", [True, False])
def test_steps_on_the_per_datapoint_gradient(fused):
    """SGD with learning rate η moves by −η g/N: Pyro's loss is the N-scaled sum, the
    papers' loss the minibatch mean."""
    g = torch.tensor([3.0, -4.0])
    (p,) = params_with_grads(g)
    Optimizer([p], name="sgd", learning_rate=0.5, fused=fused).step(size=N)
    assert torch.allclose(p.detach(), -0.5 * g / N)
    assert p.grad is None, "gradients are released after the step"


@pytest.mark.parametrize("fused", [True, False])
def test_clip_norm_is_the_global_norm_of_the_per_datapoint_gradient(fused):
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # per-datapoint norm 5 after /N
    pa, pb = params_with_grads(a * N, b * N)
    Optimizer([pa, pb], name="sgd", learning_rate=1.0, clip_norm=2.5, fused=fused).step(size=N)
    moved = torch.cat([pa.detach(), pb.detach()])
    assert moved.norm().item() == pytest.approx(2.5, rel=1e-5)  # clipped as a whole
    assert torch.allclose(moved, -0.5 * torch.cat([a, b]), rtol=1e-5)  # direction kept
    pa, pb = params_with_grads(a * N, b * N)
    Optimizer([pa, pb], name="sgd", learning_rate=1.0, clip_norm=10.0, fused=fused).step(size=N)
    assert torch.allclose(torch.cat([pa.detach(), pb.detach()]), -torch.cat([a, b]))  # no clip


@pytest.mark.parametrize("clip_norm", [None, 0.3])
@pytest.mark.parametrize("fused", [True, False])
def test_adam_is_torch_adam_on_the_clipped_per_datapoint_gradient(float64, fused, clip_norm):
    """Whatever folds in the 1/N (a fused kernel's grad_scale, or one multiplication with the
    clip), the steps are torch.optim.Adam's on the per-datapoint gradient clipped by
    clip_grad_norm_, to float64 rounding."""
    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2, 3))]
    reference = [torch.nn.Parameter(torch.zeros_like(p)) for p in ours]
    optimizer = Optimizer(ours, learning_rate=0.01, clip_norm=clip_norm, fused=fused)
    assert bool(optimizer.optimizer.param_groups[0]["fused"]) == fused
    torch_adam = torch.optim.Adam(reference, lr=0.01, foreach=False)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for p, r, g in zip(ours, reference, grads):
            p.grad, r.grad = g * N, g.clone()
        optimizer.step(size=N)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(reference, clip_norm)
        torch_adam.step()
        assert all(p.grad is None for p in ours)
    for p, r in zip(ours, reference):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-12, atol=1e-14)


def test_fused_is_the_default_where_torch_has_it():
    p = torch.nn.Parameter(torch.zeros(2))
    assert Optimizer([p]).optimizer.param_groups[0]["fused"]
    assert not Optimizer([p], fused=False).optimizer.param_groups[0].get("fused")


def test_plateau_halving_follows_the_authors_text_script():
    """No decay before lr_decay_min_epochs; after the first stall past it, the rate halves
    every epoch (their `decay` flag stays set) and training stops below min_learning_rate."""
    (p,) = params_with_grads(torch.zeros(1))
    opt = Optimizer(
        [p],
        name="sgd",
        learning_rate=1.0,
        lr_decay="plateau",
        lr_decay_min_epochs=2,
        min_learning_rate=0.2,
    )
    rates, stops = [], []
    for epoch, improved in enumerate([True, False, False, True, True], start=1):
        stops.append(opt.end_epoch(epoch, improved))
        rates.append(opt.learning_rate)
    assert rates == [1.0, 1.0, 0.5, 0.25, 0.125]
    assert stops == [False, False, False, False, True] and opt.exhausted
    # the state (including the decay flag) survives a checkpoint
    restored = Optimizer(
        [p], name="sgd", learning_rate=1.0, lr_decay="plateau", lr_decay_min_epochs=2
    )
    restored.set_state(opt.get_state())
    assert restored.decaying and restored.learning_rate == 0.125


def test_plateau_restore_follows_he_et_al_text_script():
    """He et al. (2019, text.py): past lr_decay_min_epochs, each run of `patience` epochs
    without a better bound halves the rate, asks for the best weights back and resets the
    optimizer's state; the count then starts again. Stops below min_learning_rate."""
    (p,) = params_with_grads(torch.ones(1))
    opt = Optimizer(
        [p],
        name="adam",
        learning_rate=1.0,
        lr_decay="plateau-restore",
        lr_decay_min_epochs=3,
        lr_decay_patience=2,
        min_learning_rate=0.2,
    )
    opt.step(size=1)
    assert opt.optimizer.state  # Adam's moments exist
    improved = [True, False, False, False, True, False, False, False, False]
    rates, restores, stops = [], [], []
    for epoch, better in enumerate(improved, start=1):
        stops.append(opt.end_epoch(epoch, better))
        rates.append(opt.learning_rate)
        restores.append(opt.restore_best)
        if epoch == 4:  # the first halving: a fresh optimizer, as He et al. build one
            assert not opt.optimizer.state
    # epochs 2-3 stall but epoch 3 is not past min_epochs; epoch 4 is the third stall in a row
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert restores == [False, False, False, True, False, False, True, False, True]
    assert stops == [False] * 8 + [True] and opt.exhausted
    # the stall count survives a checkpoint
    opt.end_epoch(10, False)
    restored = Optimizer(
        [p], name="adam", lr_decay="plateau-restore", lr_decay_min_epochs=3, min_learning_rate=0.01
    )
    restored.set_state(opt.get_state())
    assert restored.stalled_epochs == 1 and restored.learning_rate == 0.125
    assert not restored.end_epoch(11, False) and restored.restore_best
    assert restored.learning_rate == 0.0625


def test_plateau_restore_puts_the_best_weights_back():
    model, guide = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt = Optimizer(
        list(model.parameters()) + list(guide.parameters()),
        name="sgd",
        learning_rate=1.0,
        lr_decay="plateau-restore",
        lr_decay_min_epochs=0,
        lr_decay_patience=1,
    )
    run = Run(None, {}, model=model, guide=guide, optimizer=opt, generator=None)
    run.end_epoch({"epoch": 1, "val_elbo": -10.0})
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # an epoch of training that made things worse
    run.end_epoch({"epoch": 2, "val_elbo": -11.0})
    assert opt.learning_rate == 0.5
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


def test_plateau_restore_and_early_stopping_are_exclusive():
    with pytest.raises(ConfigError, match="plateau-restore.*early_stopping_patience=3"):
        TrainConfig(lr_decay="plateau-restore", early_stopping_patience=3)


def test_bad_options():
    (p,) = params_with_grads(torch.zeros(1))
    with pytest.raises(
        ConfigError, match="unknown optimizer 'adagrad'; expected one of: adam, sgd"
    ):
        Optimizer([p], name="adagrad")
    with pytest.raises(ConfigError, match="unknown lr_decay"):
        Optimizer([p], lr_decay="cosine")
    with pytest.raises(ConfigError, match="clip_norm must be positive"):
        Optimizer([p], clip_norm=0.0)


def test_a_parameter_outside_the_modules_is_named():
    (p,) = params_with_grads(torch.zeros(1))
    stray = torch.nn.Parameter(torch.zeros(2, 3))
    with pytest.raises(ConfigError, match=r"shape\(s\) \[\(2, 3\)\].*nn.Parameter"):
        Optimizer([p]).check_params({p, stray})


def test_selection_is_on_the_validation_bound_else_the_last_epoch():
    run = Run(None, {}, model=None, guide=None, optimizer=None, generator=None)
    improved = [run.select({"epoch": e, "val_elbo": v}) for e, v in enumerate([-10, -5, -7, -6], 1)]
    assert improved == [True, True, False, False]
    assert [r["selected"] for r in run.history] == [1, 2, 2, 2]
    # without validation data every epoch is taken: selecting on the β-weighted training
    # objective would favour the early epochs of KL warm-up
    run = Run(None, {}, model=None, guide=None, optimizer=None, generator=None)
    records = [{"epoch": e, "train_elbo": v} for e, v in enumerate([-90.0, -95.0, -99.0], 1)]
    assert all(run.select(r) for r in records)
    assert run.history[-1]["selected"] == 3


@pytest.mark.parametrize("lr_decay", ["plateau", "plateau-restore"])
def test_sgd_recipe_with_decay_trains_and_resumes_exactly(mnist, tiny_options, tmp_path, lr_decay):
    options = dict(
        optimizer="sgd",
        learning_rate=1.0,
        clip_norm=5.0,
        lr_decay=lr_decay,
        lr_decay_min_epochs=0,
        lr_decay_patience=1,
        batch_size=32,
        binarize="dynamic",
        kl_warmup_epochs=1,
    )

    def run(out, num_epochs, resume=False):
        vae = SkipVAE(mnist.data_shape, seed=0, **tiny_options)
        return vae.fit(
            mnist.train, val=mnist.val, num_epochs=num_epochs, run_dir=out, resume=resume, **options
        )

    full = run(tmp_path / "full", 4)
    assert all(math.isfinite(r["val_elbo"]) for r in full)
    assert full[-1]["val_elbo"] > full[0]["val_elbo"]
    assert full[0]["learning_rate"] == 1.0
    # epoch 3 stalls: the halving (with plateau-restore, epoch 2's weights put back, read
    # from best.pt by the resumed run) falls after the resume below, so resuming covers it
    assert [r["learning_rate"] for r in full] == [1.0, 1.0, 1.0, 0.5]
    assert full[2]["val_elbo"] < full[1]["val_elbo"]
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 4, resume=True)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in resumed] == [strip(r) for r in full]
