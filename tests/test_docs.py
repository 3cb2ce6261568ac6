"""The documentation builds clean (warnings are errors) and the tutorial runs on real MNIST."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "tutorials" / "mnist_vae_vs_skip_vae.ipynb"


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, out],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    # the CLI reference comes from the click commands, the registry tables from the code
    cli = (out / "cli.html").read_text()
    for command in ("fit", "diagnose", "compare", "sweep", "report"):
        assert f"<h3>{command}" in cli, command
    assert "--num-refine-steps" in cli
    components = (out / "components.html").read_text()
    for name in ("learned-normal", "pixelcnn", "continuous-bernoulli", "free-bits", "knn"):
        assert f'<span class="pre">{name}</span>' in components, name
    # the tutorial is rendered with its committed outputs (figures included)
    tutorial = (out / "tutorials" / "mnist_vae_vs_skip_vae.html").read_text()
    assert "<img" in tutorial and "amortization gap" in tutorial
    api = (out / "api.html").read_text()
    assert "pyro_skipvae.skip_vae.SkipVAE.fit" in api


def test_every_benchmark_result_has_a_docs_page():
    included = {p.stem for p in (DOCS / "results").glob("*.md")}
    results = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.md")}
    assert results == included
    for name in results:
        page = (DOCS / "results" / f"{name}.md").read_text()
        assert f"```{{include}} ../../benchmarks/results/{name}.md" in page


def test_the_committed_tutorial_carries_its_outputs():
    """The docs render the committed outputs (nb_execution_mode = "off"): every code cell
    ran, in order, without an error."""
    nb = nbformat.read(TUTORIAL, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)


def test_tutorial_executes_at_tiny_size(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPVAE_TUTORIAL_SIZE", "tiny")
    monkeypatch.setenv("SKIPVAE_TUTORIAL_DIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(TUTORIAL, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "| metric | VAE | Skip-VAE |" in text
    assert "amortization gap" in text
    for run in ("vae", "skip-vae"):
        folder = tmp_path / "tiny" / run
        assert (folder / "diagnostics.json").is_file() and (folder / "refined.json").is_file()
        assert "epoch 1: {'epoch': 1" in (folder / "train.log").read_text()
