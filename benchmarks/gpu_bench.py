"""The GPU figures of issues 23 and 34 in one command, inside a time budget: prints JSON lines
and appends them to ``--out``.

    PYTHONPATH=. python3 benchmarks/gpu_bench.py [--device cuda] [--budget-s 240]
        [--out benchmarks/results/gpu_bench.jsonl] [--parts mlp,pixelcnn,cells,iw-nll]
        [--mps auto|on|off] [--precisions 32,bf16-mixed]
    python3 benchmarks/gpu_bench.py --device cpu --tiny      # the tiny CPU run of the tests

Parts (each line has ``"part"`` and, but for the start and end lines, ``"precision"``; every
line also records the device name, torch and Pyro versions, the git commit, the load average
and the UTC time). Each part is measured in each of ``--precisions`` (default both):
``32`` (float32) and ``bf16-mixed`` (``SkipVAE(precision="bf16-mixed")``: the networks under
bfloat16 autocast, :mod:`pyro_skipvae.infer.precision`). The order is every eager float32
figure (mlp, pixelcnn, cells, cells under MPS, iw-nll), then the same eager figures in
bf16-mixed, then the compiled ones (pixelcnn, mlp, cells; float32's, then bf16-mixed's), so a
small budget still yields every eager float32 figure and a larger one the bf16 figures before
any compilation. A bf16-mixed line has ``"speedup_over_float32"``: the float32 time of the
same figure (same part, compile mode, cells and MPS) over its own, or null where float32's was
not measured. Where the library refuses bf16-mixed on the device (a CUDA GPU without bfloat16,
compute capability below 8.0: a ConfigError), each bf16-mixed part is one line with that
``"error"`` and the run goes on:

``mlp``
    The MLP step ratio, Pyro over the faster of hand-written PyTorch with foreach and with
    fused Adam (same network): ``benchmarks/overhead.py`` itself, run as a child process with
    ``--sides pyro torch torch-fused --precision P``, eager and then with each of
    ``--compile-modes`` (both sides compiled alike; under bf16-mixed the hand-written sides
    write the autocast by hand, so the ratio compares bf16 with bf16). Its own JSON line is
    passed on under ``"overhead"``; ``speedup_over_float32`` is the Pyro step's.
``pixelcnn``
    The paper-size PixelCNN step (8 gated layers × 32 channels, kernel 3; conv encoder of 64
    channels; latent 20; batch 50; Adam with clip 5 through ``SVI`` and our Trace_ELBO, what
    ``skipvae fit`` runs) on static binarised MNIST, built with ``precision=P``: eager and
    with each compile mode.
``cells``
    Aggregate training throughput of 1, 2 and 4 cells (``--cells``) side by side on the one
    device, each cell its own process training the paper-size PixelCNN in the series'
    precision (as ``skipvae sweep --jobs N`` runs them): every process warms up (compiles),
    waits at a barrier, then counts the steps it finishes in ``--seconds`` seconds. Aggregate
    steps/s is their sum over the window; epochs per minute take an epoch as 50,000 / 50 =
    1,000 steps (validation excluded); ``scaling`` is aggregate(N) / aggregate(1), to compare
    with the 0.7·N goal. Eager without MPS; then eager under CUDA MPS (``--mps``, below); then
    (budget allowing) with ``--cells-compile``. Every cells line says ``"mps"``: true or false.
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
    whether ``seconds_full_split`` is scaled (``scaled``). Each timing takes at most
    ``--iw-s`` seconds (default 30) and half of what is left of the budget, so the float32
    timing leaves the bf16 series its share.

**Budget.** ``--budget-s`` bounds the whole run (default 240 s). Before each measurement its
cost is estimated (process start, compilation, timing); a measurement that does not fit in
what is left is skipped with a line ``{"skipped": ...}``, and every child process runs under a
timeout of what is left, so the command ends within the budget plus a few seconds of cleanup.
Compilation (tens of seconds per network on a busy CPU, less on a GPU host) is the costly part:
the eager figures come first. On an H200 a budget of 200 s covered the eager float32 figures
without MPS (``benchmarks/results/gpu_bench.md``); the MPS series and the bf16-mixed series
each add about as much again (an estimate), so ask for more (``--budget-s 540``) to get them.

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


def pixelcnn_vae(data_shape, args, compile=False, precision="32"):
    """The timed model: the paper-size PixelCNN VAE (or the tiny one), latent 20, seed 0, in
    ``precision`` (``"32"`` or ``"bf16-mixed"``)."""
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
        precision=precision,
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


def against_float32(args, precision, key, seconds) -> dict:
    """Remember a float32 time under ``key``; for another precision, its speed-up over the
    float32 time of the same ``key`` (``{"speedup_over_float32": ...}``, None if not measured)."""
    if precision == "32":
        args.float32_seconds[key] = seconds
        return {}
    reference = args.float32_seconds.get(key)
    return {"speedup_over_float32": None if reference is None else round(reference / seconds, 3)}


def refusal(args, precision) -> str | None:
    """Why ``precision`` cannot run on ``args.device`` (the library's own check: a CUDA device
    without bfloat16 is a ConfigError), or ``None``."""
    from pyro_skipvae.infer import precision as mixed

    try:
        mixed.check_device(precision, args.device)
    except Exception as e:  # ConfigError; or CUDA asked of a machine without it
        return f"{type(e).__name__}: {e}"
    return None


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
def mlp(args, budget, report, precision, modes):
    """overhead.py in a child process, in ``precision``, for each mode (None: eager)."""
    for mode in modes:
        estimate = args.startup_s + args.mlp_s + (args.compile_s if mode else 0)
        if not budget.fits(estimate):
            report.skip("mlp", budget, estimate, precision=precision, compile=mode)
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
            "--precision",
            precision,
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
            report.emit(
                "mlp", precision=precision, compile=mode, error="timed out: the budget ran out"
            )
            continue
        if done.returncode != 0:
            error = done.stderr.strip()[-2000:]
            report.emit("mlp", precision=precision, compile=mode, error=error)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        report.emit(
            "mlp",
            precision=precision,
            compile=mode,
            ratio=result["ratio"],
            baseline=result["baseline"],
            ratio_range=result["ratio_range"],
            ms_per_step=result["ms_per_step"],
            # the Pyro step's own speed-up (the ratio compares like with like, bf16 with bf16)
            **against_float32(args, precision, ("mlp", mode), result["ms_per_step"]["pyro"]),
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
    vae = pixelcnn_vae(
        splits.data_shape,
        args,
        compile=args.worker_compile or False,
        precision=args.worker_precision,
    )
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
                "precision": vae.config.precision,
                "parameters": sum(p.numel() for p in vae.parameters()),
            }
        ),
        flush=True,
    )


def run_cells(args, budget, n, mode, precision="32", extra_env=None):
    """Start ``n`` cells in ``precision`` (``extra_env`` added to their environment: the MPS
    variables), release them together once all are warm, return their results (or raise
    TimeoutError / RuntimeError)."""
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
            "--worker-precision",
            precision,
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


def pixelcnn(args, budget, report, precision, modes):
    """The step time of one cell in ``precision``, for each mode (None: eager)."""
    for mode in modes:
        estimate = cell_estimate(args, mode)
        if not budget.fits(estimate):
            report.skip("pixelcnn", budget, estimate, precision=precision, compile=mode)
            continue
        try:
            (result,) = run_cells(args, budget, 1, mode, precision)
        except (TimeoutError, RuntimeError) as e:
            report.emit("pixelcnn", precision=precision, compile=mode, error=str(e))
            continue
        ms = 1e3 * (result["stop"] - result["start"]) / result["steps"]
        if mode is None:
            args.eager_ms[precision] = ms
        eager_ms = args.eager_ms.get(precision)  # the same precision's eager step
        report.emit(
            "pixelcnn",
            precision=precision,
            size="tiny" if args.tiny else "paper: 8 x 32, kernel 3; conv encoder 64; latent 20",
            batch_size=50,
            compile=mode,
            compiled=result["compiled"],
            ms_per_step=round(ms, 3),
            steps_timed=result["steps"],
            speedup_over_eager=None if eager_ms is None else round(eager_ms / ms, 3),
            **against_float32(args, precision, ("pixelcnn", mode), ms),
            warmup_s=result["warmup_s"],
            parameters=result["parameters"],
        )


def cells(args, budget, report, precision, modes, mps_env=None):
    """Aggregate throughput of N cells side by side in ``precision``, for each mode (None:
    eager); under the MPS daemon of ``mps_env`` if given."""
    from pyro_skipvae.mps import running_daemon

    mps = mps_env is not None
    # without MPS of our own, a daemon the user runs would still be joined: say so
    note = None if mps else running_daemon()
    for mode in modes:
        single = None
        # the reference is one cell alone without MPS; under MPS, once that is known
        reference = args.single_rate.get((precision, mode)) if mps else None
        for n in args.cells:
            estimate = cell_estimate(args, mode) + 2 * n  # the cells start side by side
            what = {"precision": precision, "cells": n, "compile": mode, "mps": mps}
            if not budget.fits(estimate):
                report.skip("cells", budget, estimate, **what)
                continue
            try:
                results = run_cells(args, budget, n, mode, precision, mps_env)
            except (TimeoutError, RuntimeError) as e:
                report.emit("cells", **what, error=str(e))
                continue
            window = max(r["stop"] for r in results) - min(r["start"] for r in results)
            steps = sum(r["steps"] for r in results)
            rate = steps / window
            single = rate if n == 1 else single
            if n == 1 and not mps:
                args.single_rate[(precision, mode)] = rate
            base = reference or single
            report.emit(
                "cells",
                **what,
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
                **against_float32(args, precision, ("cells", mode, mps, n), 1 / rate),
            )


def cells_mps(args, budget, report, precision, modes):
    """The cells series again, as clients of one private CUDA MPS daemon (``--mps``)."""
    from pyro_skipvae import mps
    from pyro_skipvae.errors import MPSError

    if args.mps == "off":
        return
    reason = mps_unavailable(args)
    if reason is not None:
        if args.mps == "on":
            report.emit("cells", precision=precision, mps=True, error=reason)
        else:
            report.emit("cells", precision=precision, mps=True, skipped=reason)
        return
    # the daemon's start and stop: a few seconds, on top of the series' first cell
    estimate = cell_estimate(args, None) + 5
    if not budget.fits(estimate):
        report.skip("cells", budget, estimate, precision=precision, mps=True)
        return
    try:
        with mps.daemon(timeout=min(30.0, max(budget.left(), 1))) as mps_env:
            cells(args, budget, report, precision, modes, mps_env=mps_env)
    except MPSError as e:
        report.emit("cells", precision=precision, mps=True, error=str(e))


# ---------------------------------------------------------------------------- iw-nll
def iw_nll(args, budget, report, precision, modes=None):
    """IW-NLL (K = 500) time on the test split in ``precision``, a subset scaled up if the
    budget demands."""
    estimate = 10 + min(args.iw_s, 2 if args.tiny else 15)
    if not budget.fits(estimate):
        report.skip("iw-nll", budget, estimate, precision=precision)
        return
    import pyro
    import torch

    from pyro_skipvae.data import load_dataset
    from pyro_skipvae.diagnostics.nll import importance_sample
    from pyro_skipvae.modes import evaluating

    test = load_dataset("binarized-mnist").test
    vae = pixelcnn_vae(test.shape[1:], args, precision=precision)
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

    # a first small batch (allocator, cuDNN's algorithm search), then as many images as
    # --iw-s seconds and half of what is left allow, at most the whole split
    first = 2 if args.tiny else 100 if cuda else 10
    per_image = timed(first) / first
    allowed = min(args.iw_s, 0.5 * (budget.left() - 5))
    n = int(min(NUM_TEST, max(first, allowed / per_image)))
    n = min(n, args.iw_images or (4 if args.tiny else NUM_TEST))
    seconds = timed(n)
    report.emit(
        "iw-nll",
        precision=precision,
        num_samples=500,
        split="test",
        size="tiny" if args.tiny else "paper PixelCNN (untrained weights: time only)",
        images=n,
        seconds=round(seconds, 2),
        seconds_full_split=round(seconds * NUM_TEST / n, 1),
        scaled=n < NUM_TEST,
        note=None if n == NUM_TEST else f"{n} of {NUM_TEST} test images timed, scaled up",
        **against_float32(args, precision, ("iw-nll",), seconds / n),
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
        "--precisions",
        default="32,bf16-mixed",
        help="comma-separated precisions to measure, float32 first whatever the order given "
        "[default: 32,bf16-mixed]",
    )
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
    parser.add_argument(
        "--iw-s", type=float, default=None, help="at most this long per IW-NLL timing [30 s]"
    )
    # estimates that decide what fits in the budget
    parser.add_argument("--startup-s", type=float, default=None, help="process start + data")
    parser.add_argument("--compile-s", type=float, default=None, help="one compilation")
    parser.add_argument("--mlp-s", type=float, default=None, help="overhead.py's timing")
    # a cell process (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-compile", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-precision", default="32", help=argparse.SUPPRESS)
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
    from pyro_skipvae.errors import ConfigError
    from pyro_skipvae.infer.precision import PRECISIONS, precision_mode

    try:
        named = {precision_mode(p) for p in args.precisions.split(",") if p}
    except ConfigError as e:
        parser.error(str(e))
    if not named:
        parser.error("--precisions names none")
    args.precisions = sorted(named, key=PRECISIONS.index)  # float32 first
    # what later measurements are compared with, filled in as the run goes
    args.eager_ms, args.single_rate, args.float32_seconds = {}, {}, {}
    defaults = {  # tiny / full
        "seconds": (0.5, 8.0),
        "warmup_steps": (1, 3),
        "startup_s": (10.0, 20.0),
        "compile_s": (60.0, 90.0),
        "mlp_s": (10.0, 30.0),
        "iw_s": (5.0, 30.0),
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
        precisions=args.precisions,
        compile_modes=args.compile_modes,
        cells=args.cells,
        mps=args.mps,
        command="python3 benchmarks/gpu_bench.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    )
    started = time.monotonic()
    compiled = list(args.compile_modes)
    cells_compiled = [args.cells_compile] if args.cells_compile else []
    # every eager float32 figure first, then the eager ones of the other precisions, then the
    # compiled ones (compilation is the costly part), float32's first
    plan = [
        step
        for precision in args.precisions
        for step in [
            ("mlp", mlp, precision, [None]),
            ("pixelcnn", pixelcnn, precision, [None]),
            ("cells", cells, precision, [None]),
            ("cells", cells_mps, precision, [None]),
            ("iw-nll", iw_nll, precision, None),
        ]
    ] + [
        step
        for precision in args.precisions
        for step in [
            ("pixelcnn", pixelcnn, precision, compiled),
            ("mlp", mlp, precision, compiled),
            ("cells", cells, precision, cells_compiled),
        ]
    ]
    refused = {p: refusal(args, p) for p in args.precisions}
    for part, run, precision, modes in plan:
        if part not in args.parts or modes == []:
            continue
        if refused[precision]:  # e.g. bf16-mixed on a GPU without bfloat16: said, not run
            report.emit(part, precision=precision, compile=modes, error=refused[precision])
            continue
        try:
            run(args, budget, report, precision, modes)
        except Exception as e:  # one part's failure (missing data, a CUDA error) is a line
            error = f"{type(e).__name__}: {e}"[-2000:]
            report.emit(part, precision=precision, compile=modes, error=error)
    report.emit("end", seconds=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    main()
