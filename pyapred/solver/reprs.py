"""Short text and HTML summaries of result objects, for ``repr`` and Jupyter.

The result classes of :mod:`pyapred.solver`, :mod:`pyapred.exposure` and
:mod:`pyapred.simulate` build their ``__repr__`` (a few lines, never whole arrays) and their
``_repr_html_`` tables from these helpers. They read arrays and return strings; nothing here
changes a result.
"""

from __future__ import annotations

import dataclasses
import html
import warnings
from collections.abc import Mapping

import numpy as np

from ._flags import Flag

__all__ = [
    "brief",
    "count_flags",
    "finite_median",
    "fmt",
    "html_table",
    "quiet_nanmedian",
    "shape_of",
    "summary_repr",
]


def finite_median(values) -> float:
    """Median of the finite values, NaN when there are none (no warning)."""
    if values is None:
        return float("nan")
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def fmt(value, spec: str = ".3g") -> str:
    """``value`` formatted with ``spec``; ``-`` for None and NaN."""
    if value is None:
        return "-"
    value = float(value)
    return "-" if np.isnan(value) else format(value, spec)


def shape_of(array) -> str:
    """``(2048, 2560)`` for an array, ``None`` for None, ``scalar`` for a number."""
    if array is None:
        return "None"
    shape = np.shape(array)
    return str(shape) if shape else "scalar"


def brief(value, limit: int = 6) -> str:
    """A value in a few words: an array as its dtype and shape, a mapping by its first ``limit``
    keys, a long sequence by its length, a long text cut; never a whole array."""
    if isinstance(value, np.ndarray):
        return f"<{value.dtype} {shape_of(value)}>"
    if type(value).__name__ == "Time" and hasattr(value, "scale"):  # astropy, not imported
        return f"<Time {value.scale} {shape_of(value)}>" if np.shape(value) else f"<Time {value}>"
    if isinstance(value, Mapping):
        items = [f"{key!r}: {brief(item, limit)}" for key, item in list(value.items())[:limit]]
        more = f", ... {len(value)} keys" if len(value) > limit else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(value, (list, tuple)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)}>"
    text = repr(value)
    if len(text) > 120:
        head = text.split("(", 1)[0] if "(" in text[:40] else text[:60]
        return f"<{head}...>"
    return text


def summary_repr(obj) -> str:
    """``Name(field=..., ...)`` of a dataclass with every field :func:`brief`: the ``__repr__``
    of result classes that hold whole images or tables (a few lines, never whole arrays)."""
    parts = [f"{f.name}={brief(getattr(obj, f.name))}" for f in dataclasses.fields(obj) if f.repr]
    return f"{type(obj).__name__}({', '.join(parts)})"


def count_flags(flags, ignore: int = 0) -> str:
    """``"12 flagged (SATURATED 10, JUMP_DETECTED 2)"``: pixels with any bit outside ``ignore``
    set, and how many carry each bit."""
    if flags is None:
        return "flags not kept"
    flags = np.asarray(flags)
    keep = ~int(ignore)
    n_flagged = int(np.count_nonzero(flags & keep))
    if not n_flagged:
        return "0 flagged"
    counts = []
    for flag in Flag:
        if flag & ignore:
            continue
        n = int(np.count_nonzero(flags & flag))
        if n:
            counts.append(f"{flag.name} {n}")
    return f"{n_flagged} flagged ({', '.join(counts)})"


def html_table(header: list[str], rows: list[list], caption: str | None = None) -> str:
    """A small HTML ``<table>`` (header row, then ``rows``); every cell is escaped."""
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption style='text-align:left'>{html.escape(caption)}</caption>")
    parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def quiet_nanmedian(values, axis=None):
    """``np.nanmedian`` without the all-NaN-slice warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)
