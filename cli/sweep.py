"""``skipvae sweep``: fit and diagnose every cell of a grid (:mod:`pyro_skipvae.sweep`)."""

import shlex

import click
from click.core import ParameterSource

from .options import POSITIVE, handle_errors


@click.command()
@click.argument("grid_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Sweep folder.")
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
@click.option(
    "--list", "list_cells", is_flag=True, help="Print the cells: index, name, fit and diagnose."
)
@click.option(
    "--cell",
    type=click.IntRange(min=0),
    default=None,
    envvar="SLURM_ARRAY_TASK_ID",
    help="Run exactly this cell (0-based, as --list numbers them), resumably; safe beside other "
    "cells writing to the same OUT; not with --jobs > 1 or --mps on  [default: "
    "$SLURM_ARRAY_TASK_ID when set, which is then printed]",
)
@click.option(
    "--collect", is_flag=True, help="Rebuild OUT/results.csv from the cell folders, run nothing."
)
@click.pass_context
def sweep(ctx, grid_file, out, jobs, mps, quiet, list_cells, cell, collect):
    """Fit and diagnose every cell of a grid (YAML or JSON), resumably; one row per cell in
    OUT/results.csv. See pyro_skipvae.sweep for the grid format. With --list, --cell or
    --collect, the cells can be spread over a job scheduler (README: SLURM, GNU parallel).
    Ctrl-C starts no further cell, stops the running ones at their last completed epoch, and
    exits with status 130 once they have exited; the same command resumes them."""
    # usage errors are raised here, outside handle_errors (which reports any other exception
    # as unexpected), so click prints them with the usage line and exit status 2
    if out is None and not list_cells:
        raise click.UsageError("--out is required (except with --list)")
    if cell is not None and not (list_cells or collect):
        from_slurm = ctx.get_parameter_source("cell") is ParameterSource.ENVIRONMENT
        source = f" (from SLURM_ARRAY_TASK_ID={cell})" if from_slurm else ""
        unset = ", or unset SLURM_ARRAY_TASK_ID to run the whole sweep" if from_slurm else ""
        # one cell is one process: there is nothing to run beside it or to share a GPU with
        for given, flag in ((jobs > 1, f"--jobs {jobs}"), (mps == "on", "--mps on")):
            if given:
                raise click.UsageError(
                    f"{flag} is for cells run side by side, but --cell {cell}{source} runs "
                    f"exactly one: drop {flag}{unset}"
                )
        if from_slurm:
            click.echo(f"running cell {cell} only{source}", err=True)
    _sweep(grid_file, out, jobs, mps, quiet, list_cells, cell, collect)


@handle_errors
def _sweep(grid_file, out, jobs, mps, quiet, list_cells, cell, collect):
    from pyro_skipvae import sweep as sweeps
    from pyro_skipvae.children import Interrupted

    if list_cells:
        for i, each in enumerate(sweeps.grid_cells(grid_file)):
            fit, diagnose = sweeps.cell_commands(each, out or "OUT")
            click.echo(f"{i}\t{each.name}\t{shlex.join(fit)}\t{shlex.join(diagnose)}")
        return
    if collect:
        summary = sweeps.collect(grid_file, out)
        others = f" (and {summary['others']} not in the grid)" if summary["others"] else ""
        click.echo(
            f"{summary['cells']} cells: {summary['ok']} ok, {summary['failed']} failed, "
            f"{summary['interrupted']} interrupted, {summary['missing']} not run{others}; "
            f"results in {summary['results']}"
        )
        return
    try:
        if cell is not None:
            row = sweeps.run_cell(grid_file, out, cell)
            click.echo(f"cell {cell} ({row['cell']}): {row['status']} {row.get('error') or ''}")
            if row["status"] != "ok":
                raise SystemExit(1)
            return
        summary = sweeps.run_sweep(grid_file, out, jobs=jobs, mps=mps, progress=not quiet)
    except Interrupted as e:  # raised once every cell's process has exited
        click.echo(
            f"error: {e}; the running cells stopped at their last completed epoch and are "
            f"recorded as interrupted in {out}; run the same command again to resume them",
            err=True,
        )
        raise SystemExit(128 + e.signum) from None
    click.echo(
        f"{summary['cells']} cells: {summary['ok']} run, {summary['skipped']} already done, "
        f"{summary['failed']} failed; results in {summary['results']}"
    )
