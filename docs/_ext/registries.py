"""``.. registry:: module:NAME``: a table of a registry's entries, read from the code.

Each row gives the name users pass, the factory it builds (linked to its API entry), the
factory's options with their defaults (the keyword arguments the library does not fill
itself, as :meth:`pyro_skipvae.registry.Registry.options` reports them) and the first
sentence of its docstring. The ``:filled:`` option names the arguments the library passes itself.
"""

import importlib
import inspect
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _summary(factory) -> str:
    """The docstring's first sentence (or first paragraph, marked as cut short when it
    runs into a displayed formula)."""
    doc = inspect.getdoc(factory) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    # a full stop ends the sentence unless it ends an abbreviation (e.g., et al., eq.)
    sentence = re.match(r"(.+?(?<!e\.g)(?<!i\.e)(?<! al)(?<! eq)[.!?])(?=\s+[A-Z(]|$)", first)
    first = sentence.group(1) if sentence else first.rstrip(",;:") + " …"
    return first.replace("|", "\\|")


def _qualified(factory) -> str:
    return f"{factory.__module__}.{factory.__qualname__}"


class RegistryDirective(SphinxDirective):
    required_arguments = 1
    option_spec = {"filled": lambda text: [t.strip() for t in text.split(",") if t.strip()]}

    def run(self):
        module_name, _, attribute = self.arguments[0].partition(":")
        registry = getattr(importlib.import_module(module_name), attribute)
        filled = self.options.get("filled", [])
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 15 25 25 35",
            "",
            "   * - name",
            "     - factory",
            "     - options (defaults)",
            "     - summary",
        ]
        for name in registry.names():
            factory = registry.get(name)
            options = registry.options(name, filled=filled)
            defaults = registry.defaults(name, filled=filled)
            if options is None:
                shown = "any keyword"
            else:
                shown = (
                    ", ".join(
                        f"``{o}={defaults[o]!r}``" if o in defaults else f"``{o}``" for o in options
                    )
                    or "none"
                )
            role = "class" if inspect.isclass(factory) else "func"
            summary = (
                _summary(factory)
                if factory.__module__.startswith("pyro_skipvae")
                else (f"from ``{factory.__module__.split('.')[0]}``")
            )
            lines += [
                f"   * - ``{name}``",
                f"     - :py:{role}:`~{_qualified(factory)}`",
                f"     - {shown}",
                f"     - {summary or '-'}",
            ]
        node_list = StringList(lines, source=self.get_source_info()[0])
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, node_list, container)
        return container.children


def setup(app):
    app.add_directive("registry", RegistryDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
