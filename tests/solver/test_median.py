"""The kernels' median rate: the sorting-network version equals the quickselect one exactly."""

import numpy as np
import pytest
from numba import njit

from pyapred.solver._numpy import (
    _block_median_rate,
    _center_network,
    _median_network,
    _median_rate,
    _sort_columns,
)


@njit(cache=True)
def _per_pixel(d, x, valid):
    K, B = d.shape
    out = np.empty(B)
    buf = np.empty(K)
    for p in range(B):
        out[p] = _median_rate(d[:, p], x[:, p], valid[:, p], buf)
    return out


@njit(cache=True)
def _block(d, x, valid):
    K, B = d.shape
    out = np.empty(B)
    _block_median_rate(
        d, x, valid, _center_network(K), np.empty((K, B)), np.empty(B, np.int64), out
    )
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 31, 46, 64, 65, 100])
def test_network_sorts(n):
    rng = np.random.default_rng(n)
    network = _median_network(n)
    for _ in range(20):
        values = rng.integers(-5, 5, n).astype(float)  # many ties
        for i, j, _ in network:
            assert i < j < n
            values[i], values[j] = min(values[i], values[j]), max(values[i], values[j])
        assert np.all(np.diff(values) >= 0)


@njit(cache=True)
def _sorted_columns(values, network):
    out = values.copy()
    _sort_columns(out, network)
    return out


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 24, 46, 64, 65])
def test_sort_columns_sorts_every_column(n):
    # The whole blocks of eight rows sorted in registers, the rest of the network one
    # comparator at a time: every column comes out sorted, and every zero as 0.0.
    rng = np.random.default_rng(300 + n)
    values = rng.integers(-5, 5, (n, 37)).astype(float)  # many ties; 37 columns: a tail
    values[rng.random(values.shape) < 0.1] = np.inf
    values[rng.random(values.shape) < 0.1] = -np.inf
    values[rng.random(values.shape) < 0.1] = -0.0
    got = _sorted_columns(values, _median_network(n))
    assert np.array_equal(got, np.sort(values, axis=0))
    if n > 1:  # one value meets no comparator
        assert not np.signbit(got[got == 0.0]).any()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 31, 46, 47, 64, 65, 100])
def test_center_network_places_the_median(n):
    # With m usable values and the others padded in turn with +inf and -inf (as
    # _block_median_rate pads them), the pruned network leaves at the two median positions the
    # values of the full sort, for every m.
    rng = np.random.default_rng(n)
    full, center = _median_network(n), _center_network(n)
    assert len(center) <= len(full)
    assert {tuple(c) for c in center} <= {tuple(c) for c in full}
    for m in range(1, n + 1):
        values = rng.integers(-5, 5, n).astype(float)  # many ties
        unusable = rng.permutation(n)[: n - m]
        values[np.sort(unusable)] = np.resize([np.inf, -np.inf], n - m)
        pruned = values.copy()
        for i, j, _ in center:
            pruned[i], pruned[j] = min(pruned[i], pruned[j]), max(pruned[i], pruned[j])
        ordered = np.sort(values)
        below = (n - m) // 2
        for position in (below + (m - 1) // 2, below + m // 2):
            assert pruned[position] == ordered[position]
            assert np.isfinite(pruned[position])
    if n == 46:
        assert (len(full), len(center)) == (368, 304)  # as _center_network's docstring says


@pytest.mark.parametrize("K", [1, 2, 5, 17, 46, 63])
def test_block_median_equals_quickselect(K):
    rng = np.random.default_rng(K)
    B = 300
    d = rng.normal(50.0, 300.0, (K, B))
    d[rng.random((K, B)) < 0.1] = -7.0  # ties and negative rates
    x = rng.uniform(0.0, 2.0, (K, B))
    x[rng.random((K, B)) < 0.1] = 0.0  # x <= 0 is skipped
    valid = rng.random((K, B)) > 0.3
    valid[:, :5] = False  # no usable difference: rate 0
    got, want = _block(d, x, valid), _per_pixel(d, x, valid)
    assert np.array_equal(got, want)
    assert np.all(got[:5] == 0.0) and np.any(got > 0.0)


@pytest.mark.parametrize("K", [1, 4, 9, 46, 47])
def test_block_median_every_usable_count(K):
    # Every number of usable differences, 0 to K, at random places, with ratios that overflow
    # to +-inf among them (equal to the padding's infinities).
    rng = np.random.default_rng(200 + K)
    B = 4 * (K + 1)
    d = rng.normal(0.0, 100.0, (K, B))
    x = rng.uniform(0.5, 2.0, (K, B))
    huge = rng.random((K, B)) < 0.1
    d[huge] = np.sign(d[huge]) * 1e308
    x[huge] = 1e-10
    valid = np.zeros((K, B), dtype=bool)
    for p in range(B):
        valid[rng.permutation(K)[: p % (K + 1)], p] = True
    got, want = _block(d, x, valid), _per_pixel(d, x, valid)
    assert np.array_equal(got, want)
    assert np.any(np.isinf(d[valid] / x[valid]))


@pytest.mark.parametrize("K", [2, 9, 46])
def test_block_median_exact_where_float32_merges_values(K):
    # Ratios that differ in float64 but round to one float32 (1 + 1e-12 and 1 + 2e-12), and
    # ratios beyond float32's range, give the float64 median bit for bit (a sort of float32
    # roundings, as the network once sorted, would merge them).
    rng = np.random.default_rng(100 + K)
    B = 257
    d = 1.0 + rng.integers(0, 4, (K, B)) * 1e-12 + rng.integers(0, 2, (K, B)) * 1e-3
    x = np.ones((K, B))
    wide = rng.random((K, B)) < 0.2
    d[wide] *= 10.0 ** rng.integers(-300, 300, wide.sum())
    valid = rng.random((K, B)) > 0.2
    got, want = _block(d, x, valid), _per_pixel(d, x, valid)
    assert np.array_equal(got, want)
    # The merged case happened: some median position had different float64 values behind it.
    with np.errstate(over="ignore"):
        rounded = got.astype(np.float32)
    assert len(np.unique(got)) > len(np.unique(rounded))
