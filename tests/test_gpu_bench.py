"""benchmarks/gpu_bench.py (the GPU figures of issues 23 and 34) at its tiny size on the CPU:
every part prints its JSON line, in float32 and in bf16-mixed, with the facts that make a
timing reportable, within the budget."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_mps import calls, fake  # noqa: F401  (the fake MPS control program's fixture)

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
    assert printed[0]["precisions"] == ["32", "bf16-mixed"]

    def key(r):
        return r["part"], r.get("precision"), r.get("cells") if r["part"] == "cells" else None

    # every eager float32 figure before any bf16-mixed one
    order = [key(r) for r in printed]
    assert order == [
        ("start", None, None),
        *(
            (part, precision, n)
            for precision in ("32", "bf16-mixed")
            for part, n in [
                ("mlp", None),
                ("pixelcnn", None),
                ("cells", 1),
                ("cells", 2),
                ("cells", None),  # the series under CUDA MPS, skipped on the CPU
                ("iw-nll", None),
            ]
        ),
        ("end", None, None),
    ]
    rows = {key(r): r for r in printed}
    for precision in ("32", "bf16-mixed"):
        mps = rows.pop(("cells", precision, None))
        assert mps["mps"] is True
        assert mps["skipped"] == "MPS: the device is cpu; MPS is a CUDA service"
    for row in rows.values():
        assert "error" not in row and "skipped" not in row, row
        assert {"device", "torch", "pyro", "commit", "load_average", "time"} <= set(row)
    for precision in ("32", "bf16-mixed"):
        mlp = rows[("mlp", precision, None)]
        assert mlp["ratio"] > 0 and mlp["baseline"].startswith("torch")
        assert mlp["overhead"]["precision"] == precision  # overhead.py ran in it
        assert rows[("pixelcnn", precision, None)]["ms_per_step"] > 0
        one, two = rows[("cells", precision, 1)], rows[("cells", precision, 2)]
        assert two["steps_per_second"] > 0 and one["scaling"] == 1.0
        assert one["mps"] is False and two["mps"] is False
        iw = rows[("iw-nll", precision, None)]
        assert iw["num_samples"] == 500 and iw["scaled"] and iw["images"] < 10_000
    for key_ in [
        ("mlp", "bf16-mixed", None),
        ("pixelcnn", "bf16-mixed", None),
        ("cells", "bf16-mixed", 2),
        ("iw-nll", "bf16-mixed", None),
    ]:
        assert rows[key_]["speedup_over_float32"] > 0, key_
    assert "speedup_over_float32" not in rows[("pixelcnn", "32", None)]


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
    assert {r["precision"] for r in measured} == {"32", "bf16-mixed"}
    assert rows[-1]["part"] == "end" and rows[-1]["seconds"] < 10


@pytest.mark.usefixtures("fake")
def test_the_mps_series_runs_under_one_private_daemon(data_dir, tmp_path, monkeypatch):
    # The CPU stands in for the GPU and a fake control program for NVIDIA's (test_mps.py):
    # what is checked is the plumbing, one daemon for the series, its variables in every
    # cell's environment, the lines it writes; not a speed.
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("SKIPVAE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(bench, "mps_unavailable", lambda args: None)
    given = []
    run_cells = bench.run_cells

    def spy(args, budget, n, mode, precision="32", extra_env=None):
        given.append(extra_env)
        return run_cells(args, budget, n, mode, precision, extra_env)

    monkeypatch.setattr(bench, "run_cells", spy)
    out = tmp_path / "bench.jsonl"
    args = bench.parse(["--device", "cpu", "--tiny", "--parts", "cells", "--out", str(out)])
    args.single_rate = {("32", None): 10.0}  # one cell without MPS, as the eager series leaves it
    bench.cells_mps(args, bench.Budget(120), bench.Report(args), "32", [None])

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["cells"], r["mps"]) for r in lines] == [(1, True), (2, True)], lines
    for row in lines:
        assert row["scaling_reference"] == "1 cell without MPS"
        assert abs(row["scaling"] - row["steps_per_second"] / 10.0) < 0.01
    record = Path(os.environ["FAKE_MPS_RECORD"])
    started = [c for c in calls(record) if c["command"] == "start"]
    assert len(started) == 1  # one daemon for the whole series
    pipe = started[0]["pipe"]
    assert [e["CUDA_MPS_PIPE_DIRECTORY"] for e in given] == [pipe, pipe]
    assert calls(record)[-1] == {"command": "quit", "argv": "", "pipe": pipe}
    assert not os.path.exists(pipe)


def test_a_precision_the_device_refuses_is_one_error_line_a_part(tmp_path, monkeypatch, capsys):
    # bf16-mixed on a CUDA GPU without bfloat16: the library's ConfigError, stood in for here
    # (the CPU runs bf16); each of its parts says so and the run goes on to its end.
    import importlib.util

    from pyro_skipvae.errors import ConfigError
    from pyro_skipvae.infer import precision

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def check_device(mode, device):
        if mode != "32":
            raise ConfigError("precision 'bf16-mixed' needs a GPU with bfloat16 support")

    monkeypatch.setattr(precision, "check_device", check_device)
    bench.main(["--device", "cpu", "--tiny", "--precisions", "bf16", "--parts", "mlp,iw-nll"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["part"], r.get("precision")) for r in rows] == [
        ("start", None),
        ("mlp", "bf16-mixed"),
        ("iw-nll", "bf16-mixed"),
        ("end", None),
    ]
    for row in rows[1:3]:
        assert row["error"] == (
            "ConfigError: precision 'bf16-mixed' needs a GPU with bfloat16 support"
        )
