"""Issue 23's GPU figures in one command, inside a time budget: prints JSON lines and appends
them to ``--out``.

    PYTHONPATH=. python3 benchmarks/gpu_bench.py [--device cuda] [--budget-s 240]
        [--out benchmarks/results/gpu_bench.jsonl] [--parts mlp,pixelcnn,cells,iw-nll]
        [--mps auto|on|off]
    python3 benchmarks/gpu_bench.py --device cpu --tiny      # the tiny CPU run of the tests

Parts (each line has ``"part"``; every line also records the device name, torch and Pyro
versions, the git commit, the load average and the UTC time). All eager figures are measured
first (mlp, pixelcnn, cells, iw-nll), then the compiled ones (pixelcnn, mlp, cells), so a
budget too small for compilation still yields every eager figure:

``mlp``
    The MLP step ratio, Pyro over the faster of hand-written PyTorch with foreach and with
    fused Adam (same network): ``benchmarks/overhead.py`` itself, run as a child process with
    ``--sides pyro torch torch-fused``, eager and then with each of ``--compile-modes`` (both
    sides compiled alike). Its own JSON line is passed on under ``"overhead"``.
``pixelcnn``
    The paper-size PixelCNN step (8 gated layers × 32 channels, kernel 3; conv encoder of 64
    channels; latent 20; batch 50; Adam with clip 5 through ``SVI`` and our Trace_ELBO, what
    ``skipvae fit`` runs) on static binarised MNIST: eager and with each compile mode.
``cells``
    Aggregate training throughput of 1, 2 and 4 cells (``--cells``) side by side on the one
    device, each cell its own process training the paper-size PixelCNN (as ``skipvae sweep
    --jobs N`` runs them): every process warms up (compiles), waits at a barrier, then counts
    the steps it finishes in ``--seconds`` seconds. Aggregate steps/s is their sum over the
    window; epochs per minute take an epoch as 50,000 / 50 = 1,000 steps (validation
    excluded); ``scaling`` is aggregate(N) / aggregate(1), to compare with the 0.7·N goal.
    Eager without MPS; then eager under CUDA MPS (``--mps``, below); then (budget allowing)
    with ``--cells-compile``. Every cells line says ``"mps"``: true or false.
``cells`` under CUDA MPS (``--mps auto``, the default, or ``on``)
    The same 1, 2, 4 cells as clients of one private MPS control daemon
    (:func:`pyro_skipvae.mps.daemon`, started once for the series and stopped after it), as
    ``skipvae sweep`` runs CUDA cells side by side. ``scaling`` is against one cell *without*
    MPS when that was measured (``scaling_reference`` says which). Measured right after the
    eager series; with ``auto`` it is skipped, with a line giving the reason, where MPS
    cannot run (a CPU device, no ``nvidia-cuda-mps-control`` on ``PATH``, or a daemon
    already reachable, which the series without MPS would have joined too); with ``on`` that
    line is an error; ``off`` measures only the series without MPS.
``iw-nll``
    The time of the importance-weighted NLL with K = 500 (the library's
    :func:`~pyro_skipvae.diagnostics.nll.importance_sample`, as ``skipvae diagnose`` runs it)
    of the paper-size PixelCNN on the test split (10,000 images). The weights are the
    untrained initial ones: only the time is measured. Within the budget a subset is timed
    and scaled to the whole split; the line says how many images were timed (``images``) and
    whether ``seconds_full_split`` is scaled (``scaled``).

**Budget.** ``--budget-s`` bounds the whole run (default 240 s). Before each measurement its
cost is estimated (process start, compilation, timing); a measurement that does not fit in
what is left is skipped with a line ``{"skipped": ...}``, and every child process runs under a
timeout of what is left, so the command ends within the budget plus a few seconds of cleanup.
Compilation (tens of seconds per network on a busy CPU, less on a GPU host) is the costly part:
the eager figures come first.

``--tiny`` shrinks every network and count so the whole command runs in seconds on one CPU
core (``tests/test_gpu_bench.py`` runs it so); tiny timings mean nothing. The data sets come
from ``$SKIPVAE_DATA_DIR`` (MNIST for ``mlp``, static binarised MNIST for the rest).
"""

import argparse
import datetime
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python3 benchmarks/gpu_bench.py` from anywhere
    sys.path.insert(0, str(ROOT))

STEPS_PER_EPOCH = 50_000 // 50
NUM_TEST = 10_000
PARTS = ("mlp", "pixelcnn", "cells", "iw-nll")
# paper size of benchmarks/pixelcnn_timing.py (the Skip-VAE MNIST setting), and a tiny one
PAPER = ({"num_layers": 8, "channels": 32, "kernel_sizes": 3}, {"channels": 64})
TINY = ({"num_layers": 2, "channels": 4, "kernel_sizes": 3}, {"channels": 4})


# ---------------------------------------------------------------------------- facts


def pixelcnn_vae(data_shape, args, compile=False):
    """The timed model: the paper-size PixelCNN VAE (or the tiny one), latent 20, seed 0."""
    from pyro_skipvae import SkipVAE

    decoder_options, encoder_options = TINY if args.tiny else PAPER
    return SkipVAE(
        data_shape,
        latent_dim=20,
        decoder="pixelcnn",
        encoder="conv",
        decoder_options=decoder_options,
        encoder_options=encoder_options,
        seed=0,
        device=args.device,
        compile=compile,
    )


def commit() -> str:
    """``$SKIPVAE_COMMIT`` if set (a tree copied to another machine may carry a stale .git,
    as the lent GPU machine's copy did), else git's HEAD, else "unknown"."""
    if os.environ.get("SKIPVAE_COMMIT"):
        return os.environ["SKIPVAE_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def facts(args) -> dict:
    """What every line records: device, versions, commit, load, time."""
    import torch

    try:
        import pyro

        pyro_version = pyro.__version__
    except ImportError:
        pyro_version = None
    if args.device == "cuda" and torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    return {
        "device": device,
        "torch": torch.__version__,
        "pyro": pyro_version,
        "python": platform.python_version(),
        "commit": commit(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tiny": args.tiny,
    }


class Budget:
    """Seconds left of ``total`` since creation."""

    def __init__(self, total):
        self.total, self.started = total, time.monotonic()

    def left(self) -> float:
        return self.total - (time.monotonic() - self.started)

    def fits(self, estimate) -> bool:
        return self.left() >= estimate


class Report:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out) if args.out else None

    def emit(self, part, **row):
        line = {"part": part, **row, **facts(self.args)}
        text = json.dumps(line)
        print(text, flush=True)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            with open(self.out, "a") as f:
                f.write(text + "\n")
        return line

    def skip(self, part, budget, estimate, **what):
        return self.emit(
            part,
            **what,
            skipped=f"budget: {budget.left():.0f} s left, needs about {estimate:.0f} s",
        )


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mps_unavailable(args) -> str | None:
    """Why the series under CUDA MPS cannot be measured here, or ``None``."""
    from pyro_skipvae import mps

    if args.device != "cuda":
        return f"MPS: the device is {args.device}; MPS is a CUDA service"
    if not mps.available():
        return f"MPS: {mps.CONTROL} is not on PATH"
    already = mps.running_daemon()
    if already:
        return f"MPS: {already}, so the series without MPS would not be without it"
    return None


# ---------------------------------------------------------------------------- mlp
def mlp(args, budget, report, modes):
    """overhead.py in a child process, for each mode (None: eager)."""
    for mode in modes:
        estimate = args.startup_s + args.mlp_s + (args.compile_s if mode else 0)
        if not budget.fits(estimate):
            report.skip("mlp", budget, estimate, compile=mode)
            continue
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "overhead.py"),
            "--device",
            args.device,
            "--sides",
            "pyro",
            "torch",
            "torch-fused",
            *(["--compile", mode] if mode else []),
            *(
                [
                    "--repeats=2",
                    "--steps=3",
                    "--batch-size=10",
                    "--decoder-option=hidden_dims=[16]",
                    "--encoder-option=hidden_dims=[16]",
                ]
                if args.tiny
                else ["--repeats=15", "--steps=20"]
            ),
        ]
        started = time.monotonic()
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=budget.left(), env=child_env()
            )
        except subprocess.TimeoutExpired:
            report.emit("mlp", compile=mode, error="timed out: the budget ran out")
            continue
        if done.returncode != 0:
            report.emit("mlp", compile=mode, error=done.stderr.strip()[-2000:])
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        report.emit(
            "mlp",
            compile=mode,
            ratio=result["ratio"],
            baseline=result["baseline"],
            ratio_range=result["ratio_range"],
            ms_per_step=result["ms_per_step"],
            seconds=round(time.monotonic() - started, 1),
            overhead=result,
        )


# ---------------------------------------------------------------------------- workers
def cell(args):
    """One training process (``--worker``): build the PixelCNN VAE, warm up (compile), print
    ``READY``, wait for the go file, count steps for ``--seconds``, print the JSON result."""
    import pyro
    import torch

    from pyro_skipvae.data import load_dataset
    from pyro_skipvae.infer import ELBOS, SVI, Optimizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    splits = load_dataset("binarized-mnist", train_size=20 * 50)
    vae = pixelcnn_vae(splits.data_shape, args, compile=args.worker_compile or False)
    svi = SVI(
        vae.model, vae.guide, Optimizer(vae.parameters(), clip_norm=5.0), ELBOS.build("trace")
    )
    batches = splits.train.to(vae.device).split(50)

    def step(i):
        with pyro.validation_enabled(False):  # as in pyro_skipvae.infer.fit.train
            return svi.step(batches[i % len(batches)], size=50_000)

    started = time.monotonic()
    for i in range(args.warmup_steps):
        step(i)
    warmup = time.monotonic() - started
    print("READY", flush=True)
    while args.go_file and not os.path.exists(args.go_file):
        time.sleep(0.002)
    steps, start = 0, time.time()
    end = start + args.seconds
    while time.time() < end or steps == 0:
        step(steps)  # .item() inside: each step has finished on the device when it returns
        steps += 1
    stop = time.time()
    print(
        json.dumps(
            {
                "steps": steps,
                "start": start,
                "stop": stop,
                "warmup_s": round(warmup, 1),
                "compiled": vae.compiled,
                "parameters": sum(p.numel() for p in vae.parameters()),
            }
        ),
        flush=True,
    )


def run_cells(args, budget, n, mode, extra_env=None):
    """Start ``n`` cells (``extra_env`` added to their environment: the MPS variables),
    release them together once all are warm, return their results (or raise TimeoutError /
    RuntimeError)."""
    with tempfile.TemporaryDirectory() as folder:
        go = os.path.join(folder, "go")
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--device",
            args.device,
            "--seconds",
            str(args.seconds),
            "--warmup-steps",
            str(args.warmup_steps if not mode else max(args.warmup_steps, 5)),
            "--go-file",
            go,
            *(["--worker-compile", mode] if mode else []),
            *(["--tiny"] if args.tiny else []),
        ]
        logs = [open(os.path.join(folder, f"cell{i}.err"), "w+") for i in range(n)]
        # stderr to files: a pipe nobody reads fills up with compiler warnings and blocks
        workers = [
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**child_env(), **(extra_env or {})},
            )
            for log in logs
        ]

        def failure(i):
            logs[i].seek(0)
            return RuntimeError(logs[i].read().strip()[-2000:] or f"cell {i} failed")

        try:
            for i, worker in enumerate(workers):  # the barrier: all warm before any is timed
                while True:
                    if budget.left() <= 0:
                        raise TimeoutError("the budget ran out while the cells warmed up")
                    ready, _, _ = select.select([worker.stdout], [], [], min(1.0, budget.left()))
                    if not ready:
                        continue
                    line = worker.stdout.readline()
                    if line.strip() == "READY":
                        break
                    if not line:  # end of output: the cell died
                        worker.wait()
                        raise failure(i)
            Path(go).touch()
            results = []
            for i, worker in enumerate(workers):
                out, _ = worker.communicate(timeout=max(budget.left(), 1))
                if worker.returncode != 0:
                    raise failure(i)
                results.append(json.loads(out.strip().splitlines()[-1]))
            return results
        except subprocess.TimeoutExpired:
            raise TimeoutError("the budget ran out while the cells trained") from None
        finally:
            for worker in workers:  # only the processes started here
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            for log in logs:
                log.close()


def cell_estimate(args, mode):
    return args.startup_s + (args.compile_s if mode else 0) + args.seconds + 5


def pixelcnn(args, budget, report, modes):
    """The step time of one cell, for each mode (None: eager)."""
    for mode in modes:
        estimate = cell_estimate(args, mode)
        if not budget.fits(estimate):
            report.skip("pixelcnn", budget, estimate, compile=mode)
            continue
        try:
            (result,) = run_cells(args, budget, 1, mode)
        except (TimeoutError, RuntimeError) as e:
            report.emit("pixelcnn", compile=mode, error=str(e))
            continue
        ms = 1e3 * (result["stop"] - result["start"]) / result["steps"]
        if mode is None:
            args.eager_ms = ms
        eager_ms = getattr(args, "eager_ms", None)
        report.emit(
            "pixelcnn",
            size="tiny" if args.tiny else "paper: 8 x 32, kernel 3; conv encoder 64; latent 20",
            batch_size=50,
            compile=mode,
            compiled=result["compiled"],
            ms_per_step=round(ms, 3),
            steps_timed=result["steps"],
            speedup_over_eager=None if eager_ms is None else round(eager_ms / ms, 3),
            warmup_s=result["warmup_s"],
            parameters=result["parameters"],
        )


def cells(args, budget, report, modes, mps_env=None):
    """Aggregate throughput of N cells side by side, for each mode (None: eager); under the
    MPS daemon of ``mps_env`` if given."""
    from pyro_skipvae.mps import running_daemon

    mps = mps_env is not None
    # without MPS of our own, a daemon the user runs would still be joined: say so
    note = None if mps else running_daemon()
    for mode in modes:
        single = None
        # the reference is one cell alone without MPS; under MPS, once that is known
        reference = getattr(args, "single_rate", {}).get(mode) if mps else None
        for n in args.cells:
            estimate = cell_estimate(args, mode) + 2 * n  # the cells start side by side
            if not budget.fits(estimate):
                report.skip("cells", budget, estimate, cells=n, compile=mode, mps=mps)
                continue
            try:
                results = run_cells(args, budget, n, mode, mps_env)
            except (TimeoutError, RuntimeError) as e:
                report.emit("cells", cells=n, compile=mode, mps=mps, error=str(e))
                continue
            window = max(r["stop"] for r in results) - min(r["start"] for r in results)
            steps = sum(r["steps"] for r in results)
            rate = steps / window
            single = rate if n == 1 else single
            if n == 1 and not mps:
                args.single_rate = {**getattr(args, "single_rate", {}), mode: rate}
            base = reference or single
            report.emit(
                "cells",
                cells=n,
                compile=mode,
                mps=mps,
                **({"mps_note": note + ": the cells may have joined it"} if note else {}),
                steps_per_second=round(rate, 2),
                epochs_per_minute=round(60 * rate / STEPS_PER_EPOCH, 3),
                scaling=None if base is None else round(rate / base, 3),
                scaling_reference=None
                if base is None
                else "1 cell without MPS"
                if reference or not mps
                else "1 cell with MPS",
                goal=round(0.7 * n, 2),
                ms_per_step_each=[
                    round(1e3 * (r["stop"] - r["start"]) / r["steps"], 2) for r in results
                ],
                window_s=round(window, 2),
            )


def cells_mps(args, budget, report, modes):
    """The cells series again, as clients of one private CUDA MPS daemon (``--mps``)."""
    from pyro_skipvae import mps
    from pyro_skipvae.errors import MPSError

    if args.mps == "off":
        return
    reason = mps_unavailable(args)
    if reason is not None:
        if args.mps == "on":
            report.emit("cells", mps=True, error=reason)
        else:
            report.emit("cells", mps=True, skipped=reason)
        return
    # the daemon's start and stop: a few seconds, on top of the series' first cell
    estimate = cell_estimate(args, None) + 5
    if not budget.fits(estimate):
        report.skip("cells", budget, estimate, mps=True)
        return
    try:
        with mps.daemon(timeout=min(30.0, max(budget.left(), 1))) as mps_env:
            cells(args, budget, report, modes, mps_env=mps_env)
    except MPSError as e:
        report.emit("cells", mps=True, error=str(e))


# ---------------------------------------------------------------------------- iw-nll
def iw_nll(args, budget, report, modes=None):
    """IW-NLL (K = 500) time on the test split, a subset scaled up if the budget demands."""
    estimate = 10 + (2 if args.tiny else 15)
    if not budget.fits(estimate):
        report.skip("iw-nll", budget, estimate)
        return
    import pyro
    import torch

    from pyro_skipvae.data import load_dataset
    from pyro_skipvae.diagnostics.nll import importance_sample
    from pyro_skipvae.modes import evaluating

    test = load_dataset("binarized-mnist").test
    vae = pixelcnn_vae(test.shape[1:], args)
    cuda = vae.device.type == "cuda"

    def timed(n):
        x = test[:n].to(vae.device)
        pyro.set_rng_seed(0)
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        with evaluating(vae.model, vae.guide):
            result = importance_sample(vae.model, vae.guide, x, num_samples=500)
        if cuda:
            torch.cuda.synchronize()
        assert torch.isfinite(result.nll).all()
        return time.perf_counter() - started

    # a first small batch (allocator, cuDNN's algorithm search), then as many images as half
    # of what is left allows, at most the whole split
    first = 2 if args.tiny else 100 if cuda else 10
    per_image = timed(first) / first
    n = int(min(NUM_TEST, max(first, 0.5 * (budget.left() - 5) / per_image)))
    n = min(n, args.iw_images or (4 if args.tiny else NUM_TEST))
    seconds = timed(n)
    report.emit(
        "iw-nll",
        num_samples=500,
        split="test",
        size="tiny" if args.tiny else "paper PixelCNN (untrained weights: time only)",
        images=n,
        seconds=round(seconds, 2),
        seconds_full_split=round(seconds * NUM_TEST / n, 1),
        scaled=n < NUM_TEST,
        note=None if n == NUM_TEST else f"{n} of {NUM_TEST} test images timed, scaled up",
    )


# ---------------------------------------------------------------------------- main
def parse(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU test)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument(
        "--compile-modes",
        default=None,
        help="comma-separated compile modes timed after eager ('' for none) "
        "[default: default,reduce-overhead on cuda; default on cpu; none with --tiny]",
    )
    parser.add_argument(
        "--cells-compile",
        default=None,
        help="compile mode of the second cells series ('' for none) "
        "[default: reduce-overhead on cuda, else none]",
    )
    parser.add_argument("--cells", default=None, help="cells side by side [default: 1,2,4]")
    parser.add_argument(
        "--mps",
        default="auto",
        choices=["auto", "on", "off"],
        help="the cells series under CUDA MPS too: auto (where MPS can run), on (an error "
        "line where it cannot), off [default: auto]",
    )
    parser.add_argument("--seconds", type=float, default=None, help="timing window per cell")
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--iw-images", type=int, default=None, help="at most this many")
    # estimates that decide what fits in the budget
    parser.add_argument("--startup-s", type=float, default=None, help="process start + data")
    parser.add_argument("--compile-s", type=float, default=None, help="one compilation")
    parser.add_argument("--mlp-s", type=float, default=None, help="overhead.py's timing")
    # a cell process (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-compile", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--go-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if args.compile_modes is None:
        args.compile_modes = "" if args.tiny else "default,reduce-overhead" if cuda else "default"
    args.compile_modes = [m for m in args.compile_modes.split(",") if m]
    if args.cells_compile is None:
        args.cells_compile = "reduce-overhead" if cuda and not args.tiny else ""
    args.cells = [int(n) for n in (args.cells or ("1,2" if args.tiny else "1,2,4")).split(",")]
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; expected some of {', '.join(PARTS)}")
    defaults = {  # tiny / full
        "seconds": (0.5, 8.0),
        "warmup_steps": (1, 3),
        "startup_s": (10.0, 20.0),
        "compile_s": (60.0, 90.0),
        "mlp_s": (10.0, 30.0),
    }
    for name, (tiny, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    return args


def main(argv=None):
    args = parse(argv)
    if args.worker:
        cell(args)
        return
    budget = Budget(args.budget_s)
    report = Report(args)
    report.emit(
        "start",
        budget_s=args.budget_s,
        parts=args.parts,
        compile_modes=args.compile_modes,
        cells=args.cells,
        mps=args.mps,
        command="python3 benchmarks/gpu_bench.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    )
    started = time.monotonic()
    compiled = list(args.compile_modes)
    cells_compiled = [args.cells_compile] if args.cells_compile else []
    # every eager figure first, then the compiled ones (compilation is the costly part)
    plan = [
        ("mlp", mlp, [None]),
        ("pixelcnn", pixelcnn, [None]),
        ("cells", cells, [None]),
        ("cells", cells_mps, [None]),
        ("iw-nll", iw_nll, None),
        ("pixelcnn", pixelcnn, compiled),
        ("mlp", mlp, compiled),
        ("cells", cells, cells_compiled),
    ]
    for part, run, modes in plan:
        if part not in args.parts or modes == []:
            continue
        try:
            run(args, budget, report, modes)
        except Exception as e:  # one part's failure (missing data, a CUDA error) is a line
            report.emit(part, compile=modes, error=f"{type(e).__name__}: {e}"[-2000:])
    report.emit("end", seconds=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    main()
