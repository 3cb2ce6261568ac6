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


def check_count(name, value) -> int:
    """A positive integer (not a bool), e.g. a number of layers."""
    return check_integer(name, value)


def check_integer(name, value, *, minimum: int = 1, optional: bool = False):
    """An integer (not a bool) of at least ``minimum`` (1: positive, 0: non-negative), or
    None where ``optional``; returned unchanged. The message names what was expected:
    ``max_aggressive_epochs must be a non-negative integer or None, found -1``."""
    if value is None and optional:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer of at least {minimum}"
        )
        raise ConfigError(f"{name} must be {kind}{' or None' if optional else ''}, found {value!r}")
    return value


def per_layer(name, value, count) -> tuple[int, ...]:
    """One positive integer per layer from an int (or a one-element list), repeated, or a
    list of ``count`` values."""
    values = check_widths(name, value if isinstance(value, list | tuple) else [value])
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise ConfigError(
            f"{name} must give one value per layer ({count} layers), found {list(values)}"
        )
    return values
