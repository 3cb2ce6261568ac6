"""Library hygiene: import side effects, the installed layout, dependency ranges, and where
data are looked for."""

import configparser
import importlib.util
import shutil
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torchvision

from pyro_skipvae.data import load_dataset
from pyro_skipvae.data.paths import data_dir_candidates, resolve_data_dir, user_data_dir
from pyro_skipvae.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def python(code, cwd):
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_importing_the_library_imports_no_plotting_and_changes_no_backend(tmp_path):
    out = python(
        "import sys, pyro_skipvae, pyro_skipvae.diagnostics, pyro_skipvae.evaluation; "
        "print('matplotlib' in sys.modules)",
        tmp_path,
    )
    assert out == "False"


def test_the_command_line_is_installed_under_the_package_only(tmp_path):
    out = python(
        "import importlib.util as u, pyro_skipvae.cli.main as m; "
        "print(u.find_spec('cli') is None, callable(m.main))",
        tmp_path,  # outside the checkout, so the repository's own cli/ folder is not on sys.path
    )
    assert out == "True True"
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "pyro_skipvae.cli.main:main" in config["options.entry_points"]["console_scripts"]


def test_dependencies_are_ranges_not_pins():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = [
        r.strip() for r in config["options"]["install_requires"].splitlines() if r.strip()
    ]
    assert requirements and not [r for r in requirements if "==" in r], requirements
    for name in ("torch", "torchvision", "pyro-ppl"):
        assert any(r.startswith(name + ">=") for r in requirements), name


def test_the_test_extra_installs_what_the_docs_build_needs():
    """The README's one test command installs ``.[test]``, and the suite builds the docs."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = config["options.extras_require"]

    def requirements(extra):
        return {r.strip() for r in extras[extra].splitlines() if r.strip()}

    docs = requirements("docs")
    assert {r.split(">=")[0] for r in docs} >= {"sphinx", "sphinx-click", "myst-nb", "nbclient"}
    assert docs <= requirements("test")
    assert not [r for r in docs if "==" in r]


def placeholder(folder, relative):
    """An empty file where a data set would be: path resolution only ever globs names."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def test_data_folder_search_order(tmp_path, monkeypatch):
    monkeypatch.delenv("SKIPVAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_data_dir() == tmp_path / "xdg" / "pyro-skipvae"
    # the clone's ../shared/data comes first, the user data folder last
    candidates = data_dir_candidates()
    assert candidates[-1] == user_data_dir() and (ROOT.parent / "shared" / "data") in candidates
    # a data set found only in the user folder is read from there
    placeholder(user_data_dir(), "Omniglotish/raw/a.gz")
    assert resolve_data_dir(expected="Omniglotish/raw/*.gz") == user_data_dir()
    # an explicit folder (argument or environment) is used alone, never second-guessed
    monkeypatch.setenv("SKIPVAE_DATA_DIR", str(tmp_path / "env"))
    assert data_dir_candidates() == [tmp_path / "env"]
    assert data_dir_candidates(tmp_path / "arg") == [tmp_path / "arg"]
    with pytest.raises(
        DataError, match=r"holding Omniglotish/raw/\*\.gz found \(searched: .*env\)"
    ):
        resolve_data_dir(expected="Omniglotish/raw/*.gz")


def test_download_offline_names_the_files_and_where_to_put_them(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    target = tmp_path / "data"
    with pytest.raises(DataError) as error:
        load_dataset("mnist", data_dir=target, download=True)
    message = str(error.value)
    assert "download failed (URLError" in message
    assert "train-images-idx3-ubyte.gz" in message and str(target / "MNIST" / "raw") in message
    with pytest.raises(DataError, match="no data directory holding MNIST/raw"):
        load_dataset("mnist", data_dir=target)  # without --download: the plain error


def test_cli_mirrors_agree_with_the_library():
    import pyro_skipvae.cli.options as cli
    from pyro_skipvae.data import BINARIZATIONS, IMAGE_DATASETS
    from pyro_skipvae.infer import OPTIMIZERS, SEMI_AMORTIZED_MODES
    from pyro_skipvae.infer.compile import COMPILE_MODES
    from pyro_skipvae.infer.optim import LR_DECAYS
    from pyro_skipvae.infer.refine import COORDINATES

    assert cli.BINARIZATIONS == BINARIZATIONS
    assert set(cli.IMAGE_DATASETS) == set(IMAGE_DATASETS)
    assert cli.SEMI_AMORTIZED_MODES == SEMI_AMORTIZED_MODES
    assert cli.REFINE_COORDINATES == COORDINATES
    assert cli.OPTIMIZERS == tuple(OPTIMIZERS.names())
    assert cli.LR_DECAYS == LR_DECAYS
    assert cli.COMPILE_MODES == COMPILE_MODES
    assert importlib.util.find_spec("pyro_skipvae.cli") is not None


def test_help_does_not_import_torch_and_version_names_the_stack(tmp_path):
    """Every command's help and usage errors answer without the heavy libraries
    (benchmarks/cli_latency.py times them)."""
    out = python(
        "import sys; from click.testing import CliRunner; import pyro_skipvae.cli.main as m; "
        "calls = [['--help'], *([c, '--help'] for c in sorted(m.cli.commands)), "
        "['fit', '--latent-dim', '0'], ['diagnose'], ['no-such-command']]; "
        "codes = [CliRunner().invoke(m.cli, c).exit_code for c in calls]; "
        "heavy = ('torch', 'pyro', 'numpy', 'scipy', 'matplotlib', 'sklearn', 'yaml', 'jinja2'); "
        "print(sorted(m.cli.commands), codes, [h for h in heavy if h in sys.modules])",
        tmp_path,
    )
    commands = "['compare', 'diagnose', 'fit', 'report', 'sweep']"
    assert out == f"{commands} [0, 0, 0, 0, 0, 0, 2, 2, 2] []"
    from click.testing import CliRunner

    from pyro_skipvae.cli.main import cli

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    for name in ("pyro-skipvae 0.1.0", "torch ", "pyro ", "CUDA "):
        assert name in result.output


def test_the_wheel_ships_py_typed_and_the_command_line(tmp_path):
    """Type checkers read the hints only from a package marked ``py.typed`` (PEP 561)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for name in ("pyro_skipvae", "cli"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist"]
    # the environment's own setuptools when it can build wheels (fast, offline), else pip's
    # isolated build
    if subprocess.run([*wheel, "--no-build-isolation", source], capture_output=True).returncode:
        subprocess.run([*wheel, source], check=True, capture_output=True)
    (built,) = (tmp_path / "dist").glob("pyro_skipvae-*.whl")
    names = zipfile.ZipFile(built).namelist()
    assert "pyro_skipvae/py.typed" in names
    assert (
        "pyro_skipvae/cli/main.py" in names and "pyro_skipvae/report/templates/report.html" in names
    )
