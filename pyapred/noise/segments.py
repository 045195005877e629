"""Readout segments: the pixels that share one 1/f offset per read (the nuisance term's labels).

An APOGEE H2RG chip is read through 4 outputs of 512 columns each, one row at a time (plus the
reference output); the correlated (1/f) read noise that varies slowly in time is one additive
offset per (row, output) and read, and its faster part varies along the row within an output.
:func:`readout_segments` labels a fiber's omega-fit pixels by segment: one row of ``columns``
consecutive columns within one output (``columns`` = 512: the whole row of an output), for
``fit_omega(..., segments=...)``. The exposure pipeline (``--correct-1f nuisance``,
``--segment-columns``) and the stress test (:mod:`pyapred.noise.stress`) both label pixels with
it.

The label of a pixel is its rank, within its own fiber, among the distinct keys

    key = (chip * CHIP_ROWS + row) * (N_OUTPUTS * OUTPUT_COLUMNS // columns) + column // columns

so that every fiber's labels run from 0 to its own number of segments minus one (the fit's
offset arrays are sized by the largest label; global keys would make them thousands wide).
"""

from __future__ import annotations

import numpy as np

from .hxrg import CHIP_ROWS, N_OUTPUTS, OUTPUT_COLUMNS

#: Columns per segment by default (``FitOptions.segment_columns``, ``pyapred noise stress``):
#: the narrowest width measured that keeps omega's z-scores within 1 +/- 0.15 on every chip of a
#: simulated exposure with 1/f noise (``docs/noise.md``, "Which route when").
DEFAULT_SEGMENT_COLUMNS = 32

__all__ = [
    "DEFAULT_SEGMENT_COLUMNS",
    "check_segment_columns",
    "keys_per_chip",
    "readout_keys",
    "readout_segments",
]


def readout_keys(rows, cols, chip=0, *, columns: int = OUTPUT_COLUMNS) -> np.ndarray:
    """One integer per (chip, row, segment of ``columns`` columns): pixels with the same key share
    a 1/f offset.

    Parameters
    ----------
    rows, cols : array_like of int
        0-based chip coordinates (row = slow-read axis, column = fast-read axis; science columns
        0-2047).
    chip : int or array_like of int, optional
        Chip index (0, 1, 2 for a, b, c) where pixels of several chips are pooled.
    columns : int, optional
        Columns per segment: a divisor of 512 other than 1 (:func:`check_segment_columns`).

    Returns
    -------
    ndarray of int64, the broadcast shape of the inputs
    """
    check_segment_columns(columns)
    rows = np.asarray(rows, dtype=np.int64)
    segment = np.asarray(cols, dtype=np.int64) // columns
    per_row = N_OUTPUTS * OUTPUT_COLUMNS // columns
    return (np.asarray(chip, dtype=np.int64) * CHIP_ROWS + rows) * per_row + segment


def keys_per_chip(columns: int = OUTPUT_COLUMNS) -> int:
    """The span of one chip's :func:`readout_keys`: ``key // keys_per_chip(columns)`` is the
    chip."""
    return CHIP_ROWS * (N_OUTPUTS * OUTPUT_COLUMNS // columns)


def check_segment_columns(columns: int) -> None:
    """ValueError unless ``columns`` divides an output's 512 columns (no segment spans two
    outputs) and is 2 or more: a segment of one column gives each pixel offsets of its own,
    which take all of its differences but their mean (the fits are degenerate, chi2 0)."""
    if not (
        isinstance(columns, int | np.integer) and columns >= 2 and OUTPUT_COLUMNS % columns == 0
    ):
        raise ValueError(
            f"segment columns: expected a divisor of {OUTPUT_COLUMNS} other than 1, got {columns!r}"
        )


def readout_segments(keys: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-group segment labels ``0 .. S_g - 1`` from readout keys.

    Parameters
    ----------
    keys : ndarray of int, ``(n_groups, n_pix)``
        :func:`readout_keys` of each group's pixels.
    valid : ndarray of bool, ``(n_groups, n_pix)``, optional
        False for padding, which gets label 0 (the fit ignores it).

    Returns
    -------
    ndarray of int64, ``(n_groups, n_pix)``
        Equal labels within a group where the keys are equal; labels are dense and ordered by key.
    """
    keys = np.asarray(keys, dtype=np.int64)
    if keys.ndim != 2:
        raise ValueError(f"keys: expected (n_groups, n_pix), got shape {keys.shape}")
    valid = np.ones(keys.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    labels = np.zeros(keys.shape, dtype=np.int64)
    for g in range(keys.shape[0]):
        use = valid[g]
        if use.any():
            labels[g, use] = np.unique(keys[g, use], return_inverse=True)[1]
    return labels
