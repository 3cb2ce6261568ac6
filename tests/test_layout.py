"""The shape of the code base (docs/architecture.md): layers that import only downward,
modules of at most 500 lines and functions of at most 60 lines of code.

These are checks on the source text (read with :mod:`ast`), not on behaviour: they keep the
rules of the architecture page true as the code grows.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The layers, top first (docs/architecture.md). A module may import from its own layer's
#: package and from any layer below, never from one above. Keys are first-level names under
#: ``pyro_skipvae`` (``cli`` is the top-level ``cli/`` folder, installed as pyro_skipvae.cli).
LAYERS = [
    {"cli"},
    {"report"},
    {"sweep", "evaluation"},
    {"skip_vae"},
    {"configs", "run", "diagnose_options", "loggers"},
    {"infer"},
    {"diagnostics", "models", "guides"},
    {"data", "flows"},
    {
        "checkpoint",
        "checks",
        "children",
        "config_files",
        "errors",
        "lock",
        "modes",
        "mps",
        "names",
        "registry",
        "sites",
    },
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
#: a function longer than MAX_FUNCTION_LINES says why in its docstring with these words
LONG_BECAUSE = "long because"


def sources():
    return sorted([*ROOT.glob("pyro_skipvae/**/*.py"), *ROOT.glob("cli/*.py")])


def unit_of(path: Path) -> str:
    """The first-level name a source file belongs to (``infer`` for infer/svi.py)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "cli":
        return "cli"
    return parts[1] if len(parts) > 1 else "__init__"


def imported_units(path: Path) -> set[tuple[str, str, int]]:
    """``(unit, name, line)`` for every import of a pyro_skipvae module in ``path``,
    function-level imports included."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = ["pyro_skipvae", *parts[:-1]] if parts[0] == "cli" else list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            else:
                target = (node.module or "").split(".")
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = None, []
            for alias in node.names:
                if alias.name.startswith("pyro_skipvae"):
                    target = alias.name.split(".")
        else:
            continue
        if not target or target[0] != "pyro_skipvae":
            continue
        if len(target) == 1:  # from pyro_skipvae import X: X is a unit or a lazy export
            for name in names:
                found.add((name if name in LEVEL else "__init__", name, node.lineno))
        else:
            found.add((target[1], ".".join(target), node.lineno))
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in sources()} - {"__init__"}
    assert units <= set(LEVEL), f"give these a layer in LAYERS: {sorted(units - set(LEVEL))}"


def test_layers_import_only_downward():
    upward = []
    for path in sources():
        unit = unit_of(path)
        if unit == "__init__":
            continue
        for target, name, line in imported_units(path):
            if target == "__init__":
                # the package's lazy exports are the front door: only the CLI goes through
                # them; everyone may read the version
                if name != "__version__" and unit != "cli":
                    upward.append(
                        f"{path.relative_to(ROOT)}:{line} imports {name} from the package root"
                    )
            elif LEVEL[target] < LEVEL[unit]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({unit}) imports {name} ({target})")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_length(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{lines} lines; split the module by job"


def code_lines(node) -> int:
    """Lines of a function after its docstring."""
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            if len(body) == 1:
                return 0
            first = body[1]
    return node.end_lineno - first.lineno + 1


def test_function_length():
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            docstring = (ast.get_docstring(node) or "").lower()
            if code_lines(node) > MAX_FUNCTION_LINES and LONG_BECAUSE not in docstring:
                long.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {code_lines(node)}"
                )
    assert not long, (
        f"functions over {MAX_FUNCTION_LINES} lines of code without '{LONG_BECAUSE}' in the "
        "docstring:\n" + "\n".join(long)
    )


def test_the_checks_can_fail(tmp_path):
    """The AST readers see an upward import, a function-level one and a long function."""
    source = tmp_path / "pyro_skipvae" / "data" / "x.py"
    source.parent.mkdir(parents=True)
    body = "\n".join(f"    a{i} = {i}" for i in range(61))
    source.write_text(
        "from ..skip_vae import SkipVAE\n"
        f"def f():\n    '''Doc.'''\n    from pyro_skipvae.infer import fit\n{body}\n"
    )
    parts = ("pyro_skipvae", "data", "x")
    tree = ast.parse(source.read_text())
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert code_lines(function) == 62
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = {(t, line) for t, _, line in imported_units(source)}
        assert unit_of(source) == parts[1]
    finally:
        ROOT = saved
    assert found == {("skip_vae", 1), ("infer", 4)}
