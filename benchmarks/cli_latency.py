"""How fast the ``skipvae`` command answers help requests and usage errors.

Every command's ``--help``, ``--version`` and a few usage errors are run as fresh processes,
``--repeats`` times each (default 5), beside ``python -c "import click"`` (the floor: an
interpreter that imports click and nothing else). For each we record the median wall time
and the peak resident memory of the process (``ru_maxrss`` from ``os.wait4``).

``--version`` imports torch and Pyro on purpose (it names their versions), so it is timed
but not held to the limit. Everything else must answer within ``--limit`` seconds (1.0);
with ``--check`` the script exits 1 otherwise.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cli_latency.py --out benchmarks/results/cli_latency.md
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (arguments after ``skipvae``, expected exit status, held to the limit, note)
CASES = [
    (["--help"], 0, True, ""),
    (["fit", "--help"], 0, True, ""),
    (["diagnose", "--help"], 0, True, ""),
    (["compare", "--help"], 0, True, ""),
    (["sweep", "--help"], 0, True, ""),
    (["report", "--help"], 0, True, ""),
    (["fit", "--latent-dim", "0"], 2, True, "usage error"),
    (["diagnose"], 2, True, "usage error: missing RUN_DIR"),
    (["no-such-command"], 2, True, "usage error"),
    (["--version"], 0, False, "imports torch and Pyro"),
]


def timed(command: list[str], expected: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of ``command``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != expected:
        raise SystemExit(f"{command}: exit status {process.returncode}, expected {expected}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def measure(command, expected, repeats):
    runs = [timed(command, expected) for _ in range(repeats)]
    return statistics.median(w for w, _ in runs), max(m for _, m in runs)


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
        return out.stdout.strip() + (" (uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limit", type=float, default=1.0, help="seconds (default 1.0)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if a case is over --limit")
    parser.add_argument(
        "--machine",
        default=f"{os.cpu_count()}-core {platform.machine()} CPU box, shared with other jobs",
    )
    args = parser.parse_args()
    skipvae = shutil.which("skipvae", path=str(Path(sys.executable).parent)) or shutil.which(
        "skipvae"
    )
    if skipvae is None:
        raise SystemExit("no skipvae command found; install the package first (pip install -e .)")

    rows = []
    floor = measure([sys.executable, "-c", "import click"], 0, args.repeats)
    rows.append(('`python -c "import click"` (the floor)', *floor, None))
    for arguments, expected, limited, note in CASES:
        wall, rss = measure([skipvae, *arguments], expected, args.repeats)
        label = f"`skipvae {' '.join(arguments)}`" + (f" ({note})" if note else "")
        rows.append((label, wall, rss, limited))
        print(f"{label:50s} {wall:6.3f} s  {rss:6.0f} MiB", file=sys.stderr)

    over = [label for label, wall, _, limited in rows if limited and wall > args.limit]
    lines = [
        "# CLI latency: help and usage errors",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} "
        f"python benchmarks/cli_latency.py --repeats {args.repeats}"
        + (f" --out {args.out}" if args.out else "")
        + "`",
        "",
        f"Machine: {args.machine}; Python {platform.python_version()}. Commit: {commit()}. "
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"Median wall time of {args.repeats} fresh processes and their peak resident memory. "
        f"Limit for help and usage errors: {args.limit:.1f} s. `--version` imports torch and "
        "Pyro to name their versions, so it is shown but not held to the limit.",
        "",
        "| command | median wall (s) | peak RSS (MiB) | within limit |",
        "|---|---:|---:|---|",
    ]
    for label, wall, rss, limited in rows:
        verdict = (
            "" if limited is None else ("yes" if wall <= args.limit else "NO") if limited else "n/a"
        )
        lines.append(f"| {label} | {wall:.3f} | {rss:.0f} | {verdict} |")
    lines += [
        "",
        "Before the lazy imports (issue 16): `skipvae --help` took 6.1 s wall and 831 MiB peak.",
    ]
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    print(text)
    if args.check and over:
        raise SystemExit(f"over {args.limit} s: {', '.join(over)}")


if __name__ == "__main__":
    main()
