"""Two diagnosed cells compared datapoint by datapoint: the paired difference B − A of each
per-datapoint metric, with its standard error over the test points.

    python benchmarks/paired_cells.py A.nc B.nc [--names A,B] [--out table.md]

A.nc and B.nc are the netCDF files ``skipvae diagnose`` writes beside its JSON (one
variable per per-datapoint result). Both must be diagnoses of the same split, in the same
order, with the IW-NLL on the same subset (``diagnose`` draws it with its own seed, so two
diagnoses with equal ``--nll-size`` share it); the script refuses otherwise.

For a metric m with per-datapoint values a_n, b_n (n = 1 … N, the points both have):

.. math::

    \\bar d = \\frac1N \\sum_n (b_n - a_n), \\qquad
    \\mathrm{se}(\\bar d) = \\frac{\\mathrm{sd}_n(b_n - a_n)}{\\sqrt N},

with a normal 95 % interval d̄ ± 1.96 se. Pairing removes the sentence-to-sentence spread
that dominates each cell's own standard error (an IW-NLL of 105 ± 2 nats on 640
sentences), so a difference of a few tenths of a nat can be resolved.

**What the interval covers, and what not.** It is over the test points only: it says how
sure we are that *these two trained models* differ on this test distribution. It says
nothing about the spread between training seeds; a claim about a training method (skip
connections, SA training) needs the seed statistics of ``study_stats.py``. Rows of one seed
each say so.

MI and aggregate KL are per-datapoint terms of full-set estimators (each term depends on
every point's q through the mixture q(z)), so their standard errors are approximate; KL,
ELBO and IW-NLL are per-datapoint quantities proper. Active units are a property of the
whole set and are not paired.

One derived row: −ELBO − IW-NLL, per point of the IW-NLL subset, is what importance
sampling gains over q's bound. It is about zero when p(x | z) does not vary with z (a
collapsed model: every importance weight is the same) and grows when the decoder uses z
that q fails to capture (a lagging encoder). Each cell's column shows its own mean ± se.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from pyro_skipvae.diagnostics.estimate import mean_and_se

#: per-datapoint variable -> its label
METRICS = {
    "elbo": "ELBO (nats)",
    "nll": "IW-NLL (nats, K = 500 subset)",
    "kl": "KL (nats)",
    "mi": "MI term (nats, approximate se)",
    "agg_kl": "aggregate KL term (nats, approximate se)",
    "iw_gain": "−ELBO − IW-NLL (nats, K = 500 subset)",
}
#: derived per-datapoint quantities: name -> (the variables it needs, how it is computed)
DERIVED = {"iw_gain": (("elbo", "nll"), lambda ds: -ds["elbo"].values - ds["nll"].values)}
Z95 = 1.959963984540054


def summary(v: np.ndarray) -> tuple[int, float, float]:
    """``(n, mean, se)`` of the values given (the diagnostics' own mean-and-standard-error,
    :func:`~pyro_skipvae.diagnostics.estimate.mean_and_se`)."""
    if v.size == 0:
        return 0, math.nan, math.nan
    estimate = mean_and_se(torch.from_numpy(v.astype(float)))
    return estimate.info["num_points"], float(estimate), estimate.se


def paired(a: np.ndarray, b: np.ndarray) -> tuple[int, float, float]:
    """``(n, mean, se)`` of b − a over the points where both are finite."""
    both = np.isfinite(a) & np.isfinite(b)
    return summary((b - a)[both])


def check_comparable(a: xr.Dataset, b: xr.Dataset, names) -> None:
    """Refuse two diagnoses that are not of the same points."""
    for key in ("num_points", "split", "dataset"):
        if key in a.attrs and key in b.attrs and a.attrs[key] != b.attrs[key]:
            raise SystemExit(
                f"error: {names[0]} and {names[1]} differ in {key}: "
                f"{a.attrs[key]!r} and {b.attrs[key]!r}; pair diagnoses of the same points"
            )
    if a.sizes["datapoint"] != b.sizes["datapoint"]:
        raise SystemExit(
            f"error: {names[0]} has {a.sizes['datapoint']} datapoints, {names[1]} "
            f"{b.sizes['datapoint']}; pair diagnoses of the same points"
        )
    if "nll" in a and "nll" in b:
        on_a, on_b = np.isfinite(a["nll"].values), np.isfinite(b["nll"].values)
        if not np.array_equal(on_a, on_b):
            raise SystemExit(
                f"error: the IW-NLL subsets differ ({int(on_a.sum())} and {int(on_b.sum())} "
                "points, not the same ones); diagnose both with the same --nll-size"
            )


def values(ds: xr.Dataset, var: str) -> np.ndarray | None:
    """The per-datapoint values of ``var`` (a stored variable or one of :data:`DERIVED`), or
    ``None`` when the diagnosis lacks what it needs."""
    needs, compute = DERIVED.get(var, ((var,), lambda d: d[var].values))
    if not all(v in ds for v in needs):
        return None
    return np.asarray(compute(ds), dtype=float)


def table(a: xr.Dataset, b: xr.Dataset, names) -> str:
    """The markdown table: each cell's mean ± se and the paired difference
    ``names[1] − names[0]``, over the points both have."""
    header = (
        f"| metric | {names[0]} | {names[1]} | {names[1]} − {names[0]} (paired) | points "
        "| 95 % interval (over test points) |\n|---|---|---|---|---|---|\n"
    )
    rows = []
    for var, label in METRICS.items():
        x, y = values(a, var), values(b, var)
        if x is None or y is None:
            continue
        n, mean, se = paired(x, y)
        both = np.isfinite(x) & np.isfinite(y)
        own = [summary(v[both]) for v in (x, y)]
        low, high = mean - Z95 * se, mean + Z95 * se
        verdict = "excludes 0" if low > 0 or high < 0 else "includes 0"
        rows.append(
            f"| {label} | {own[0][1]:.3f} ± {own[0][2]:.3f} | {own[1][1]:.3f} ± {own[1][2]:.3f} "
            f"| {mean:+.3f} ± {se:.3f} | {n} | [{low:+.3f}, {high:+.3f}] ({verdict}) |"
        )
    return header + "\n".join(rows) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path, help="the baseline diagnosis (netCDF)")
    parser.add_argument("b", type=Path, help="the compared diagnosis (netCDF)")
    parser.add_argument("--names", default=None, help="A,B [default: the files' stems]")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    names = args.names.split(",") if args.names else [args.a.stem, args.b.stem]
    for path in (args.a, args.b):
        if not path.is_file():
            raise SystemExit(f"error: {path} is not a file (expected a diagnose netCDF)")
    with xr.open_dataset(args.a) as a, xr.open_dataset(args.b) as b:
        check_comparable(a, b, names)
        text = table(a, b, names)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
