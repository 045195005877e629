"""Stage 1, ``pyapred.exposure.prepare``: its robust helpers."""

import numpy as np
import pytest


def test_nanmedian_last_axis_matches_numpy():
    from pyapred.exposure.prepare import _nanmedian_last_axis

    rng = np.random.default_rng(2)
    values = rng.normal(size=(7, 5, 12)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[0, 0] = np.nan  # all NaN
    values[1, 1, :11] = np.nan  # one value
    with pytest.warns(RuntimeWarning):
        want = np.nanmedian(values, axis=-1)
    got = _nanmedian_last_axis(values)
    assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)
