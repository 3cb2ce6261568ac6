"""``skipvae compare``: several runs' diagnostics side by side
(:func:`pyro_skipvae.evaluation.compare_runs`)."""

import click

from .options import handle_errors


@click.command()
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
    help="Also write OUT.md and OUT.csv (OUT less a .md or .csv suffix; other dotted parts kept).",
)
@handle_errors
def compare(runs, names, fmt, out):
    """One table of several runs' diagnostics side by side (run `skipvae diagnose` first).
    RUNS are run directories holding diagnostics.json, or JSON files."""
    from pyro_skipvae.evaluation import compare_output_paths, compare_runs

    markdown, csv_text = compare_runs(
        runs, names=None if names is None else names.split(","), out=out
    )
    click.echo(markdown if fmt == "markdown" else csv_text, nl=False)
    if out is not None:
        paths = compare_output_paths(out)
        click.echo(f"written to {paths['markdown']} and {paths['csv']}")
