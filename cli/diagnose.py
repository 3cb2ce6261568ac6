"""``skipvae diagnose``: measure posterior collapse of a fitted run and print the table
(the work is :func:`pyro_skipvae.evaluation.diagnose_run`)."""

import click

from .options import (
    DATA_DIR_OPTION,
    DEVICE_OPTION,
    POSITIVE,
    POSITIVE_FLOAT,
    handle_errors,
    precision_option,
)


@click.command()
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
@precision_option(None, "the run's own")
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
        from pyro_skipvae.evaluation import companion_stem
        from pyro_skipvae.report import write_report

        path = write_report(
            [run_dir],
            companion_stem(result["paths"]["json"], (".json",)) + ".html",
            diagnostics=[result["paths"]["json"]],
        )
        click.echo(f"report in {path}")
