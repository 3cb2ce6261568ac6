"""``skipvae report``: one self-contained HTML page on runs
(:func:`pyro_skipvae.report.write_report`)."""

import os

import click

from .options import handle_errors


@click.command()
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
