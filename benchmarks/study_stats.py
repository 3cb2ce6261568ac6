"""Seed statistics of a study's results.csv rows: per model, the mean, standard deviation and
95 % t-interval over seeds, and the paired per-seed difference skip - no skip with its own
t-interval. A difference is a *finding* only where its interval excludes zero; otherwise the
rows are *consistent with* no difference. One seed gives a number and no interval.

    python benchmarks/study_stats.py benchmarks/results/pixelcnn_bmnist_cpu.csv
    python benchmarks/study_stats.py benchmarks/results/mnist_mlp_sweep.csv \\
        --metrics test_nll,kl,mi,au --diff-only

Rows are grouped as by ``sweep_table.py`` (grid, inference, latent size, decoder depth; one
group per file), split by ``skip`` and paired by ``seed``. Only rows whose status is ``ok``
count.

The text study keeps one ``skipvae diagnose`` JSON per cell instead of a results.csv; give
those files instead (``benchmarks/results/ptb_text/*.json``): each becomes a row, grouped by
the data set and split, the inference the model was trained with, its decoder, its guide and
the guide's options, how q was evaluated (amortized, or refined with K steps) and the latent
size, and paired by the training seed::

    python benchmarks/study_stats.py benchmarks/results/ptb_text/{skip,vae}-seed*.json

Diagnosis rows can also be compared the other way, ``--arm training``: a model trained
semi-amortized against the same model trained amortized (plain SVI) and evaluated alike,
e.g. both with K = 5 refinement (RQ5's control), paired by training seed, one group per
skip setting::

    python benchmarks/study_stats.py --arm training \\
        benchmarks/results/pixelcnn_bmnist_cpu_{sa,control}/*.json

The script also prints the largest |KL - (MI + aggregate KL)| over the rows, the
ELBO-surgery identity's discrepancy (KL is analytic; MI and aggregate KL share sampled z).
"""

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

KEYS = ("grid", "inference", "latent_dim", "num_layers")
#: the trainings ``--arm training`` compares, its first arm first
TRAININGS = ("semi-amortized", "svi")
#: what a table compares within a group, paired by seed (``--arm``): the row's arm (True for
#: the first), the arms' names, and the setting that, instead, tells groups apart
ARMS = {
    "skip": (lambda row: row["skip"] == "True", ("skip", "no skip"), "trained_with"),
    "training": (
        lambda row: row["trained_with"] == TRAININGS[0],
        ("SA-trained", "amortized-trained"),
        "skip",
    ),
}
# column -> (label, scale applied before printing, decimals)
METRICS = {
    "test_nll": ("IW-NLL (nats)", 1.0, 2),
    "test_elbo": ("test ELBO (nats)", 1.0, 2),
    "val_elbo": ("val ELBO (nats)", 1.0, 2),
    "kl": ("KL (nats)", 1.0, 2),
    "mi": ("MI (nats)", 1.0, 2),
    "agg_kl": ("aggregate KL (nats)", 1.0, 2),
    "au": ("active units", 1.0, 1),
    "accuracy": ("accuracy, log. regression (%)", 100.0, 1),
    "accuracy_knn": ("accuracy, 5-NN (%)", 100.0, 1),
    "pareto_k_share_above": ("Pareto k > 0.7 (%)", 100.0, 1),
}
DEFAULT = tuple(METRICS)


def t_interval(values, level=0.95):
    """``(n, mean, sd, low, high)`` of a 95 % Student-t interval for the mean of ``values``
    (sd with n - 1 in the denominator). With one value sd, low and high are ``nan``."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if n == 1:
        return 1, mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return n, mean, sd, mean - half, mean + half


def paired_difference(skip_by_seed, plain_by_seed, level=0.95):
    """t-interval of the per-seed differences skip - plain over the seeds both have."""
    seeds = sorted(set(skip_by_seed) & set(plain_by_seed))
    if not seeds:
        raise ValueError("no seed in common")
    return t_interval([skip_by_seed[s] - plain_by_seed[s] for s in seeds], level)


def reading(n, low, high, first="skip") -> str:
    """How a difference's interval may be worded (``first``: the arm it is taken from)."""
    if n < 2:
        return "1 seed: no interval"
    if low == high:  # every seed's difference the same: a zero-width interval says nothing
        return "the same in every seed: no spread to test"
    if low > 0:
        return f"finding: {first} higher"
    if high < 0:
        return f"finding: {first} lower"
    return "consistent with no difference"


#: a diagnosis JSON's field -> the results.csv column it fills
DIAGNOSIS_COLUMNS = {
    "nll": "test_nll",
    "elbo": "test_elbo",
    **{k: k for k in ("kl", "mi", "agg_kl", "au", "pareto_k_share_above")},
}
#: how the model was trained: a diagnosis's field -> where the run's config.json keeps it
#: (diagnoses written before these were recorded are read from the run folder)
RUN_FIELDS = {
    "trained_with": ("train", "inference"),
    "guide": ("model", "guide"),
    "guide_options": ("model", "guide_options"),
    "train_seed": ("train", "seed"),
}


def guide_label(metrics: dict) -> str:
    """The guide and its options, so cells differing only in (say) BN-VAE's γ are different
    groups: ``bn-normal guide (gamma=0.5)``."""
    options = ", ".join(f"{k}={v}" for k, v in sorted(metrics["guide_options"].items()))
    return f"{metrics['guide']} guide" + (f" ({options})" if options else "")


def diagnosis_row(path) -> tuple[str, dict]:
    """``(source, row)``: a ``skipvae diagnose`` JSON as a results.csv row with the training
    it came from (``trained_with``); the source is its data set and split. A diagnosis
    written before it recorded how the model was trained takes that from the run's
    ``config.json`` (its ``run_dir``, as diagnose saw it from here); a guide that takes no
    options had none."""
    metrics = json.loads(Path(path).read_text())
    if "guide_options" not in metrics and "guide" in metrics:
        from pyro_skipvae.guides import GUIDES

        if not GUIDES.options(metrics["guide"], filled=("encoder", "name")):
            metrics["guide_options"] = {}
    missing = [k for k in RUN_FIELDS if k not in metrics]
    if missing:
        config_path = Path(metrics["run_dir"]) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{path} does not record {', '.join(missing)} and its run's {config_path} "
                "is not here: diagnose the run again, or run this where the run folder is"
            )
        config = json.loads(config_path.read_text())
        for k in missing:
            section, key = RUN_FIELDS[k]
            metrics[k] = config[section][key]
    refined = metrics["num_refine_steps"]
    row = {
        "cell": Path(path).stem,
        "status": "ok",
        "grid": f"{metrics['decoder']} decoder, {guide_label(metrics)}",
        "trained_with": metrics["trained_with"],
        "inference": f"q refined (K = {refined})" if refined else "q amortized",
        "latent_dim": str(metrics["latent_dim"]),
        "num_layers": "",
        "skip": str(metrics["skip"]),
        "seed": str(metrics["train_seed"]),
        **{col: metrics[k] for k, col in DIAGNOSIS_COLUMNS.items()},
    }
    return f"{metrics['dataset']} ({metrics['split']} split)", row


def read_rows(path):
    """``(source, row)`` for each ``ok`` row of a results.csv, or a diagnosis JSON's row."""
    if Path(path).suffix == ".json":
        yield diagnosis_row(path)
        return
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] == "ok":
                yield Path(path).stem, row


def read_groups(paths, arm="skip"):
    """``{(source, setting, *KEYS): {first arm (bool): {seed: row}}}`` over the ``ok`` rows of
    ``paths``, ``setting`` what else tells groups apart (:data:`ARMS`: the training for
    ``arm="skip"``, empty for results.csv rows; the skip setting for ``arm="training"``)."""
    is_first, names, setting = ARMS[arm]
    groups = defaultdict(lambda: {True: {}, False: {}})
    for path in paths:
        for source, row in read_rows(path):
            if arm == "training" and row.get("trained_with") not in TRAININGS:
                raise ValueError(
                    f"--arm training compares {' and '.join(TRAININGS)} training, found "
                    f"{row.get('trained_with') or 'no recorded training'} in {path}"
                )
            key = (source, row.get(setting) or "", *(row[k] for k in KEYS))
            seed, first = int(row["seed"]), is_first(row)
            if seed in groups[key][first]:
                raise ValueError(
                    f"two rows for {group_label(key, arm)}, {names[0 if first else 1]}, "
                    f"seed {seed}: {groups[key][first][seed]['cell']} and {row['cell']}"
                )
            groups[key][first][seed] = row
    return dict(groups)


def identity_discrepancy(paths):
    """``(max |KL - MI - aggregate KL|, cell, source)`` over the ``ok`` rows of ``paths``."""
    worst = (-1.0, "", "")
    for path in paths:
        for source, row in read_rows(path):
            if row.get("agg_kl") not in ("", None):
                gap = abs(float(row["kl"]) - float(row["mi"]) - float(row["agg_kl"]))
                worst = max(worst, (gap, row["cell"], source))
    return worst


def _values(by_seed, metric):
    scale = METRICS.get(metric, (metric, 1.0, 2))[1]
    return {
        s: float(r[metric]) * scale for s, r in by_seed.items() if r.get(metric) not in ("", None)
    }


def _fmt(stat, decimals) -> str:
    n, mean, sd, low, high = stat
    if n == 1:
        return f"{mean:.{decimals}f} (1 seed)"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def group_label(key, arm="skip") -> str:
    source, setting, grid, inference, latent_dim, num_layers = key
    depth = f", decoder layers {num_layers}" if num_layers else ""
    grid = grid if grid == inference else f"{grid}, {inference}"
    if setting and arm == "skip":
        grid = f"trained {setting}, {grid}"
    elif arm == "training":
        grid = f"{'skip' if setting == 'True' else 'no skip'}, {grid}"
    return f"{source}: {grid}, latent {latent_dim}{depth}"


def metric_rows(models, metrics, decimals=None, first="skip"):
    """One dict per metric: label, n per model, their stats, the paired difference's stats
    (``first`` arm − the other); printed with ``decimals`` places, or each metric's own."""
    out = []
    for metric in metrics:
        label, _, own = METRICS.get(metric, (metric, 1.0, 2))
        skip, plain = _values(models[True], metric), _values(models[False], metric)
        if not skip or not plain:
            continue
        diff = paired_difference(skip, plain)
        out.append(
            dict(
                metric=metric,
                label=label,
                decimals=own if decimals is None else decimals,
                plain=t_interval(list(plain.values())),
                skip=t_interval(list(skip.values())),
                diff=diff,
                reading=reading(diff[0], diff[3], diff[4], first),
            )
        )
    return out


def tables(paths, metrics=DEFAULT, diff_only=False, decimals=None, arm="skip") -> str:
    lines = []
    first, second = ARMS[arm][1]
    groups = read_groups(paths, arm)
    # (skip groups before no-skip ones under --arm training)
    order = sorted(groups, key=lambda k: (k[0], k[1] != "True", *k[1:4], int(k[4]), int(k[5] or 0)))
    if diff_only:
        lines += [
            f"| group | metric | seeds | {first} − {second}: mean ± sd [95 % CI] | reading |",
            "|---|---|---|---|---|",
        ]
    for key in order:
        rows = metric_rows(groups[key], metrics, decimals, first)
        if not rows:  # one arm only: nothing to pair
            continue
        if diff_only:
            for r in rows:
                lines.append(
                    f"| {group_label(key, arm)} | {r['label']} | {r['diff'][0]} | "
                    f"{_fmt(r['diff'], r['decimals'])} | {r['reading']} |"
                )
            continue
        lines += [
            f"{group_label(key, arm)}: mean ± sd [95 % t-interval] over seeds; paired by seed",
            "",
            f"| metric | seeds ({second} / {first} / pairs) | {second} | {first} | "
            f"{first} − {second} (paired) | reading |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            d = r["decimals"]
            lines.append(
                f"| {r['label']} | {r['plain'][0]} / {r['skip'][0]} / {r['diff'][0]} | "
                f"{_fmt(r['plain'], d)} | {_fmt(r['skip'], d)} | {_fmt(r['diff'], d)} | "
                f"{r['reading']} |"
            )
        lines.append("")
    gap, cell, source = identity_discrepancy(paths)
    if gap >= 0:
        if lines and lines[-1]:
            lines.append("")
        lines += [
            f"KL = MI + aggregate KL: largest |KL - MI - aggregate KL| = {gap:.4f} nats "
            f"({source}, {cell}).",
        ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.csv files or diagnosis JSONs")
    parser.add_argument("--metrics", default=",".join(DEFAULT), help="columns to summarise")
    parser.add_argument(
        "--diff-only", action="store_true", help="one table of paired differences, all groups"
    )
    parser.add_argument(
        "--decimals", type=int, help="decimal places for every metric (default: per metric)"
    )
    parser.add_argument(
        "--arm",
        choices=tuple(ARMS),
        default="skip",
        help="what to compare, paired by seed: skip - no skip (default), or semi-amortized "
        "- amortized training (diagnosis JSONs)",
    )
    args = parser.parse_args()
    metrics = tuple(args.metrics.split(","))
    print(tables(args.results, metrics, args.diff_only, args.decimals, args.arm))


if __name__ == "__main__":
    main()
