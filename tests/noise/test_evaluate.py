"""Noise-model statistics: PQMass, row-mean std, spectral slope."""

import numpy as np
import pytest

from pyapred.noise import HxrgNoise, simulate_hxrg, time_order
from pyapred.noise.evaluate import pqmass, psd_slope, row_mean_std


@pytest.fixture(scope="module")
def patches():
    """Two independent sets of 32 x 32 patches of one output's 1/f noise, and white noise."""
    noise = HxrgNoise(white=1.0, c_pink=0.6, u_pink=0.3, acn=0.2, read_time=0.0)
    out = []
    for seed in (1, 2):
        cube = simulate_hxrg(4, noise, rows=slice(4, 1028), rng=seed)  # 4 x 1024 rows
        stream = time_order(np.diff(cube, axis=0))[:, :, 0, :]  # output 0, read order
        windows = [stream[..., c : c + 32].reshape(-1, 32, 32) for c in (100, 200, 300)]
        out.append(np.concatenate(windows))  # 288 patches of 32 x 32
    white = np.random.default_rng(3).normal(0, out[0].std(), out[0].shape)
    return out[0], out[1], white


def test_pqmass_accepts_the_same_noise_and_rejects_white(patches):
    a, b, white = patches
    dof = 9
    same = pqmass(a, b, num_refs=dof + 1, re_tessellation=20, rng=0).mean()
    other = pqmass(a, white, num_refs=dof + 1, re_tessellation=20, rng=0).mean()
    assert abs(same - dof) < 3 * np.sqrt(2 * dof)
    assert other > dof + 3 * np.sqrt(2 * dof)


def test_pqmass_duplicates_and_errors():
    x = np.random.default_rng(0).normal(size=(40, 5))
    assert pqmass(x, x, num_refs=5, rng=1)[0] < 1.0
    with pytest.raises(ValueError, match="num_refs"):
        pqmass(x, x, num_refs=100)
    with pytest.raises(ValueError, match="size"):
        pqmass(x, x[:, :4])


def test_row_means_and_slope_see_1f(patches):
    a, b, white = patches
    assert row_mean_std(a) > 2 * row_mean_std(white)
    assert abs(row_mean_std(a) / row_mean_std(b) - 1) < 0.25
    assert psd_slope(a, band=(0.002, 0.05)) < -0.5
    assert abs(psd_slope(white)) < 0.15
