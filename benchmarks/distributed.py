"""Data-parallel throughput on this machine: ``skipvae fit`` with 1 and N processes, and the
cost of the gradient all-reduce alone.

1. Throughput: the same run (MNIST MLP skip-VAE at the paper's size, batch 50, a training
   slice of ``--train-size`` images, 1000 validation images) with ``--nproc 1`` and
   ``--nproc N`` (gloo on the CPU, or NCCL with ``--device cuda``), each process with
   ``--threads`` torch threads; images per second from the median epoch time in
   ``metrics.jsonl`` (which includes validation), first epoch excluded.
2. All-reduce: ``all_reduce_gradients`` on the MLP's gradients (3.3 M parameters, 13 MB) in N
   gloo processes, median milliseconds per call.

    python benchmarks/distributed.py [--nproc 2] [--threads 1] [--train-size 10000]
        [--num-epochs 3] [--device cpu] [--save]

Prints one JSON line last; ``--save`` appends it to ``benchmarks/results/distributed.jsonl``.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RESULTS = Path(__file__).parent / "results" / "distributed.jsonl"


def fit_throughput(nproc, args, out):
    command = [
        str(Path(sys.executable).with_name("skipvae")),
        "fit",
        "--train-size",
        str(args.train_size),
        "--val-size",
        "1000",
        "--num-epochs",
        str(args.num_epochs),
        "--batch-size",
        "50",
        "--device",
        args.device,
        "--quiet",
        "--out",
        str(out),
        "--nproc",
        str(nproc),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = statistics.median(r["seconds"] for r in records[1:])
    return {
        "seconds_per_epoch": round(seconds, 2),
        "images_per_second": round(args.train_size / seconds, 1),
        "wall_seconds_with_startup": round(wall, 1),
        "val_elbo": round(records[-1]["val_elbo"], 2),
    }


def _all_reduce_worker(rank, world_size, init_file, threads, out):
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        from pyro_skipvae import SkipVAE
        from pyro_skipvae.infer import distributed

        params = SkipVAE((1, 28, 28), seed=0).parameters()
        times = []
        for _ in range(25):
            for p in params:
                p.grad = torch.randn_like(p)
            dist.barrier()
            started = time.perf_counter()
            distributed.all_reduce_gradients(params, batch_size=25)
            times.append(time.perf_counter() - started)
        if rank == 0:
            numel = sum(p.numel() for p in params)
            Path(out).write_text(json.dumps([statistics.median(times[5:]), numel]))
    finally:
        dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--num-epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()

    result = {"device": args.device, "threads_per_process": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for nproc in (1, args.nproc):
            result[f"nproc_{nproc}"] = fit_throughput(nproc, args, tmp / f"run-{nproc}")
            print(f"{nproc} process(es): {result[f'nproc_{nproc}']}", flush=True)
        if args.device == "cpu":
            out = tmp / "all-reduce.json"
            mp.spawn(
                _all_reduce_worker,
                args=(args.nproc, str(tmp / "rendezvous"), args.threads, str(out)),
                nprocs=args.nproc,
            )
            seconds, numel = json.loads(out.read_text())
            result["all_reduce_ms"] = round(1e3 * seconds, 2)
            result["all_reduce_parameters"] = numel
    one, many = result["nproc_1"], result[f"nproc_{args.nproc}"]
    result["speedup"] = round(many["images_per_second"] / one["images_per_second"], 3)
    result.update(
        machine=f"{platform.machine()} {os.cpu_count()} cores",
        load_average=round(os.getloadavg()[0], 1),
        versions=f"torch {torch.__version__}",
        commit=subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        date=datetime.date.today().isoformat(),
        command="python benchmarks/distributed.py " + " ".join(sys.argv[1:]),
    )
    if args.save:
        with open(RESULTS, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
