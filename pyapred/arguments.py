"""The argparse types and the JSON line that the subcommands share.

At the bottom of the package (it imports nothing of pyapred), so that every command module,
wherever it sits (``commands.py``, ``night.py``, ``validate/``, ``crossval.py``,
``noise/cli.py``), takes them from below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

#: The most reads a simulated or cross-checked exposure may have (APOGEE's are ~10-60): beyond
#: it a typing error asks for tens of GB before failing.
MAX_READS = 1000
#: Seeds NumPy's generators take: whole numbers from 0 to 2**63 - 1.
MAX_SEED = 2**63 - 1


def at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum``; the error names the
    flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            within = f">= {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected an integer {within}, got {text!r}")
        return value

    return parse


def text_argument(text: str) -> str:
    """An argparse ``type``: any text but the empty one (``--group ""`` was taken as not
    given, ``--product ""`` named the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a value, found an empty string")
    return text


def path_argument(text: str) -> Path:
    """An argparse ``type`` for a path: an empty name is refused (``Path("")`` is the current
    folder, where ``--plots ""`` wrote its plots)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, found an empty name")
    return Path(text)


def file_argument(text: str) -> Path:
    """An argparse ``type`` for an output file: not empty, and not a folder's name ending in a
    separator (``Path("new/")`` is ``new``: ``--out new/`` wrote a file of that name)."""
    path = path_argument(text)
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"expected a file name, found a folder name {text!r}")
    return path


def json_line(value, *, indent: int | None = None) -> str:
    """A JSON line of a summary (NumPy scalars and paths included); a NaN or infinite number is
    null (``NaN`` and ``Infinity`` are no JSON: a reader refuses the line). With ``indent``,
    the same JSON on several lines (a file, or a long summary)."""

    def plain(item):
        if isinstance(item, np.generic):
            return clean(item.item())
        return str(item)

    def clean(item):
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: clean(v) for key, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        return item

    return json.dumps(clean(value), default=plain, allow_nan=False, indent=indent)
