"""Score a *partial* mutmut run: the modules named on ``benchmarks/mutation.sh``'s command
line (the ones a change touched), at the current commit, beside the full run's scores of the
modules it left alone.

``python benchmarks/mutation_refresh.py --wall-seconds S --label NAME MODULE ...`` reads
mutmut's verdicts (``mutants/``) for the named modules only, writes
``benchmarks/results/mutation_refresh.md`` (score per module, and every mutant no test kills
with its change and, when argued, why it is equivalent) and stores the summary under
``"refresh"`` in ``mutation.json`` (the full run's record stays at its top level). A module
the refresh lists with no mutant at all is an error: the run did not name it.

Modules not named keep the score of the full run; that is honest only while their code is
unchanged since it, which ``--unchanged-since`` checks with ``git diff``.
"""

import argparse
import datetime
import json
import os
import re
import subprocess

from mutation import EQUIVALENT, KILLED, RESULTS, ROOT, _version, diff_line, verdicts
from mutation_report import _short, count_per_module, module_of, module_table

#: why a survivor survives the CPU suite, by the shape of its change (first match wins)
WHY = [
    (
        re.compile(r"infer\.svi\.xǁSVIǁstep__mutmut_(1[5-9]|2[0-2])$"),
        "only differs under torch.distributed (a step without size in a process group), which "
        "tests/test_distributed.py checks on two real processes that mutmut does not see",
    ),
    (
        re.compile(
            r"device=None|, \) <|\"XXcudaXX\"|\"CUDA\"|_compiled_call_impl|not in CUDA_GRAPH"
        ),
        "only differs on a CUDA device or in the CUDA-graph compile modes; no GPU in this run",
    ),
    (
        re.compile(r'\+.*("XX|[A-Z]{4,} [A-Z]{3,}|logger\.info\(|compile=false|kl_j|non-jit)'),
        "changes only the wording of a message or a log line (tests match its key words)",
    ),
]


def why(name: str, change: str, equivalent: dict) -> str:
    if name in equivalent:
        return equivalent[name]
    for pattern, reason in WHY:
        if pattern.search(name) or pattern.search(change):
            return reason
    return "not killed yet"


def changed_modules(since: str) -> set[str]:
    """Mutated-set modules (dotted) whose source differs from commit ``since``."""
    out = subprocess.run(
        ["git", "diff", "--name-only", since, "--", "pyro_skipvae"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.split()
    return {p.removesuffix(".py").replace("/", ".") for p in out if p.endswith(".py")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+", help="dotted modules, e.g. pyro_skipvae.infer.svi")
    parser.add_argument("--wall-seconds", type=float, required=True)
    parser.add_argument("--label", required=True, help="what the refresh is for")
    parser.add_argument("--unchanged-since", help="the full run's commit")
    args = parser.parse_args(argv)

    status, _ = verdicts()
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    named = set(args.modules)
    status = {n: s for n, s in status.items() if module_of(n) in named}
    unchecked = sorted(n for n, s in status.items() if s == "not checked")
    per_module = count_per_module(status, equivalent, apart=("not checked",))
    missing = sorted(named - set(per_module))
    if missing:
        raise SystemExit(f"no mutants of {missing} in mutants/: did the run name them?")
    killed = sum(c["killed"] for c in per_module.values())
    survived = sum(c["survived"] for c in per_module.values())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    stale = []
    if args.unchanged_since:
        stale = sorted(changed_modules(args.unchanged_since) - named)
    summary = {
        "label": args.label,
        "tool": "mutmut " + _version(),
        "modules": sorted(named),
        "killed": killed,
        "survived": survived,
        "equivalent": sum(c["equivalent"] for c in per_module.values()),
        "not_checked": len(unchecked),
        "score": round(killed / max(killed + survived, 1), 4),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "wall_seconds": round(args.wall_seconds),
        "command": "benchmarks/mutation.sh " + " ".join(f"'{m}.*'" for m in sorted(named)),
        "machine": "2-core x86_64 CPU box; mutmut --max-children "
        + os.environ.get("MUTMUT_CHILDREN", "1"),
        "changed_but_not_refreshed": stale,
    }
    path = RESULTS / "mutation.json"
    record = json.loads(path.read_text())
    record["refresh"] = summary
    path.write_text(json.dumps(record, indent=2) + "\n")

    lines = [
        f"# Mutation testing: refresh of the modules changed since the full run ({args.label})",
        "",
        f"{summary['tool']}, `{summary['command']}`, commit {commit}, {summary['date']}, "
        f"{summary['machine']}, {summary['wall_seconds'] / 60:.0f} min. The other modules keep "
        f"the scores of the full run at commit {record['commit']} (`mutation.md`)"
        + (
            f"; their code is unchanged since {args.unchanged_since}"
            + (f" except {', '.join(stale)}" if stale else "")
            if args.unchanged_since
            else ""
        )
        + ".",
        "",
        f"Score over the refreshed modules: **{summary['score']:.3f}** ({killed} killed, "
        f"{survived} survived, {summary['equivalent']} argued equivalent"
        + (
            f"; {len(unchecked)} not checked when the run was stopped, left out"
            if unchecked
            else ""
        )
        + ").",
        "",
        *module_table(per_module, apart=("not checked",)),
    ]
    lines += ["", "## Every mutant no test kills", "", "| mutant | change | status | why |"]
    lines.append("|---|---|---|---|")
    for name in sorted(n for n, s in status.items() if s not in KILLED | {"not checked"}):
        change = diff_line(name).replace("|", "\\|")
        lines.append(
            f"| `{_short(name)}` | `{change}` | {status[name]} | {why(name, change, equivalent)} |"
        )
    (RESULTS / "mutation_refresh.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
