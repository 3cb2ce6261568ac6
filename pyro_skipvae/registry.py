"""Name → factory registries, so priors, likelihoods, decoders and encoders are chosen by name.

Users add their own with the decorator::

    from pyro_skipvae.models.priors import PRIORS

    @PRIORS.register("laplace")
    class LaplacePrior(Prior):
        ...
"""

from collections.abc import Callable, Iterator

from .errors import ConfigError


class Registry:
    """A mapping from names to factories (classes or functions) of one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable] = {}

    def register(self, name: str, factory: Callable | None = None):
        """Register ``factory`` under ``name``; usable as a decorator when ``factory`` is None."""
        if factory is None:
            return lambda f: self.register(name, f)
        if name in self._factories:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._factories[name] = factory
        return factory

    def get(self, name: str) -> Callable:
        try:
            return self._factories[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}"
            ) from None

    def build(self, name_or_object, *args, **kwargs):
        """Build the component called ``name_or_object``; an object that is not a string is
        returned unchanged, so users can pass their own instances."""
        if isinstance(name_or_object, str):
            return self.get(name_or_object)(*args, **kwargs)
        return name_or_object

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
