"""The report's tables as plain data: configurations side by side, the diagnostics with
their standard errors and estimators, and the per-epoch history. Formatting only; no HTML."""

import json
import math

from ..diagnostics.tables import TABLE_ROWS

#: keys of ``config.json`` that say nothing about the run's result
CONFIG_SKIP = {"format"}
#: per-epoch columns of ``metrics.jsonl``, with headers, in display order
HISTORY_COLUMNS = [
    ("epoch", "epoch"),
    ("beta", "β"),
    ("train_elbo", "training bound"),
    ("val_elbo", "validation ELBO"),
    ("val_kl", "validation KL"),
    ("val_au", "validation active units (encoder's q)"),
    ("val_ppl", "validation perplexity bound"),
    ("val_elbo_amortized", "validation ELBO, amortized q"),
    ("val_kl_amortized", "validation KL, amortized q"),
    ("val_amortization_gap", "amortization gap"),
    ("learning_rate", "learning rate"),
    ("seconds", "seconds"),
]


def flatten(config: dict, prefix="") -> dict:
    """``{"model": {"latent_dim": 32}} → {"model.latent_dim": 32}`` (lists and empty dicts
    stay whole)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        elif name not in CONFIG_SKIP:
            flat[name] = value
    return flat


def config_rows(configs: list[dict]) -> list[dict]:
    """One row per setting of any run: ``{"key", "values", "differs"}``.

    ``values`` are compact JSON strings, one per run (``"–"`` where a run lacks the key);
    ``differs`` marks settings whose values are not all equal. Rows keep the order of
    ``config.json`` (model, run, train), keys sorted within each.
    """
    flats = [flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f}, key=lambda k: (k.split(".")[0], k))
    rows = []
    for key in keys:
        values = [json.dumps(f[key], ensure_ascii=False) if key in f else "–" for f in flats]
        rows.append({"key": key, "values": values, "differs": len(set(values)) > 1})
    return rows


def _number(value, key, digits=2):
    if key.startswith("accuracy") or key == "pareto_k_share_above":
        return f"{100 * value:.{digits}f}"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _se(metrics, name, key):
    se = metrics.get(name)
    if se is None or not math.isfinite(se):
        return None
    return f"{100 * se:.2f}" if key.startswith("accuracy") else f"{se:.2f}"


def diagnostics_cell(metrics: dict, key: str) -> dict | None:
    """One run's value of a table row: ``{"value", "se", "mc_se", "note"}`` (strings or
    ``None``), or ``None`` where the run lacks the metric.

    ``se`` is the standard error over evaluation points (what a redrawn evaluation set
    would change); ``mc_se`` its Monte-Carlo part alone; ``note`` the context the number
    needs: log N beside the full-set MI, the cap of the minibatch MI, δ of active units.
    """
    value = metrics.get(key)
    if value is None:
        return None
    cell = {
        "value": _number(value, key),
        "se": _se(metrics, f"{key}_se", key),
        "mc_se": _se(metrics, f"{key}_mc_se", key),
        "note": None,
    }
    if key == "mi" and metrics.get("log_n") is not None:
        cell["note"] = f"ceiling log N = {metrics['log_n']:.2f}"
    elif key == "mi_minibatch" and metrics.get("mi_minibatch_cap") is not None:
        cell["note"] = f"cap log B = {metrics['mi_minibatch_cap']:.2f}"
    elif key == "au":
        cell["value"] = f"{value} / {metrics.get('latent_dim', '?')}"
        cell["note"] = f"δ = {metrics.get('au_threshold', 0.01):g}"
    elif key == "pareto_k_share_above":
        cell["note"] = f"K = {metrics.get('nll_num_samples')}"
    return cell


def diagnostics_rows(named_metrics: list[tuple[str, dict | None]]) -> list[dict]:
    """Rows of the diagnostics table: ``{"key", "label", "unit", "cells", "estimator"}``.

    The rows are :data:`pyro_skipvae.diagnostics.tables.TABLE_ROWS` that at least one run
    has, except log N, which sits beside the MI. ``cells`` has one
    :func:`diagnostics_cell` per run (``None`` for a run without diagnostics or without the
    metric); ``estimator`` names how it was estimated, once if all runs agree, else per run.
    """
    diagnosed = [(name, m) for name, m in named_metrics if m is not None]
    rows = []
    for key, label, unit in TABLE_ROWS:
        if key == "log_n" or not any(key in m for _, m in diagnosed):
            continue
        texts = {
            name: m["estimators"][key] for name, m in diagnosed if key in m.get("estimators", {})
        }
        if len(set(texts.values())) == 1:
            estimator = next(iter(texts.values()))
        else:
            estimator = "; ".join(f"{name}: {text}" for name, text in texts.items())
        if key == "pareto_k_share_above":
            threshold = next(
                (m["pareto_k_threshold"] for _, m in diagnosed if "pareto_k_threshold" in m), 0.7
            )
            label = f"share of points with Pareto k̂ > {threshold:g}"
            estimator = estimator or "PSIS tail index of each point's importance weights"
        rows.append(
            {
                "key": key,
                "label": label,
                "unit": unit,
                "cells": [
                    None if m is None else diagnostics_cell(m, key) for _, m in named_metrics
                ],
                "estimator": estimator,
            }
        )
    return rows


def history_rows(history: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The per-epoch table of one run: ``(headers, rows)`` with the columns the run has;
    the selected epoch (the one in ``best.pt``) is marked with ★."""
    columns = [(k, h) for k, h in HISTORY_COLUMNS if any(k in r for r in history)]
    selected = history[-1].get("selected") if history else None
    rows = []
    for record in history:
        row = []
        for key, _ in columns:
            value = record.get(key)
            if key == "epoch":
                row.append(f"{value} ★" if value == selected else str(value))
            elif key == "learning_rate" and isinstance(value, int | float):
                row.append(f"{value:g}")  # halvings: 1, 0.5, 0.25, 0.125, ...
            elif isinstance(value, int | float):
                row.append(f"{value:.{3 if key == 'beta' else 2}f}")
            else:
                row.append("–")
        rows.append(row)
    return [h for _, h in columns], rows
