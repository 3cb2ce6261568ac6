"""Summarise a mutmut run (``benchmarks/mutation.sh`` runs it) into
``benchmarks/results/mutation.json`` and the survivor list ``benchmarks/results/mutation.md``.

Reads mutmut's per-file verdicts (``mutants/**/*.py.meta``) and the hand-written arguments
for survivors judged equivalent (``benchmarks/mutation_equivalent.json``: mutant name → one
sentence). Score = killed / (killed + survived), where "survived" counts every mutant that no
test killed (mutmut's survived, no tests, timeout and not checked) except those argued
equivalent.

Usage: ``python benchmarks/mutation.py --wall-seconds S [--label after]``; ``--label before``
stores the summary under ``"before"`` in the JSON (kept by later runs), ``--label extension``
under ``"extension_before"`` (the first run after modules were added to ``only_mutate``).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"
KILLED = {"killed", "caught by type check", "segfault"}  # a test process that crashes kills


def verdicts():
    """``{mutant_name: status}`` over every mutated file, and the files (modules) mutated."""
    sys.path.insert(0, str(ROOT))  # mutmut reads setup.cfg from the working directory
    from mutmut.stats import status_by_exit_code

    out, modules = {}, []
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        source = str(meta.relative_to(ROOT / "mutants"))[: -len(".meta")]
        if codes:
            modules.append(source)
        out.update({name: status_by_exit_code[code] for name, code in codes.items()})
        SOURCE_OF.update(dict.fromkeys(codes, source))
    return out, modules


#: mutant name → its source file (filled by :func:`verdicts`)
SOURCE_OF = {}


def diff_line(name):
    """The changed lines of a mutant (what ``mutmut show`` prints), for the survivor lists."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(ROOT)  # mutmut reads mutants/ and its index relative to the project
    try:
        shown = get_diff_for_mutant(name, path=SOURCE_OF.get(name))
    except Exception:  # noqa: BLE001 - a function since changed: say so, do not stop
        shown = ""
    finally:
        os.chdir(cwd)
    changed = [
        line
        for line in shown.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return " / ".join(line.strip() for line in changed) or "(diff unavailable)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wall-seconds", type=float, required=True)
    parser.add_argument("--label", choices=["before", "extension", "after"], default="after")
    parser.add_argument("--note", help="a remark stored with the summary")
    parser.add_argument(
        "--checked-only",
        action="store_true",
        help="score only the mutants the run got to (a run stopped before the end)",
    )
    args = parser.parse_args(argv)

    status, modules = verdicts()
    if args.checked_only:
        status = {n: s for n, s in status.items() if s != "not checked"}
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    unknown = sorted(set(equivalent) - set(status))
    if unknown and not args.checked_only:
        sys.exit(f"{EQUIVALENT.name} names mutants this run does not have: {unknown}")
    counts = Counter(status.values())
    killed = sum(counts[s] for s in KILLED)
    not_killed = sorted(n for n, s in status.items() if s not in KILLED)
    survivors = [n for n in not_killed if n not in equivalent]
    argued = [n for n in not_killed if n in equivalent]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    summary = {
        "tool": "mutmut " + _version(),
        "modules": modules,
        "killed": killed,
        "survived": len(survivors),
        "equivalent": len(argued),
        "score": round(killed / max(killed + len(survivors), 1), 4),
        "statuses": dict(sorted(counts.items())),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "wall_seconds": round(args.wall_seconds),
        "command": "benchmarks/mutation.sh",
        "machine": "2-core x86_64 CPU box, shared with other jobs; mutmut --max-children "
        + os.environ.get("MUTMUT_CHILDREN", "1"),
    }
    if args.note:
        summary["note"] = args.note
    path = RESULTS / "mutation.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    # the top level is the latest run; "before" and "extension_before" keep the scores before
    # the tests that the first run over the core modules, and over all modules, prompted
    record = {**summary}
    for label, key in (("before", "before"), ("extension", "extension_before")):
        record[key] = summary if args.label == label else previous.get(key)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")

    lines = [f"| `{n}` | {status[n]} | `{diff_line(n)}` |" for n in survivors]
    (RESULTS / f"mutation_survivors_{args.label}.md").write_text(
        f"# Mutants no test killed ({args.label}, commit {commit})\n\n"
        "| mutant | status | change |\n|---|---|---|\n" + "\n".join(lines) + "\n"
    )
    print(json.dumps(summary, indent=2))


def _version():
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    main()
