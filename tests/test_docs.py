"""Run the ``python`` code blocks of README.md and docs/*.md; check docs/flags.md."""

import re
from pathlib import Path

import pytest

from pyapred import Flag

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _pages_with_code():
    pages = [*DOCS.glob("*.md"), DOCS.parent / "README.md"]
    return sorted(p for p in pages if BLOCK.search(p.read_text()))


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for block in BLOCK.findall(page.read_text()):
        exec(compile(block, str(page), "exec"), namespace)


def test_flag_table_matches_registry():
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", (DOCS / "flags.md").read_text(), re.M)
    documented = {name: int(bit) for bit, name in rows}
    registry = {flag.name: flag.value.bit_length() - 1 for flag in Flag}
    assert documented == registry
