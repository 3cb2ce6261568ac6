"""benchmarks/study_stats.py: t-intervals over seeds and paired skip - no-skip differences,
checked against hand-computed answers on synthetic numbers (not measurements)."""

import csv
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_stats.py"
spec = importlib.util.spec_from_file_location("study_stats", SCRIPT)
study_stats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_stats)

# Student t, 2 degrees of freedom, 97.5 % quantile: 4.302652729749462 (tables: 4.303).
T975_2 = 4.302652729749462


def test_t_interval_of_three_numbers_by_hand():
    # Synthetic: 1, 2, 3 -> mean 2, sd 1, half-width 4.3027 * 1 / sqrt(3) = 2.4841.
    n, mean, sd, low, high = study_stats.t_interval([1.0, 2.0, 3.0])
    assert n == 3
    assert mean == pytest.approx(2.0)
    assert sd == pytest.approx(1.0)
    assert low == pytest.approx(2.0 - 2.484138, abs=1e-6)
    assert high == pytest.approx(2.0 + 2.484138, abs=1e-6)
    assert (high - mean) * math.sqrt(3) == pytest.approx(T975_2)


def test_one_value_has_no_interval():
    n, mean, sd, low, high = study_stats.t_interval([5.0])
    assert (n, mean) == (1, 5.0)
    assert math.isnan(sd) and math.isnan(low) and math.isnan(high)
    assert study_stats.reading(n, low, high) == "1 seed: no interval"


def test_paired_difference_pairs_by_seed_and_reads_the_interval():
    # Synthetic: differences 1, 2, 3 (seed 3 has no partner and is left out).
    skip = {0: 3.0, 1: 5.0, 2: 7.0, 3: 100.0}
    plain = {0: 2.0, 1: 3.0, 2: 4.0}
    n, mean, sd, low, high = study_stats.paired_difference(skip, plain)
    assert (n, mean, sd) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert low < 0 < high
    assert study_stats.reading(n, low, high) == "consistent with no difference"
    # Synthetic: differences 2, 3, 4 -> [3 - 2.4841, 3 + 2.4841] = [0.516, 5.484], above 0.
    zero = {0: 0.0, 1: 0.0, 2: 0.0}
    n, mean, _, low, high = study_stats.paired_difference({0: 2.0, 1: 3.0, 2: 4.0}, zero)
    assert low == pytest.approx(0.515862, abs=1e-6)
    assert study_stats.reading(n, low, high) == "finding: skip higher"
    assert study_stats.reading(3, -5.0, -0.1) == "finding: skip lower"


def test_tables_and_identity_on_synthetic_rows(tmp_path):
    # Synthetic rows: KL - MI - aggregate KL is 0.02 in one cell, 0 elsewhere.
    path = tmp_path / "synthetic.csv"
    fields = ["cell", "status", "grid", "skip", "inference", "latent_dim", "num_layers", "seed"]
    fields += ["kl", "mi", "agg_kl", "au"]
    rows = []
    for seed, (kl_plain, kl_skip) in enumerate([(5.0, 6.0), (6.0, 8.0), (7.0, 10.0)]):
        for skip, kl in ((False, kl_plain), (True, kl_skip)):
            agg = 0.52 if (seed, skip) == (1, True) else 0.5
            rows.append(
                dict(
                    cell=f"seed={seed}_skip={str(skip).lower()}",
                    status="ok",
                    grid="g",
                    skip=str(skip),
                    inference="amortized",
                    latent_dim="20",
                    num_layers="",
                    seed=str(seed),
                    kl=kl,
                    mi=kl - 0.5,
                    agg_kl=agg,
                    au=10,
                )
            )
    rows.append({**rows[0], "status": "failed", "seed": "7", "kl": "999"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    gap, cell, _ = study_stats.identity_discrepancy([path])
    assert gap == pytest.approx(0.02)
    assert cell == "seed=1_skip=true"
    text = study_stats.tables([path], ("kl", "au"))
    # KL differences 1, 2, 3 -> 2.00 ± 1.00 [-0.48, 4.48]; AU differences 0, 0, 0.
    assert "| KL (nats) | 3 / 3 / 3 | 6.00 ± 1.00 [3.52, 8.48] | 8.00 ± 2.00 [3.03, 12.97] " in text
    assert "| 2.00 ± 1.00 [-0.48, 4.48] | consistent with no difference |" in text
    assert "| active units | 3 / 3 / 3 |" in text
    assert "0.0200 nats" in text
    diff = study_stats.tables([path], ("kl",), diff_only=True)
    assert len([line for line in diff.splitlines() if line.startswith("| ")]) == 2  # head, row
    assert "| KL (nats) | 3 | 2.00 ± 1.00 [-0.48, 4.48] |" in diff


def test_command_line_on_the_committed_image_rows():
    rows = ROOT / "benchmarks" / "results" / "pixelcnn_bmnist_cpu.csv"
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(rows), "--metrics", "kl,mi"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| KL (nats) | 3 / 3 / 3 |" in out
    assert "largest |KL - MI - aggregate KL|" in out
