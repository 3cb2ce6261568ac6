"""benchmarks/gpu_bench.py (issue 23's GPU figures) at its tiny size on the CPU: every part
prints its JSON line with the facts that make a timing reportable, within the budget."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_tiny_on_the_cpu(data_dir, tmp_path):
    out = tmp_path / "bench.jsonl"
    env = {**os.environ, "SKIPVAE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_bench.py", "--device", "cpu", "--tiny", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in out.read_text().splitlines()] == printed
    rows = {(r["part"], r["cells"] if r["part"] == "cells" else None): r for r in printed}
    assert set(rows) == {
        ("start", None),
        ("mlp", None),
        ("pixelcnn", None),
        ("cells", 1),
        ("cells", 2),
        ("iw-nll", None),
        ("end", None),
    }
    for row in printed:
        assert "error" not in row and "skipped" not in row, row
        assert {"device", "torch", "pyro", "commit", "load_average", "time"} <= set(row)
    assert rows[("mlp", None)]["ratio"] > 0 and rows[("mlp", None)]["baseline"].startswith("torch")
    assert rows[("pixelcnn", None)]["ms_per_step"] > 0
    assert rows[("cells", 2)]["steps_per_second"] > 0 and rows[("cells", 1)]["scaling"] == 1.0
    iw = rows[("iw-nll", None)]
    assert iw["num_samples"] == 500 and iw["scaled"] and iw["images"] < 10_000


def test_gpu_bench_skips_what_does_not_fit_in_the_budget(data_dir, tmp_path):
    env = {**os.environ, "SKIPVAE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_bench.py", "--device", "cpu", "--tiny", "--budget-s", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    measured = [r for r in rows if r["part"] not in ("start", "end")]
    assert measured and all("skipped" in r for r in measured)
    assert rows[-1]["part"] == "end" and rows[-1]["seconds"] < 10
