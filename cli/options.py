"""What the ``skipvae`` commands share: the flags' types, options declared once, the
``--config`` file, and the one place the library's typed errors become an exit status.

Nothing here imports torch or Pyro at import time: the library is imported inside the
functions that need it, so ``--help`` and usage errors answer at once.

The fixed choices below mirror the library's constants (``tests/test_packaging.py`` checks
that they agree); component names are free strings checked by the library's registries,
whose errors list the valid names; a name with a colon is an import path,
``module:attribute``, importable from ``PYTHONPATH`` or the current directory.
"""

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import traceback

import click

# Mirrors of pyro_skipvae constants (checked against them by the tests).
BINARIZATIONS = ("dynamic", "threshold", "none")
IMAGE_DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "omniglot")
TEXT_DATASETS = ("ptb", "yahoo")
SEMI_AMORTIZED_MODES = ("end-to-end", "stop-gradient", "kl", "svi")
REFINE_COORDINATES = ("log-variance", "log-scale")
REFINE_KL = ("analytic", "monte-carlo", "objective")
OPTIMIZERS = ("adam", "sgd")
LR_DECAYS = ("none", "plateau", "plateau-restore")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPONENTS = {
    "decoder": "mlp | pixelcnn | lstm",
    "encoder": "mlp | conv | lstm",
    "guide": "normal | bn-normal | flow",
    "prior": "normal | learned-normal | mixture | vamp | flow",
    "likelihood": "bernoulli | continuous-bernoulli | normal | categorical | discretized-logistic",
    "elbo": "trace | mean-field | tracegraph | renyi | iwae | jit | free-bits",
    "inference": "svi | semi-amortized | aggressive",
}
#: how the defaults of the components text data sets imply read in --help (the rule itself:
#: pyro_skipvae.configs.resolve_components)
TEXT_DEFAULT = "  [default: {} for text data sets, else {}]"
PLUGIN = " | module:attribute"


def _fail(message: str, status: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl-C's KeyboardInterrupt lands."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM and SIGHUP stop the command as Ctrl-C does.

    Python's default for both is to die on the spot: no ``finally`` runs, so a fit killed by
    a batch scheduler (SLURM sends SIGTERM at the time limit or on preemption) left its run
    lock behind and a diagnose its temporary files. Raised as an exception, they unwind like
    Ctrl-C: locks are released, atomic writes in progress are discarded, the last completed
    epoch's checkpoint stays. A signal that is ignored (``nohup`` ignores SIGHUP) stays
    ignored; outside the main thread (where signals cannot be handled) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, _raise_terminated)
        for signum in (signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def handle_errors(command):
    """Turn the library's typed errors into one line on stderr and an exit status."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from pyro_skipvae.errors import ConfigError, SkipVAEError

        try:
            with terminate_as_interrupt():
                return command(*args, **kwargs)
        except ConfigError as e:
            _fail(str(e), 2)
        except SkipVAEError as e:
            _fail(str(e), 1)
        except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
            sys.stderr.close()
            sys.exit(0)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own usage errors and exits: click prints them with their status
        except KeyboardInterrupt as e:  # Ctrl-C: status 130; SIGTERM 143, SIGHUP 129
            how = str(e) if isinstance(e, Terminated) else "interrupted"
            status = 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)
            _fail(f"{how}; the last completed epoch's checkpoint is intact (use --resume)", status)
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


def precision_option(default, default_help):
    """``--precision 32|bf16-mixed`` (see :mod:`pyro_skipvae.infer.precision`)."""
    return click.option(
        "--precision",
        type=click.Choice(["32", "bf16-mixed"]),
        default=default,
        help="32: float32 throughout; bf16-mixed: encoder and decoder under bfloat16 autocast, "
        f"densities, ELBO, refinement and optimizer in float32  [default: {default_help}]",
    )


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


#: ``--config FILE``: a command's options from a YAML or JSON file (see :func:`load_config`)
CONFIG_OPTION = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=load_config,
    help="YAML or JSON file setting any of these options (keys as the flags); "
    "flags given here override it.",
)


def merged_options(ctx, o, kind) -> dict:
    """A component's options: the file's, then the command line's pairs key by key."""
    from click.core import ParameterSource

    name = f"{kind}_options"
    options = _options(o[name])
    if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
        options = {**_options(ctx.meta.get("skipvae.config", {}).get(name)), **options}
    return options


def component_options(kind):
    """``--KIND-option KEY=VALUE``, repeatable: the options of a component."""
    return click.option(
        f"--{kind}-option",
        f"{kind}_options",
        type=KeyValue(),
        multiple=True,
        help=f"An option of the {kind}, repeatable (e.g. hidden_dims=[512,512]).",
    )
