"""simulate_hxrg: determinism, geometry, 1/f slope and component amplitudes."""

import numpy as np
import pytest
from scipy import signal

from pyapred.noise import HxrgNoise, reference_pixels, simulate_hxrg, time_order

# Compressed timing without row overheads: each output's image, in read order, is its exact
# time stream, so spectra can be measured on it directly.
STREAM = dict(read_time=0.0, row_overhead=0)
ROWS = slice(4, 516)  # 512 rows clear of the reference border


def _streams(noise: HxrgNoise, n_reads: int = 4, seed: int = 1) -> np.ndarray:
    """(5, n_samples) time streams of the five outputs."""
    cube = simulate_hxrg(n_reads, noise, rows=ROWS, rng=seed)
    ordered = time_order(cube)  # (n_reads, ny, 5, 512)
    return np.moveaxis(ordered, 2, 0).reshape(5, -1)


def _fit_pink(stream: np.ndarray, dt: float) -> tuple[float, float]:
    """(slope, PSD level at 1 Hz) of a log-log fit over 2.5 decades of the Welch spectrum."""
    f, psd = signal.welch(stream, fs=1.0 / dt, nperseg=2**15)
    nyquist = 0.5 / dt
    band = (f > nyquist / 10**3) & (f < nyquist / 10**0.5)
    slope, intercept = np.polyfit(np.log(f[band]), np.log(psd[band]), 1)
    return slope, np.exp(intercept)


def test_seeded_and_deterministic():
    noise = HxrgNoise(read_time=0.0)
    a = simulate_hxrg(2, noise, rows=slice(0, 16), rng=7)
    b = simulate_hxrg(2, noise, rows=slice(0, 16), rng=np.random.default_rng(7))
    c = simulate_hxrg(2, noise, rows=slice(0, 16), rng=8)
    assert a.shape == (2, 16, 2560)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("component", ["c_pink", "u_pink"])
def test_pink_slope_and_amplitude(component):
    amplitude = 2.0
    noise = HxrgNoise(white=0.0, c_pink=0.0, u_pink=0.0, acn=0.0, **STREAM)
    noise = HxrgNoise(**{**noise.__dict__, component: amplitude})
    streams = _streams(noise)
    fits = np.array([_fit_pink(s, noise.pixel_time) for s in streams])
    assert np.all(np.abs(fits[:, 0] + 1.0) < 0.05), fits[:, 0]
    level = noise.pink_level(amplitude)
    assert np.all(np.abs(fits[:, 1] / level - 1.0) < 0.05), fits[:, 1] / level


def test_acn_amplitude_on_even_and_odd_samples():
    noise = HxrgNoise(white=0.0, c_pink=0.0, u_pink=0.0, acn=1.5, **STREAM)
    streams = _streams(noise)
    for parity in (0, 1):
        slope, level = _fit_pink(streams[:, parity::2].ravel(), 2 * noise.pixel_time)
        assert abs(slope + 1.0) < 0.05
        assert abs(level / noise.pink_level(noise.acn) - 1.0) < 0.05
    # Even and odd series are independent: the column pattern alternates.
    even, odd = np.diff(streams[0, 0::2]), np.diff(streams[0, 1::2])
    assert abs(np.corrcoef(even, odd)[0, 1]) < 0.05


def test_white_amplitudes_and_reference_ratio():
    noise = HxrgNoise(white=3.0, c_pink=0.0, u_pink=0.0, acn=0.0)
    cube = simulate_hxrg(2, noise, rows=slice(0, 64), rng=3)
    ref = reference_pixels(slice(0, 64))
    assert abs(cube[:, ~ref].std() / 3.0 - 1) < 0.05
    assert abs(cube[:, ref].std() / (0.8 * 3.0) - 1) < 0.05
    assert ref[:4].all() and ref[:, 2044:].all() and not ref[4:, 4:2044].any()


def test_correlated_part_shared_and_independent_part_not():
    both = HxrgNoise(white=0.0, c_pink=1.0, u_pink=0.0, acn=0.0, **STREAM)
    streams = _streams(both, n_reads=2)
    for o in range(1, 5):  # identical time streams, hence flipped images on outputs 1 and 3
        np.testing.assert_allclose(streams[o], streams[0])
    cube = simulate_hxrg(1, both, rows=slice(0, 4), rng=1)
    np.testing.assert_allclose(cube[..., 512:1024][..., ::-1], cube[..., 0:512])

    own = HxrgNoise(white=0.0, c_pink=0.0, u_pink=1.0, acn=0.0, **STREAM)
    streams = _streams(own, n_reads=2)
    # Differences whiten 1/f noise, so the sample correlation has its nominal 1/sqrt(N) error.
    corr = np.corrcoef(np.diff(streams, axis=1))
    off = corr[~np.eye(5, dtype=bool)]
    assert np.all(np.abs(off) < 0.05), off


def test_clocking_makes_row_offsets():
    noise = HxrgNoise(white=1.0, c_pink=1.0, u_pink=0.0, acn=0.0)
    cube = simulate_hxrg(1, noise, rows=slice(100, 164), rng=5)[0]
    row_means = cube[:, :2048].reshape(64, 4, 512).mean(axis=-1)
    # White noise alone gives 1/sqrt(512) = 0.044; 1/f concentrates in row offsets.
    assert row_means.std() > 0.2


def test_bad_arguments():
    with pytest.raises(ValueError, match="rows"):
        simulate_hxrg(1, rows=slice(10, 5))
    with pytest.raises(ValueError, match="n_reads"):
        simulate_hxrg(0)
    with pytest.raises(ValueError, match="2560"):
        time_order(np.zeros((2, 2048)))
