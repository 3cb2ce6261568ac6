"""The ``skipvae`` command: parsing and printing only; the work happens in pyro_skipvae.

Exit status: 0 success, 1 runtime failure (bad data, corrupt files, NaN loss), 2 usage
error (bad option values, a run directory holding another configuration), 130 interrupted.
Errors print one line, ``error: …``; set ``SKIPVAE_DEBUG=1`` to see the traceback.
"""

import functools
import logging
import os
import sys
import traceback

import click

from pyro_skipvae import SkipVAE
from pyro_skipvae.data import BINARIZATIONS, IMAGE_DATASETS, load_dataset
from pyro_skipvae.diagnostics import format_table
from pyro_skipvae.errors import ConfigError, SkipVAEError
from pyro_skipvae.evaluation import compare_runs, diagnose_run
from pyro_skipvae.infer import ELBOS, INFERENCES, SEMI_AMORTIZED_MODES
from pyro_skipvae.models import DECODERS, LIKELIHOODS, PRIORS


def _fail(message: str, status: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def handle_errors(command):
    """Turn the library's typed errors into one line on stderr and an exit status."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as e:
            _fail(str(e), 2)
        except SkipVAEError as e:
            _fail(str(e), 1)
        except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
            sys.stderr.close()
            sys.exit(0)
        except KeyboardInterrupt:
            _fail(
                "interrupted; the last completed epoch's checkpoint is intact (use --resume)", 130
            )
        except Exception as e:  # a bug or an environment failure: still no traceback by default
            if os.environ.get("SKIPVAE_DEBUG"):
                traceback.print_exc()
            _fail(f"unexpected {type(e).__name__}: {e} (set SKIPVAE_DEBUG=1 for the traceback)", 1)

    return wrapper


class IntList(click.ParamType):
    """A comma-separated list of positive integers, e.g. ``1024,1024``."""

    name = "INTS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            widths = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            self.fail(
                f"expected comma-separated integers such as 1024,1024, found {value!r}", param, ctx
            )
        if min(widths) < 1:
            self.fail(f"expected positive widths, found {value!r}", param, ctx)
        return widths


POSITIVE = click.IntRange(min=1)
# Options shared by several commands, declared once so their defaults and help agree.
DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder with the data sets [default: $SKIPVAE_DATA_DIR, else ../shared/data]",
)
DEVICE_OPTION = click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log every epoch's metrics.")
@click.version_option(package_name="pyro-skipvae")
def cli(verbose):
    """Collapse-resistant VAEs on Pyro: fit and measure generative skip models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@cli.command()
@click.option(
    "--dataset", default="mnist", help=f"{' | '.join(IMAGE_DATASETS)} | PATH.pt | PATH.npy"
)
@DATA_DIR_OPTION
@click.option("--decoder", type=click.Choice(DECODERS.names()), default="mlp")
@click.option(
    "--skip/--no-skip",
    default=True,
    help="Feed z into every decoder layer (Skip-VAE) or only the first (VAE).",
)
@click.option("--latent-dim", type=POSITIVE, default=32)
@click.option(
    "--hidden-dims",
    type=IntList(),
    default="1024,1024",
    help="Hidden widths of encoder and decoder.",
)
@click.option("--prior", type=click.Choice(PRIORS.names()), default="normal")
@click.option("--likelihood", type=click.Choice(LIKELIHOODS.names()), default="bernoulli")
@click.option(
    "--elbo",
    type=click.Choice(ELBOS.names()),
    default="trace",
    help="trace: Trace_ELBO (Monte-Carlo KL); mean-field: TraceMeanField_ELBO (analytic KL).",
)
@click.option(
    "--inference",
    type=click.Choice(INFERENCES.names()),
    default="svi",
    help="svi: amortized SVI; semi-amortized: refine each minibatch's q with SGD (SA-VAE).",
)
@click.option(
    "--num-refine-steps",
    type=POSITIVE,
    default=None,
    help="Semi-amortized: refinement steps K per minibatch  [default: 20]",
)
@click.option(
    "--refine-lr",
    type=click.FloatRange(min=0, min_open=True),
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
    "--sa-mode",
    type=click.Choice(SEMI_AMORTIZED_MODES),
    default=None,
    help="Semi-amortized: how the encoder learns  [default: end-to-end]",
)
@click.option("--num-epochs", type=POSITIVE, default=10)
@click.option("--batch-size", type=POSITIVE, default=50)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-3)
@click.option(
    "--clip-norm",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Clamp every gradient element to ±this (ClippedAdam) [default: no clipping]",
)
@click.option(
    "--kl-warmup-epochs",
    type=click.FloatRange(min=0),
    default=10.0,
    help="Epochs over which β rises linearly from --kl-start to 1 (0: no warm-up).",
)
@click.option("--kl-start", type=click.FloatRange(min=0, max=1, min_open=True), default=0.1)
@click.option(
    "--binarize",
    type=click.Choice(BINARIZATIONS),
    default=None,
    help="[default: dynamic for image data sets, none for files]",
)
@click.option(
    "--train-size", type=POSITIVE, default=None, help="Use only the first N training examples."
)
@click.option(
    "--val-size", type=POSITIVE, default=None, help="Use only the first N validation examples."
)
@click.option("--seed", type=int, default=0)
@DEVICE_OPTION
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory [default: runs/<dataset>-<skip-vae|vae|skip-sa-vae|sa-vae>-z<latent-dim>]",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def fit(
    dataset,
    data_dir,
    decoder,
    skip,
    latent_dim,
    hidden_dims,
    prior,
    likelihood,
    elbo,
    inference,
    num_refine_steps,
    refine_lr,
    refine_momentum,
    sa_mode,
    num_epochs,
    batch_size,
    learning_rate,
    clip_norm,
    kl_warmup_epochs,
    kl_start,
    binarize,
    train_size,
    val_size,
    seed,
    device,
    run_dir,
    resume,
    quiet,
):
    """Fit a (skip-)VAE and write config.json, checkpoint.pt, best.pt and metrics.jsonl."""
    inference_options = {
        key: value
        for key, value in [
            ("num_refine_steps", num_refine_steps),
            ("refine_lr", refine_lr),
            ("refine_momentum", refine_momentum),
            ("mode", sa_mode),
        ]
        if value is not None
    }
    if inference_options and inference != "semi-amortized":
        raise ConfigError(
            f"--num-refine-steps, --refine-lr, --refine-momentum and --sa-mode apply to "
            f"--inference semi-amortized, found --inference {inference}"
        )
    splits = load_dataset(dataset, data_dir=data_dir, train_size=train_size, val_size=val_size)
    if binarize is None:
        binarize = "dynamic" if dataset in IMAGE_DATASETS else "none"
    if run_dir is None:
        kind = ("skip-" if skip else "") + ("sa-vae" if inference == "semi-amortized" else "vae")
        run_dir = os.path.join("runs", f"{splits.name}-{kind}-z{latent_dim}")
    vae = SkipVAE(
        splits.data_shape,
        latent_dim=latent_dim,
        hidden_dims=hidden_dims,
        skip=skip,
        decoder=decoder,
        prior=prior,
        likelihood=likelihood,
        device=device,
        seed=seed,
    )
    history = vae.fit(
        splits.train,
        val=splits.val,
        num_epochs=num_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        clip_norm=clip_norm,
        kl_warmup_epochs=kl_warmup_epochs,
        kl_start=kl_start,
        elbo=elbo,
        inference=inference,
        inference_options=inference_options,
        binarize=binarize,
        seed=seed,
        run_dir=run_dir,
        resume=resume,
        progress=not quiet,
        run_info={"dataset": splits.name, "train_size": train_size, "val_size": val_size},
    )
    if not history:
        raise ConfigError(f"nothing to do: no epochs to run (num_epochs={num_epochs})")
    last = history[-1]
    best = max(history, key=lambda r: r["val_elbo"])
    click.echo(
        f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.2f}, validation ELBO "
        f"{last['val_elbo']:.2f} nats, KL {last['val_kl']:.2f} nats "
        f"(best validation ELBO {best['val_elbo']:.2f} at epoch {best['epoch']}; "
        f"{sum(r['seconds'] for r in history):.0f} s)"
    )
    if "val_elbo_refined" in last:
        click.echo(
            f"refined validation ELBO {last['val_elbo_refined']:.2f} nats, KL {last['val_kl_refined']:.2f} "
            f"nats (amortization gap {last['val_amortization_gap']:.2f} nats)"
        )
    click.echo(f"results in {run_dir}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--split", type=click.Choice(["test", "val"]), default="test", help="Evaluation split."
)
@click.option(
    "--num-samples",
    type=click.IntRange(min=0),
    default=500,
    help="Importance samples K per datapoint for the IW-NLL (0: skip the NLL).",
)
@click.option(
    "--eval-size", type=POSITIVE, default=None, help="Evaluate the first N examples only."
)
@DATA_DIR_OPTION
@click.option(
    "--refine-steps",
    type=click.IntRange(min=0),
    default=0,
    help="Evaluate with semi-amortized refinement of q's local parameters (0: amortized).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON file to write [default: RUN_DIR/diagnostics.json]; netCDF and plots go beside it.",
)
@click.option(
    "--au-threshold",
    type=click.FloatRange(min=0, min_open=True),
    default=0.01,
    help="δ of active units: Var_x E[z_d|x] > δ.",
)
@click.option(
    "--classifier-train-size",
    type=POSITIVE,
    default=None,
    help="Fit the classifiers on the first N training images [default: all].",
)
@click.option("--embedding", type=click.Choice(["tsne", "pca"]), default="tsne")
@click.option("--no-plots", is_flag=True, help="Skip the PNGs.")
@click.option(
    "--keep-log-weights", is_flag=True, help="Store the N × K log-weights in the netCDF file."
)
@click.option("--seed", type=int, default=0)
@DEVICE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def diagnose(
    run_dir,
    split,
    num_samples,
    eval_size,
    data_dir,
    refine_steps,
    out,
    au_threshold,
    classifier_train_size,
    embedding,
    no_plots,
    keep_log_weights,
    seed,
    device,
    quiet,
):
    """Measure posterior collapse of a fitted run: ELBO, KL, MI, aggregate KL, active units,
    IW-NLL (with Pareto k̂) and posterior-mean accuracy; writes JSON, netCDF and PNGs."""
    result = diagnose_run(
        run_dir,
        split=split,
        num_samples=num_samples,
        eval_size=eval_size,
        data_dir=data_dir,
        refine_steps=refine_steps,
        out=out,
        classifier_train_size=classifier_train_size,
        au_threshold=au_threshold,
        embedding=embedding,
        plots=not no_plots,
        keep_log_weights=keep_log_weights,
        seed=seed,
        device=device,
        progress=not quiet,
    )
    m = result["metrics"]
    click.echo(
        f"{run_dir}: {m['split']} split, N = {m['num_points']}, {m['inference']} q"
        + (f" ({refine_steps} refinement steps)" if refine_steps else "")
        + (f", IW-NLL with K = {num_samples}" if num_samples else "")
    )
    click.echo(format_table(m))
    for key in ("accuracy", "accuracy_knn"):
        if key in m:
            click.echo(f"  {key}: {m['estimators'][key]}")
    click.echo(
        f"results in {result['paths']['json']}, {result['paths']['netcdf']}"
        + (f", {result['paths']['plots']}/" if not no_plots else "")
    )


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--names", default=None, help="Comma-separated column names [default: folder names].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "csv"]),
    default="markdown",
    help="What to print.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write OUT.md and OUT.csv (OUT without suffix).",
)
@handle_errors
def compare(runs, names, fmt, out):
    """One table of several runs' diagnostics side by side (run `skipvae diagnose` first).
    RUNS are run directories holding diagnostics.json, or JSON files."""
    markdown, csv_text = compare_runs(
        runs, names=None if names is None else names.split(","), out=out
    )
    click.echo(markdown if fmt == "markdown" else csv_text, nl=False)
    if out is not None:
        stem = os.path.splitext(out)[0]
        click.echo(f"written to {stem}.md and {stem}.csv")


def main():
    cli(prog_name="skipvae")


if __name__ == "__main__":
    main()
