"""Checks of the Julia package (julia/) that need no Julia runtime.

- every ``.jl`` file parses with tree-sitter-julia: no ERROR or MISSING node, and no stray
  ``end``/``begin`` outside an index (the grammar accepts those as identifiers);
- every Julia function that ``pyapred/solver/_julia.py`` calls is defined and exported by APRampFit,
  and each call's positional argument count and keyword names fit one of its methods;
- ``Project.toml`` has standard-library dependencies only, ``[compat] julia`` and pyapred's version;
- the flag bits agree with :class:`pyapred.Flag`, and runtests.jl reads the shared vectors.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import NamedTuple

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from pyapred import Flag
from pyapred.solver._julia import JULIA_FUNCTIONS

ROOT = Path(__file__).resolve().parent.parent
JULIA = ROOT / "julia"
JL_FILES = sorted(JULIA.rglob("*.jl"))

# UUIDs of Julia's standard libraries that the package may use.
STDLIB_UUIDS = {
    "LinearAlgebra": "37e2e46d-f89d-539d-b4ee-838fcccc9c8e",
    "Statistics": "10745b16-79ce-11e8-11f9-7d13ad32a3b2",
    "Random": "9a3f8284-a2c9-5f02-9a11-845980a1fd5c",
    "Test": "8dfed614-e22c-5e08-85e1-65c5234f0b40",
    "TOML": "fa267f1f-6049-4f14-aa54-33bafae1ed76",
}


@pytest.fixture(scope="module")
def parser():
    tree_sitter = pytest.importorskip("tree_sitter")
    tree_sitter_julia = pytest.importorskip("tree_sitter_julia")
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_julia.language()))


def _inside_index(node) -> bool:
    while (node := node.parent) is not None:
        if node.type == "index_expression":
            return True
    return False


def syntax_problems(parser, source: bytes) -> list[tuple[int, int, str]]:
    """``(line, column, message)``, 1-based, for every syntax error tree-sitter finds."""
    problems = []
    stack = [parser.parse(source).root_node]
    while stack:
        node = stack.pop()
        line, column = node.start_point[0] + 1, node.start_point[1] + 1
        text = source[node.start_byte : node.end_byte]
        if node.is_missing:
            problems.append((line, column, f"missing {node.type!r}"))
        elif node.is_error:
            first = (text.decode("utf-8", "replace").strip().splitlines() or [""])[0]
            problems.append((line, column, f"syntax error near {first[:60]!r}"))
        elif node.type == "identifier" and text in (b"end", b"begin") and not _inside_index(node):
            problems.append((line, column, f"unexpected {text.decode()!r}"))
        stack.extend(reversed(node.children))
    return sorted(problems)


def _definition_name(node):
    """The name defined by a signature or a short-form left-hand side, else None."""
    while node is not None and node.type in ("where_expression", "typed_expression"):
        node = node.children[0]
    if node is None or node.type != "call_expression":
        return None
    head = node.children[0]
    return head.text.decode() if head.type == "identifier" else None


def julia_definitions(parser, source: bytes) -> tuple[set[str], set[str]]:
    """Top-level function names (long and short form) and exported names of a source file."""
    functions, exports = set(), set()
    stack = [parser.parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type == "function_definition":
            signature = next(c for c in node.children if c.type == "signature")
            functions.add(_definition_name(signature.children[0]))
            continue  # local definitions inside a function do not count
        if node.type == "assignment":
            functions.add(_definition_name(node.children[0]))
        if node.type == "export_statement":
            exports |= {c.text.decode() for c in node.children if c.type == "identifier"}
        stack.extend(node.children)
    return functions - {None}, exports


class Method(NamedTuple):
    """The arguments one Julia method accepts."""

    n_required: int  # positional arguments without a default
    n_positional: float  # most positional arguments (inf with a trailing splat)
    required_keywords: frozenset
    keywords: frozenset  # every keyword name, required or not
    any_keyword: bool  # a ``kw...`` splat after the semicolon

    def accepts(self, n_args: int, keywords: set) -> bool:
        return (self.n_required <= n_args <= self.n_positional
                and self.required_keywords <= keywords
                and (self.any_keyword or keywords <= self.keywords))  # fmt: skip


def _parameter_name(node) -> str | None:
    """The name of a parameter node (``x``, ``x::T``, ``x = 1``, ``x::T = 1``); None for ``::T``."""
    while node.type in ("named_argument", "typed_expression", "splat_expression"):
        node = node.children[0]
    return node.text.decode() if node.type == "identifier" else None


def _method(argument_list) -> Method:
    n_required, n_positional = 0, 0.0
    required, keywords, any_keyword = set(), set(), False
    in_keywords = False
    for node in argument_list.children:
        if node.type == ";":
            in_keywords = True
        elif node.type in ("(", ")", ","):
            continue
        elif in_keywords:
            if node.type == "splat_expression":
                any_keyword = True
                continue
            keywords.add(_parameter_name(node))
            if node.type != "named_argument":
                required.add(_parameter_name(node))
        elif node.type == "splat_expression":
            n_positional = math.inf
        else:
            n_positional += 1
            n_required += node.type != "named_argument"
    return Method(n_required, n_positional, frozenset(required), frozenset(keywords), any_keyword)


def julia_methods(parser, source: bytes) -> dict[str, list[Method]]:
    """The methods of every top-level function of a source file (long and short form)."""
    methods: dict[str, list[Method]] = {}
    stack = [parser.parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type == "function_definition":
            head = next(c for c in node.children if c.type == "signature").children[0]
        elif node.type == "assignment":
            head = node.children[0]
        else:
            stack.extend(node.children)
            continue
        name = _definition_name(head)
        while head.type in ("where_expression", "typed_expression"):
            head = head.children[0]
        if name is not None:
            arguments = next(c for c in head.children if c.type == "argument_list")
            methods.setdefault(name, []).append(_method(arguments))
    return methods


def bridge_calls(source: str) -> list[tuple[str, int, set, int]]:
    """Every ``_fn("name")(args...; kw=...)`` of the bridge: ``(name, n_args, keywords, line)``."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        inner = node.func if isinstance(node, ast.Call) else None
        if not (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)
                and inner.func.id == "_fn"):  # fmt: skip
            continue
        assert not any(isinstance(a, ast.Starred) for a in node.args), node.lineno
        assert all(k.arg is not None for k in node.keywords), node.lineno
        name = inner.args[0].value
        calls.append((name, len(node.args), {k.arg for k in node.keywords}, node.lineno))
    return calls


@pytest.mark.parametrize("path", JL_FILES, ids=lambda p: str(p.relative_to(JULIA)))
def test_julia_file_parses(parser, path):
    assert syntax_problems(parser, path.read_bytes()) == []


@pytest.mark.parametrize(
    "broken",
    [
        "function f(x)\n    x + 1\n",  # missing end
        "y = (1 + 2\n",  # unclosed parenthesis
        "function f(x)\n    x\nend\nend\n",  # stray end
        "for i 1:10\n    println(i)\nend\n",  # for without in
        "f(a b)\n",  # missing comma
        'x = "unterminated\n',
    ],
)
def test_syntax_check_catches_a_broken_file(parser, tmp_path, broken):
    path = tmp_path / "broken.jl"
    path.write_text(JL_FILES[0].read_text() + "\n" + broken)
    assert syntax_problems(parser, path.read_bytes())


def test_every_function_the_bridge_calls_is_defined_and_exported(parser):
    functions, exports = set(), set()
    for path in (JULIA / "src").glob("*.jl"):
        defined, exported = julia_definitions(parser, path.read_bytes())
        functions |= defined
        exports |= exported
    bridge = (ROOT / "pyapred" / "solver" / "_julia.py").read_text()
    called = set(re.findall(r'_fn\("([^"]+)"', bridge))
    assert called and called <= set(JULIA_FUNCTIONS)
    assert set(JULIA_FUNCTIONS) <= functions
    assert set(JULIA_FUNCTIONS) <= exports
    public = {"fit_constant", "extract_fluxes", "fit_equal_weight", "fit_omega", "initial_guess",
              "sample_omega", "sutr_omega", "describe_flags"}  # fmt: skip
    assert public <= functions and public <= exports
    assert not exports - functions - {flag.name for flag in Flag}


def test_every_bridge_call_fits_a_julia_method(parser):
    methods: dict[str, list[Method]] = {}
    for path in (JULIA / "src").glob("*.jl"):
        for name, found in julia_methods(parser, path.read_bytes()).items():
            methods.setdefault(name, []).extend(found)
    calls = bridge_calls((ROOT / "pyapred" / "solver" / "_julia.py").read_text())
    assert {name for name, *_ in calls} == set(JULIA_FUNCTIONS)
    for name, n_args, keywords, line in calls:
        assert any(m.accepts(n_args, keywords) for m in methods[name]), (
            f"_julia.py:{line}: {name}({n_args} positional; {sorted(keywords)}) fits none of "
            f"{methods[name]}"
        )
    # fit_omega_with_jumps hands its other keywords (``fit_options...``) on to fit_omega_groups.
    (forwarded,) = [kw - {"threshold", "max_rounds"} for name, _, kw, _ in calls
                    if name == "fit_omega_with_jumps"]  # fmt: skip
    assert any(m.accepts(5, forwarded) for m in methods["fit_omega_groups"])


def test_signature_reader_and_bridge_call_reader(parser):
    source = (
        b"function f!(a, b::Int, c = 1; d, e::Real = 2)\nend\n"
        b"g(x::AbstractArray{<:Real, 3}, rest...; kw...)::Int = 1\n"
        b"function h(x::T) where {T}\n inner(y) = y\nend\n"
    )
    methods = julia_methods(parser, source)
    assert set(methods) == {"f!", "g", "h"}
    (f,) = methods["f!"]
    assert f == Method(2, 3, frozenset({"d"}), frozenset({"d", "e"}), False)
    assert f.accepts(2, {"d"}) and f.accepts(3, {"d", "e"})
    assert not f.accepts(4, {"d"}) and not f.accepts(2, set()) and not f.accepts(2, {"d", "z"})
    assert methods["g"][0].accepts(7, {"anything"}) and not methods["g"][0].accepts(0, set())
    assert methods["h"] == [Method(1, 1, frozenset(), frozenset(), False)]
    calls = bridge_calls('def k(a):\n    _fn("f!")(a, 2, d=3)\n    _fn("h", False)(a)\n')
    assert calls == [("f!", 2, {"d"}, 2), ("h", 1, set(), 3)]


def test_definition_reader_sees_both_forms(parser):
    source = (
        b"module M\nexport f!\nfunction f!(a::T) where {T}\n g(x) = 1\nend\nh(x)::Int = 2\nend\n"
    )
    assert julia_definitions(parser, source) == ({"f!", "h"}, {"f!"})


def test_project_toml():
    project = tomllib.loads((JULIA / "Project.toml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["version"] == pyproject["project"]["version"]
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", project["name"])
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        project["uuid"])  # fmt: skip
    for name, uuid in {**project["deps"], **project.get("extras", {})}.items():
        assert STDLIB_UUIDS.get(name) == uuid, f"{name} is not a standard library"
    assert project["compat"]["julia"] == "1.10"
    assert set(project["targets"]["test"]) == {"Test", "TOML"}
    module = (JULIA / "src" / f"{project['name']}.jl").read_text()
    assert re.search(rf"^module {project['name']}$", module, re.MULTILINE)


def test_flags_agree_with_python():
    source = (JULIA / "src" / "flags.jl").read_text()
    pairs = re.findall(r"^const (\w+) = 1 << (\d+)$", source, re.MULTILINE)
    julia_flags = {name: 1 << int(bit) for name, bit in pairs}
    assert julia_flags == {flag.name: flag.value for flag in Flag}


def test_runtests_reads_the_shared_vectors():
    runtests = (JULIA / "test" / "runtests.jl").read_text()
    assert '"tests", "conformance"' in runtests and "TOML.parsefile" in runtests
    assert len(list((ROOT / "tests" / "conformance").glob("*.toml"))) >= 20
