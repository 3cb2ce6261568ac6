"""The ``skipvae`` command: parsing and printing only; the work happens in pyro_skipvae.

Exit status: 0 success, 1 runtime failure (bad data, corrupt files, NaN loss), 2 usage
error (bad option values, a run directory holding another configuration), 130 interrupted.
Errors print one line, ``error: …``; set ``SKIPVAE_DEBUG=1`` to see the traceback.

This module holds the ``skipvae`` group (``--verbose``, ``--version``) and ``main()``, the
installed entry point; each command lives in its own module (``fit.py``, ``diagnose.py``,
``compare.py``, ``sweep.py``, ``report.py``) and what they share in ``options.py``. The
library (and with it torch and Pyro) is imported inside the commands, so ``--help`` and
usage errors answer at once.
"""

import logging
import os
import sys

import click

from .compare import compare
from .diagnose import diagnose
from .fit import fit
from .report import report
from .sweep import sweep

__all__ = ["cli", "compare", "diagnose", "fit", "main", "report", "sweep"]


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


for _command in (fit, diagnose, compare, sweep, report):
    cli.add_command(_command)


def main():
    cli(prog_name="skipvae")


if __name__ == "__main__":
    main()
