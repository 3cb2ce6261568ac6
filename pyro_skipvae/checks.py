"""Checks of option values at the public boundary; each failure is a ConfigError saying what
was expected and what was found."""

import math

from .errors import ConfigError


def is_positive(value) -> bool:
    """A finite number > 0 (not a bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def check_positive(**values) -> None:
    """Every keyword's value is a finite number > 0."""
    for name, value in values.items():
        if not is_positive(value):
            raise ConfigError(f"{name} must be positive, found {value!r}")


def check_widths(name, widths) -> tuple[int, ...]:
    """A non-empty sequence of positive integer layer widths, as a tuple."""
    try:
        widths = tuple(int(w) for w in widths)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of positive integers, found {widths!r}") from None
    if not widths or min(widths) < 1:
        raise ConfigError(f"{name} must be one or more positive widths, found {widths}")
    return widths
