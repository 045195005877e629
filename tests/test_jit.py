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


def test_kernel_sources_read_relative_absolute_and_parenthesised_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "b.py", "c.py", "unused.py", "sub/__init__.py",
                 "sub/d.py"):  # fmt: skip
        (package / name).write_text("")
    (package / "sub" / "kernel.py").write_text(
        "import numpy as np\n"
        "from .. import a\n"
        "from ..b import (\n    x,\n    y,\n)\n"
        "def f():\n    import pkg.c\n"
        "from . import d  # a module, by name\n"
        "from numpy import linalg\n"
    )
    found = {p.relative_to(package).as_posix() for p in kernel_sources(
        package / "sub" / "kernel.py", package)}  # fmt: skip
    assert found == {"__init__.py", "a.py", "b.py", "c.py", "sub/__init__.py", "sub/d.py",
                     "sub/kernel.py"}  # fmt: skip


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
