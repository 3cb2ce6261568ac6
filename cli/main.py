"""The ``skipvae`` command: parsing and printing only; the work happens in pyro_skipvae.

Exit status: 0 success, 1 runtime failure (bad data, corrupt files, NaN loss), 2 usage
error (bad option values, a run directory holding another configuration), 130 interrupted.
Errors print one line, ``error: …``; set ``SKIPVAE_DEBUG=1`` to see the traceback.

The library (and with it torch and Pyro) is imported inside the commands, so ``--help`` and
usage errors answer at once. The few fixed choices below mirror the library's constants
(``tests/test_packaging.py`` checks that they agree); component names are free strings
checked by the library's registries, whose errors list the valid names; a name with a colon is
an import path, ``module:attribute``, importable from ``PYTHONPATH`` or the current directory.

``skipvae fit --config run.yaml`` (or ``.json``) sets any of ``fit``'s options from a file,
keys spelled as the flags (``latent_dim`` or ``latent-dim``; ``decoder_options`` as a mapping);
flags given on the command line override the file (``--*-option`` pairs key by key).
"""

import functools
import json
import logging
import os
import shlex
import subprocess
import sys
import traceback

import click

logger = logging.getLogger(__name__)

# Mirrors of pyro_skipvae constants (checked against them by the tests).
BINARIZATIONS = ("dynamic", "threshold", "none")
IMAGE_DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "omniglot")
TEXT_DATASETS = ("ptb", "yahoo")
SEMI_AMORTIZED_MODES = ("end-to-end", "stop-gradient", "kl", "svi")
REFINE_COORDINATES = ("log-variance", "log-scale")
OPTIMIZERS = ("adam", "sgd")
LR_DECAYS = ("none", "plateau")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPONENTS = {
    "decoder": "mlp | pixelcnn | lstm",
    "encoder": "mlp | conv | lstm",
    "guide": "normal | flow",
    "prior": "normal | learned-normal | mixture | vamp | flow",
    "likelihood": "bernoulli | continuous-bernoulli | normal | categorical | discretized-logistic",
    "elbo": "trace | mean-field | tracegraph | renyi | iwae | jit | free-bits",
    "inference": "svi | semi-amortized",
}
#: components of image data and files; text data sets imply their own (Vocabulary.model_options)
DEFAULT_COMPONENTS = {
    "decoder": "mlp",
    "encoder": "mlp",
    "prior": "normal",
    "likelihood": "bernoulli",
}
#: how the defaults of the components text data sets imply read in --help
TEXT_DEFAULT = "  [default: {} for text data sets, else {}]"
PLUGIN = " | module:attribute"


def _fail(message: str, status: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def handle_errors(command):
    """Turn the library's typed errors into one line on stderr and an exit status."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from pyro_skipvae.errors import ConfigError, SkipVAEError

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
            parts = value if isinstance(value, list) else str(value).split(",")
            widths = tuple(int(v) for v in parts)
        except ValueError:
            self.fail(
                f"expected comma-separated integers such as 1024,1024, found {value!r}", param, ctx
            )
        if min(widths) < 1:
            self.fail(f"expected positive widths, found {value!r}", param, ctx)
        return widths


class KeyValue(click.ParamType):
    """``KEY=VALUE``; the value is parsed as JSON where it parses (``3``, ``[9,7]``,
    ``true``, ``null``), else kept as a string."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        key, sep, text = str(value).partition("=")
        if not sep or not key.strip():
            self.fail(f"expected KEY=VALUE, found {value!r}", param, ctx)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return key.strip().replace("-", "_"), parsed


class Device(click.ParamType):
    """``cpu``, ``cuda`` or ``cuda:N``."""

    name = "DEVICE"

    def convert(self, value, param, ctx):
        kind, _, index = str(value).partition(":")
        if kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit()):
            return str(value)
        self.fail(f"expected cpu, cuda or cuda:N, found {value!r}", param, ctx)


def _options(pairs) -> dict:
    return dict(pairs or ())


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


POSITIVE = click.IntRange(min=1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
# Options shared by several commands, declared once so their defaults and help agree.
DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder with the data sets [default: $SKIPVAE_DATA_DIR, else ../shared/data beside "
    "the clone, else the user data folder]",
)
DEVICE_OPTION = click.option("--device", type=Device(), default="cpu", help="cpu, cuda or cuda:N")


def read_config_file(path) -> dict:
    """The mapping in a YAML or JSON file (by suffix); a usage error if it is not one."""
    from pyro_skipvae.config_files import read_mapping
    from pyro_skipvae.errors import ConfigError

    try:
        return read_mapping(path)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--config") from None


def _config_keys(command) -> dict:
    """File key → parameter name: the parameter's own name and its long flags in snake case."""
    keys = {}
    for param in command.params:
        if param.name == "config" or not isinstance(param, click.Option):
            continue
        keys[param.name] = param.name
        for opt in param.opts:
            if opt.startswith("--"):
                keys[opt[2:].replace("-", "_")] = param.name
    return keys


def load_config(ctx, param, value):
    """Eager callback of ``--config``: the file's values become the command's defaults
    (``ctx.default_map``), so flags on the command line override them."""
    if value is None:
        return
    keys = _config_keys(ctx.command)
    defaults = {}
    for key, item in read_config_file(value).items():
        name = keys.get(str(key).replace("-", "_"))
        if name is None:
            valid = sorted({k for k, v in keys.items() if k == v or not k.endswith("_option")})
            raise click.BadParameter(
                f"unknown key {key!r} in {value}; valid keys: {', '.join(valid)}",
                param_hint="--config",
            )
        if name.endswith("_options"):
            if not isinstance(item, dict):
                raise click.BadParameter(
                    f"{key} in {value}: expected a mapping such as {{hidden_dims: [512, 512]}}, "
                    f"found {item!r}",
                    param_hint="--config",
                )
            item = [(str(k).replace("-", "_"), v) for k, v in item.items()]
        defaults[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["skipvae.config"] = defaults


def _merged_options(ctx, o, kind) -> dict:
    """A component's options: the file's, then the command line's pairs key by key."""
    from click.core import ParameterSource

    name = f"{kind}_options"
    options = _options(o[name])
    if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
        options = {**_options(ctx.meta.get("skipvae.config", {}).get(name)), **options}
    return options


def component_options(kind):
    return click.option(
        f"--{kind}-option",
        f"{kind}_options",
        type=KeyValue(),
        multiple=True,
        help=f"An option of the {kind}, repeatable (e.g. hidden_dims=[512,512]).",
    )


def print_version(ctx, param, value):
    """``--version``: the versions a bug report needs (imports torch, so only when asked)."""
    if not value or ctx.resilient_parsing:
        return
    import pyro
    import torch

    from pyro_skipvae import __version__  # the one place the version is written

    cuda = torch.version.cuda or "none"
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    click.echo(
        f"pyro-skipvae {__version__}, torch {torch.__version__}, pyro {pyro.__version__}, "
        f"CUDA {cuda} ({devices} device(s) visible), Python {sys.version.split()[0]}"
    )
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log every epoch's metrics.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=print_version,
    help="Show the versions of pyro-skipvae, torch, Pyro and CUDA, then exit.",
)
def cli(verbose):
    """Collapse-resistant VAEs on Pyro: fit and measure generative skip models."""
    # The console shows warnings (every record with -v); the level sits on the handler, not
    # the logger, so a run's train.log can still receive the library's INFO records.
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[console])
    # Plug-ins named module:attribute may live in the current directory, as for `python -m`;
    # appended, so they never shadow an installed module.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


@cli.command(cls=KeepsArguments)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=load_config,
    help="YAML or JSON file setting any of these options (keys as the flags); "
    "flags given here override it.",
)
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
    help=COMPONENTS["guide"] + PLUGIN + " (normal: diagonal Gaussian q; flow: q through an "
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
    help="svi: amortized SVI; semi-amortized: refine each minibatch's q with SGD (SA-VAE).",
)
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
    help="plateau: halve the learning rate once validation stalls (the authors' text recipe).",
)
@click.option(
    "--lr-decay-min-epochs",
    type=click.IntRange(min=0),
    default=15,
    help="No decay before this epoch.",
)
@click.option(
    "--min-learning-rate",
    type=click.FloatRange(min=0),
    default=0.0,
    help="With --lr-decay plateau: stop once the learning rate falls below this.",
)
@click.option(
    "--early-stopping-patience",
    type=click.IntRange(min=1),
    default=None,
    help="Stop once this many epochs in a row have not improved the validation bound  "
    "[default: train for --num-epochs]",
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
    from pyro_skipvae.errors import ConfigError
    from pyro_skipvae.infer import distributed

    if o["nproc"] > 1:
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
            f"--nproc_per_node={o['nproc']}",
            "-m",
            "pyro_skipvae.cli.main",
            *(["--verbose"] if ctx.parent.params.get("verbose") else []),
            "fit",
            *_without_option(ctx.meta["arguments"], "--nproc"),
        ]
        sys.exit(subprocess.run(command).returncode)
    with distributed.process_group(o["device"]):
        _fit(ctx, o)


def _fit(ctx, o):
    from pyro_skipvae import SkipVAE
    from pyro_skipvae.data import default_binarization, load_dataset
    from pyro_skipvae.errors import ConfigError
    from pyro_skipvae.infer import distributed
    from pyro_skipvae.run import train_log

    main = distributed.is_main()
    if not main:  # only rank 0 logs, shows progress and prints
        logging.getLogger().setLevel(logging.WARNING)

    options = {k: _merged_options(ctx, o, k) for k in ("decoder", "encoder", "guide", "prior")}
    options.update({k: _merged_options(ctx, o, k) for k in ("likelihood", "elbo")})
    if o["renyi_alpha"] is not None:
        if o["elbo"] != "renyi":
            raise ConfigError(f"--renyi-alpha applies to --elbo renyi, found --elbo {o['elbo']}")
        options["elbo"]["alpha"] = o["renyi_alpha"]

    refinement = {
        "mode": o["sa_mode"],
        "num_refine_steps": o["num_refine_steps"],
        "refine_lr": o["refine_lr"],
        "refine_momentum": o["refine_momentum"],
        "refine_max_grad_norm": o["refine_max_grad_norm"],
        "refine_coordinates": o["refine_coordinates"],
    }
    inference_options = {k: v for k, v in refinement.items() if v is not None}
    if inference_options and o["inference"] != "semi-amortized":
        raise ConfigError(
            "--sa-mode, --num-refine-steps and the --refine-* options apply to "
            f"--inference semi-amortized, found --inference {o['inference']}"
        )
    splits = load_dataset(
        o["dataset"],
        data_dir=o["data_dir"],
        train_size=o["train_size"],
        val_size=o["val_size"],
        download=o["download"],
        max_length=o["max_length"],
    )
    binarize = o["binarize"] or default_binarization(o["dataset"])
    # A text data set implies its components and their vocabulary options; given options win.
    implied = splits.vocabulary.model_options() if splits.vocabulary is not None else {}
    components = {}
    for kind in DEFAULT_COMPONENTS:
        name = o[kind] or implied.get(kind, DEFAULT_COMPONENTS[kind])
        own = implied.get(f"{kind}_options", {}) if name == implied.get(kind) else {}
        components[kind] = name
        components[f"{kind}_options"] = {**own, **options[kind]}
    run_dir = o["run_dir"]
    if run_dir is None:
        kind = ("skip-" if o["skip"] else "") + (
            "sa-vae" if o["inference"] == "semi-amortized" else "vae"
        )
        run_dir = os.path.join("runs", f"{splits.name}-{kind}-z{o['latent_dim']}")
    with train_log(run_dir):
        logger.info("skipvae fit %s", " ".join(map(shlex.quote, ctx.meta["arguments"])))
        vae = SkipVAE(
            splits.data_shape,
            latent_dim=o["latent_dim"],
            hidden_dims=o["hidden_dims"],
            skip=o["skip"],
            **components,
            guide=o["guide"],
            guide_options=options["guide"],
            device=o["device"],
            seed=o["seed"],
            compile=o["compile_mode"] or False,
        )
        history = vae.fit(
            splits.train,
            val=splits.val,
            run_dir=run_dir,
            resume=o["resume"],
            progress=not o["quiet"] and main,
            run_info={
                "dataset": splits.name,
                "train_size": o["train_size"],
                "val_size": o["val_size"],
                "max_length": o["max_length"],
            },
            num_epochs=o["num_epochs"],
            batch_size=o["batch_size"],
            optimizer=o["optimizer"],
            learning_rate=o["learning_rate"],
            clip_norm=o["clip_norm"],
            lr_decay=o["lr_decay"],
            lr_decay_min_epochs=o["lr_decay_min_epochs"],
            min_learning_rate=o["min_learning_rate"],
            early_stopping_patience=o["early_stopping_patience"],
            kl_warmup_epochs=o["kl_warmup_epochs"],
            kl_start=o["kl_start"],
            kl_cycle_epochs=o["kl_cycle_epochs"],
            elbo=o["elbo"],
            num_particles=o["num_particles"],
            elbo_options=options["elbo"],
            inference=o["inference"],
            inference_options=inference_options,
            binarize=binarize,
            seed=o["seed"],
        )
    if not history:
        raise ConfigError(f"nothing to do: no epochs to run (num_epochs={o['num_epochs']})")
    if not main:
        return
    last = history[-1]
    best = next(r for r in history if r["epoch"] == last["selected"])
    bound = "refined validation ELBO" if o["inference"] == "semi-amortized" else "validation ELBO"
    click.echo(
        f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.2f}, {bound} "
        f"{last['val_elbo']:.2f} nats, KL {last['val_kl']:.2f} nats"
        + (f", perplexity bound {last['val_ppl']:.2f}" if "val_ppl" in last else "")
        + f" (selected: epoch {best['epoch']}, {best['val_elbo']:.2f}; "
        f"{sum(r['seconds'] for r in history):.0f} s)"
    )
    if "val_elbo_amortized" in last:
        click.echo(
            f"amortized validation ELBO {last['val_elbo_amortized']:.2f} nats, KL "
            f"{last['val_kl_amortized']:.2f} nats (amortization gap {last['val_amortization_gap']:.2f} nats)"
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
@click.option(
    "--nll-size",
    type=POSITIVE,
    default=None,
    help="Score the IW-NLL on N points of the split drawn at random with --seed "
    "[default: every point].",
)
@click.option(
    "--dataset",
    default=None,
    help="Evaluate on this data set instead of the run's own (same shape, binarised as that "
    "data set is by default; e.g. a binarized-mnist model on labelled mnist).",
)
@DATA_DIR_OPTION
@click.option(
    "--num-refine-steps",
    "--refine-steps",
    "num_refine_steps",
    type=click.IntRange(min=0),
    default=None,
    help="Refinement steps of q's local parameters (0: the amortized encoder)  "
    "[default: the run's own refinement for semi-amortized runs, else 0]",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON file to write [default: RUN_DIR/diagnostics.json]; netCDF and plots go beside it.",
)
@click.option(
    "--au-threshold",
    type=POSITIVE_FLOAT,
    default=0.01,
    help="δ of active units: Var_x E[z_d|x] > δ.",
)
@click.option(
    "--accuracy-dataset",
    default=None,
    help="A labelled data set of the same shape (e.g. mnist for a binarized-mnist model) on "
    "which to measure posterior-mean accuracy, besides the evaluation split.",
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
    "--report",
    is_flag=True,
    help="Also write the run's HTML report beside the JSON (<stem>.html; see `skipvae report`).",
)
@click.option(
    "--keep-log-weights", is_flag=True, help="Store the N × K log-weights in the netCDF file."
)
@click.option("--seed", type=int, default=0)
@DEVICE_OPTION
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def diagnose(run_dir, num_refine_steps, no_plots, report, quiet, **options):
    """Measure posterior collapse of a fitted run: ELBO, KL, MI, aggregate KL, active units,
    IW-NLL (with Pareto k̂), posterior-mean accuracy (labelled data) and perplexities (text);
    writes JSON, netCDF, PNGs, for text the decoded sentences, and with --report the run's
    HTML page."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from pyro_skipvae.diagnostics import format_table
    from pyro_skipvae.evaluation import diagnose_run

    result = diagnose_run(
        run_dir,
        num_refine_steps=num_refine_steps,
        plots=not no_plots,
        progress=not quiet,
        **options,
    )
    m = result["metrics"]
    refined = m["num_refine_steps"]
    click.echo(
        f"{run_dir}: {m['dataset']} {m['split']} split, N = {m['num_points']}, {m['inference']} q"
        + (f" ({refined} refinement steps)" if refined else "")
        + (f", IW-NLL with K = {options['num_samples']}" if options["num_samples"] else "")
        + (
            f" on {m['nll_num_points']} random points"
            if m.get("nll_num_points", m["num_points"]) < m["num_points"]
            else ""
        )
    )
    click.echo(format_table(m))
    for key in ("accuracy", "accuracy_knn"):
        if key in m:
            click.echo(f"  {key}: {m['estimators'][key]}")
    click.echo(
        f"results in {result['paths']['json']}, {result['paths']['netcdf']}"
        + (f", {result['paths']['plots']}/" if not no_plots else "")
        + (f", {m['text']}" if "text" in m else "")
    )
    if report:
        from pyro_skipvae.report import write_report

        path = write_report(
            [run_dir],
            os.path.splitext(result["paths"]["json"])[0] + ".html",
            diagnostics=[result["paths"]["json"]],
        )
        click.echo(f"report in {path}")


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
    from pyro_skipvae.evaluation import compare_runs

    markdown, csv_text = compare_runs(
        runs, names=None if names is None else names.split(","), out=out
    )
    click.echo(markdown if fmt == "markdown" else csv_text, nl=False)
    if out is not None:
        stem = os.path.splitext(out)[0]
        click.echo(f"written to {stem}.md and {stem}.csv")


@cli.command()
@click.argument("grid_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Sweep folder.")
@click.option("--jobs", type=POSITIVE, default=1, help="Cells run side by side.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def sweep(grid_file, out, jobs, quiet):
    """Fit and diagnose every cell of a grid (YAML or JSON), resumably; one row per cell in
    OUT/results.csv. See pyro_skipvae.sweep for the grid format."""
    from pyro_skipvae.sweep import run_sweep

    summary = run_sweep(grid_file, out, jobs=jobs, progress=not quiet)
    click.echo(
        f"{summary['cells']} cells: {summary['ok']} run, {summary['skipped']} already done, "
        f"{summary['failed']} failed; results in {summary['results']}"
    )


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="report.html",
    help="HTML file to write.",
)
@click.option("--names", default=None, help="Comma-separated run names [default: folder names].")
@click.option("--title", default=None, help="Page title [default: the names joined by 'vs'].")
@handle_errors
def report(runs, out, names, title):
    """One self-contained HTML page on one run or a comparison of RUNS (run directories):
    configurations, training curves, collapse verdicts, diagnostics and pictures. Runs
    not yet diagnosed get their training section and the command that diagnoses them."""
    from pyro_skipvae.report import write_report

    path = write_report(runs, out, names=None if names is None else names.split(","), title=title)
    click.echo(f"report in {path} ({os.path.getsize(path) / 1e6:.1f} MB)")


def main():
    cli(prog_name="skipvae")


if __name__ == "__main__":
    main()
