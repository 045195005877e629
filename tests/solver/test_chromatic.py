"""fit_omega_chromatic: omega (1 + gamma c), its errors, and its test against the achromatic fit."""

from __future__ import annotations

import numpy as np
import pytest

from pyapred import ChromaticFit, Flag, fit_omega, fit_omega_chromatic
from pyapred.solver import _chromatic, _numpy

K = 16
OMEGA = np.linspace(1.0, 0.7, K)


def chromatic_reads(rng, flux, coordinate, gamma, *, sigma=12.0, omega=OMEGA):
    """Reads ``(K + 1, *flux.shape)`` whose difference k is ``flux omega_k (1 + gamma_k c)``."""
    rate = flux[..., None] * omega * (1.0 + gamma * coordinate[..., None])
    counts = np.cumsum(rng.poisson(rate), axis=-1)
    reads = np.concatenate([np.zeros(flux.shape + (1,)), counts], axis=-1)
    return np.moveaxis(reads + rng.normal(0.0, sigma, reads.shape), -1, 0)


def gamma_pattern(amplitude):
    gamma = amplitude * np.sin(np.linspace(0.0, 3.0, K))
    return gamma - gamma[0]


@pytest.fixture(scope="module")
def grouped():
    """60 groups of 200 pixels spread over c = -1 .. 1, chromatic (gamma up to 1.5 %) and not."""
    rng = np.random.default_rng(7)
    G, P = 60, 200
    c = np.tile(np.linspace(-1.0, 1.0, P), (G, 1))
    flux = rng.uniform(100.0, 3000.0, (G, P))
    out = {"flux": flux}
    for name, amplitude in (("chromatic", 0.015), ("grey", 0.0)):
        gamma = gamma_pattern(amplitude)
        reads = chromatic_reads(rng, flux, c, gamma)
        start = fit_omega(reads, 12.0, ref_index=0)
        out[name] = (gamma, start, fit_omega_chromatic(reads, 12.0, c, start=start), reads, c)
    return out


def test_recovers_gamma_with_calibrated_errors(grouped):
    gamma, _, fit, _, _ = grouped["chromatic"]
    assert fit.converged.all()
    z = (fit.gamma - gamma)[:, 1:] / fit.gamma_error()[:, 1:]
    assert abs(np.std(z) - 1.0) < 0.1
    assert abs(np.mean(z)) < 0.1
    assert np.all(fit.gamma[:, 0] == 0.0) and np.all(fit.omega[:, 0] == 1.0)
    assert np.median(fit.p_value) < 1e-3
    assert np.all(fit.dof == K - 1)
    # Omega at c = 0 and the fluxes at that normalisation are unbiased too.
    error = np.sqrt(np.diagonal(fit.omega_cov(), axis1=1, axis2=2))
    zo = (fit.omega - OMEGA)[:, 1:] / error[:, 1:]
    assert abs(np.std(zo) - 1.0) < 0.1


def test_removes_the_achromatic_flux_bias_at_the_ends(grouped):
    """At the model's own normalisation (the flux at the reference read, where gamma is 0), the
    achromatic fit gives the pixels at the ends of the wavelength range the exposure's average
    colour: biased by about 1 sigma here, with opposite signs; the chromatic fit is not."""
    _, start, fit, _, c = grouped["chromatic"]
    truth = grouped["flux"] * OMEGA[0]
    blue, red = c < -0.8, c > 0.8
    achromatic = (start.flux - truth) / np.sqrt(start.flux_var)
    chromatic = (fit.flux - truth) / np.sqrt(fit.flux_var)
    assert achromatic[blue].mean() < -0.5 and achromatic[red].mean() > 0.5
    assert abs(chromatic[blue].mean()) < 0.1 and abs(chromatic[red].mean()) < 0.1


def test_grey_data_are_not_called_chromatic(grouped):
    _, start, fit, _, _ = grouped["grey"]
    # Under the null the statistic is chi2 with K - 1 degrees of freedom.
    assert abs(np.mean(fit.delta_chi2) - (K - 1)) < 3 * np.sqrt(2 * (K - 1) / fit.delta_chi2.size)
    assert np.mean(fit.p_value < 0.01) <= 0.05
    assert np.median(fit.amplitude) < 0.002
    # The chromatic model has more freedom: its chi2 never exceeds the achromatic one.
    assert np.all(fit.delta_chi2 > -1e-6)


def test_small_groups_have_calibrated_p_values():
    """omega and gamma take 2 (K - 1) of a group's degrees of freedom: not counting them made
    the inflation too small and the p-values too small for groups of 20 pixels (11 % below 0.05
    under the null at K = 20)."""
    rng = np.random.default_rng(21)
    G, P, n_diff = 400, 20, 20
    omega = np.linspace(1.0, 0.6, n_diff)
    c = np.tile(np.linspace(-1.0, 1.0, P), (G, 1))
    flux = rng.uniform(1000.0, 4000.0, (G, P))
    reads = chromatic_reads(rng, flux, c, np.zeros(n_diff), sigma=15.0, omega=omega)
    fit = fit_omega_chromatic(reads, 15.0, c, ref_index=0)
    assert abs(np.mean(fit.inflation**2) - 1.0) < 0.03  # 0.90 before
    assert 0.025 < np.mean(fit.p_value < 0.05) < 0.075
    # Two pixels of 10 differences: 20 data for 2 fluxes and 18 omega and gamma elements,
    # fitted exactly whatever they are. No evidence, and a degenerate fit (it was p = 0).
    two = fit_omega_chromatic(reads[:11, 0, :2], 15.0, np.array([-1.0, 1.0]), ref_index=0)
    assert two.p_value == 1.0 and np.isnan(two.inflation)
    assert two.group_flags & Flag.NOT_CONVERGED and not two.converged
    # Reads of zeros: both models exact, any chi2 decrease is rounding (it was p = 0).
    zeros = fit_omega_chromatic(np.zeros((11, 50)), 15.0, np.linspace(-1.0, 1.0, 50))
    assert zeros.p_value == 1.0


def test_zero_slope_reproduces_the_achromatic_chi2(grouped):
    """The chromatic kernels at b = 0 are the achromatic ones (chi2 and normal equations)."""
    _, start, _, reads, c = grouped["grey"]
    from pyapred.solver.api import _fit_pixels, _group_inputs

    _, diffs, valid, flags, s2, dt, _ = _group_inputs(reads, 12.0, 1.0, None, None, None, "numpy")
    fit_pixel, _, _ = _fit_pixels(valid, flags)
    G, P, _ = diffs.shape
    chi2 = np.empty((G, P))
    _chromatic.chromatic_chi2_kernel(diffs, valid, s2, dt, start.flux, start.omega,
                                     np.zeros((G, K)), c, fit_pixel, chi2)  # fmt: skip
    np.testing.assert_allclose(chi2, start.chi2, rtol=1e-12)
    # The normal equations' moment 0 is the achromatic G block.
    normal = _chromatic._ChromaticNormal(G, P, K)
    active = np.ones(G, dtype=bool)
    normal.evaluate(diffs, valid, s2, dt, start.flux, start.omega, np.zeros((G, K)), c, active,
                    fit_pixel)  # fmt: skip
    plain = _numpy._Normal(G, P, K)
    plain.evaluate(diffs, valid, s2, dt, start.flux, start.omega, active, fit_pixel)
    np.testing.assert_allclose(normal.g[:, 0], plain.g, rtol=1e-10, atol=1e-12 * plain.g.max())
    weighted = np.einsum("gp,gpi,gpj->gij", c**2, plain.e_hat, plain.e_hat)
    assert np.all(np.isfinite(weighted))
    np.testing.assert_allclose(normal.e_hat, plain.e_hat, rtol=1e-12)


def test_single_group_matches_the_batched_fit(grouped):
    _, _, fit, reads, c = grouped["chromatic"]
    one = fit_omega_chromatic(reads[:, 3], 12.0, c[3], ref_index=0)
    assert isinstance(one, ChromaticFit)
    assert one.omega.shape == (K,) and one.cov.shape == (2 * K, 2 * K)
    np.testing.assert_allclose(one.gamma, fit.gamma[3], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(one.flux, fit.flux[3], rtol=1e-9)
    assert one.omega_at(c[3]).shape == (c.shape[1], K)


def test_same_differences_as_the_achromatic_fit_with_jumps():
    """With jump_search the chromatic fit reuses the achromatic fit's jump mask."""
    rng = np.random.default_rng(3)
    c = np.linspace(-1.0, 1.0, 60)
    reads = chromatic_reads(rng, rng.uniform(500.0, 3000.0, 60), c, gamma_pattern(0.02))
    reads[6:, 10] += 3000.0  # a cosmic ray in difference 5 of pixel 10
    start = fit_omega(reads, 12.0, jump_search=True)
    assert start.jump_mask is not None and start.jump_mask[10, 5]
    fit = fit_omega_chromatic(reads, 12.0, c, start=start)
    assert fit.converged and fit.n_diff[10] == K - 1
    assert fit.flags[10] & Flag.JUMP_DETECTED
    assert abs(fit.flux[10] / np.median(fit.flux) - 1) < 1.0  # not pulled by the jump
    # Without the start the same search is made here.
    again = fit_omega_chromatic(reads, 12.0, c, jump_search=True)
    np.testing.assert_allclose(again.gamma, fit.gamma, rtol=1e-12, atol=1e-15)


def test_a_single_coordinate_pins_the_slope():
    """Pixels all at one wavelength cannot tell omega from its slope: gamma stays 0."""
    rng = np.random.default_rng(5)
    reads = chromatic_reads(rng, rng.uniform(500.0, 3000.0, 30), np.zeros(30), np.zeros(K))
    fit = fit_omega_chromatic(reads, 12.0, 0.25)
    assert fit.converged and fit.dof == 0 and np.all(fit.gamma == 0.0)
    assert fit.p_value == 1.0


def test_bad_arguments():
    reads = np.zeros((K + 1, 2, 5))
    with pytest.raises(ValueError, match="coordinate"):
        fit_omega_chromatic(reads, 12.0, np.zeros(3))
    with pytest.raises(ValueError, match="coordinate"):
        fit_omega_chromatic(reads, 12.0, np.full((2, 5), np.nan))
    far = np.zeros((2, 5))
    far[1, 3] = 1e200  # overflowed inside the fit (RuntimeWarnings, then NOT_CONVERGED)
    with pytest.raises(ValueError, match=r"coordinate: .* got 1e\+200 at index \(1, 3\)"):
        fit_omega_chromatic(reads, 12.0, far)
    start = fit_omega(np.zeros((K + 1, 5)) + np.arange(K + 1)[:, None] * 100.0, 12.0)
    with pytest.raises(ValueError, match="start"):
        fit_omega_chromatic(reads + np.arange(K + 1)[:, None, None] * 100.0, 12.0, 0.0,
                            start=start)  # fmt: skip
    with pytest.raises(ValueError, match="rtol"):
        fit_omega_chromatic(reads, 12.0, 0.0, rtol=0.0)
    single = fit_omega(np.zeros((K + 1, 5)) + np.arange(K + 1)[:, None] * 100.0, 12.0)
    with pytest.raises(ValueError, match=r"flux \(6,\), got \(\d+,\) and \(5,\)"):
        # In the caller's shapes: a single group's have no group axis (it said (1, 6)).
        fit_omega_chromatic(np.zeros((K + 1, 6)) + np.arange(K + 1)[:, None] * 100.0, 12.0,
                            0.0, start=single)  # fmt: skip
    with pytest.raises(TypeError, match="start: expected an OmegaFit"):  # an AttributeError
        fit_omega_chromatic(reads, 12.0, 0.0, start="x")


def test_every_nan_of_a_chromatic_fit_carries_a_flag():
    """Found by fuzzing the solver API: omega elements without data were NaN with group flags 0
    (fit_omega flags them), an omega element fitted to 0 made gamma +-inf, and data that both
    models fit exactly gave a NaN p-value (0 / 0), all unflagged."""
    import pyapred

    rng = np.random.default_rng(3)
    sim = pyapred.simulate_ramps(
        rng.uniform(500, 2000, 50), 15.0, omega=np.linspace(1, 0.7, 9), rng=rng
    )
    mask = np.zeros(sim.reads.shape, bool)
    mask[5] = True  # one bad read in every pixel: differences 4 and 5 have no data
    fit = fit_omega_chromatic(sim.reads, 15.0, np.linspace(-1, 1, 50), mask=mask)
    assert np.isnan(fit.omega[[4, 5]]).all() and np.isnan(fit.gamma[[4, 5]]).all()
    assert fit.group_flags & Flag.OMEGA_ELEMENT_NO_DATA
    # Reads clipped at the ADC ceiling with no saturation given: an element fitted to 0.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        flux = rng.uniform(1e5, 5e5, 4)
        clipped = np.clip(pyapred.simulate_ramps(flux, 15.0, n_reads=11, rng=rng).reads, 0, 65535)
        with np.errstate(all="ignore"):
            fit = fit_omega_chromatic(clipped.astype(np.int32), 15.0, np.linspace(-1, 1, 4))
        if (fit.omega == 0).any():
            break
    assert (fit.omega == 0).any(), "no seed gave an omega element of 0"
    assert not np.isinf(fit.gamma).any() and np.isnan(fit.gamma[fit.omega == 0]).all()
    assert fit.group_flags & Flag.OMEGA_ELEMENT_NO_DATA
    # Both models exact (no chi2 at all): no evidence of chromaticity, p = 1.
    exact = np.tile(np.array([0, 65535] * 5, np.uint16)[:, None], 50)
    fit = fit_omega_chromatic(exact, 15.0, np.linspace(-1, 1, 50))
    assert fit.inflation == 0 and fit.p_value == 1.0


def test_an_empty_group_is_flagged_as_fit_omega_flags_it():
    """A group with no usable pixel was NOT_CONVERGED | EMPTY_GROUP and not converged, with a
    RuntimeWarning from nanvar; fit_omega (and docs/flags.md) say OMEGA_ELEMENT_NO_DATA |
    EMPTY_GROUP, converged."""
    import warnings

    import pyapred

    rng = np.random.default_rng(0)
    reads = pyapred.simulate_ramps(rng.uniform(800, 1200, 40), 10.0,
                                   omega=np.linspace(1, 0.8, 9), rng=rng).reads  # fmt: skip
    reads = np.stack([reads[:, :20], reads[:, 20:]], axis=1)  # (n_reads, 2 groups, 20 pixels)
    reads[:, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_omega_chromatic(reads, 10.0, np.tile(np.linspace(-1, 1, 20), (2, 1)))
    achromatic = fit_omega(reads, 10.0)
    assert fit.group_flags.tolist() == achromatic.group_flags.tolist()
    assert fit.group_flags[1] == Flag.OMEGA_ELEMENT_NO_DATA | Flag.EMPTY_GROUP
    assert fit.converged.tolist() == achromatic.converged.tolist() == [True, True]


def test_the_coordinate_is_real_numbers_and_jump_search_a_flag():
    """A complex coordinate lost its imaginary part (a ComplexWarning only); "abc" was NumPy's
    message naming no argument; jump_search="no" ran the search."""
    rng = np.random.default_rng(5)
    reads = chromatic_reads(rng, np.full(8, 2000.0), np.linspace(-1, 1, 8), 0.0)
    for coordinate in (np.linspace(-1, 1, 8) + 1j, "abc"):
        with pytest.raises(ValueError, match="coordinate: expected real numbers"):
            fit_omega_chromatic(reads, 12.0, coordinate)
    with pytest.raises(ValueError, match="jump_search: expected True or False"):
        fit_omega_chromatic(reads, 12.0, np.linspace(-1, 1, 8), jump_search="no")


def test_a_start_fitted_to_other_inputs_is_refused(grouped):
    """The test's null chi2 is the start's: a start fitted with another gain or read noise gave
    p = 1e-20 on grey data (or a delta-chi2 of -3e5 with another mask)."""
    _, start, fit, reads, c = grouped["grey"]
    own = fit_omega(reads[:, :3], 12.0, ref_index=0)
    again = fit_omega_chromatic(reads[:, :3], 12.0, c[:3], start=own)
    np.testing.assert_array_equal(again.p_value, fit.p_value[:3])
    masked = np.zeros(reads[:, :3].shape, dtype=bool)
    masked[5, :, :7] = True
    for other in (dict(gain=1.3), dict(read_noise=6.0), dict(mask=masked)):
        noise = other.pop("read_noise", 12.0)
        foreign = fit_omega(reads[:, :3], noise, ref_index=0, **other)
        with pytest.raises(ValueError, match=r"start: expected fit_omega's result on these "
                                             r"reads.*at pixel \(0, \d+\)"):  # fmt: skip
            fit_omega_chromatic(reads[:, :3], 12.0, c[:3], start=foreign)
    import dataclasses

    forged = dataclasses.replace(start, ref_index=np.full(start.ref_index.shape, K))
    with pytest.raises(ValueError, match=f"start: expected a ref_index of 0 to {K - 1}"):
        fit_omega_chromatic(reads, 12.0, c, start=forged)
