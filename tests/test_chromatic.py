"""pyapred.chromatic (wavelengths, coupling, the linear model of omega(lambda)) and the
simulator's seeing-change scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from pyapred import chromatic
from pyapred.simulate import simulate_exposure


def test_chip_wavelengths_run_red_to_blue_along_the_columns():
    red = chromatic.chip_wavelength("R")
    blue = chromatic.chip_wavelength("B", 512)
    assert red.shape == (2048,) and np.all(np.diff(red) < 0)
    assert blue.shape == (512,) and blue[-1] == 1.5145
    span = chromatic.coordinate_span("RGB")
    assert span == (1.5145, 1.6965)
    c = chromatic.wavelength_coordinate([1.5145, 1.6055, 1.6965], span)
    np.testing.assert_allclose(c, [-1.0, 0.0, 1.0])
    assert chromatic.coordinate_span(["G"]) == (1.586, 1.644)
    with pytest.raises(ValueError, match="chip"):
        chromatic.chip_wavelength("a")


def test_coupling_and_seeing_scaling():
    # Half the light of a Gaussian PSF falls within its FWHM: a fiber as wide as the FWHM.
    assert chromatic.fiber_coupling(2.0, 2.0) == pytest.approx(0.5)
    assert chromatic.seeing_fwhm(1.0, chromatic.GUIDER_WAVELENGTH_UM) == pytest.approx(1.0)
    assert chromatic.seeing_fwhm(1.0, 4 * chromatic.GUIDER_WAVELENGTH_UM) == pytest.approx(4**-0.2)
    # Seeing worse in the blue: a fiber takes in less blue light.
    light = chromatic.chromatic_transparency([1.0], [2.0], [1.5, 1.7], diameter=3.0)
    assert light.shape == (1, 2) and light[0, 0] < light[0, 1]


def test_linear_in_coordinate_is_exact_for_a_line():
    c = np.linspace(-1, 1, 9)
    omega, gamma = np.array([1.0, 0.8, 0.6]), np.array([0.0, 0.05, -0.02])
    reference = 1.0 + 0.3 * c  # the reference read's own colour, absorbed by the fluxes
    table = omega[:, None] * (1 + gamma[:, None] * c) * reference
    fitted_omega, fitted_gamma = chromatic.linear_in_coordinate(table, c, 0)
    np.testing.assert_allclose(fitted_omega, omega, rtol=1e-12)
    np.testing.assert_allclose(fitted_gamma, gamma, atol=1e-12)


def test_seeing_change_is_three_percent_red_to_blue():
    """The default seeing change makes the red-to-blue omega difference change by 3 %."""
    sim = simulate_exposure("seeing-change", seed=1, n_fibers=20, n_columns=32, ref_columns=0,
                            n_reads=47)  # fmt: skip
    omega, gamma = sim.chromatic_truth(0)
    science = sim.fiber_type != "fpi"
    assert np.ptp(2 * gamma[science], axis=1) == pytest.approx(0.03, abs=0.002)
    np.testing.assert_allclose(omega[~science], 1.0)
    # The stored omega is the truth at the middle of the three chips.
    middle = sim.omega_at(np.mean(chromatic.coordinate_span("RGB")))[..., 0]
    np.testing.assert_array_equal(sim.omega, middle)
    # Each pixel received its own column's light: the exposure-averaged flux follows it.
    assert sim.transparency.shape == sim.fwhm.shape == (20, 46) and sim.diameter == 3.0


def test_seeing_change_with_a_cloud_and_the_grey_scenarios():
    both = simulate_exposure("seeing-change-clouds", seed=1, n_fibers=8, n_columns=16,
                             ref_columns=0, n_reads=12)  # fmt: skip
    assert both.transparency.min() < 0.5  # the cloud
    grey = simulate_exposure("clouds", seed=1, n_fibers=8, n_columns=16, ref_columns=0,
                             n_reads=12)  # fmt: skip
    assert grey.fwhm is None
    omega, gamma = grey.chromatic_truth(0)
    np.testing.assert_allclose(gamma, 0.0, atol=1e-15)
    with pytest.raises(ValueError, match="fwhm"):
        simulate_exposure("seeing-change", n_fibers=4, n_columns=8, n_reads=5, fwhm=(0.0, 1.0))
