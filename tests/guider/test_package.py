"""The pyapred.guider package: its documented example, its imports."""

from __future__ import annotations

import re
import subprocess
import sys

from pyapred import guider

from .scenario import REPO


def test_docs_worked_example_runs(tmp_path, monkeypatch):
    text = (REPO / "docs" / "guider.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/guider.md", "exec"), {})
    assert (tmp_path / "guider-example.png").stat().st_size > 10_000


def test_import_pyapred_stays_light():
    code = "import sys, pyapred; print('astropy' in sys.modules, 'pyapred.guider' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_public_name_is_importable_from_the_package():
    for name in guider.__all__:
        assert getattr(guider, name) is not None, name
    from pyapred.guider.cli import add_arguments, run

    assert callable(run) and callable(add_arguments)
