"""``skipvae sweep``: fit and diagnose every cell of a grid (:mod:`pyro_skipvae.sweep`)."""

import click

from .options import POSITIVE, handle_errors


@click.command()
@click.argument("grid_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Sweep folder.")
@click.option("--jobs", type=POSITIVE, default=1, help="Cells run side by side.")
@click.option(
    "--mps",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    help="CUDA MPS for cells sharing one GPU: auto starts a private MPS daemon for the sweep "
    "when more than one cell runs at a time, every cell trains on CUDA and "
    "nvidia-cuda-mps-control is on PATH; on requires it; off never. A daemon you run "
    "yourself (CUDA_MPS_PIPE_DIRECTORY) is used as it is.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def sweep(grid_file, out, jobs, mps, quiet):
    """Fit and diagnose every cell of a grid (YAML or JSON), resumably; one row per cell in
    OUT/results.csv. See pyro_skipvae.sweep for the grid format."""
    from pyro_skipvae.sweep import run_sweep

    summary = run_sweep(grid_file, out, jobs=jobs, mps=mps, progress=not quiet)
    click.echo(
        f"{summary['cells']} cells: {summary['ok']} run, {summary['skipped']} already done, "
        f"{summary['failed']} failed; results in {summary['results']}"
    )
