"""`skipvae report` and `skipvae diagnose --report`: the page of tiny real MNIST runs, checked
in headless Chromium (sections, decoded images, no request leaving the page), and the
verdicts and tables behind it on hand-made metrics with known readings."""

import json
import math
import shutil
import struct

import pytest
from click.testing import CliRunner
from headless_chromium import Chromium, find_chromium

from pyro_skipvae.cli.main import cli
from pyro_skipvae.report import build_report, collapse_verdict, psis_verdict, verdicts
from pyro_skipvae.report.content import config_rows, diagnostics_rows, history_rows
from pyro_skipvae.report.figures import training_curves
from pyro_skipvae.report.verdicts import percent

TINY = ["--train-size", "500", "--val-size", "200", "--latent-dim", "4", "--hidden-dims", "32,32"]
DIAGNOSE = ["--eval-size", "200", "--num-samples", "20", "--classifier-train-size", "500"]
#: every section of a comparison of diagnosed image runs, in order
SECTIONS = [
    "summary",
    "configs",
    "training",
    "diagnostics",
    "psis",
    "kl-per-dim",
    "embedding",
    "images",
    "glossary",
]
FIGURES = ["kl_per_dim", "embedding", "reconstructions", "samples", "traversals"]


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A VAE and a semi-amortized Skip-VAE, 2 epochs each on 500 real MNIST images, both
    diagnosed (the second with --report), and an undiagnosed copy of the VAE."""
    root = tmp_path_factory.mktemp("report-runs")
    vae, skip, undiagnosed = root / "vae", root / "skip-sa", root / "undiagnosed"
    _invoke("fit", *TINY, "--num-epochs", 2, "--no-skip", "--out", vae, "--quiet")
    _invoke(
        "fit", *TINY, "--num-epochs", 2, "--inference", "semi-amortized",
        "--num-refine-steps", 2, "--out", skip, "--quiet",
    )  # fmt: skip
    shutil.copytree(vae, undiagnosed)
    _invoke("diagnose", vae, *DIAGNOSE, "--quiet")
    _invoke("diagnose", skip, *DIAGNOSE, "--quiet", "--report")
    return {"vae": vae, "skip": skip, "undiagnosed": undiagnosed}


def _png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------- the browser test
def test_comparison_page_in_headless_chromium(runs, tmp_path):
    if find_chromium() is None:
        pytest.skip(
            "no Chromium found ($CHROMIUM, chromium, chromium-browser, google-chrome); "
            ".ci/run installs Debian's chromium with apt-get where it can"
        )
    page = tmp_path / "report.html"
    result = _invoke(
        "report", runs["vae"], runs["skip"], "--names", "VAE,Skip-SA-VAE", "--out", page
    )
    assert f"report in {page}" in result.output
    with Chromium() as browser:
        seen = browser.inspect(page, screenshot=tmp_path / "report.png")

    assert seen["sections"] == SECTIONS
    assert seen["title"].startswith("VAE vs Skip-SA-VAE")
    images = seen["images"]
    by_section = {s: sum(i["section"] == s for i in images) for s in SECTIONS}
    assert by_section == {
        **dict.fromkeys(SECTIONS, 0),
        "training": 1,
        "kl-per-dim": 2,
        "embedding": 2,
        "images": 6,
    }
    for image in images:
        assert image["src"].startswith("data:image/png;base64"), image
        assert image["decoded"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0
        assert len(image["alt"]) > 40, image["alt"]
    # nothing but the page itself and its data: URIs was requested, nothing was refused
    assert [u for u in seen["requests"] if u != seen["url"] and not u.startswith("data:")] == []
    assert seen["errors"] == []
    # readable without JavaScript: there is none
    assert seen["scripts"] == 0 and seen["eventHandlers"] == 0

    text = seen["text"]
    for name in ("vae", "skip"):
        metrics = json.loads((runs[name] / "diagnostics.json").read_text())
        assert f"ceiling log N = {metrics['log_n']:.2f}" in text
        assert f"{metrics['au']} / 4" in text
        assert "K = 20" in text
    assert text.count("Thresholds used:") == 4  # a collapse and a PSIS verdict per run
    assert text.count("Importance sampling reliable for") == 2
    assert "Amortization gap" in text or "amortization gap" in text
    assert "settings differ between the runs" in text and "model.skip ≠" in text

    width, height = _png_size((tmp_path / "report.png").read_bytes())
    assert width == seen["page_size"][0] and height == seen["page_size"][1] > 2000


# ---------------------------------------------------------------------------- pages without a browser
def test_undiagnosed_run_gets_its_training_and_the_command_to_diagnose_it(runs):
    html = build_report([runs["undiagnosed"]])
    assert 'id="training"' in html and 'id="diagnostics"' in html
    for section in ("psis", "kl-per-dim", "embedding", "images"):
        assert f'id="{section}"' not in html
    assert f"skipvae diagnose {runs['undiagnosed']}" in html
    assert html.count("<img ") == 1  # the training curves

    both = build_report([runs["undiagnosed"], runs["vae"]], names=["before", "after"])
    # the diagnosed run brings its sections; the other gets the hint in each of them
    assert html.count("has not been diagnosed yet") < both.count("has not been diagnosed yet")
    assert both.count("<img ") == 1 + len(FIGURES)


def test_diagnose_report_writes_the_page_beside_the_json(runs):
    html = (runs["skip"] / "diagnostics.html").read_text()
    assert html.count("data:image/png;base64,") == 1 + len(FIGURES)
    assert "Skip-VAE with semi-amortized inference" in html
    assert "q refined with 2 gradient steps per point" in html
    assert "<script" not in html


def test_sentences_of_text_models_get_their_own_section(runs, tmp_path):
    # A text model's diagnose names a Markdown file of decoded sentences ("text") in its
    # JSON. Here the real run's image figures are swapped for such a file (its sentences are
    # made up), so the page must show the sentences, escaped, and no image section.
    run = tmp_path / "text-run"
    shutil.copytree(runs["skip"], run)
    sentences = (
        "## Homotopies: greedy decodings\n\n"
        "1. from: the <unk> rose 5 % in N trading & closed higher\n   to:   shares fell\n"
    )
    (run / "diagnostics_text.md").write_text(sentences, encoding="utf-8")
    metrics = json.loads((run / "diagnostics.json").read_text())
    metrics["plots"] = ["diagnostics_plots/kl_per_dim.png"]
    metrics["text"] = "diagnostics_text.md"
    (run / "diagnostics.json").write_text(json.dumps(metrics))

    html = build_report([run])
    assert 'id="text"' in html and 'id="images"' not in html
    assert "Homotopies" in html
    assert "the &lt;unk&gt; rose 5 % in N trading &amp; closed higher" in html
    assert html.count("<img ") == 2  # training curves and KL per dimension
    assert "has not been diagnosed yet" not in html


def test_report_command_errors(runs, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nothing"), "--out", "x.html"])
    assert result.exit_code == 1 and "expected a run directory" in result.output
    result = CliRunner().invoke(
        cli, ["report", str(runs["vae"]), str(runs["skip"]), "--names", "one"]
    )
    assert result.exit_code == 2 and "expected 2 names, one per run, found 1" in result.output


# ---------------------------------------------------------------------------- verdicts
def _metrics(**overrides):
    """Hand-made diagnostics of a 4-dim model on N = 10,000 points (not a real run)."""
    metrics = {
        "kl": 6.5,
        "au": 4,
        "latent_dim": 4,
        "au_threshold": 0.01,
        "kl_per_dim": [1.0, 2.0, 0.5, 3.0],
        "posterior_mean_variance": [0.5, 0.5, 0.5, 0.5],
        "mi": 3.0,
        "log_n": math.log(10_000),
        "agg_kl": 3.5,
        "num_points": 10_000,
        "split": "test",
        "checks": {"mi_le_log_n": True, "mi_le_kl": True, "agg_kl_ge_0": True},
    }
    return {**metrics, **overrides}


def test_collapse_verdict_levels():
    assert collapse_verdict(_metrics())["level"] == "none"
    partial = collapse_verdict(_metrics(au=3, posterior_mean_variance=[0.5, 0.5, 0.001, 0.5]))
    assert partial["level"] == "partial"
    # the KL of the three active dimensions, 1 + 2 + 3 nats, of 6.5 in all
    assert "1 of 4 latent dimensions are unused" in partial["summary"]
    assert "carry 6.00 of the 6.50 nats" in partial["summary"]
    assert collapse_verdict(_metrics(au=0, kl=0.02))["level"] == "collapsed"
    # active by the variance rule, but carrying less than 0.1 nats: still collapsed
    assert collapse_verdict(_metrics(au=4, kl=0.05))["level"] == "collapsed"
    assert collapse_verdict({"kl": 1.0})["level"] == "unknown"
    assert any("δ = 0.01" in t for t in collapse_verdict(_metrics())["thresholds"])


def test_collapse_verdict_thresholds_at_their_boundaries_on_the_total_kl():
    """Collapse is ``au == 0 or KL < 0.1`` with KL the *total* over dimensions: exactly 0.1
    nats is not collapsed, just below is; 0.3 nats over 4 active dimensions (0.075 per
    dimension, below 0.1) is no collapse; one inactive dimension of D is partial, none is
    none, and A = 0 is collapse whatever the KL."""
    assert verdicts.COLLAPSED_KL == 0.1
    assert collapse_verdict(_metrics(kl=0.1))["level"] == "none"
    assert collapse_verdict(_metrics(kl=math.nextafter(0.1, 0)))["level"] == "collapsed"
    assert collapse_verdict(_metrics(kl=0.3, kl_per_dim=[0.075] * 4))["level"] == "none"
    assert collapse_verdict(_metrics(au=3))["level"] == "partial"
    assert collapse_verdict(_metrics(au=1))["level"] == "partial"
    assert collapse_verdict(_metrics(au=4))["level"] == "none"
    assert collapse_verdict(_metrics(au=0, kl=50.0))["level"] == "collapsed"


@pytest.mark.parametrize(
    "share, level",
    [(0.01, "reliable"), (math.nextafter(0.01, 1), "usable"), (0.10, "usable"),
     (math.nextafter(0.10, 1), "unreliable")],
)  # fmt: skip
def test_psis_verdict_shares_at_their_boundaries(share, level):
    """At most 1% of points above k̂'s threshold is reliable, at most 10% usable (inclusive)."""
    assert (verdicts.PSIS_RELIABLE_SHARE, verdicts.PSIS_USABLE_SHARE) == (0.01, 0.10)
    metrics = {"nll": 90.0, "pareto_k_share_above": share, "nll_num_samples": 500}
    assert psis_verdict(metrics)["level"] == level


def test_collapse_verdict_notes():
    log_n = math.log(10_000)
    at_ceiling = collapse_verdict(_metrics(mi=0.96 * log_n))["notes"]
    assert any("at its ceiling log N = 9.21" in n and "10,000" in n for n in at_ceiling)
    below = collapse_verdict(_metrics(mi=0.5 * log_n))["notes"]
    assert not any("ceiling" in n and "cannot rank" in n for n in below)
    assert any("3.00 are information about x" in n for n in collapse_verdict(_metrics())["notes"])
    failed = collapse_verdict(_metrics(checks={"mi_le_log_n": False, "mi_le_kl": True}))
    assert any("mi_le_log_n" in n and "suspicion" in n for n in failed["notes"])
    read = collapse_verdict(_metrics(accuracy=0.884, accuracy_knn=0.9632))["notes"]
    assert any("88% (logistic regression) and 96% (5-NN) of test points" in n for n in read)


@pytest.mark.parametrize(
    "share, level, reliable",
    [(0.0, "reliable", "100%"), (0.005, "reliable", "99.5%"), (0.05, "usable", "95%"),
     (0.9906, "unreliable", "0.9%"), (1.0, "unreliable", "0%")],
)  # fmt: skip
def test_psis_verdict_levels(share, level, reliable):
    verdict = psis_verdict(
        {"nll": 90.0, "pareto_k_share_above": share, "pareto_k_threshold": 0.7,
         "nll_num_samples": 500, "split": "test"}
    )  # fmt: skip
    assert verdict["level"] == level
    assert verdict["summary"].startswith(f"Importance sampling reliable for {reliable} of test")
    # Vehtari et al.'s threshold for K = 500: 1 - 1/log10(500) = 0.63
    assert any("= 0.63 for K = 500" in t for t in verdict["thresholds"])


def test_psis_verdict_without_an_estimate():
    assert psis_verdict({})["level"] == "missing"
    few = psis_verdict({"nll": 90.0, "pareto_k_share_above": None, "nll_num_samples": 10})
    assert few["level"] == "missing" and "K = 10" in few["summary"]
    slow = psis_verdict(
        {"nll": 90.0, "pareto_k_share_above": 0.0, "pareto_k_share_above_0_5": 0.25}
    )
    assert any("25% of points" in n for n in slow["notes"])


def test_percent_never_rounds_to_a_misleading_extreme():
    assert [percent(s) for s in (0, 1, 0.25, 0.0004, 0.9996, 0.994, 0.006)] == [
        "0%", "100%", "25%", "< 0.1%", "> 99.9%", "99.4%", "0.6%",
    ]  # fmt: skip


# ---------------------------------------------------------------------------- tables and curves
def test_config_rows_mark_the_differences():
    a = {"format": 2, "model": {"skip": False, "latent_dim": 32}, "train": {"options": {}}}
    b = {"format": 2, "model": {"skip": True, "latent_dim": 32}, "train": {"options": {"k": 2}}}
    rows = {r["key"]: r for r in config_rows([a, b])}
    assert set(rows) == {"model.skip", "model.latent_dim", "train.options", "train.options.k"}
    assert rows["model.skip"]["values"] == ["false", "true"] and rows["model.skip"]["differs"]
    assert not rows["model.latent_dim"]["differs"]
    assert rows["train.options.k"]["values"] == ["–", "2"]


def test_diagnostics_rows_put_log_n_beside_the_mi():
    rows = diagnostics_rows([("a", _metrics(mi_se=0.01, mi_mc_se=0.005)), ("b", None)])
    keys = [r["key"] for r in rows]
    assert "log_n" not in keys and keys[:3] == ["kl", "mi", "agg_kl"]
    mi = rows[1]["cells"]
    assert mi[0] == {"value": "3.00", "se": "0.01", "mc_se": "0.01", "note": "ceiling log N = 9.21"}
    assert mi[1] is None
    au = rows[keys.index("au")]["cells"][0]
    assert au["value"] == "4 / 4" and au["note"] == "δ = 0.01"


def test_history_rows_mark_the_selected_epoch():
    history = [
        {"epoch": 1, "beta": 0.1, "train_elbo": -150.0, "val_elbo": -140.0, "selected": 1},
        {"epoch": 2, "beta": 0.2, "train_elbo": -130.0, "val_elbo": -141.0, "selected": 1},
    ]
    headers, rows = history_rows(history)
    assert headers == ["epoch", "β", "training bound", "validation ELBO"]
    assert rows == [["1 ★", "0.100", "-150.00", "-140.00"], ["2", "0.200", "-130.00", "-141.00"]]


def test_history_rows_show_text_perplexity_and_learning_rate():
    # a text run records the perplexity bound and a plateau-halved SGD rate each epoch
    history = [
        {"epoch": 1, "val_elbo": -120.0, "val_ppl": 224.0, "learning_rate": 1.0, "selected": 1},
        {"epoch": 2, "val_elbo": -121.0, "val_ppl": 231.5, "learning_rate": 0.125, "selected": 1},
    ]
    headers, rows = history_rows(history)
    assert headers == ["epoch", "validation ELBO", "validation perplexity bound", "learning rate"]
    assert rows == [["1 ★", "-120.00", "224.00", "1"], ["2", "-121.00", "231.50", "0.125"]]


def test_training_curves_png():
    history = [
        {"epoch": e, "beta": 0.1 * e, "train_elbo": -150.0 + e, "val_elbo": -140.0 + e,
         "val_kl": 5.0 + e, "selected": e}
        for e in (1, 2, 3)
    ]  # fmt: skip
    assert _png_size(training_curves([("a", history)])) == (1100, 700)  # 11 × 7 in at 100 dpi
    assert training_curves([("a", [])]) is None
