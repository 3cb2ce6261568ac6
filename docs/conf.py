"""Sphinx configuration of the pyro-skipvae documentation.

Build: ``.venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html`` (the test
suite runs the same build, warnings as errors; ``tests/test_docs.py``).
"""

import os
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))  # the registry tables
os.environ.setdefault("MPLBACKEND", "Agg")

project = "pyro-skipvae"
author = "pyro-skipvae contributors"
copyright = "the pyro-skipvae contributors"
release = version = installed_version("pyro-skipvae")  # autodoc imports the installed package

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",  # the pages load MathJax from its CDN; the build needs no network
    "sphinx_click",
    "myst_nb",
    "registries",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# The tutorial is committed with its outputs (executed at its small size; the test suite
# executes it again at a tiny size), so the docs build never trains a model.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Members where they are defined; packages that re-export names (`__all__`) do not repeat them.
autodoc_default_options = {"members": True, "ignore-module-all": True}

html_theme = "furo"
html_title = f"pyro-skipvae {release}"
