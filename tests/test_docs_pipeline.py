"""The Python examples of docs/pipeline.md run, in order, as one notebook would."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"


def test_pipeline_guide_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["metrics"]["flux"]["R"]["n_pixels"] > 0
