"""Omega to compare with the guider: accepted inputs, fiber selection, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from pyapred.guider.omega import select_omega


def test_select_omega_keeps_fitted_fibers_and_selects_by_label():
    k = 6
    omega = np.ones((3, k))
    cov = np.stack([np.eye(k), np.zeros((k, k)), 2 * np.eye(k)])  # fiber 6 not fitted
    source = {"omega": omega, "omega_cov": cov, "fiber_index": [5, 6, 7]}
    selected = select_omega(source)
    assert selected.fibers.tolist() == [5, 7] and selected.omega.shape == (2, k)
    assert selected.read_times is None and selected.header is None
    np.testing.assert_array_equal(selected.cov[1], 2 * np.eye(k))
    one = select_omega(source, fibers=[7])
    assert one.fibers.tolist() == [7] and one.cov.shape == (1, k, k)
    single = select_omega((omega[0], cov[0]))  # one fiber as (K,), (K, K): row labels
    assert single.fibers.tolist() == [0] and single.omega.shape == (1, k)


def test_select_omega_rejects_what_it_cannot_use():
    k = 4
    with pytest.raises(ValueError, match=r"\[3\] not among"):
        select_omega((np.ones((2, k)), np.tile(np.eye(k), (2, 1, 1))), fibers=[3])
    with pytest.raises(ValueError, match="shapes"):
        select_omega((np.ones((2, k)), np.eye(k)))
    with pytest.raises(ValueError, match="no fiber has a fitted omega"):
        select_omega((np.ones(k), np.zeros((k, k))))
    unfitted = (np.ones((2, k)), np.stack([np.eye(k), np.zeros((k, k))]))
    with pytest.raises(ValueError, match=r"fibers: \[1\] have no fitted omega"):
        select_omega(unfitted, fibers=[0, 1])  # all-NaN statistics, no flag, before
    with pytest.raises(ValueError, match="expected an OmegaFit"):
        select_omega(42)


def test_select_omega_names_what_it_cannot_use():
    """Bare KeyErrors and conversion errors before; gamma without gamma_cov became NaN errors."""
    omega, cov = np.ones((2, 4)), np.eye(4)[None].repeat(2, 0) * 1e-4
    for source, kwargs, words in (
        ({"omega": omega}, {}, "missing \\['omega_cov'\\]"),
        ((np.full((2, 4), "x"), cov), {}, "omega: expected numbers"),
        ((omega, cov), {"fibers": ["a"]}, "fibers: expected numbers"),
        ((omega, cov), {"fibers": [0.5]}, "fibers: expected whole fiber indices"),
        ({"omega": omega, "omega_cov": cov, "gamma": omega}, {}, "gamma, gamma_cov: expected both"),
    ):
        with pytest.raises(ValueError, match=words):
            select_omega(source, **kwargs)
