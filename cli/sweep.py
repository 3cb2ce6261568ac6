"""``skipvae sweep``: fit and diagnose every cell of a grid (:mod:`pyro_skipvae.sweep`)."""

import click

from .options import POSITIVE, handle_errors


@click.command()
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
