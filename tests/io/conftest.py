"""Builders for files in the real formats, made without pyapred's writers."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits


def build_raw_layout(path, reads, *, compressed=True, exposure_cards=(), read_cards=None):
    """An .apz made directly from apzip's recipe, without write_apz."""
    reads = np.asarray(reads, dtype=np.int64)
    n_reads = reads.shape[0]
    diffs = np.diff(reads, axis=0)
    avg = np.floor(diffs.mean(axis=0) + 0.5).astype(np.int32)
    if compressed:
        kind = {"compression_type": "RICE_1", "tile_shape": (1, reads.shape[2])}

        def make(data, header):
            return fits.CompImageHDU(data, header, **kind)
    else:

        def make(data, header):
            return fits.ImageHDU(data, header)

    cards = read_cards or [[("DATE-OBS", f"2025-04-20T04:00:{k:02d}.000")] for k in range(n_reads)]
    hdus = [fits.PrimaryHDU(), make(avg, fits.Header([("NREAD", n_reads), *exposure_cards]))]
    hdus.append(make(reads[0].astype(np.uint16), fits.Header(cards[0])))
    for k in range(1, n_reads):
        hdus.append(make((diffs[k - 1] - avg).astype(np.int32), fits.Header(cards[k])))
    fits.HDUList(hdus).writeto(path)
    return path


def julia_layout(julia_array: np.ndarray) -> np.ndarray:
    """What h5py sees for a Julia array indexed ``julia_array[i, j, ...]`` (0-based here)."""
    return np.ascontiguousarray(julia_array.transpose())


@pytest.fixture
def raw_apz():
    """:func:`build_raw_layout`: an .apz made directly from apzip's recipe."""
    return build_raw_layout


@pytest.fixture
def julia():
    """:func:`julia_layout`: the array h5py sees for a Julia array written by JLD2."""
    return julia_layout
