"""benchmarks/curves_table.py --csv: every run's per-epoch record as one CSV (synthetic
metrics.jsonl files written here, not measurements)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "curves_table.py"


def write_run(folder, records):
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_csv_has_one_row_per_run_and_epoch_with_blanks_for_missing_keys(tmp_path):
    # an older run without val_au, a newer one with it and a key the CSV does not carry
    write_run(tmp_path / "old", [
        {"epoch": 1, "beta": 0.5, "val_elbo": -110.0, "val_kl": 2.0, "learning_rate": 1.0},
        {"epoch": 2, "beta": 1.0, "val_elbo": -105.0, "val_kl": 1.0, "learning_rate": 0.5},
    ])  # fmt: skip
    write_run(tmp_path / "new", [
        {"epoch": 1, "beta": 0.5, "val_elbo": -108.0, "val_kl": 3.0, "val_au": 7, "other": 1},
    ])  # fmt: skip
    out = tmp_path / "curves" / "c.csv"
    result = subprocess.run(
        [sys.executable, SCRIPT, tmp_path / "old", tmp_path / "new", "--names", "VAE,Skip-VAE",
         "--csv", out],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["run"], r["epoch"]) for r in rows] == [("VAE", "1"), ("VAE", "2"), ("Skip-VAE", "1")]
    assert rows[1]["learning_rate"] == "0.5" and rows[1]["val_au"] == ""
    assert rows[2]["val_au"] == "7" and rows[2]["val_kl"] == "3.0" and "other" not in rows[2]
    assert "| 2 | 1.00 |" in result.stdout  # the Markdown table is still printed
