"""Name → factory registries, so priors, likelihoods, decoders, encoders, ELBOs, inference
algorithms and classifiers are chosen by name.

Users add their own with the decorator::

    from pyro_skipvae.models.priors import PRIORS

    @PRIORS.register("laplace")
    class LaplacePrior(Prior):
        ...

or name a factory by its import path, ``"module:attribute"`` (e.g. ``"mypkg.priors:VampPrior"``,
a class or a function; the attribute may be dotted). The path is imported when the component
is built, so a run's ``config.json`` that stores it rebuilds the component in a new process
(``SkipVAE.load``, ``--resume``, ``skipvae diagnose``) wherever the module is importable.

A component's *options* are the keyword arguments of its factory that the library does not
fill itself (e.g. a decoder's ``hidden_dims``, a likelihood's ``num_categories``); an unknown
option is a :class:`~pyro_skipvae.errors.ConfigError` that names the valid ones.
"""

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import ConfigError


class Registry:
    """A mapping from names to factories (classes or functions) of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable] = {}

    def register(self, name: str, factory: Callable | None = None) -> Callable:
        """Register ``factory`` under ``name``; usable as a decorator when ``factory`` is None."""
        if factory is None:
            return lambda f: self.register(name, f)
        if ":" in name:
            raise ConfigError(
                f"{self.kind} name {name!r}: ':' is reserved for import paths (module:attribute)"
            )
        if name in self._factories:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._factories[name] = factory
        return factory

    def get(self, name: str) -> Callable:
        """The factory registered as ``name``, or imported from the path ``"module:attribute"``.

        :raises ConfigError: an unknown name; a module that does not import, an attribute it
            lacks, or one that is not callable.
        """
        if name in self._factories:
            return self._factories[name]
        if isinstance(name, str) and ":" in name:
            return self._import(name)
        raise ConfigError(
            f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())} "
            "or an import path module:attribute"
        )

    def _import(self, path: str) -> Callable:
        module_name, _, attribute = path.partition(":")
        if not module_name or not attribute:
            raise ConfigError(
                f"{self.kind} {path!r}: expected an import path module:attribute, "
                "e.g. mypkg.priors:VampPrior"
            )
        try:
            obj = importlib.import_module(module_name)
        except Exception as e:  # ImportError, or any error the module raises on import
            raise ConfigError(
                f"{self.kind} {path!r}: cannot import module {module_name!r} "
                f"({type(e).__name__}: {e})"
            ) from None
        for part in attribute.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ConfigError(
                    f"{self.kind} {path!r}: module {module_name!r} has no attribute {attribute!r}"
                ) from None
        if not callable(obj):
            raise ConfigError(
                f"{self.kind} {path!r}: expected a class or function, found {type(obj).__name__}"
            )
        return obj

    def options(self, name: str, *, filled: Iterable[str] = ()) -> list[str] | None:
        """The option names ``name``'s factory accepts, less the arguments in ``filled``
        that the library passes itself; ``None`` when it takes ``**kwargs`` (anything goes)."""
        parameters = inspect.signature(self.get(name)).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return None
        return [
            p.name
            for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in filled
        ]

    def defaults(self, name: str, *, filled: Iterable[str] = ()) -> dict[str, Any]:
        """``{option: default}`` for the options of ``name`` that have a default."""
        parameters = inspect.signature(self.get(name)).parameters.values()
        return {
            p.name: p.default
            for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in filled
            and p.default is not p.empty
        }

    def build(
        self,
        name_or_object: str | object,
        *args: Any,
        options: dict[str, Any] | None = None,
        **fixed: Any,
    ) -> Any:
        """Build the component called ``name_or_object`` from ``args``, the library's own
        keyword arguments ``fixed`` and the user's ``options``; an object that is not a
        string is returned unchanged, so users can pass their own instances.

        :raises ConfigError: unknown name, or an option the factory does not take.
        """
        options = dict(options or {})
        if not isinstance(name_or_object, str):
            if options:
                raise ConfigError(
                    f"options {sorted(options)} apply to a {self.kind} chosen by name; "
                    f"a {type(name_or_object).__name__} instance was passed"
                )
            return name_or_object
        factory = self.get(name_or_object)
        unknown, valid = self.unknown_options(
            name_or_object, options, num_args=len(args), fixed=fixed
        )
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for {self.kind} {name_or_object!r}; "
                f"valid options: {', '.join(valid) or 'none'}"
            )
        clash = sorted(set(options) & set(fixed))
        if clash:
            raise ConfigError(
                f"option(s) {', '.join(clash)} of {self.kind} {name_or_object!r} are set by "
                "pyro-skipvae itself and cannot be given as options"
            )
        return factory(*args, **fixed, **options)

    def unknown_options(
        self, name: str, options: dict[str, Any], *, num_args: int = 0, fixed: Iterable[str] = ()
    ) -> tuple[list[str], list[str]]:
        """``(unknown, valid)``: the keys of ``options`` that ``name``'s factory does not take
        when the library passes ``num_args`` positional arguments and the keywords ``fixed``
        itself, and the options it does take (anything goes when it takes ``**kwargs``).
        The one test :meth:`build` and the configs' early checks share."""
        factory = self.get(name)
        valid = self.options(name, filled=self._filled(factory, num_args, fixed))
        if valid is None:
            return [], []
        return sorted(set(options) - set(valid)), valid

    def taking(self, option: str, *, num_args: int = 0) -> list[str]:
        """The registered names whose factories take ``option`` (for error messages)."""
        return [
            name
            for name in self.names()
            if option
            in (self.options(name, filled=self._filled(self.get(name), num_args, ())) or ())
        ]

    @staticmethod
    def _filled(factory, num_args, fixed) -> set[str]:
        names = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        return set(names[:num_args]) | set(fixed)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
