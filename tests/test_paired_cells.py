"""benchmarks/paired_cells.py: paired per-datapoint differences of two diagnoses (synthetic
netCDF files written here with known differences, not measurements)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paired_cells.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import paired_cells  # noqa: E402


def diagnosis(path, elbo, nll, attrs=None):
    kl = np.full(len(elbo), 0.5)
    variables = {"elbo": ("datapoint", elbo), "nll": ("datapoint", nll), "kl": ("datapoint", kl)}
    base = {"num_points": len(elbo), "split": "test", "dataset": "ptb"}
    xr.Dataset(variables, attrs={**base, **(attrs or {})}).to_netcdf(path, engine="h5netcdf")
    return path


def test_paired_difference_is_the_mean_of_differences_with_its_standard_error():
    a = np.array([1.0, 2.0, 4.0, np.nan])
    b = np.array([2.0, 2.5, 5.5, 9.0])  # differences 1, 0.5, 1.5; the nan point is dropped
    n, mean, se = paired_cells.paired(a, b)
    assert n == 3 and mean == pytest.approx(1.0)
    assert se == pytest.approx(0.5 / math.sqrt(3))  # sd of (1, 0.5, 1.5) is 0.5


def test_pairing_resolves_a_shift_the_spread_between_points_would_hide(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    spread = rng.normal(0.0, 20.0, n)  # sentence-to-sentence spread, as in text
    noise = rng.normal(0.0, 0.1, n)
    nll = np.where(np.arange(n) < 100, 100.0 + spread, np.nan)  # a 100-point IW-NLL subset
    a = diagnosis(tmp_path / "a.nc", -100.0 + spread, nll)
    b = diagnosis(tmp_path / "b.nc", -99.7 + spread + noise, nll - 0.2)
    result = subprocess.run(
        [sys.executable, SCRIPT, a, b, "--names", "VAE,Skip", "--out", tmp_path / "t.md"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {line.split(" | ")[0]: line for line in result.stdout.splitlines()}
    elbo = rows["| ELBO (nats)"]
    shift = 0.3 + noise.mean()
    se = noise.std(ddof=1) / math.sqrt(n)
    assert f"{shift:+.3f} ± {se:.3f} | {n} |" in elbo and "(excludes 0)" in elbo
    assert "-0.200 ± 0.000 | 100 |" in rows["| IW-NLL (nats, K = 500 subset)"]
    assert "+0.000 ± 0.000" in rows["| KL (nats)"] and "(includes 0)" in rows["| KL (nats)"]
    assert "MI" not in result.stdout  # absent variables are left out, not invented
    # each cell's own mean ± se: A's ELBO is -100 + spread over all n points
    own = spread.std(ddof=1) / math.sqrt(n)
    assert f"| {-100 + spread.mean():.3f} ± {own:.3f} |" in elbo
    # -ELBO - IW-NLL on the subset (made-up numbers, so it may be negative): A's is
    # 100 - spread - (100 + spread) = -2 spread per point, B's
    # 99.7 - spread - noise - (100 + spread - 0.2) = -0.1 - 2 spread - noise
    gain = rows["| −ELBO − IW-NLL (nats, K = 500 subset)"]
    for own_gain in (-2 * spread[:100], -0.1 - 2 * spread[:100] - noise[:100]):
        assert f"| {own_gain.mean():.3f} ± {own_gain.std(ddof=1) / 10:.3f} |" in gain
    assert (
        f"| {-0.1 - noise[:100].mean():+.3f} ± {noise[:100].std(ddof=1) / 10:.3f} | 100 |" in gain
    )
    assert (tmp_path / "t.md").read_text() == result.stdout


@pytest.mark.parametrize("what", ["split", "length", "subset"])
def test_diagnoses_of_different_points_are_refused(tmp_path, what):
    n = 50
    nll = np.where(np.arange(n) < 10, 100.0, np.nan)
    a = diagnosis(tmp_path / "a.nc", np.zeros(n), nll)
    if what == "split":
        b = diagnosis(tmp_path / "b.nc", np.zeros(n), nll, {"split": "valid"})
    elif what == "length":
        b = diagnosis(tmp_path / "b.nc", np.zeros(n + 1), np.append(nll, np.nan))
    else:
        b = diagnosis(tmp_path / "b.nc", np.zeros(n), np.roll(nll, 5))
    result = subprocess.run([sys.executable, SCRIPT, a, b], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "same" in result.stderr
