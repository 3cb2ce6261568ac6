"""``skipvae fit``: map the flags to the library's configuration, fit, print a summary.

Every option value and combination is checked by the library
(:class:`pyro_skipvae.configs.TrainConfig`, :class:`~pyro_skipvae.SkipVAE`), which this
command asks before it loads any data, so ``skipvae fit`` and a Python user get the same
error; the flags' types (ranges, choices) only parse. The one check left here is about this
command itself: ``--nproc`` relaunches it under torchrun, which cannot nest.

``skipvae fit --config run.yaml`` (or ``.json``) sets any of ``fit``'s options from a file,
keys spelled as the flags (``latent_dim`` or ``latent-dim``; ``decoder_options`` as a mapping);
flags given on the command line override the file (``--*-option`` pairs key by key).
"""

import logging
import os
import shlex
import subprocess
import sys

import click

from .options import (
    BINARIZATIONS,
    COMPILE_MODES,
    COMPONENTS,
    CONFIG_OPTION,
    DATA_DIR_OPTION,
    DEVICE_OPTION,
    IMAGE_DATASETS,
    LR_DECAYS,
    OPTIMIZERS,
    PLUGIN,
    POSITIVE,
    POSITIVE_FLOAT,
    REFINE_COORDINATES,
    REFINE_KL,
    SEMI_AMORTIZED_MODES,
    TEXT_DATASETS,
    TEXT_DEFAULT,
    IntList,
    component_options,
    handle_errors,
    merged_options,
    precision_option,
)

logger = logging.getLogger(__name__)

#: the flags that set ``inference_options`` (semi-amortized refinement), flag → option
REFINEMENT_OPTIONS = {
    "sa_mode": "mode",
    "num_refine_steps": "num_refine_steps",
    "refine_lr": "refine_lr",
    "refine_momentum": "refine_momentum",
    "refine_max_grad_norm": "refine_max_grad_norm",
    "refine_coordinates": "refine_coordinates",
    "refine_kl": "refine_kl",
}
#: flags that are fields of TrainConfig under the same name
TRAIN_FIELDS = (
    "num_epochs",
    "batch_size",
    "optimizer",
    "learning_rate",
    "clip_norm",
    "lr_decay",
    "lr_decay_min_epochs",
    "lr_decay_patience",
    "min_learning_rate",
    "early_stopping_patience",
    "kl_warmup_epochs",
    "kl_start",
    "kl_cycle_epochs",
    "elbo",
    "num_particles",
    "inference",
    "seed",
    "init_from",
)
MODEL_KINDS = ("decoder", "encoder", "prior", "likelihood")


class KeepsArguments(click.Command):
    """A command that keeps its raw arguments in ``ctx.meta["arguments"]``, so that
    ``fit --nproc N`` can relaunch the same command line under torchrun."""

    def parse_args(self, ctx, args):
        ctx.meta["arguments"] = list(args)
        return super().parse_args(ctx, args)


def _without_option(arguments, name):
    """``arguments`` without ``name VALUE`` / ``name=VALUE``."""
    kept, skip = [], False
    for arg in arguments:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


@click.command(cls=KeepsArguments)
@CONFIG_OPTION
@click.option(
    "--dataset",
    default="mnist",
    help=f"{' | '.join(IMAGE_DATASETS + TEXT_DATASETS)} | PATH.pt | PATH.npy",
)
@DATA_DIR_OPTION
@click.option(
    "--download", is_flag=True, help="Fetch MNIST / Fashion-MNIST if not found (only those)."
)
@click.option(
    "--max-length",
    type=POSITIVE,
    default=None,
    help="Text: drop sentences of more than this many words from every split  [default: keep all]",
)
@click.option(
    "--decoder",
    default=None,
    help=COMPONENTS["decoder"] + PLUGIN + TEXT_DEFAULT.format("lstm", "mlp"),
)
@component_options("decoder")
@click.option(
    "--encoder",
    default=None,
    help=COMPONENTS["encoder"] + PLUGIN + TEXT_DEFAULT.format("lstm", "mlp"),
)
@component_options("encoder")
@click.option(
    "--guide",
    default="normal",
    help=COMPONENTS["guide"] + PLUGIN + " (normal: diagonal Gaussian q; bn-normal: its means "
    "batch-normalised to a fixed scale, BN-VAE, --guide-option gamma=γ; flow: q through an "
    "autoregressive flow)",
)
@component_options("guide")
@click.option(
    "--skip/--no-skip",
    default=True,
    help="Feed z into every decoder layer (Skip-VAE) or only the first (VAE).",
)
@click.option("--latent-dim", type=POSITIVE, default=32)
@click.option(
    "--hidden-dims",
    type=IntList(),
    default=None,
    help="Hidden widths of the MLP encoder and decoder  [default: 1024,1024]",
)
@click.option("--prior", default=None, help=COMPONENTS["prior"] + PLUGIN + "  [default: normal]")
@component_options("prior")
@click.option(
    "--likelihood",
    default=None,
    help=COMPONENTS["likelihood"]
    + PLUGIN
    + TEXT_DEFAULT.format("categorical over the vocabulary", "bernoulli"),
)
@component_options("likelihood")
@click.option(
    "--elbo",
    default="trace",
    help=COMPONENTS["elbo"] + PLUGIN + " (trace: Monte-Carlo KL; mean-field: analytic KL; "
    "renyi and iwae: per-datapoint bounds with --num-particles; free-bits: "
    "--elbo-option free_bits=λ nats per dimension)",
)
@click.option(
    "--num-particles", type=POSITIVE, default=1, help="Samples per datapoint of the ELBO."
)
@click.option(
    "--renyi-alpha",
    type=float,
    default=None,
    help="With --elbo renyi: the order α of the bound (α = 0: IWAE)  [default: 0.5]",
)
@component_options("elbo")
@click.option(
    "--inference",
    default="svi",
    help=COMPONENTS["inference"] + PLUGIN + " (svi: amortized SVI; semi-amortized: refine each "
    "minibatch's q with SGD (SA-VAE); aggressive: encoder-only steps before each model step "
    "until the validation MI stops rising, He et al. 2019)",
)
@component_options("inference")
@click.option(
    "--sa-mode",
    type=click.Choice(SEMI_AMORTIZED_MODES),
    default=None,
    help="Semi-amortized: how the encoder learns  [default: end-to-end]",
)
@click.option(
    "--num-refine-steps",
    type=POSITIVE,
    default=None,
    help="Semi-amortized: refinement steps K per minibatch  [default: 20]",
)
@click.option(
    "--refine-lr",
    type=POSITIVE_FLOAT,
    default=None,
    help="Semi-amortized: step size of the refinement  [default: 1.0]",
)
@click.option(
    "--refine-momentum",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=None,
    help="Semi-amortized: momentum of the refinement  [default: 0.5]",
)
@click.option(
    "--refine-max-grad-norm",
    type=POSITIVE_FLOAT,
    default=None,
    help="Semi-amortized: clip of each refinement gradient's norm  [default: 5.0]",
)
@click.option(
    "--refine-coordinates",
    type=click.Choice(REFINE_COORDINATES),
    default=None,
    help="Semi-amortized: refine (μ, log σ²), as the authors, or (μ, log σ)  [default: log-variance]",
)
@click.option(
    "--refine-kl",
    type=click.Choice(REFINE_KL),
    default=None,
    help="Semi-amortized: the refinement's KL, in closed form or one-sample Monte Carlo; "
    "objective: ascend the training objective itself (the rule before commit a07db1e, to "
    "resume runs trained under it)  [default: analytic]",
)
@click.option("--num-epochs", type=POSITIVE, default=10)
@click.option("--batch-size", type=POSITIVE, default=50)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adam")
@click.option("--learning-rate", type=POSITIVE_FLOAT, default=1e-3)
@click.option(
    "--clip-norm",
    type=POSITIVE_FLOAT,
    default=None,
    help="Clip the global norm of the per-datapoint gradient (the authors: 5)  [default: no clipping]",
)
@click.option(
    "--lr-decay",
    type=click.Choice(LR_DECAYS),
    default="none",
    help="plateau: halve the learning rate every epoch once validation stalls (the SA-VAE "
    "text recipe); plateau-restore: halve it and restore the best weights each time "
    "validation stalls for --lr-decay-patience epochs (He et al. 2019's text recipe).",
)
@click.option(
    "--lr-decay-min-epochs",
    type=click.IntRange(min=0),
    default=15,
    help="No decay before this epoch.",
)
@click.option(
    "--lr-decay-patience",
    type=click.IntRange(min=1),
    default=2,
    help="With --lr-decay plateau-restore: epochs without a better validation bound before "
    "each halving.",
)
@click.option(
    "--min-learning-rate",
    type=click.FloatRange(min=0),
    default=0.0,
    help="With --lr-decay plateau or plateau-restore: stop once the learning rate falls "
    "below this.",
)
@click.option(
    "--early-stopping-patience",
    type=click.IntRange(min=1),
    default=None,
    help="Stop once this many epochs in a row have not improved the validation bound  "
    "[default: train for --num-epochs]",
)
@click.option(
    "--init-from",
    metavar="PATH",
    default=None,
    help="Start from the weights of this run folder (its best.pt) or weights file, e.g. to "
    "fine-tune a converged amortized model semi-amortized; the model options must match it.  "
    "[default: fresh weights]",
)
@click.option(
    "--kl-warmup-epochs",
    type=click.FloatRange(min=0),
    default=10.0,
    help="Epochs over which β rises linearly from --kl-start to 1 (0: no warm-up).",
)
@click.option("--kl-start", type=click.FloatRange(min=0, max=1, min_open=True), default=0.1)
@click.option(
    "--kl-cycle-epochs",
    type=POSITIVE_FLOAT,
    default=None,
    help="Cyclical annealing: repeat the warm-up every this many epochs (Fu et al. 2019)  "
    "[default: warm up once]",
)
@click.option(
    "--binarize",
    type=click.Choice(BINARIZATIONS),
    default=None,
    help="[default: dynamic for mnist, fashion-mnist and omniglot; none for binarized-mnist "
    "(binary already) and files]",
)
@click.option(
    "--train-size", type=POSITIVE, default=None, help="Use only the first N training examples."
)
@click.option(
    "--val-size", type=POSITIVE, default=None, help="Use only the first N validation examples."
)
@click.option("--seed", type=int, default=0)
@DEVICE_OPTION
@precision_option("32", "32")
@click.option(
    "--compile",
    "compile_mode",
    type=click.Choice(COMPILE_MODES),
    is_flag=False,
    flag_value="default",
    default=None,
    help="torch.compile the encoder and decoder networks (alone: mode default; "
    "reduce-overhead: also CUDA graphs, CUDA only)  [default: not compiled]",
)
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory [default: runs/<dataset>-<skip-vae|vae|skip-sa-vae|sa-vae>-z<latent-dim>]",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option(
    "--logger",
    "loggers",
    metavar="NAME",
    multiple=True,
    help="Live curves besides metrics.jsonl and train.log (repeatable): tensorboard writes "
    "event files to OUT/tensorboard (pip install 'pyro-skipvae[tensorboard]').",
)
@click.option(
    "--log-every-n-steps",
    type=POSITIVE,
    default=50,
    help="With --logger: the per-step curves every this many steps.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--nproc",
    type=POSITIVE,
    default=1,
    help="Data-parallel training with N processes on this machine: relaunches this command "
    "under torchrun (one GPU per process with --device cuda). Under torchrun, omit it.",
)
@click.pass_context
@handle_errors
def fit(ctx, **o):
    """Fit a (skip-)VAE and write config.json, checkpoint.pt, best.pt and metrics.jsonl.

    Data-parallel: `torchrun --nproc_per_node N $(which skipvae) fit ...` or `--nproc N`."""
    from pyro_skipvae.infer import distributed

    if o["nproc"] > 1:
        sys.exit(relaunch(ctx, o["nproc"]))
    with distributed.process_group(o["device"]):
        _fit(ctx, o)


def relaunch(ctx, nproc: int) -> int:
    """Run this command line again under torchrun with ``nproc`` processes; its exit status."""
    from pyro_skipvae.errors import ConfigError
    from pyro_skipvae.infer import distributed

    if distributed.launched_world_size() > 1:
        raise ConfigError(
            "--nproc launches torchrun itself; this process already runs under a launcher "
            f"(WORLD_SIZE={distributed.launched_world_size()}), so omit --nproc"
        )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pyro_skipvae.cli.main",
        *(["--verbose"] if ctx.parent.params.get("verbose") else []),
        "fit",
        *_without_option(ctx.meta["arguments"], "--nproc"),
    ]
    return subprocess.run(command).returncode


def train_options(ctx, o) -> dict:
    """The keyword arguments of :meth:`SkipVAE.fit <pyro_skipvae.SkipVAE.fit>` (the fields
    of :class:`~pyro_skipvae.configs.TrainConfig`) that the flags set."""
    from pyro_skipvae.data import default_binarization

    elbo_options = merged_options(ctx, o, "elbo")
    if o["renyi_alpha"] is not None:  # --renyi-alpha is elbo_options['alpha']
        elbo_options["alpha"] = o["renyi_alpha"]
    refinement = {option: o[flag] for flag, option in REFINEMENT_OPTIONS.items()}
    inference_options = merged_options(ctx, o, "inference")  # the --sa-* flags win
    inference_options.update({k: v for k, v in refinement.items() if v is not None})
    return {
        **{name: o[name] for name in TRAIN_FIELDS},
        "elbo_options": elbo_options,
        "inference_options": inference_options,
        "binarize": o["binarize"] or default_binarization(o["dataset"]),
    }


def default_run_dir(dataset: str, o) -> str:
    """``runs/<dataset>-<skip-vae|vae|skip-sa-vae|sa-vae>-z<latent-dim>``."""
    kind = ("skip-" if o["skip"] else "") + (
        "sa-vae" if o["inference"] == "semi-amortized" else "vae"
    )
    return os.path.join("runs", f"{dataset}-{kind}-z{o['latent_dim']}")


def _fit(ctx, o):
    from pyro_skipvae import SkipVAE
    from pyro_skipvae.configs import TrainConfig, resolve_components
    from pyro_skipvae.data import load_dataset
    from pyro_skipvae.infer import distributed
    from pyro_skipvae.lock import locked
    from pyro_skipvae.run import train_log

    main = distributed.is_main()
    if not main:  # only rank 0 logs, shows progress and prints
        logging.getLogger().setLevel(logging.WARNING)
    train = train_options(ctx, o)
    TrainConfig.from_options(train)  # the library's checks, before the data are loaded
    splits = load_dataset(
        o["dataset"],
        data_dir=o["data_dir"],
        train_size=o["train_size"],
        val_size=o["val_size"],
        download=o["download"],
        max_length=o["max_length"],
    )
    given = {kind: o[kind] for kind in MODEL_KINDS}
    given.update({f"{kind}_options": merged_options(ctx, o, kind) for kind in MODEL_KINDS})
    run_dir = o["run_dir"] or default_run_dir(splits.name, o)
    with locked(run_dir, "skipvae fit", enabled=main), train_log(run_dir):
        logger.info("skipvae fit %s", " ".join(map(shlex.quote, ctx.meta["arguments"])))
        vae = SkipVAE(
            splits.data_shape,
            latent_dim=o["latent_dim"],
            hidden_dims=o["hidden_dims"],
            skip=o["skip"],
            **resolve_components(splits.vocabulary, **given),
            guide=o["guide"],
            guide_options=merged_options(ctx, o, "guide"),
            device=o["device"],
            seed=o["seed"],
            compile=o["compile_mode"] or False,
            precision=o["precision"],
        )
        history = vae.fit(
            splits.train,
            val=splits.val,
            run_dir=run_dir,
            resume=o["resume"],
            progress=not o["quiet"] and main,
            loggers=o["loggers"],
            log_every_n_steps=o["log_every_n_steps"],
            run_info={
                "dataset": splits.name,
                **{k: o[k] for k in ("train_size", "val_size", "max_length")},
            },
            **train,
        )
    if main:
        click.echo(summary(history, o["inference"]))
        click.echo(f"results in {run_dir}")


def summary(history: list[dict], inference: str) -> str:
    """The last epoch's bounds and the selected epoch (and, for a semi-amortized run, the
    amortized bound and the gap). A fit always has an epoch: the library refuses
    ``num_epochs`` < 1 and empty training data."""
    last = history[-1]
    best = next(r for r in history if r["epoch"] == last["selected"])
    bound = "refined validation ELBO" if inference == "semi-amortized" else "validation ELBO"
    lines = [
        f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.2f}, {bound} "
        f"{last['val_elbo']:.2f} nats, KL {last['val_kl']:.2f} nats"
        + (f", perplexity bound {last['val_ppl']:.2f}" if "val_ppl" in last else "")
        + f" (selected: epoch {best['epoch']}, {best['val_elbo']:.2f}; "
        f"{sum(r['seconds'] for r in history):.0f} s)"
    ]
    if "val_elbo_amortized" in last:
        lines.append(
            f"amortized validation ELBO {last['val_elbo_amortized']:.2f} nats, KL "
            f"{last['val_kl_amortized']:.2f} nats (amortization gap "
            f"{last['val_amortization_gap']:.2f} nats)"
        )
    return "\n".join(lines)
