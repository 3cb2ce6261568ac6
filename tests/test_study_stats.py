"""benchmarks/study_stats.py: t-intervals over seeds and paired skip - no-skip differences,
checked against hand-computed answers on synthetic numbers (not measurements)."""

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_stats.py"
spec = importlib.util.spec_from_file_location("study_stats", SCRIPT)
study_stats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_stats)

# Student t, 2 degrees of freedom, 97.5 % quantile: 4.302652729749462 (tables: 4.303).
T975_2 = 4.302652729749462


def test_t_interval_of_three_numbers_by_hand():
    # Synthetic: 1, 2, 3 -> mean 2, sd 1, half-width 4.3027 * 1 / sqrt(3) = 2.4841.
    n, mean, sd, low, high = study_stats.t_interval([1.0, 2.0, 3.0])
    assert n == 3
    assert mean == pytest.approx(2.0)
    assert sd == pytest.approx(1.0)
    assert low == pytest.approx(2.0 - 2.484138, abs=1e-6)
    assert high == pytest.approx(2.0 + 2.484138, abs=1e-6)
    assert (high - mean) * math.sqrt(3) == pytest.approx(T975_2)


def test_one_value_has_no_interval():
    n, mean, sd, low, high = study_stats.t_interval([5.0])
    assert (n, mean) == (1, 5.0)
    assert math.isnan(sd) and math.isnan(low) and math.isnan(high)
    assert study_stats.reading(n, low, high) == "1 seed: no interval"


def test_paired_difference_pairs_by_seed_and_reads_the_interval():
    # Synthetic: differences 1, 2, 3 (seed 3 has no partner and is left out).
    skip = {0: 3.0, 1: 5.0, 2: 7.0, 3: 100.0}
    plain = {0: 2.0, 1: 3.0, 2: 4.0}
    n, mean, sd, low, high = study_stats.paired_difference(skip, plain)
    assert (n, mean, sd) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert low < 0 < high
    assert study_stats.reading(n, low, high) == "consistent with no difference"
    # Synthetic: differences 2, 3, 4 -> [3 - 2.4841, 3 + 2.4841] = [0.516, 5.484], above 0.
    zero = {0: 0.0, 1: 0.0, 2: 0.0}
    n, mean, _, low, high = study_stats.paired_difference({0: 2.0, 1: 3.0, 2: 4.0}, zero)
    assert low == pytest.approx(0.515862, abs=1e-6)
    assert study_stats.reading(n, low, high) == "finding: skip higher"
    assert study_stats.reading(3, -5.0, -0.1) == "finding: skip lower"
    # Synthetic: differences -1, -1 (e.g. active units 0 vs 1 in both seeds): sd 0, no test
    n, mean, sd, low, high = study_stats.paired_difference({0: 0.0, 1: 0.0}, {0: 1.0, 1: 1.0})
    assert (n, mean, sd) == (2, -1.0, 0.0)
    assert study_stats.reading(n, low, high) == "the same in every seed: no spread to test"


def test_tables_and_identity_on_synthetic_rows(tmp_path):
    # Synthetic rows: KL - MI - aggregate KL is 0.02 in one cell, 0 elsewhere.
    path = tmp_path / "synthetic.csv"
    fields = ["cell", "status", "grid", "skip", "inference", "latent_dim", "num_layers", "seed"]
    fields += ["kl", "mi", "agg_kl", "au"]
    rows = []
    for seed, (kl_plain, kl_skip) in enumerate([(5.0, 6.0), (6.0, 8.0), (7.0, 10.0)]):
        for skip, kl in ((False, kl_plain), (True, kl_skip)):
            agg = 0.52 if (seed, skip) == (1, True) else 0.5
            rows.append(
                dict(
                    cell=f"seed={seed}_skip={str(skip).lower()}",
                    status="ok",
                    grid="g",
                    skip=str(skip),
                    inference="amortized",
                    latent_dim="20",
                    num_layers="",
                    seed=str(seed),
                    kl=kl,
                    mi=kl - 0.5,
                    agg_kl=agg,
                    au=10,
                )
            )
    rows.append({**rows[0], "status": "failed", "seed": "7", "kl": "999"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    gap, cell, _ = study_stats.identity_discrepancy([path])
    assert gap == pytest.approx(0.02)
    assert cell == "seed=1_skip=true"
    text = study_stats.tables([path], ("kl", "au"))
    # KL differences 1, 2, 3 -> 2.00 ± 1.00 [-0.48, 4.48]; AU differences 0, 0, 0.
    assert "| KL (nats) | 3 / 3 / 3 | 6.00 ± 1.00 [3.52, 8.48] | 8.00 ± 2.00 [3.03, 12.97] " in text
    assert "| 2.00 ± 1.00 [-0.48, 4.48] | consistent with no difference |" in text
    assert "| active units | 3 / 3 / 3 |" in text
    assert "0.0200 nats" in text
    diff = study_stats.tables([path], ("kl",), diff_only=True)
    assert len([line for line in diff.splitlines() if line.startswith("| ")]) == 2  # head, row
    assert "| KL (nats) | 3 | 2.00 ± 1.00 [-0.48, 4.48] |" in diff


def test_command_line_on_the_committed_image_rows():
    rows = ROOT / "benchmarks" / "results" / "pixelcnn_bmnist_cpu.csv"
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(rows), "--metrics", "kl,mi"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| KL (nats) | 3 / 3 / 3 |" in out
    assert "largest |KL - MI - aggregate KL|" in out


def _diagnosis(
    path, *, skip, seed, kl, refine=0, run_dir="unused", recorded=True, guide=None, trained="svi"
):
    """A synthetic ``skipvae diagnose`` JSON (made-up numbers, not a measurement)."""
    metrics = dict(
        dataset="ptb", split="test", decoder="lstm", skip=skip, num_refine_steps=refine,
        latent_dim=64, run_dir=str(run_dir), seed=0,
        nll=100.0 - kl, elbo=-102.0, kl=kl, mi=kl - 0.1, agg_kl=0.1, au=int(kl),
        pareto_k_share_above=0.0,
    )  # fmt: skip
    if recorded:
        metrics.update(trained_with=trained, guide="normal", guide_options={}, train_seed=seed)
    if guide:
        metrics.update(guide="bn-normal", guide_options=guide)
    path.write_text(json.dumps(metrics))
    return path


def test_diagnosis_jsons_are_rows_paired_by_training_seed(tmp_path):
    # Synthetic: KL skip - no skip is 1 (seed 0) and 3 (seed 1) -> 2 ± 1.414, t(1) interval
    # 2 ± 12.706 * 1.414 / sqrt(2) = [-10.71, 14.71]; the refined cell is its own group.
    study = tmp_path / "text"
    study.mkdir()
    # seed 1's VAE was diagnosed before the training's seed was recorded: read from its run
    run = tmp_path / "vae-seed1"
    run.mkdir()
    config = {
        "model": {"guide": "normal", "guide_options": {}},
        "train": {"inference": "svi", "seed": 1},
    }
    (run / "config.json").write_text(json.dumps(config))
    paths = [
        _diagnosis(study / "vae-seed0.json", skip=False, seed=0, kl=1.0),
        _diagnosis(study / "skip-seed0.json", skip=True, seed=0, kl=2.0),
        _diagnosis(
            study / "vae-seed1.json", skip=False, seed=1, kl=2.0, run_dir=run, recorded=False
        ),  # fmt: skip
        _diagnosis(study / "skip-seed1.json", skip=True, seed=1, kl=5.0),
        _diagnosis(study / "skip-seed0.refined.json", skip=True, seed=0, kl=4.0, refine=10),
        # the BN-VAE guide at two γ: two groups, each named by its option
        _diagnosis(study / "bn-skip-seed0.json", skip=True, seed=0, kl=8.0, guide={"gamma": 0.5}),
        _diagnosis(study / "bn-skip-g7.json", skip=True, seed=0, kl=16.0, guide={"gamma": 0.7}),
    ]
    groups = study_stats.read_groups(paths)
    amortized = ("ptb (test split)", "svi", "lstm decoder, normal guide", "q amortized", "64", "")
    refined = (
        "ptb (test split)",
        "svi",
        "lstm decoder, normal guide",
        "q refined (K = 10)",
        "64",
        "",
    )
    bn = [("ptb (test split)", "svi", f"lstm decoder, bn-normal guide (gamma={g})",
           "q amortized", "64", "")
          for g in (0.5, 0.7)]  # fmt: skip
    assert set(groups) == {amortized, refined, *bn}
    assert sorted(groups[amortized][False]) == [0, 1] and list(groups[refined][True]) == [0]
    assert groups[amortized][False][1]["cell"] == "vae-seed1"
    text = study_stats.tables(paths, ("kl", "test_nll"), decimals=3)
    assert (
        "ptb (test split): trained svi, lstm decoder, normal guide, q amortized, latent 64" in text
    )
    assert "| KL (nats) | 2 / 2 / 2 | 1.500 ± 0.707 " in text
    assert "| 2.000 ± 1.414 [-10.706, 14.706] | consistent with no difference |" in text
    assert "| IW-NLL (nats) | 2 / 2 / 2 |" in text  # nll -> test_nll
    assert "| KL (nats) | 0 / 1 / " not in text  # the refined group has no pair: no KL row
    gap, _, _ = study_stats.identity_discrepancy(paths)
    assert gap == pytest.approx(0.0)


def test_diagnosis_json_errors(tmp_path):
    lost = _diagnosis(tmp_path / "old.json", skip=True, seed=0, kl=1.0, recorded=False,
                      run_dir=tmp_path / "gone")  # fmt: skip
    with pytest.raises(
        FileNotFoundError, match="does not record trained_with, guide, guide_options, train_seed"
    ):
        study_stats.read_groups([lost])
    twice = [
        _diagnosis(tmp_path / "a.json", skip=True, seed=0, kl=1.0),
        _diagnosis(tmp_path / "b.json", skip=True, seed=0, kl=2.0),
    ]
    with pytest.raises(ValueError, match="two rows for .*latent 64, skip, seed 0: a and b"):
        study_stats.read_groups(twice)


def test_arm_training_pairs_semi_amortized_with_amortized_training(tmp_path):
    # Synthetic: per model, SA-trained vs amortized-trained, both evaluated with K = 5
    # refinement. Skip: KL differences 1, 2, 3 -> 2 ± 1, t(2) interval
    # 2 ± 4.303 * 1 / sqrt(3) = [-0.48, 4.48]; no skip: 1, 1.5, 2 -> 1.5 ± 0.5, [0.26, 2.74].
    paths = []
    for seed, (skip_sa, skip_ctl, plain_sa, plain_ctl) in enumerate(
        [(6.0, 5.0, 4.0, 3.0), (8.0, 6.0, 5.5, 4.0), (10.0, 7.0, 7.0, 5.0)]
    ):
        for name, skip, trained, kl in (
            ("sa-skip", True, "semi-amortized", skip_sa),
            ("control-skip", True, "svi", skip_ctl),
            ("sa-vae", False, "semi-amortized", plain_sa),
            ("control-vae", False, "svi", plain_ctl),
        ):
            path = tmp_path / f"{name}-seed{seed}.json"
            paths.append(_diagnosis(path, skip=skip, seed=seed, kl=kl, refine=5, trained=trained))
    text = study_stats.tables(paths, ("kl",), arm="training")
    assert "| metric | seeds (amortized-trained / SA-trained / pairs) |" in text
    group = "ptb (test split): {}, lstm decoder, normal guide, q refined (K = 5), latent 64"
    rows = study_stats.tables(paths, ("kl",), diff_only=True, arm="training").splitlines()
    assert rows[:5] == [
        "| group | metric | seeds | SA-trained − amortized-trained: mean ± sd [95 % CI] "
        "| reading |",
        "|---|---|---|---|---|",
        f"| {group.format('skip')} | KL (nats) | 3 | 2.00 ± 1.00 [-0.48, 4.48] "
        "| consistent with no difference |",
        f"| {group.format('no skip')} | KL (nats) | 3 | 1.50 ± 0.50 [0.26, 2.74] "
        "| finding: SA-trained higher |",
        "",
    ]
    # the default compares skip with no skip within each training instead
    assert "trained semi-amortized, lstm decoder" in study_stats.tables(paths, ("kl",))
    other = _diagnosis(tmp_path / "aggr.json", skip=True, seed=0, kl=1.0, trained="aggressive")
    with pytest.raises(ValueError, match="compares semi-amortized and svi training, found aggr"):
        study_stats.read_groups([*paths, other], arm="training")


def test_a_diagnosis_without_guide_options(tmp_path):
    # written before guide_options was recorded: the normal guide takes none, so {} is known;
    # the BN-VAE guide's γ is read from the run's config.json, or refused when it is gone
    path = _diagnosis(tmp_path / "old.json", skip=True, seed=0, kl=1.0, run_dir=tmp_path / "gone")
    metrics = json.loads(path.read_text())
    del metrics["guide_options"]
    path.write_text(json.dumps(metrics))
    assert study_stats.diagnosis_row(path)[1]["grid"] == "lstm decoder, normal guide"
    path.write_text(json.dumps({**metrics, "guide": "bn-normal"}))
    with pytest.raises(FileNotFoundError, match="does not record guide_options"):
        study_stats.diagnosis_row(path)
