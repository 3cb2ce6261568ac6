"""The ``skipvae`` command-line interface."""
