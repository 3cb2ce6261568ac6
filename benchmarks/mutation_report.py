"""Write ``benchmarks/results/mutation.md``: the scores of every recorded run, the score per
module now, every mutant that no test kills now (with why), and the fate of every survivor of
the first runs (killed since, argued equivalent, or still surviving).

Reads ``mutation.json`` (the latest run at the top level; ``before``: the first run over the
core modules, ``extension_before``: the first run after the other modules were added), the
survivor lists those runs wrote (``mutation_survivors_{before,extension}.md``), mutmut's current
verdicts and ``benchmarks/mutation_equivalent.json``.
Usage: ``python benchmarks/mutation_report.py`` after ``benchmarks/mutation.sh``.
"""

import json
import re
from collections import Counter, defaultdict

from mutation import EQUIVALENT, KILLED, RESULTS, diff_line, verdicts

MODULE = re.compile(r"^(.*?)\.x[_ǁ]")

#: why a survivor that is not equivalent still survives the CPU suite (by name prefix, after
#: ``pyro_skipvae.``)
REASONS = {
    "distributed": "only differs under torch.distributed (the global minibatch or the "
    "all-reduce weights of a real step), which tests/test_distributed.py checks on two "
    "processes, outside the mutation run (mutmut does not see calls in spawned processes)",
    "cuda": "only differs on a CUDA device (a tensor created without the device argument lands "
    "on the CPU; a GPU checkpoint loaded on a CPU); no GPU in this run",
    "tails": "changes only draws with u < 1e-5 or u > 1 - 1e-5 (2 in 100,000), which the final "
    "clamp to the grid usually maps to the same end bin; not pinned by a test",
    "rounding": "only changes the float32 to float64 rounding of the codes given to "
    "scikit-learn; no test input flips a prediction",
}
REASON_OF = {
    **{f"infer.svi.x_apply_gradients__mutmut_{i}": "distributed" for i in range(6, 13)},
    "infer.elbos.xǁJitELBOǁ_call__mutmut_5": "cuda",
    "infer.elbos.xǁJitELBOǁ_call__mutmut_8": "cuda",
    "checkpoint.x_load__mutmut_7": "cuda",
    "checkpoint.x_load__mutmut_10": "cuda",
    "models.likelihoods.xǁDiscretizedLogisticMixtureǁsample__mutmut_40": "cuda",
    "models.likelihoods.xǁDiscretizedLogisticMixtureǁsample__mutmut_43": "cuda",
    "guides.lstm.xǁLSTMEncoderǁforward__mutmut_12": "cuda",
    "guides.lstm.xǁLSTMEncoderǁforward__mutmut_14": "cuda",
    "models.decoders.lstm.xǁLSTMDecoderǁforward__mutmut_35": "cuda",
    "models.decoders.lstm.xǁLSTMDecoderǁforward__mutmut_37": "cuda",
    "infer.optim.xǁOptimizerǁstep__mutmut_9": "cuda",
    "infer.optim.xǁOptimizerǁstep__mutmut_33": "cuda",
    "infer.optim.xǁOptimizerǁ_fused_grad_scale__mutmut_8": "cuda",
    "infer.optim.xǁOptimizerǁ_fused_grad_scale__mutmut_11": "cuda",
    **{
        f"models.likelihoods.xǁDiscretizedLogisticMixtureǁsample__mutmut_{i}": "tails"
        for i in (35, 36, 38, 46, 47)
    },
    "diagnostics.classify.x__numpy__mutmut_3": "rounding",
}


def module_of(name):
    return MODULE.match(name).group(1)


def _short(name):
    return name.removeprefix("pyro_skipvae.")


def count_per_module(status, equivalent, *, apart=()):
    """``{module: Counter}`` of killed / survived / equivalent mutants; statuses in ``apart``
    (e.g. "not checked" in a stopped run) are counted under their own name instead."""
    per_module = defaultdict(Counter)
    for name, s in status.items():
        if s in apart:
            kind = s
        elif s in KILLED:
            kind = "killed"
        else:
            kind = "equivalent" if name in equivalent else "survived"
        per_module[module_of(name)][kind] += 1
    return per_module


def module_table(per_module, *, apart=()) -> list[str]:
    """The per-module score table (score = killed / (killed + survived)), as Markdown lines."""
    columns = ["killed", "survived", "equivalent", *apart]
    lines = [
        "| module | mutants | " + " | ".join(columns) + " | score |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for module, c in sorted(per_module.items()):
        score = c["killed"] / max(c["killed"] + c["survived"], 1)
        counts = " | ".join(str(c[k]) for k in columns)
        lines.append(f"| `{_short(module)}` | {sum(c.values())} | {counts} | {score:.3f} |")
    return lines


def _score_row(label, run):
    total = run["killed"] + run["survived"] + run["equivalent"]
    return (
        f"| {label} | {len(run['modules'])} | {total} | {run['killed']} | {run['survived']} | "
        f"{run['equivalent']} | {run['score']:.3f} |"
    )


def _first_run_survivors(label):
    path = RESULTS / f"mutation_survivors_{label}.md"
    if not path.exists():
        return []
    return re.findall(r"^\| `([^`]+)` \| [^|]+ \| `(.*)` \|$", path.read_text(), flags=re.M)


def _fate(name, status, equivalent):
    now = status.get(name, "gone (function changed)")
    if now in KILLED:
        return "killed", ""
    if name in equivalent:
        return "equivalent", equivalent[name]
    reason = REASON_OF.get(_short(name))
    return now, REASONS[reason] if reason else "not killed yet"


def main():
    record = json.loads((RESULTS / "mutation.json").read_text())
    equivalent = json.loads(EQUIVALENT.read_text())
    status, _ = verdicts()
    runs = [
        ("core modules, first run", record.get("before")),
        ("core modules + the rest, first run", record.get("extension_before")),
        (f"all modules, now (commit {record['commit']})", record),
    ]
    lines = [
        "# Mutation testing: score and survivors",
        "",
        f"Tool: {record['tool']}, `benchmarks/mutation.sh` (configuration in `setup.cfg "
        "[mutmut]`, per-module test files in `MUTATION_TESTS`, `tests/conftest.py`), on a "
        f"{record['machine']}; {record['date']}.",
        "",
        'Score = killed / (killed + survived). "Survived" counts every mutant no test killed '
        "(mutmut's *survived*, *no tests*, *timeout* and *not checked*) except those argued "
        "*equivalent* in `benchmarks/mutation_equivalent.json` (listed below).",
        "",
        "| run | modules | mutants | killed | survived | equivalent | score |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, run in runs:
        if run:
            note = f" ({run['note']})" if run.get("note") else ""
            lines.append(_score_row(f"{label}, tests of {run['commit']}{note}", run))
    lines += ["", f"Wall time of the latest run: {record['wall_seconds'] / 60:.0f} min.", ""]

    lines += ["## Per module, now", "", *module_table(count_per_module(status, equivalent))]

    lines += ["", "## Every mutant no test kills now", "", "| mutant | change | status | why |"]
    lines.append("|---|---|---|---|")
    for name in sorted(n for n, s in status.items() if s not in KILLED):
        fate, why = _fate(name, status, equivalent)
        change = diff_line(name).replace("|", "\\|")
        lines.append(f"| `{_short(name)}` | `{change}` | {fate} | {why} |")

    for label, title in (("before", "core modules"), ("extension", "all modules")):
        first = _first_run_survivors(label)
        if not first:
            continue
        fates = Counter(_fate(name, status, equivalent)[0] for name, _ in first)
        lines += [
            "",
            f"## Survivors of the first run over the {title}, and their fate",
            "",
            ", ".join(f"{n} {fate}" for fate, n in fates.most_common()) + ".",
            "",
            "| mutant | change | now |",
            "|---|---|---|",
        ]
        for name, change in first:
            lines.append(
                f"| `{_short(name)}` | `{change.replace('|', chr(92) + '|')}` | "
                f"{_fate(name, status, equivalent)[0]} |"
            )
    (RESULTS / "mutation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
