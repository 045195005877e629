"""pyapred.jit: cached kernels keyed on every source they are compiled from."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyapred.jit import PACKAGE_ROOT, kernel_sources

REPO = Path(__file__).resolve().parents[1]


def _names(files) -> set[str]:
    return {Path(f).relative_to(PACKAGE_ROOT).as_posix() for f in files}


def test_kernel_sources_follow_the_imports_of_the_package_only():
    jumps = _names(kernel_sources(PACKAGE_ROOT / "solver" / "_jumps.py"))
    # Its own file, the helpers it inlines (and what they import), and this module.
    assert {"solver/_jumps.py", "solver/_numpy.py", "solver/_flags.py", "jit.py"} <= jumps
    assert not any(name.startswith(("io/", "exposure/")) for name in jumps)
    assert _names(kernel_sources(PACKAGE_ROOT / "io" / "_rice.py")) == {"io/_rice.py", "jit.py"}


@pytest.mark.parametrize(
    "source",
    [
        "from .. import a\nfrom ..b import (\n    x,\n    y,\n)\n",
        "from ..import a\nfrom .. b import x",
        "from .. import (\n    a,  # a comment (in parentheses) hid the rest\n    b,\n)\n",
        "import numpy as np; from .. import a, b",
        "from .. import a, \\\n    b\n",
        "def f():\n    from .. import a as alias\n    import pkg.b\n",
        "try:\n    from ..a import x\nexcept ImportError:\n    from ..b import x\n",
    ],
)
def test_kernel_sources_read_every_form_of_import(tmp_path, source):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "b.py", "unused.py", "sub/__init__.py"):
        (package / name).write_text("")
    (package / "sub" / "kernel.py").write_text("import numpy\n" + source)
    found = {p.relative_to(package).as_posix() for p in kernel_sources(
        package / "sub" / "kernel.py", package)}  # fmt: skip
    assert {"a.py", "b.py", "sub/kernel.py"} <= found and "unused.py" not in found


def test_kernel_sources_hold_every_module_that_ast_finds_imported():
    """The import lines read by pattern against the parsed modules, for every module of the
    package: what the patterns miss would be a source whose change leaves a kernel stale."""

    def module_file(parts):
        path = PACKAGE_ROOT.parent.joinpath(*parts)
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
        return None

    def imported(file):
        package = file.parent.relative_to(PACKAGE_ROOT.parent).parts
        found = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {module_file(alias.name.split(".")) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else ()
                parts = [*base, *(node.module.split(".") if node.module else [])]
                found.add(module_file(parts))
                found |= {module_file([*parts, alias.name]) for alias in node.names}
        return {f for f in found if f is not None and f.is_relative_to(PACKAGE_ROOT)}

    missed = {}
    for file in sorted(PACKAGE_ROOT.rglob("*.py")):
        closure, pending = set(), [file.resolve()]
        while pending:
            current = pending.pop()
            if current not in closure:
                closure.add(current)
                pending.extend(imported(current))
        lacking = closure - set(kernel_sources(file))
        if lacking:
            missed[str(file.relative_to(PACKAGE_ROOT))] = sorted(map(str, lacking))
    assert not missed


def test_every_kernel_module_takes_njit_from_pyapred_jit():
    """A kernel decorated by Numba's own ``njit`` would be cached on its own file only."""
    direct = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        if path == PACKAGE_ROOT / "jit.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "numba":
                names = {alias.name for alias in node.names}
                if names & {"njit", "jit", "prange", "vectorize", "guvectorize", "stencil"}:
                    direct.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "numba"
                and node.attr in {"njit", "jit"}
            ):
                direct.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not direct, f"use `from ..jit import njit, prange` instead: {direct}"


_RUN = """
import json, sys
import pyapred.jit
pyapred.jit.watch(sys.argv[1])
from pkg.kernel import run
value = run()
stats = run.stats
print(json.dumps({"value": value, "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""


def _run_kernel(root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    done = subprocess.run([sys.executable, "-c", _RUN, str(root / "pkg")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="Numba's JIT is off")
def test_a_kernel_is_compiled_again_when_a_helper_it_inlines_changes(tmp_path):
    """Numba alone keys ``run`` on ``kernel.py``: after ``helper.py`` changed, it loaded the
    cached ``run`` with the old helper compiled in (1.0, not 2.0)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    helper = package / "helper.py"
    helper.write_text(
        "from pyapred.jit import njit\n\n\n"
        "@njit(cache=True, inline='always')\ndef value():\n    return 1.0\n"
    )
    (package / "kernel.py").write_text(
        "from pyapred.jit import njit\n\nfrom .helper import value\n\n\n"
        "@njit(cache=True)\ndef run():\n    return value() + 0.0\n"
    )
    first = _run_kernel(tmp_path)
    assert first["value"] == 1.0 and first["misses"] == 1
    again = _run_kernel(tmp_path)
    assert again["value"] == 1.0 and again["hits"] == 1  # the cache is used while nothing changed
    helper.write_text(helper.read_text().replace("return 1.0", "return 2.0"))
    changed = _run_kernel(tmp_path)
    assert changed["value"] == 2.0 and changed["misses"] == 1
    assert _run_kernel(tmp_path) == {"value": 2.0, "hits": 1, "misses": 0}


def test_the_key_follows_an_edit_within_one_process(tmp_path):
    """A module reloaded after an edit (a notebook's autoreload) gets a new key."""
    from pyapred.jit import _sources_digest

    helper = tmp_path / "helper.py"
    helper.write_text("x = 1\n")
    before = _sources_digest((helper,), tmp_path)
    assert _sources_digest((helper,), tmp_path) == before
    helper.write_text("x = 22\n")
    assert _sources_digest((helper,), tmp_path) != before


def test_a_source_gone_since_its_importer_was_read_gives_a_key_not_an_error(tmp_path):
    from pyapred.jit import _sources_digest

    helper = tmp_path / "helper.py"
    helper.write_text("x = 1\n")
    before = _sources_digest((helper,), tmp_path)
    helper.unlink()
    assert _sources_digest((helper,), tmp_path) != before


def test_kernel_sources_follow_an_import_added_within_one_process(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    for name in ("__init__.py", "other.py"):
        (package / name).write_text("")
    (package / "kernel.py").write_text("from .helper import f\n")
    helper = package / "helper.py"
    helper.write_text("f = 1\n")
    assert package / "other.py" not in kernel_sources(package / "kernel.py", package)
    helper.write_text("from .other import g\nf = 1\n")
    assert package / "other.py" in kernel_sources(package / "kernel.py", package)
