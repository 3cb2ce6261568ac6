"""The release on its own (issue 25): build the sdist and the wheel, check their metadata and
contents, install the wheel alone into a fresh virtual environment, and do the main job with
it from a folder outside the repository: ``skipvae fit`` on MNIST found through
``$SKIPVAE_DATA_DIR``, then ``skipvae diagnose`` on the run.

The fresh environment is made from this interpreter with ``venv --without-pip``; the wheel is
installed into it by this environment's pip (``pip --python``), offline (``--no-index``).
Its dependencies (torch, Pyro, ...) are not downloaded again, which would cost gigabytes and
minutes: a ``.pth`` file appends this environment's site-packages to the fresh one's
``sys.path``. A ``.pth`` path line adds the folder only; the ``.pth`` files inside it are not
run, so an editable install of the checkout stays inert, and the fresh site-packages comes
first, so the wheel's own copy of ``pyro_skipvae`` is the one imported (checked below).
"""

import configparser
import json
import math
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import pyro_skipvae
from pyro_skipvae.data import resolve_data_dir
from pyro_skipvae.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
VERSION = pyro_skipvae.__version__
#: what a checkout holds that no build may see (the .gitignore's entries and the git link)
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    "runs",
    "mutants",
    "_build",
    ".pytest_cache",
    ".ruff_cache",
    "*.pt",
)


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``python -m build`` on a copy of the checkout (the build writes ``build/`` and
    ``*.egg-info`` beside its sources; the checkout stays untouched): the sdist first, then
    the wheel built from the unpacked sdist, so the wheel proves the sdist complete."""
    source = tmp_path_factory.mktemp("source") / "pyro-skipvae"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "build", "--outdir", str(out), str(source)]
    # this environment's setuptools when it can build (fast, offline); else build's isolated
    # environment, which installs pyproject.toml's build requirements
    no_isolation = subprocess.run(
        [*build, "--no-isolation", "--skip-dependency-check"], capture_output=True, text=True
    )
    if no_isolation.returncode:
        run(build)
    (sdist,) = out.glob("pyro_skipvae-*.tar.gz")
    (wheel,) = out.glob("pyro_skipvae-*.whl")
    return sdist, wheel


def test_twine_accepts_both_files(dist):
    out = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)])
    assert out.count("PASSED") == 2, out


def test_the_wheel_holds_the_package_its_data_and_the_licence(dist):
    _, wheel = dist
    assert wheel.name == f"pyro_skipvae-{VERSION}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    # every module of the package and of the command line, under the package only
    expected = {
        f"pyro_skipvae/{p.relative_to(ROOT / 'pyro_skipvae').as_posix()}"
        for p in (ROOT / "pyro_skipvae").rglob("*.py")
    } | {f"pyro_skipvae/cli/{p.name}" for p in (ROOT / "cli").glob("*.py")}
    assert expected <= names, sorted(expected - names)
    templates = {
        f"pyro_skipvae/report/templates/{p.name}"
        for p in (ROOT / "pyro_skipvae" / "report" / "templates").iterdir()
    }
    assert templates and templates <= names, sorted(templates - names)
    assert "pyro_skipvae/py.typed" in names
    top = {n.split("/")[0] for n in names}
    assert top == {"pyro_skipvae", f"pyro_skipvae-{VERSION}.dist-info"}, top
    info = f"pyro_skipvae-{VERSION}.dist-info"
    licence = [n for n in names if n.startswith(info) and n.endswith("/LICENSE")]
    assert licence, "the licence text is missing from the wheel"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(licence[0]) == (ROOT / "LICENSE").read_bytes()
        meta = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "skipvae = pyro_skipvae.cli.main:main" in entry_points
    check_metadata(meta)


def check_metadata(meta):
    """What people search an index by: version, licence, classifiers, URLs, keywords."""
    assert meta["Name"] == "pyro-skipvae" and meta["Version"] == VERSION
    assert meta["Requires-Python"] == ">=3.10"
    assert "Apache-2.0" in (meta["License-Expression"] or meta["License"] or "")
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = set(meta.get_all("Classifier"))
    assert {
        "License :: OSI Approved :: Apache Software License",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Programming Language :: Python :: 3.11",
    } <= classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Documentation", "Source", "Changelog"} <= set(urls), urls
    keywords = {k.strip().lower() for k in meta["Keywords"].split(",")}
    assert {"vae", "posterior collapse", "pyro", "variational inference"} <= keywords
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("pyro-ppl") for r in requires)
    assert not [r for r in requires if "==" in r.split(";")[0]], requires  # ranges, no pins


def test_the_sdist_holds_sources_tests_docs_and_release_files(dist):
    sdist, _ = dist
    prefix = f"pyro_skipvae-{VERSION}/"
    with tarfile.open(sdist) as archive:
        names = {n.removeprefix(prefix) for n in archive.getnames()}
    for name in (
        "LICENSE",
        "CHANGELOG.md",
        "CITATION.cff",
        "README.md",
        "MANIFEST.in",
        "setup.cfg",
        "setup.py",
        "pyproject.toml",
        "cli/main.py",
        "pyro_skipvae/py.typed",
        "pyro_skipvae/report/templates/report.html",
        "tests/conftest.py",
        "tests/test_wheel.py",
        "docs/conf.py",
        "docs/index.rst",
        "docs/tutorials/mnist_vae_vs_skip_vae.ipynb",
        "examples/custom_prior.py",
        "benchmarks/results/mutation.md",
    ):
        assert name in names, name
    # every test module and command-line module, and nothing of a checkout's working state
    assert {f"tests/{p.name}" for p in (ROOT / "tests").glob("*.py")} <= names
    assert {f"cli/{p.name}" for p in (ROOT / "cli").glob("*.py")} <= names
    assert not [
        n for n in names if re.search(r"(^|/)(\.venv|\.git|__pycache__|_build)(/|$)|\.pt$", n)
    ]


@pytest.fixture(scope="module")
def mnist_dir():
    """The MNIST folder, or a skip saying where it was looked for (the only reason to skip)."""
    try:
        return resolve_data_dir(expected="MNIST/raw/*-ubyte.gz")
    except DataError as e:
        pytest.skip(f"no MNIST to run the installed wheel on: {e}")


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory):
    """A fresh environment holding the wheel and no source tree: its folder, its interpreter
    and the dependency folders its ``sys.path`` borrows from this environment."""
    _, wheel = dist
    env = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    )
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}
    dependencies = sorted(p for p in ours if Path(p).is_dir())
    (purelib / "_dependencies_of_the_test_environment.pth").write_text(
        "".join(f"{p}\n" for p in dependencies)
    )
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index"]
        # --ignore-installed: a copy of pyro-skipvae in the borrowed folders is left alone
        + ["--no-deps", "--ignore-installed", "--no-compile", str(wheel)]
    )
    return env, python, dependencies


def fresh_env():
    """The user's environment less anything pointing into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_the_installed_wheel_fits_and_diagnoses_mnist(mnist_dir, installed, tmp_path):
    env_dir, python, dependencies = installed
    work = tmp_path / "elsewhere"  # a folder outside the repository
    work.mkdir()
    env = fresh_env()
    env["SKIPVAE_DATA_DIR"] = str(mnist_dir)

    # the package comes from the wheel, and nothing of the checkout is importable
    where = run(
        [
            str(python),
            "-c",
            "import importlib.util as u, json, sys, pyro_skipvae, pyro_skipvae.cli.main; "
            "print(json.dumps([pyro_skipvae.__file__, u.find_spec('cli') is None, sys.path]))",
        ],
        cwd=work,
        env=env,
    )
    package, no_cli, path = json.loads(where)
    assert Path(package).is_relative_to(env_dir), package
    assert no_cli
    # (this environment's site-packages may live in the checkout, as .venv/ does)
    inside = [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)]
    assert not set(inside) - set(dependencies), path

    skipvae = str(python.with_name("skipvae"))  # the console script the wheel installed
    assert re.match(
        rf"pyro-skipvae {re.escape(VERSION)}, torch ", run([skipvae, "--version"], env=env)
    )

    # 2 epochs of 150 steps (3,000 images, batch 20): a few hundred optimizer steps
    run(
        [skipvae, "fit", "--train-size", "3000", "--val-size", "1000", "--batch-size", "20"]
        + ["--num-epochs", "2", "--latent-dim", "8", "--hidden-dims", "128,128"]
        + ["--kl-warmup-epochs", "1", "--out", "run", "--quiet"],
        cwd=work,
        env=env,
    )
    out = work / "run"
    assert {"config.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "train.log"} <= {
        p.name for p in out.iterdir()
    }
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    # a Bernoulli bound on 784 binary pixels: below 0 and far above the 784 log 2 = 543 nats
    # of a model that ignores the data; it improves with the second epoch
    elbos = [r["val_elbo"] for r in history]
    assert all(-300 < e < 0 for e in elbos) and elbos[1] > elbos[0], elbos

    run(
        [skipvae, "diagnose", "run", "--eval-size", "300", "--num-samples", "10"]
        + ["--classifier-train-size", "600", "--embedding", "pca", "--quiet"],
        cwd=work,
        env=env,
    )
    metrics = json.loads((out / "diagnostics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_points"] == 300
    for key in ("elbo", "kl", "mi", "agg_kl", "nll", "accuracy"):
        assert math.isfinite(metrics[key]) and metrics[f"{key}_se"] >= 0, key
    # the importance-weighted bound is at least as tight as the ELBO (up to Monte-Carlo
    # error); KL and MI are non-negative, MI under its ceiling log N; the code carries the
    # digit (chance is 0.1)
    assert metrics["nll"] <= -metrics["elbo"] + 3 * metrics["elbo_se"]
    assert metrics["kl"] > 0 and 0 <= metrics["mi"] <= metrics["log_n"] + 1e-6
    assert 0 <= metrics["au"] <= 8 and metrics["accuracy"] > 0.3
    assert (out / "diagnostics.nc").stat().st_size > 0
    assert list((out / "diagnostics_plots").glob("*.png"))


def test_the_version_is_written_once_and_the_release_files_agree():
    """setup.cfg reads ``pyro_skipvae.__version__``; the changelog's newest release and the
    citation name the same version."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["version"] == "attr: pyro_skipvae.__version__"
    assert config["metadata"]["license_files"].split() == ["LICENSE"]
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == VERSION
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(VERSION)}$", citation, re.M)
    assert re.search(r"^cff-version: 1\.2\.0$", citation, re.M)
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
