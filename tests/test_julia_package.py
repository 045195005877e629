"""Checks of the Julia package (julia/) that need no Julia runtime.

- every ``.jl`` file parses with tree-sitter-julia: no ERROR or MISSING node, and no stray
  ``end``/``begin`` outside an index (the grammar accepts those as identifiers);
- every Julia function that ``pyapred/solver/_julia.py`` calls is defined and exported by APRampFit,
  and each call's positional argument count and keyword names fit one of its methods;
- every call in every ``.jl`` file (package and tests) names a function or type defined in the
  package (or the test file), or a name of Base/Core and the standard libraries it uses
  (:data:`BASE_NAMES`, an explicit list); a call to a package function passes a positional count
  (defaults and varargs counted) and keywords that fit one of its methods, struct constructors
  included; every macro is known. Names bound inside a definition (closures, functions held in
  variables) are checked against their local definitions, or not at all. A self-test shows the
  check failing on a broken snippet;
- ``Project.toml`` has standard-library dependencies only, ``[compat] julia`` and pyapred's version;
  ``julia/README.md`` and ``julia/LICENSE`` exist;
- the flag bits agree with :class:`pyapred.Flag`, ``FitOptions``' fields and defaults agree with
  pyapred's, and runtests.jl reads every solver and stage vector from inside ``julia/``;
- a line-for-line Python port of ``special.jl`` meets the accuracy its comments state.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
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
    sources = [path.read_bytes() for path in (JULIA / "src").glob("*.jl")]
    types = set(package_methods(parser, sources))
    constant = re.compile(r"^const (\w+)", re.MULTILINE)
    constants = {name for source in sources for name in constant.findall(source.decode())}
    assert not exports - functions - types - constants


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


def test_runtests_reads_every_vector_from_inside_the_package():
    """``Pkg.test`` of an installed APRampFit (``[sources] ... subdir = "julia"``) has only
    ``julia/``: runtests.jl reads the solver and stage vectors from ``test/`` beside it."""
    runtests = (JULIA / "test" / "runtests.jl").read_text()
    assert 'joinpath(@__DIR__, "conformance")' in runtests
    assert 'joinpath(@__DIR__, "stages")' in runtests
    assert "TOML.parsefile" in runtests and '"..", ".."' not in runtests
    solver = list((JULIA / "test" / "conformance").glob("*.toml"))
    stages = list((JULIA / "test" / "stages").glob("*.toml"))
    assert len(solver) >= 30 and len(stages) >= 10
    assert not (ROOT / "tests" / "conformance").exists()  # one place for both suites
    # Every vector function has a runner in runtests.jl.
    from pyapred.conformance import FUNCTIONS

    for name in FUNCTIONS:
        assert f'"{name}" =>' in runtests


def test_julia_fit_options_match_python():
    """APRampFit's ``FitOptions`` has the stage fields of pyapred's, with the same defaults."""
    from pyapred.exposure import FitOptions

    source = (JULIA / "src" / "options.jl").read_text()
    body = source[source.index("Base.@kwdef struct FitOptions") :].split("\nend\n")[0]
    fields = dict(re.findall(r"^    (\w+)::[^=]+= (.+)$", body, re.MULTILINE))
    python = FitOptions()
    assert len(fields) == 18  # the stage fields, chromatic and chromatic_p_value included
    for name, text in fields.items():
        value = getattr(python, name)
        if value is None:
            assert text == "nothing", name
        elif isinstance(value, bool):
            assert text == str(value).lower(), name
        elif isinstance(value, str):
            assert text == f'"{value}"', name
        else:
            assert float(text) == value, name
    # What the Julia stages leave out chooses the backend, files or memory, not a stage's rule.
    left_out = {f.name for f in dataclasses.fields(FitOptions)} - set(fields)
    assert left_out == {"backend", "gain", "read_noise", "saturation", "keep_constant",
                        "keep_fit_reads"}  # fmt: skip


def test_julia_package_has_readme_license_and_python_s_version():
    project = tomllib.loads((JULIA / "Project.toml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["version"] == pyproject["project"]["version"]
    readme = (JULIA / "README.md").read_text()
    assert project["version"] in readme and 'subdir = "julia"' in readme
    assert "BSD 3-Clause" in (JULIA / "LICENSE").read_text()
    assert pyproject["project"]["license"]["text"] == "BSD-3-Clause"


# --------------------------------------------------------------------------------------------
# Every call in every .jl file: the callee is defined, and the arguments fit one of its methods
# --------------------------------------------------------------------------------------------
#: The names of Base, Core and the standard libraries (the package's LinearAlgebra, Random and
#: Statistics; Test and TOML in the tests) that julia/ calls, read off the code. A call to any
#: other name that the package does not define fails the check: add a name here only after
#: checking that it exists in the Julia versions of [compat] (1.10 and later).
BASE_NAMES = frozenset({
    # Base: types and constructors
    "Array", "Bool", "CartesianIndex", "Dict", "Float32", "Float64", "Int", "Matrix",
    "NamedTuple", "PermutedDimsArray", "String", "Symbol", "Tuple", "UInt16", "Vector",
    "VersionNumber",
    "ArgumentError", "DimensionMismatch",
    # Base: functions
    "abs", "all", "any", "argmax", "axes", "cat", "ccall", "ceil", "cld", "clamp", "collect",
    "copy", "copysign", "copyto!", "count", "cumsum", "diff", "dropdims", "eachindex", "eltype",
    "endswith",
    "fieldnames", "hasproperty", "searchsortedfirst",
    "enumerate", "exp", "extrema", "falses", "fill", "fill!", "filter", "findall", "findfirst",
    "floatmax",
    "findlast", "first", "get", "getfield", "haskey", "hcat", "ifelse", "include", "isapprox",
    "isempty", "iseven", "isfinite", "isinf", "isinteger", "isnan", "isodd", "iszero", "joinpath",
    "keys",
    "length", "log", "log1p", "lowercase", "map", "max", "maximum", "merge", "merge!", "min", "mod",
    "ndims", "new", "ones", "pairs", "pkgversion", "pop!", "precompile", "prod", "push!",
    "rand", "randn", "range", "readdir", "reduce", "repeat", "repr", "reshape", "rethrow", "round",
    "vcat",
    "selectdim", "size", "something", "sort!", "sortperm", "sqrt", "string", "sum", "throw",
    "append!", "join", "occursin", "print", "sizehint!", "eval", "Meta.parse",
    "transpose", "trues", "typemax", "typeof", "unique", "vec", "view", "zero", "zeros", "zip",
    "Threads.@threads", "@inbounds", "@inline", "Base.@kwdef", "@__DIR__", "@info", "@warn",
    # LinearAlgebra
    "BLAS.get_num_threads", "BLAS.set_num_threads", "SymTridiagonal", "Symmetric", "cholesky",
    "dot", "inv", "issuccess", "lu",
    # Random
    "MersenneTwister", "Random.default_rng", "Xoshiro",
    # Statistics
    "cov", "mean", "median", "median!",
    # Test, TOML (julia/test)
    "@test", "@test_logs", "@test_throws", "@testset", "TOML.parsefile",
})  # fmt: skip


class Call(NamedTuple):
    """One call found in a Julia file."""

    name: str  # "f", "f!", "Threads.nthreads", "APRampFit.f", or a macro's "@name"
    n_args: int  # positional arguments (a do-block counts as the first)
    splat: bool  # a positional `args...`: the count is a lower bound
    keywords: frozenset
    any_keyword: bool  # a `; kw...` splat
    line: int
    local: bool  # the callee is a name bound inside the enclosing definition (not checkable)
    kind: str  # "call", "type" (a parametrized type called as a constructor) or "macro"


_DEFINITION_WRAPPERS = ("where_expression", "typed_expression")


def _unwrap(node):
    while node is not None and node.type in _DEFINITION_WRAPPERS:
        node = node.children[0]
    return node


def _dotted(node) -> str | None:
    """``name`` or ``A.b.c`` of an identifier or field expression, else None."""
    if node.type == "identifier":
        return node.text.decode()
    if node.type == "field_expression":
        parts = [_dotted(c) for c in node.children if c.type != "."]
        return ".".join(parts) if all(parts) else None
    return None


def _struct_methods(node) -> tuple[str, list[Method], bool, list]:
    """Name, constructors, whether a struct has inner constructors, and its ``(field, has a
    default)`` pairs (defaults exist under ``Base.@kwdef``)."""
    head = next(c for c in node.children if c.type == "type_head").children[0]
    if head.type == "binary_expression":  # struct S <: Super
        head = head.children[0]
    if head.type == "parametrized_type_expression":
        head = head.children[0]
    name = head.text.decode()
    fields, inner = [], []
    for child in node.children:
        if child.type in ("identifier", "typed_expression"):
            fields.append((_parameter_name(child), False))
        elif child.type == "assignment":  # a field with a default (Base.@kwdef)
            fields.append((_parameter_name(child.children[0]), True))
        elif child.type == "function_definition":
            signature = next(c for c in child.children if c.type == "signature")
            arguments = next(c for c in _unwrap(signature.children[0]).children
                             if c.type == "argument_list")  # fmt: skip
            inner.append(_method(arguments))
    methods = inner or [Method(len(fields), len(fields), frozenset(), frozenset(), False)]
    return name, methods, bool(inner), fields


def _under_macro(node, macro: str) -> bool:
    """Whether ``node`` is the argument of ``@macro`` (or ``Module.@macro``)."""
    parent = node.parent
    if parent is None or parent.type != "macro_argument_list":
        return False
    call = parent.parent
    ident = next((c for c in call.children if c.type == "macro_identifier"), None)
    return ident is not None and ident.children[-1].text.decode() == macro


def package_methods(parser, sources: list[bytes]) -> dict[str, list[Method]]:
    """The methods of every function and type defined at the top level of the sources: long and
    short-form functions (also under a macro such as ``@inline``), and struct constructors (the
    default one, the inner ones, and ``Base.@kwdef``'s keyword constructor)."""
    methods: dict[str, list[Method]] = {}
    for source in sources:
        for name, found in julia_methods(parser, source).items():
            methods.setdefault(name, []).extend(found)
        stack = [parser.parse(source).root_node]
        while stack:
            node = stack.pop()
            if node.type == "function_definition":
                continue
            if node.type == "struct_definition":
                name, found, has_inner, fields = _struct_methods(node)
                methods.setdefault(name, []).extend(found)
                if _under_macro(node, "kwdef") and not has_inner:
                    required = frozenset(f for f, default in fields if not default)
                    keywords = frozenset(f for f, _ in fields)
                    methods[name].append(Method(0, 0, required, keywords, False))
                continue
            stack.extend(node.children)
    return methods


def _binding_names(node, out: set) -> None:
    """Names bound by an assignment target or loop variable (``x``, ``(a, b)``, ``x::T``)."""
    if node.type == "identifier":
        out.add(node.text.decode())
    elif node.type in ("typed_expression", "splat_expression"):
        _binding_names(node.children[0], out)
    elif node.type in ("tuple_expression", "open_tuple", "parenthesized_expression",
                       "argument_list"):  # fmt: skip
        for child in node.children:
            _binding_names(child, out)
    elif node.type == "named_argument":
        _binding_names(node.children[0], out)


def _identifiers(node) -> set:
    out, stack = set(), [node]
    while stack:
        node = stack.pop()
        if node.type == "identifier":
            out.add(node.text.decode())
        stack.extend(node.children)
    return out


def _definition_head(node):
    """The call expression a function definition or a short-form definition defines, else None."""
    if node.type == "function_definition":
        signature = next((c for c in node.children if c.type == "signature"), None)
        head = _unwrap(signature.children[0]) if signature is not None else None
        return head if head is not None and head.type == "call_expression" else None
    if node.type == "assignment":
        head = _unwrap(node.children[0])
        return head if head is not None and head.type == "call_expression" else None
    return None


def local_scope(unit) -> tuple[set, dict]:
    """Names bound anywhere inside a top-level definition (parameters, variables, loop and
    comprehension variables, closure arguments) and the methods of the functions defined inside
    it. One scope for the whole definition: a name bound anywhere in it counts everywhere in it."""
    names: set = set()
    methods: dict = {}
    stack = [unit]
    while stack:
        node = stack.pop()
        head = _definition_head(node)
        if head is not None:
            arguments = next(c for c in head.children if c.type == "argument_list")
            _binding_names(arguments, names)
            if node != unit:
                name = _definition_name(head)
                if name is not None:
                    methods.setdefault(name, []).append(_method(arguments))
            signature = next((c for c in node.children if c.type == "signature"), None)
            where = signature.children[0] if signature is not None else None
            if where is not None and where.type == "where_expression":  # type parameters
                names.update(_identifiers(where.children[-1]))
        elif node.type in ("assignment", "compound_assignment_expression") and head is None:
            _binding_names(node.children[0], names)
        elif node.type in ("for_binding", "let_binding"):
            _binding_names(node.children[0], names)
        elif node.type == "catch_clause":
            names.update(c.text.decode() for c in node.children if c.type == "identifier")
        elif node.type == "do_clause":
            arguments = next((c for c in node.children if c.type == "argument_list"), None)
            if arguments is not None:
                _binding_names(arguments, names)
        elif node.type == "arrow_function_expression":
            _binding_names(node.children[0], names)
        elif node.type == "local_statement":
            for child in node.children[1:]:
                _binding_names(child, names)
        stack.extend(node.children)
    return names, methods


def _call_arguments(arguments) -> tuple[int, bool, frozenset, bool]:
    """Positional count, positional splat, keyword names and keyword splat of a call's
    arguments: every ``name = value`` is a keyword, as are the names after ``;``."""
    n_args, splat, keywords, any_keyword = 0, False, set(), False
    after = False
    for node in arguments.children:
        if node.type == ";":
            after = True
        elif node.type in ("(", ")", ",", "for_clause", "if_clause"):
            continue  # a generator's clauses belong to its one argument
        elif node.type == "named_argument":
            keywords.add(_parameter_name(node.children[0]))
        elif node.type == "splat_expression":
            if after:
                any_keyword = True
            else:
                splat = True
        elif after and node.type == "identifier":
            keywords.add(node.text.decode())
        elif after:
            any_keyword = True  # e.g. a pair `:k => v`: not checked
        else:
            n_args += 1
    return n_args, splat, frozenset(keywords), any_keyword


def julia_calls(parser, source: bytes) -> list[Call]:
    """Every call, constructor call and macro call of a source file, with what it passes."""
    calls: list[Call] = []
    root = parser.parse(source).root_node
    units = []
    for node in root.children:
        if node.type == "module_definition":
            units.extend(node.children)
        else:
            units.append(node)
    for unit in units:
        names, closures = local_scope(unit)
        names |= set(closures)
        stack = [unit]
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            line = node.start_point[0] + 1
            if node.type == "macrocall_expression":
                ident = next(c for c in node.children if c.type == "macro_identifier")
                prefix = node.children[0] if node.children[0].type != "macro_identifier" else None
                name = "@" + ident.children[-1].text.decode()
                if prefix is not None:
                    name = f"{_dotted(prefix)}.{name}"
                calls.append(Call(name, 0, True, frozenset(), True, line, False, "macro"))
                continue
            if node.type not in ("call_expression", "broadcast_call_expression"):
                continue
            parent = node.parent
            if parent is not None and parent.type in _DEFINITION_WRAPPERS:
                while parent.type in _DEFINITION_WRAPPERS:
                    parent = parent.parent
            if parent is not None and parent.type == "signature":
                continue  # a long-form definition's head
            if parent is not None and _definition_head(parent) == node:
                continue  # a short-form definition's head
            callee = node.children[0]
            arguments = next((c for c in node.children if c.type == "argument_list"), None)
            if arguments is None:
                continue
            n_args, splat, keywords, any_keyword = _call_arguments(arguments)
            n_args += any(c.type == "do_clause" for c in node.children)
            if callee.type == "parametrized_type_expression":
                name, kind = _dotted(callee.children[0]), "type"
            else:
                name, kind = _dotted(callee), "call"
            if name is None:
                continue  # a computed callee, e.g. getfield(M, name)(args...)
            local = "." not in name and name in names
            calls.append(Call(name, n_args, splat, keywords, any_keyword, line, local, kind))
    return calls


def _fits(call: Call, method: Method) -> bool:
    """Whether a call's arguments fit a method: with a positional splat only the count's lower
    bound is known; with a keyword splat the keywords are not checked."""
    if call.splat:
        return method.n_positional >= call.n_args
    if call.any_keyword:
        return method.n_required <= call.n_args <= method.n_positional
    return method.accepts(call.n_args, set(call.keywords))


def call_problems(parser, path_sources: dict, known: dict, base: frozenset) -> list[str]:
    """Every call to a name that is neither defined (``known``, by file: the package's methods
    and the file's own) nor in ``base``, and every call to a package function whose arguments fit
    none of its methods."""
    problems = []
    for path, source in path_sources.items():
        methods = known[path]
        root = parser.parse(source).root_node
        local_methods: dict = {}
        units = [n for top in root.children
                 for n in (top.children if top.type == "module_definition" else [top])]  # fmt: skip
        for unit in units:
            for name, found in local_scope(unit)[1].items():
                local_methods.setdefault(name, []).extend(found)
        for call in julia_calls(parser, source):
            where = f"{path}:{call.line}"
            name = call.name
            if call.kind == "macro":
                if name not in base:
                    problems.append(f"{where}: macro {name} is not an allowed macro")
                continue
            if name.startswith("APRampFit."):
                name = name.removeprefix("APRampFit.")
            candidates = methods.get(name)
            if call.local and name in local_methods:
                candidates = local_methods[name]
            elif call.local:
                continue  # a function held in a local variable
            if candidates is None:
                if name not in base:
                    problems.append(f"{where}: {call.kind} {name} is not defined in the package, "
                                    "Base or the standard libraries it uses")  # fmt: skip
                continue
            if call.kind == "type":
                continue

            if not any(_fits(call, m) for m in candidates):
                problems.append(
                    f"{where}: {name}({call.n_args} positional{'+' if call.splat else ''}; "
                    f"{sorted(call.keywords)}) fits none of {candidates}"
                )
    return problems


def _jl_sources() -> dict:
    return {path: path.read_bytes() for path in JL_FILES}


def _known_methods(parser, sources: dict) -> dict:
    """Per file, the methods it may call: the package's (julia/src), and a test file's own."""
    package = package_methods(parser, [b for p, b in sources.items() if p.parent.name == "src"])
    known = {}
    for path, source in sources.items():
        methods = {name: list(found) for name, found in package.items()}
        if path.parent.name != "src":
            for name, found in package_methods(parser, [source]).items():
                methods.setdefault(name, []).extend(found)
        known[path] = methods
    return known


def test_every_julia_call_is_defined_and_fits_a_method(parser):
    sources = _jl_sources()
    calls = [c for source in sources.values() for c in julia_calls(parser, source)]
    assert len(calls) > 1000  # the walk reaches the bodies of the functions
    problems = call_problems(parser, sources, _known_methods(parser, sources), BASE_NAMES)
    assert problems == []


def test_call_check_can_fail(parser, tmp_path):
    """The check finds an undefined name, a wrong argument count or keyword, and accepts what
    Julia accepts (defaults, varargs, closures, local functions, constructors, splats)."""
    source = b"""
struct Pair2
    a::Int
    b
end
Base.@kwdef struct Opts
    x::Int = 1
    y::Float64
end
struct Checked
    v::Vector{Float64}
    function Checked(v, scale = 1.0)
        new(v .* scale)
    end
end
f(a, b = 2; k = 1) = a + b + k
g(xs...; kw...) = length(xs)
function h(x::T, fun) where {T}
    inner(y) = y + 1
    square = z -> z^2
    s = inner(x) + square(x) + fun(x) + f(x) + f(x, 3; k = 2) + g(1, 2, 3; anything = 4)
    p = Pair2(1, 2)
    o = Opts(y = 2.0)
    c = Checked([1.0], 2.0)
    t = f.(x, x)
    args = (1, 2)
    u = f(args...)
    @inbounds s += sum(v for v in 1:3; init = 0)
    return s
end
function broken(x)
    a = frobnicate(x)
    b = f(1, 2, 3)
    c = f(x; q = 1)
    d = Pair2(1)
    e = Opts(z = 3)
    k = Checked()
    m = Base.not_a_function(x)
    n = undefined_broadcast.(x)
    @undefined_macro x
    return h(x)
end
"""
    path = tmp_path / "snippet.jl"
    methods = package_methods(parser, [source])
    problems = call_problems(parser, {path: source}, {path: methods}, BASE_NAMES)
    lines = {int(p.split(":")[1]): p for p in problems}
    broken = source.decode().splitlines().index("function broken(x)") + 1
    assert sorted(lines) == list(range(broken + 1, broken + 11)), problems
    assert "frobnicate is not defined" in lines[broken + 1]
    assert "fits none" in lines[broken + 2] and "fits none" in lines[broken + 3]
    assert "macro @undefined_macro" in lines[broken + 9]


# --------------------------------------------------------------------------------------------
# special.jl: the normal CDF and the chi-squared survival function, ported line for line
# --------------------------------------------------------------------------------------------
def _erf_series(x):
    term, total, n = x, x, 0
    while term > 1e-17 * total:
        n += 1
        term *= 2.0 * x * x / (2 * n + 1)
        total += term
    return 2.0 / math.sqrt(math.pi) * math.exp(-x * x) * total


def _erfc_fraction(x):
    tiny, f, c, d = 1e-300, x, x, 0.0
    for n in range(1, 5001):
        a = n / 2
        d = x + a * d
        d = tiny if abs(d) < tiny else d
        c = x + a / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return math.exp(-x * x) / math.sqrt(math.pi) / f


def _ndtr(a):
    x = a * 0.7071067811865476
    if math.isnan(x):
        return math.nan
    z = abs(x)
    if z < 2.5:
        e = _erf_series(z)
        return 0.5 + 0.5 * e if x >= 0 else 0.5 - 0.5 * e
    y = 0.0 if math.isinf(z) else 0.5 * _erfc_fraction(z)
    return 1.0 - y if x > 0 else y


def _loggamma_half(a):
    twice = round(2 * a)
    assert twice >= 1 and twice == 2 * a
    if twice % 2 == 0:
        return sum(math.log(k) for k in range(2, twice // 2))
    return 0.5 * math.log(math.pi) + sum(math.log(k - 0.5) for k in range(1, twice // 2 + 1))


def _gamma_q(a, x):
    if math.isnan(x):
        return math.nan
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_prefactor = -x + a * math.log(x) - _loggamma_half(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return 1.0 - total * math.exp(log_prefactor)
    tiny = 1e-300
    b, c = x + 1.0 - a, 1.0 / tiny
    d = h = 1.0 / b
    for i in range(1, 10_001):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return math.exp(log_prefactor) * h


def test_special_functions_port_meets_the_documented_accuracy():
    """A line-for-line Python port of julia/src/special.jl against SciPy: the accuracy its
    comments state (the Julia code itself runs in runtests.jl, against SciPy's values)."""
    special = pytest.importorskip("scipy.special")
    stats = pytest.importorskip("scipy.stats")
    source = (JULIA / "src" / "special.jl").read_text()
    for text in ("0.7071067811865476", "z < 2.5", "1e-17 * total", "abs(delta - 1.0) < 1e-16",
                 "x < a + 1.0", "abs(term) < abs(total) * 1e-16", "an = -i * (i - a)",
                 "6e-16 absolute", "3e-13"):  # fmt: skip
        assert text in source, text
    grid = np.linspace(-40.0, 40.0, 4001)
    error = max(abs(_ndtr(a) - special.ndtr(a)) for a in grid)
    assert error <= 6e-16
    worst = 0.0
    for dof in [*range(1, 31), 50, 100, 199, 400]:
        for x in np.concatenate([np.linspace(0.0, 3.0 * dof + 200.0, 120),
                                 np.geomspace(1e-6, 3000.0, 60)]):  # fmt: skip
            want = stats.chi2.sf(x, dof)
            if want > 1e-300:
                worst = max(worst, abs(_gamma_q(dof / 2, x / 2) - want) / want)
    assert worst <= 3e-13
