"""Sphinx configuration of the pyro-skipvae documentation.

Build: ``.venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html`` (the test
suite runs exactly this build, warnings as errors; ``tests/test_docs.py``).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))  # the registry tables
os.environ.setdefault("MPLBACKEND", "Agg")

project = "pyro-skipvae"
author = "pyro-skipvae contributors"
copyright = "the pyro-skipvae contributors"
try:
    from importlib.metadata import version as _version

    release = _version("pyro-skipvae")
except Exception:  # building from a checkout that is not installed
    release = "0.1.0"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx_click",
    "myst_nb",
    "registries",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# The tutorial is committed with its outputs (executed at a small size; the test suite
# executes it again at a tiny size), so the docs build never trains a model.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Members where they are defined; packages that re-export names (`__all__`) do not repeat them.
autodoc_default_options = {"members": True, "ignore-module-all": True}
autodoc_mock_imports: list[str] = []

html_theme = "furo" if __import__("importlib").util.find_spec("furo") else "alabaster"
html_title = f"pyro-skipvae {release}"
# mathjax loads from its CDN: pages render maths online; the build itself needs no network.
