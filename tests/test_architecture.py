"""The import rules of ``pyapred``, checked by reading the source with :mod:`ast`.

Nothing of ``pyapred`` is imported: every ``.py`` file under ``pyapred/`` is parsed, and every
import found anywhere in it counts -- at module level, inside functions and methods, under
``if TYPE_CHECKING:`` -- together with ``importlib.import_module("pyapred.x")`` calls whose
target is a literal string, and ``pyapred.cli``'s ``_delegate("pyapred.x")`` (a subcommand's
module, imported when the subcommand runs).

Rule 1, no import cycle. The modules of ``pyapred`` and the imports between them form a graph;
no group of modules may import each other round in a circle. An import is an edge to the module
it names: ``from pkg import name`` goes to the submodule ``pkg.name`` when there is one, else to
``pkg`` (its ``__init__.py``). A module importing one of its own ancestor packages
(``pyapred.io.apz`` -> ``pyapred.io`` or ``pyapred``) is not an edge. Neither is the implicit
run of ``pyapred/io/__init__.py`` that ``import pyapred.io.apz`` causes: only named targets count.

Rule 2, private names stay home. A module or name starting with one underscore (``_numpy``,
``_median_network``; not ``__version__``) belongs to the package it sits in: for
``pyapred.solver._numpy`` that is ``pyapred.solver``; for a name ``_y`` in the module
``pyapred.io.product`` it is ``pyapred.io``. Only modules inside that package may import it.
The top-level package is narrower: only the modules directly in ``pyapred/`` may import a
private thing of ``pyapred`` itself.

Rule 3, dependencies point downwards. :data:`LAYERS` lists the package's parts from the top
down, as the diagram of ``docs/architecture.md`` does; a module may import its own part and the
parts below it, never one above. (Importing an ancestor package, such as ``pyapred`` for its
public names, is no edge, as in rule 1.)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

TOP = "pyapred"
REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / TOP


# ----------------------------------------------------------------------------------------------
# Reading the package: module names and the imports in each file
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    """One import in one file.

    ``imported`` is the full dotted path of what is imported (``pyapred.io.product._y`` for
    ``from .product import _y``); ``target`` is the module that path lives in, the edge in the
    import graph (``pyapred.io.product``).
    """

    importer: str
    where: str  # "pyapred/x.py:12"
    imported: str
    target: str


def find_modules(package_dir: Path) -> dict[str, Path]:
    """``{"pyapred.io.apz": Path(".../pyapred/io/apz.py"), "pyapred.io": .../__init__.py, ...}``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def own_package(module: str, modules: dict[str, Path]) -> str:
    """The package a module sits in: itself for an ``__init__.py``, else its parent."""
    return module if is_package(module, modules) else module.rpartition(".")[0]


def resolve_relative(
    importer: str, importer_is_package: bool, module: str | None, level: int
) -> str:
    """The absolute module of ``from <level dots><module> import ...`` written in ``importer``.

    One dot is the importer's own package: the importer itself for an ``__init__.py``, its
    parent for a plain module. Each further dot goes one package up.
    """
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not importer_is_package:
        base.pop()
    if level - 1 >= len(base):
        raise ValueError(f"{importer}: relative import goes above the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def nearest_module(dotted: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``dotted`` that is a module (``pkg.mod.name`` -> ``pkg.mod``)."""
    while dotted not in modules and "." in dotted:
        dotted = dotted.rpartition(".")[0]
    return dotted


def literal_string(node: ast.expr) -> str | None:
    """The value of ``"..."``, or of an f-string made of literal parts only; else ``None``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = [
            literal_string(v.value if isinstance(v, ast.FormattedValue) else v) for v in node.values
        ]
        if None not in parts:
            return "".join(parts)
    return None


def is_import_module_call(node: ast.AST) -> bool:
    """``import_module(...)``, ``importlib.import_module(...)`` or ``_delegate(...)``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return name in ("import_module", "_delegate")


def imported_paths(node: ast.AST, importer: str, modules: dict[str, Path]) -> Iterator[str]:
    """The full dotted paths that one AST node imports (none for most nodes)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        base = resolve_relative(importer, is_package(importer, modules), node.module, node.level)
        for alias in node.names:
            yield base if alias.name == "*" else f"{base}.{alias.name}"
    elif is_import_module_call(node) and node.args:
        text = literal_string(node.args[0])
        if text is not None and not text.startswith("."):
            yield text


def imports_of(module: str, modules: dict[str, Path]) -> Iterator[Import]:
    """Every import of a ``pyapred`` module written anywhere in the file of ``module``."""
    path = modules[module]
    root = modules[TOP].parents[1]  # the folder holding pyapred/, for "pyapred/x.py:12"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        for imported in imported_paths(node, module, modules):
            if imported == TOP or imported.startswith(TOP + "."):
                yield Import(
                    importer=module,
                    where=f"{path.relative_to(root).as_posix()}:{node.lineno}",
                    imported=imported,
                    target=nearest_module(imported, modules),
                )


def all_imports(modules: dict[str, Path]) -> list[Import]:
    return [imp for module in modules for imp in imports_of(module, modules)]


# ----------------------------------------------------------------------------------------------
# Rule 1: the import graph and its cycles
# ----------------------------------------------------------------------------------------------
def is_ancestor(package: str, module: str) -> bool:
    """``pyapred`` and ``pyapred.io`` are ancestors of ``pyapred.io.apz``."""
    return module.startswith(package + ".")


def import_graph(imports: list[Import]) -> dict[str, dict[str, list[str]]]:
    """``{importer: {target: ["file:line", ...]}}``, without self-imports or ancestor imports."""
    graph: dict[str, dict[str, list[str]]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, {})
        if imp.target != imp.importer and not is_ancestor(imp.target, imp.importer):
            places = graph[imp.importer].setdefault(imp.target, [])
            if imp.where not in places:  # `from m import a, b` is one place
                places.append(imp.where)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that all reach each other, sizes > 1 only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:  # node is the root of a group: pop the group
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def simple_cycles(graph: dict[str, dict[str, list[str]]], group: list[str]) -> list[list[str]]:
    """Every cycle within one strongly connected group, each listed once, starting from its
    alphabetically first module (``["a", "b", "a"]``)."""
    cycles = []

    def walk(path: list[str]) -> None:
        for succ in sorted(graph.get(path[-1], {})):
            if succ == path[0]:
                cycles.append([*path, succ])
            elif succ in group and succ > path[0] and succ not in path:
                walk([*path, succ])

    for start in group:
        walk([start])
    return cycles


def describe_cycle(graph: dict[str, dict[str, list[str]]], cycle: list[str]) -> str:
    steps = [f"{a} -> {b} ({', '.join(graph[a][b])})" for a, b in pairwise(cycle)]
    return " -> ".join(cycle) + "\n      " + "\n      ".join(steps)


# ----------------------------------------------------------------------------------------------
# Rule 2: private modules and names
# ----------------------------------------------------------------------------------------------
def is_private(part: str) -> bool:
    """``_x`` is private; ``__version__`` and ``__init__`` are not."""
    return part.startswith("_") and not part.startswith("__")


def private_owners(imported: str, modules: dict[str, Path]) -> list[str]:
    """The packages owning each private part of a dotted path.

    The owner of a private part is the package it sits in: the part before it when that is a
    package, else that module's own package.
    """
    parts = imported.split(".")
    owners = []
    for i, part in enumerate(parts):
        if is_private(part):
            container = ".".join(parts[:i])
            owners.append(
                container if is_package(container, modules) else container.rpartition(".")[0]
            )
    return owners


def may_import_private(importer: str, owner: str, modules: dict[str, Path]) -> bool:
    """Modules inside ``owner`` may; for the top-level package, only those directly in it."""
    package = own_package(importer, modules)
    if owner == TOP:
        return package == TOP
    return package == owner or is_ancestor(owner, package)


def private_violations(imports: list[Import], modules: dict[str, Path]) -> list[str]:
    return [
        f"{imp.where}: {imp.importer} -> {imp.imported}"
        for imp in imports
        if not all(
            may_import_private(imp.importer, o, modules)
            for o in private_owners(imp.imported, modules)
        )
    ]


# ----------------------------------------------------------------------------------------------
# Rule 3: the layers
# ----------------------------------------------------------------------------------------------
#: The parts of pyapred from the top down (docs/architecture.md's diagram, line by line): a
#: module belongs to the longest name here that it is or sits in. ``pyapred`` alone is the
#: package's ``__init__.py`` (its public names). A subcommand's own module belongs to the
#: commands wherever its folder is (``noise/cli.py``, ``guider/cli.py`` with ``guider/``), and
#: ``noise/stress.py``, the stress study that ``pyapred noise`` runs, sits with the studies.
LAYERS = (
    "pyapred.__main__",
    "pyapred.cli",
    "pyapred.commands",
    "pyapred.night",
    "pyapred.plots",
    "pyapred.guider",
    "pyapred.validate",
    "pyapred.crossval",
    "pyapred.noise.cli",
    "pyapred.noise.stress",
    "pyapred.pipeline",
    "pyapred.exposure",
    "pyapred",
    "pyapred.simulate",
    "pyapred.chromatic",
    "pyapred.traces",
    "pyapred.noise",
    "pyapred.conformance",
    "pyapred.io",
    "pyapred.solver",
    "pyapred.arguments",
    "pyapred.jit",
    "pyapred.errors",
)


def layer_of(module: str, layers: tuple[str, ...] = LAYERS) -> int:
    """The index in ``layers`` of the longest name that ``module`` is or sits in (``pyapred``
    itself only for the package's ``__init__.py``)."""
    found = [
        i
        for i, name in enumerate(layers)
        if module == name or (name != TOP and module.startswith(name + "."))
    ]
    if not found:
        raise ValueError(f"{module}: in no part of LAYERS; add it where the diagram has it")
    return max(found, key=lambda i: len(layers[i]))


def upward_imports(
    graph: dict[str, dict[str, list[str]]], layers: tuple[str, ...] = LAYERS
) -> list[str]:
    return [
        f"{', '.join(places)}: {importer} ({layers[layer_of(importer, layers)]}) imports "
        f"{target} ({layers[layer_of(target, layers)]}), which is above it"
        for importer, targets in sorted(graph.items())
        for target, places in sorted(targets.items())
        if layer_of(target, layers) < layer_of(importer, layers)
    ]


# ----------------------------------------------------------------------------------------------
# The tests on pyapred
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    found = find_modules(PACKAGE_DIR)
    assert TOP in found and len(found) > 10, f"pyapred not found under {PACKAGE_DIR}"
    return found


def test_no_import_cycle(modules):
    graph = import_graph(all_imports(modules))
    report = []
    for group in strongly_connected(graph):
        report.append(f"modules importing each other round: {', '.join(group)}")
        report.extend(f"  cycle: {describe_cycle(graph, c)}" for c in simple_cycles(graph, group))
    if report:
        pytest.fail("import cycles in pyapred:\n" + "\n".join(report), pytrace=False)


def test_every_import_points_downwards(modules):
    upward = upward_imports(import_graph(all_imports(modules)))
    if upward:
        pytest.fail("imports against the layers of docs/architecture.md:\n" + "\n".join(upward),
                    pytrace=False)  # fmt: skip


def test_no_private_import_from_outside_its_package(modules):
    violations = private_violations(all_imports(modules), modules)
    if violations:
        message = "private modules/names imported from outside their package:\n"
        pytest.fail(message + "\n".join(violations), pytrace=False)


# ----------------------------------------------------------------------------------------------
# The checks themselves, on synthetic inputs: they can fail
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("importer", "is_pkg", "module", "level", "expected"),
    [
        ("pyapred.io.apz", False, "errors", 2, "pyapred.errors"),  # from ..errors
        ("pyapred.io.apz", False, "_rice", 1, "pyapred.io._rice"),  # from ._rice
        ("pyapred.io", True, "apz", 1, "pyapred.io.apz"),  # from .apz, in io/__init__.py
        ("pyapred.io", True, None, 2, "pyapred"),  # from .. import x, in io/__init__.py
        ("pyapred.cli", False, None, 1, "pyapred"),  # from . import commands
        ("pyapred.cli", False, "pyapred.x", 0, "pyapred.x"),  # absolute
    ],
)
def test_resolve_relative(importer, is_pkg, module, level, expected):
    assert resolve_relative(importer, is_pkg, module, level) == expected


def test_resolve_relative_above_top_fails():
    with pytest.raises(ValueError):
        resolve_relative("pyapred.cli", False, None, 2)


def test_cycle_finder_finds_cycles():
    graph = {
        "a": {"b": ["a.py:1"]},
        "b": {"c": ["b.py:1"], "a": ["b.py:2"]},
        "c": {"a": ["c.py:1"]},
        "d": {"a": ["d.py:1"]},  # reaches the cycle, is not in it
        "e": {"f": ["e.py:1"]},
        "f": {"e": ["f.py:1"]},
    }
    assert strongly_connected(graph) == [["a", "b", "c"], ["e", "f"]]
    assert simple_cycles(graph, ["a", "b", "c"]) == [["a", "b", "a"], ["a", "b", "c", "a"]]
    assert strongly_connected({"a": {"b": []}, "b": {}}) == []


def test_graph_drops_ancestor_imports():
    imports = [
        Import("pyapred.io.apz", "f:1", "pyapred.io", "pyapred.io"),
        Import("pyapred.io.apz", "f:2", "pyapred.__version__", "pyapred"),
        Import("pyapred.io", "f:3", "pyapred.io.apz", "pyapred.io.apz"),
    ]
    assert import_graph(imports) == {
        "pyapred.io.apz": {},
        "pyapred.io": {"pyapred.io.apz": ["f:3"]},
    }


def test_checks_on_a_synthetic_package(tmp_path):
    """Imports in functions, under TYPE_CHECKING and via import_module all count."""
    files = {
        "__init__.py": "from .a import f\n",
        "a.py": "def f():\n    from . import b\n",
        "b.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from .sub import c\n"  # c is a submodule: the edge goes to pyapred.sub.c
            "from .sub.c import _x\n"  # private to pyapred.sub: a violation
        ),
        "sub/__init__.py": "",
        "sub/c.py": (
            "import importlib\n"
            "importlib.import_module('pyapred.a')\n"
            "from .. import __version__\n"  # ancestor: no edge
            "from pyapred.sub import _hidden\n"  # private, but pyapred.sub.c is inside
        ),
    }
    for name, text in files.items():
        (tmp_path / TOP / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / TOP / name).write_text(text)
    modules = find_modules(tmp_path / TOP)
    imports = all_imports(modules)
    graph = import_graph(imports)

    cycle = ["pyapred.a", "pyapred.b", "pyapred.sub.c", "pyapred.a"]
    assert strongly_connected(graph) == [sorted(cycle[:-1])]
    assert simple_cycles(graph, sorted(cycle[:-1])) == [cycle]
    assert private_violations(imports, modules) == ["pyapred/b.py:4: pyapred.b -> pyapred.sub.c._x"]


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("pyapred.solver.api", "pyapred.solver._numpy", True),
        ("pyapred.solver.first_pass", "pyapred.solver._numpy._median_network", True),
        ("pyapred.solver", "pyapred.solver._flags.Flag", True),
        ("pyapred.night", "pyapred.io.product._sha256", False),
        ("pyapred.night", "pyapred.solver._numpy", False),
        ("pyapred.x", "pyapred._y", True),
        ("pyapred.io.apz", "pyapred._y", False),
        ("pyapred.io", "pyapred._y", False),
        ("pyapred.x", "pyapred.io._y", False),
        ("pyapred.cli", "pyapred.__version__", True),
    ],
)
def test_private_rule(importer, imported, allowed):
    packages = ["pyapred", "pyapred.io", "pyapred.solver"]
    fake = {name: Path("__init__.py") for name in packages}
    fake |= {name: Path("m.py") for name in ["pyapred.solver._numpy", "pyapred.io.product"]}
    imp = Import(importer, "f:1", imported, nearest_module(imported, fake))
    assert (private_violations([imp], fake) == []) is allowed


def test_layer_rule():
    """The longest name decides a module's part; an import may go down or stay, never up."""
    layers = ("pyapred.cli", "pyapred.noise.cli", "pyapred.exposure", "pyapred", "pyapred.noise")
    assert layer_of("pyapred.noise.cli", layers) == 1
    assert layer_of("pyapred.noise.hxrg", layers) == 4
    assert layer_of("pyapred", layers) == 3
    with pytest.raises(ValueError, match="pyapred.io"):
        layer_of("pyapred.io", layers)
    graph = {
        "pyapred.cli": {"pyapred.noise.cli": ["cli.py:1"]},  # down
        "pyapred.noise.cli": {"pyapred.noise.hxrg": ["cli.py:2"]},  # down
        "pyapred.noise.hxrg": {"pyapred.exposure.inputs": ["hxrg.py:3"]},  # up
        "pyapred.exposure.driver": {"pyapred.exposure.inputs": ["driver.py:4"]},  # same part
    }
    assert upward_imports(graph, layers) == [
        "hxrg.py:3: pyapred.noise.hxrg (pyapred.noise) imports pyapred.exposure.inputs "
        "(pyapred.exposure), which is above it"
    ]
