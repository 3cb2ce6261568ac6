"""Typed errors. Every message says what was expected and what was found.

``ConfigError`` is a usage error (the CLI exits with status 2); the others are runtime
failures (status 1). All derive from :class:`SkipVAEError`, so callers can catch one type.
"""


class SkipVAEError(Exception):
    """Base class of every error pyro-skipvae raises on purpose."""


class ConfigError(SkipVAEError, ValueError):
    """An option has an invalid value, or a run directory holds a different configuration."""


class DataError(SkipVAEError, ValueError):
    """Data is missing, corrupt, has the wrong shape, or lies outside the likelihood's support."""


class CheckpointError(SkipVAEError):
    """A checkpoint file is missing, corrupt, or was written for a different configuration."""


class NonFiniteLossError(SkipVAEError, FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left untouched."""


class RunLockedError(SkipVAEError, RuntimeError):
    """Another process holds the run folder's lock (:mod:`pyro_skipvae.lock`); the message
    names it (host, pid, since when)."""


class MPSError(SkipVAEError, RuntimeError):
    """CUDA MPS was asked for and its control daemon could not be found, started or reached."""


class MissingDependencyError(SkipVAEError, ImportError):
    """An optional feature's package is not installed; the message names the extra to install."""
