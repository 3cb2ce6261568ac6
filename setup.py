"""Packages only; everything else is in setup.cfg.

The repository keeps the command line in a top-level ``cli/`` folder; installed, it is the
subpackage ``pyro_skipvae.cli``, so no generic top-level module named ``cli`` lands in
site-packages (setup.cfg cannot add a remapped subpackage to ``find:``'s result).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["pyro_skipvae", "pyro_skipvae.*"]), "pyro_skipvae.cli"],
    package_dir={"pyro_skipvae.cli": "cli"},
)
