"""fit_constant, extract_fluxes and fit_equal_weight against dense references and statistics."""

import numpy as np
import pytest

from pyapred import (
    Flag,
    extract_fluxes,
    fit_constant,
    fit_equal_weight,
    fit_omega,
    simulate_ramps,
)

from . import dense


def _random_case(rng, n_pix=40, n_reads=9):
    flux = rng.uniform(0, 400, n_pix)
    flux[:3] = [0.0, 0.5, 2.0]  # faint pixels exercise the clipped photon term
    sigma = rng.uniform(5, 25, n_pix)
    sim = simulate_ramps(flux, sigma, n_reads=n_reads, rng=rng)
    return sim.reads, sigma


def _compare_dense(fit, reads, sigma, omega, mask=None, dt=None):
    for p in range(reads.shape[1]):
        bad = None if mask is None else mask[:, p]
        flux, var, chi2, n = dense.gls_pixel(reads[:, p], sigma[p], omega, dt=dt, bad_read=bad)
        assert fit.n_diff[p] == n
        if n < 2:
            assert np.isnan(fit.flux[p]) and fit.flags[p] & Flag.TOO_FEW_DIFFS
            continue
        np.testing.assert_allclose(fit.flux[p], flux, rtol=1e-10, atol=1e-10 * np.sqrt(var))
        np.testing.assert_allclose(fit.flux_var[p], var, rtol=1e-10)
        np.testing.assert_allclose(fit.chi2[p], chi2, rtol=1e-10, atol=1e-12)


def test_fit_constant_matches_dense_gls():
    rng = np.random.default_rng(2)
    reads, sigma = _random_case(rng)
    _compare_dense(fit_constant(reads, sigma), reads, sigma, np.ones(reads.shape[0] - 1))


def test_extract_fluxes_matches_dense_gls_with_omega_and_read_times():
    rng = np.random.default_rng(3)
    reads, sigma = _random_case(rng)
    omega = rng.uniform(0.5, 1.0, reads.shape[0] - 1)
    times = np.cumsum(rng.uniform(0.8, 1.5, reads.shape[0]))
    fit = extract_fluxes(reads, sigma, omega, read_times=times)
    _compare_dense(fit, reads, sigma, omega, dt=np.diff(times))


def test_masks_match_dense_gls_on_unmasked_subset():
    rng = np.random.default_rng(4)
    reads, sigma = _random_case(rng)
    mask = rng.uniform(size=reads.shape) < 0.15
    reads[5, 7] = np.nan
    omega = rng.uniform(0.6, 1.0, reads.shape[0] - 1)
    fit = extract_fluxes(reads, sigma, omega, mask=mask)
    _compare_dense(fit, reads, sigma, omega, mask=mask)
    assert fit.flags[7] & Flag.NONFINITE_READ


def test_read_rules_an_infinite_read_is_not_saturation():
    """Each pixel's usable reads: an infinite read drops only its two differences (it is not
    the start of saturation, even above the level); a finite read at the level drops itself and
    every later read; a masked read drops its two differences."""
    reads = np.tile(np.arange(12.0)[:, None] * 100.0, (1, 5))
    reads[4, 0] = np.inf
    reads[4, 1] = -np.inf
    reads[4, 2] = np.nan
    reads[6:, 3] += 5e4  # reaches the level at read 6
    mask = np.zeros(reads.shape, dtype=bool)
    mask[4, 4] = True
    fit = extract_fluxes(reads, 10.0, np.ones(11), mask=mask, saturation=5e4)
    np.testing.assert_array_equal(fit.n_diff, [9, 9, 9, 5, 9])
    nonfinite, saturated, masked = Flag.NONFINITE_READ, Flag.SATURATED, Flag.MASKED_READ
    np.testing.assert_array_equal(fit.flags, [nonfinite, nonfinite, nonfinite, saturated, masked])
    np.testing.assert_allclose(fit.flux, 100.0, rtol=1e-12)


def test_omega_one_equals_fit_constant():
    rng = np.random.default_rng(5)
    reads, sigma = _random_case(rng, n_pix=200, n_reads=30)
    a = fit_constant(reads, sigma)
    b = extract_fluxes(reads, sigma, np.ones(29))
    for name in ("flux", "flux_var", "chi2", "n_diff", "flags"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_pixel_shape_gain_and_dtypes():
    rng = np.random.default_rng(6)
    sim = simulate_ramps(rng.uniform(10, 300, (4, 5)), 12.0, n_reads=10, gain=2.0, rng=rng)
    fit_dn = fit_constant(sim.reads, 12.0 / 2.0, gain=2.0)
    fit_e = fit_constant(sim.reads * 2.0, 12.0)
    assert fit_dn.flux.shape == (4, 5)
    np.testing.assert_allclose(fit_dn.flux * 2.0, fit_e.flux, rtol=1e-12)
    np.testing.assert_allclose(fit_dn.flux_var * 4.0, fit_e.flux_var, rtol=1e-12)
    np.testing.assert_allclose(fit_dn.chi2, fit_e.chi2, rtol=1e-12)
    big_endian = (sim.reads * 2.0).astype(">f8")
    np.testing.assert_array_equal(fit_constant(big_endian, 12.0).flux, fit_e.flux)
    as_float32 = fit_constant((sim.reads * 2.0).astype(np.float32), 12.0)
    np.testing.assert_allclose(as_float32.flux, fit_e.flux, rtol=1e-4, atol=1e-3)


def test_one_number_calibration_gives_the_bits_of_a_per_pixel_map():
    """A calibration that is one number reaches the kernels as one value (no chip-sized map of
    it), with the same results, bit for bit, as the same number given for every pixel."""
    from pyapred import find_jumps
    from pyapred.solver import api

    rng = np.random.default_rng(8)
    shape = (6, 50)
    sim = simulate_ramps(rng.uniform(0, 3000, shape), 12.0, n_reads=12, gain=1.9, rng=rng)
    reads = sim.reads.copy()
    reads[3, 0, 0] = np.nan
    reads[6:, 1, 1] += 5000.0  # a jump
    omega = rng.uniform(0.5, 1.5, (2, 11))
    groups = rng.integers(0, 2, shape)
    mask = rng.random(reads.shape) < 0.05
    one = dict(gain=1.9, saturation=20000.0)
    maps = dict(gain=np.full(shape, 1.9), saturation=np.full(shape, 20000.0))
    _, _, _, sigma, gain, saturation = api._pixel_inputs(reads, 12.0, 1.9, None, 20000.0)
    assert sigma.shape == gain.shape == saturation.shape == (1,)
    _, _, _, sigma, gain, saturation = api._pixel_inputs(reads, 12.0, maps["gain"], None, None)
    assert sigma.shape == saturation.shape == (1,) and gain.shape == (300,)
    calls = [
        lambda noise, cal: extract_fluxes(reads, noise, omega, groups=groups, mask=mask, **cal),
        lambda noise, cal: fit_constant(reads, noise, **cal),
        lambda noise, cal: fit_equal_weight(reads, noise, **cal),
        lambda noise, cal: find_jumps(reads, noise, omega=omega, groups=groups, **cal).flux,
    ]
    for call in calls:
        expected = call(np.full(shape, 12.0), maps)
        for noise, cal in ((12.0, one), (12.0, maps), (np.full(shape, 12.0), one)):
            got = call(noise, cal)
            for name in ("flux", "flux_var", "chi2", "n_diff", "flags"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), name)
    jumps = find_jumps(reads, 12.0, omega=omega, groups=groups, **one)
    assert jumps.jump_index.shape[0] >= 1
    with_map = find_jumps(reads, 12.0, omega=omega, groups=groups, **maps)
    np.testing.assert_array_equal(jumps.jump_charge, with_map.jump_charge)
    np.testing.assert_array_equal(jumps.diff_mask_bits, with_map.diff_mask_bits)


def test_saturation_mid_ramp_masks_the_rest():
    rng = np.random.default_rng(7)
    sim = simulate_ramps(np.full(50, 3000.0), 15.0, n_reads=20, saturation=30000.0, rng=rng)
    fit = fit_constant(sim.reads, 15.0, saturation=30000.0)
    # Reads at/after the first saturated read are unusable; ~10 reads remain.
    first_bad = np.argmax(sim.saturated, axis=0)
    np.testing.assert_array_equal(fit.n_diff, first_bad - 1)
    assert np.all(fit.flags & Flag.SATURATED)
    z = (fit.flux - 3000.0) / np.sqrt(fit.flux_var)
    assert np.all(np.abs(z) < 5)
    # Without the saturation level the clipped reads bias the flux low.
    assert np.mean(fit_constant(sim.reads, 15.0).flux) < 2000.0


def test_fully_masked_pixel_is_flagged_and_isolated():
    rng = np.random.default_rng(8)
    sim = simulate_ramps(np.full(6, 100.0), 10.0, n_reads=8, rng=rng)
    mask = np.zeros(sim.reads.shape, bool)
    mask[:, 2] = True
    mask[1:, 4] = True  # a single usable read: no difference
    reads = sim.reads.copy()
    reads[:, 3] = np.nan
    fit = fit_constant(reads, 10.0, mask=mask)
    for p in (2, 3, 4):
        assert np.isnan(fit.flux[p]) and fit.flags[p] & Flag.TOO_FEW_DIFFS
        assert fit.n_diff[p] == 0
    good = [0, 1, 5]
    assert np.all(np.isfinite(fit.flux[good])) and not np.any(fit.flags[good])
    np.testing.assert_array_equal(fit.flux[good], fit_constant(sim.reads[:, good], 10.0).flux)


@pytest.mark.parametrize("flux", [1.0, 10.0, 100.0, 1000.0])
def test_constant_data_z_scores_are_unbiased_and_unit(flux):
    rng = np.random.default_rng(int(flux) + 11)
    sigma = rng.uniform(14, 24, 20_000)
    sim = simulate_ramps(np.full(20_000, flux), sigma, n_reads=47, rng=rng)
    fit = fit_constant(sim.reads, sigma)
    z = (fit.flux - flux) / np.sqrt(fit.flux_var)
    assert abs(np.median(z)) < 0.03
    assert 0.97 <= np.std(z) <= 1.03


def test_equal_weight_matches_rauscher_variance_and_is_unbiased():
    rng = np.random.default_rng(9)
    n_reads, flux, sigma = 33, 200.0, 18.0
    sim = simulate_ramps(np.full(20_000, flux), sigma, n_reads=n_reads, rng=rng)
    fit = fit_equal_weight(sim.reads, sigma)
    N = n_reads
    a = np.maximum(fit.flux, 0)
    rauscher = (
        12 * (N - 1) / (N * (N + 1)) * sigma**2 + 6 * (N**2 + 1) * (N - 1) / (5 * N * (N + 1)) * a
    ) / (N - 1) ** 2
    np.testing.assert_allclose(fit.flux_var, rauscher, rtol=1e-10)
    z = (fit.flux - flux) / np.sqrt(fit.flux_var)
    assert abs(np.median(z)) < 0.03 and 0.97 <= np.std(z) <= 1.03
    # Optimal weighting wins at high flux.
    assert np.median(fit_constant(sim.reads, sigma).flux_var) < np.median(fit.flux_var)


def test_equal_weight_in_dn_with_a_gain_is_the_fit_in_electrons():
    """Reads in DN with gain g fit as the same reads times g in electrons with gain 1: flux
    times g, flux_var times g^2, the same chi2. The read noise and the saturation level are in
    the reads' units (DN here, e- there): the level cuts the same reads in both."""
    rng = np.random.default_rng(12)
    g, sigma_e = 1.9, 12.0
    sim = simulate_ramps(rng.uniform(10, 3000, 60), sigma_e, n_reads=12, gain=g, rng=rng)
    level = float(np.median(sim.reads[-1]))  # DN: about half the pixels saturate in the ramp
    in_dn = fit_equal_weight(sim.reads, sigma_e / g, gain=g, saturation=level)
    in_e = fit_equal_weight(sim.reads * g, sigma_e, saturation=level * g)
    saturated = (in_e.flags & Flag.SATURATED).astype(bool)
    assert 10 < saturated.sum() < 50 and np.any(in_e.n_diff[saturated] >= 2)
    np.testing.assert_array_equal(in_dn.n_diff, in_e.n_diff)
    np.testing.assert_array_equal(in_dn.flags, in_e.flags)
    assert np.isfinite(in_e.flux).sum() >= 40
    np.testing.assert_allclose(in_dn.flux * g, in_e.flux, rtol=1e-10)
    np.testing.assert_allclose(in_dn.flux_var * g**2, in_e.flux_var, rtol=1e-10)
    np.testing.assert_allclose(in_dn.chi2, in_e.chi2, rtol=1e-10)


def test_equal_weight_with_masks_is_the_subset_slope():
    rng = np.random.default_rng(10)
    sim = simulate_ramps(rng.uniform(50, 500, 30), 15.0, n_reads=12, rng=rng)
    mask = rng.uniform(size=sim.reads.shape) < 0.2
    fit = fit_equal_weight(sim.reads, 15.0, mask=mask)
    for p in range(30):
        keep = ~mask[:, p]
        if keep.sum() < 3:
            continue
        slope = np.polyfit(np.arange(12)[keep], sim.reads[keep, p], 1)[0]
        np.testing.assert_allclose(fit.flux[p], slope, rtol=1e-9)


def test_equal_weight_read_rules_match_the_optimal_fit():
    """The equal-weight slope drops the same reads as every other fit: an infinite read is a bad
    read (not the start of saturation, with or without a level), a finite read at the level
    starts saturation, masked or not."""
    reads = np.tile(np.arange(12.0)[:, None] * 100.0, (1, 5))
    reads[4, 0] = np.inf
    reads[4, 1] = -np.inf
    reads[6:, 2] += 5e4
    reads[6:, 3] += 5e4
    mask = np.zeros(reads.shape, dtype=bool)
    mask[6, 3] = True
    for saturation in (None, 5e4):
        fit = fit_equal_weight(reads, 10.0, mask=mask, saturation=saturation)
        nonfinite, saturated, masked = Flag.NONFINITE_READ, Flag.SATURATED, Flag.MASKED_READ
        if saturation is None:
            np.testing.assert_array_equal(fit.flags[:2], [nonfinite, nonfinite])
            np.testing.assert_array_equal(fit.n_diff[:2], [9, 9])
            continue
        np.testing.assert_array_equal(
            fit.flags, [nonfinite, nonfinite, saturated, saturated | masked, 0]
        )
        np.testing.assert_array_equal(fit.n_diff, [9, 9, 5, 5, 11])
        np.testing.assert_allclose(fit.flux, 100.0, rtol=1e-12)


def test_one_compiled_extraction_whatever_the_reads_layout():
    """C-ordered, Fortran-ordered and strided (n_reads, n_pix) reads of one dtype share one
    compiled kernel (the extraction compiles for tens of seconds per variant), with the same
    fluxes. The pipeline's redo of the pixels with a jump takes ``reads[:, rows, cols]``, which
    NumPy returns in Fortran order."""
    from pyapred.solver import _numpy

    rng = np.random.default_rng(12)
    cube = np.cumsum(rng.uniform(50, 150, (9, 4, 30)), axis=0).astype(np.float32)
    reads = cube.reshape(9, -1)
    omega = np.linspace(1.0, 0.8, 8)
    first = extract_fluxes(reads, 10.0, omega).flux
    compiled = len(_numpy.extract_kernel.signatures)
    rows, cols = np.array([0, 2, 3]), np.array([5, 1, 29])
    picked = cube[:, rows, cols]
    assert picked.flags.f_contiguous and not picked.flags.c_contiguous
    np.testing.assert_array_equal(extract_fluxes(picked, 10.0, omega).flux, first[rows * 30 + cols])
    np.testing.assert_array_equal(extract_fluxes(np.asfortranarray(reads), 10.0, omega).flux, first)
    np.testing.assert_array_equal(extract_fluxes(reads[:, ::3], 10.0, omega).flux, first[::3])
    # Read-only reads and masks (a memory-mapped cube, a broadcast mask) share it too.
    frozen = reads.copy()
    frozen.flags.writeable = False
    no_mask = np.broadcast_to(False, reads.shape)
    np.testing.assert_array_equal(extract_fluxes(frozen, 10.0, omega, mask=no_mask).flux, first)
    assert len(_numpy.extract_kernel.signatures) == compiled


def test_one_compiled_difference_layout_for_read_only_inputs():
    """fit_omega's differences: writeable or read-only reads and masks share one compiled
    kernel."""
    from pyapred.solver import _numpy

    rng = np.random.default_rng(13)
    reads = np.cumsum(rng.uniform(50, 150, (9, 2, 30)), axis=0)
    mask = np.zeros(reads.shape, bool)
    first = fit_omega(reads, 10.0, mask=mask)
    compiled = len(_numpy._prepare_diffs_flat.signatures)
    frozen = reads.copy()
    frozen.flags.writeable = False
    again = fit_omega(frozen, 10.0, mask=np.broadcast_to(False, reads.shape))
    np.testing.assert_array_equal(again.omega, first.omega)
    assert len(_numpy._prepare_diffs_flat.signatures) == compiled


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reads": np.float64(3.0)}, "dimensions"),
        ({"reads": np.zeros((2, 4))}, "n_reads >= 3"),
        ({"read_noise": 0.0}, "read_noise"),
        ({"read_noise": np.nan}, "read_noise"),
        ({"read_noise": np.ones(3)}, "read_noise"),
        ({"gain": np.inf}, "gain"),
        ({"mask": np.zeros((6, 4), int)}, "mask"),
        ({"mask": np.zeros((5, 4), bool)}, "mask"),
        ({"read_times": np.arange(5.0)}, "read_times"),
        ({"read_times": np.array([0, 1, 1, 2, 3, 4.0])}, "read_times"),
        ({"reads": np.zeros((6, 4), complex)}, "reads"),
        ({"reads": np.ma.masked_array(np.zeros((6, 4)), np.eye(6, 4, dtype=bool))}, "mask="),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    args = {"reads": np.zeros((6, 4)), "read_noise": 10.0} | kwargs
    reads = args.pop("reads")
    read_noise = args.pop("read_noise")
    with pytest.raises(ValueError, match=match):
        fit_constant(reads, read_noise, **args)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(12)
    sim = simulate_ramps(rng.uniform(10, 300, 20), 10.0, n_reads=10, rng=rng)
    reads = sim.reads.copy()
    reads[3, 4] = np.nan
    before = reads.copy()
    mask = np.zeros(reads.shape, bool)
    extract_fluxes(reads, 10.0, np.ones(9), mask=mask)
    np.testing.assert_array_equal(reads, before)
    assert not mask.any()


@pytest.mark.parametrize("layout", ["one", "two", "eight", "island", "every"])
def test_extract_by_groups_equals_each_group_alone(layout):
    # Every pixel's fit is its own, so the pixels of each group extracted alone give the same
    # bits, whatever the groups within the kernels' blocks of 1024 pixels: one group a block
    # (one omega element read per difference), two, seven or eight, a group inside another
    # (a block that starts and ends in one group), or a different group at almost every pixel
    # (runs of one pixel); each run of one group within a block reads its omega element once.
    from pyapred import find_jumps

    rng = np.random.default_rng(len(layout))
    n_reads, n_pix, n_groups = 12, 3000, 4
    omega = rng.uniform(0.5, 1.5, (n_groups, n_reads - 1))
    omega[2, 3] = np.nan  # this element masks its difference
    run = {"one": 3000, "two": 700, "eight": 150, "island": 3000, "every": 1}[layout]
    groups = (np.arange(n_pix) // run) % n_groups
    if layout == "island":
        groups[[*range(300, 700), *range(1500, 1510)]] = 2
    elif layout == "every":
        groups = rng.integers(0, n_groups, n_pix)
    sim = simulate_ramps(rng.uniform(0, 400, n_pix), 10.0, n_reads=n_reads, rng=rng)
    whole = extract_fluxes(sim.reads, 10.0, omega, groups=groups)
    whole_jumps = find_jumps(sim.reads, 10.0, omega=omega, groups=groups)
    for g in np.unique(groups):
        at = groups == g
        alone = extract_fluxes(sim.reads[:, at], 10.0, omega[g])
        for name in ("flux", "flux_var", "chi2", "n_diff", "flags"):
            np.testing.assert_array_equal(getattr(whole, name)[at], getattr(alone, name))
        alone_jumps = find_jumps(sim.reads[:, at], 10.0, omega=omega[g])
        np.testing.assert_array_equal(whole_jumps.flux.flux[at], alone_jumps.flux.flux)
    assert np.all(whole.n_diff[groups == 2] == n_reads - 2)


def test_extract_with_groups_and_nonfinite_omega():
    rng = np.random.default_rng(13)
    omega = np.vstack([np.ones(9), rng.uniform(0.5, 1, 9)])
    omega[1, 4] = np.nan  # no data for this element: that difference is skipped
    sim = simulate_ramps(np.full(10, 200.0), 10.0, n_reads=10, rng=rng)
    groups = np.array([0, 1] * 5)
    fit = extract_fluxes(sim.reads, 10.0, omega, groups=groups)
    assert np.all(fit.n_diff[groups == 0] == 9) and np.all(fit.n_diff[groups == 1] == 8)
    single = extract_fluxes(sim.reads[:, 1::2], 10.0, omega[1])
    np.testing.assert_array_equal(fit.flux[1::2], single.flux)
    with pytest.raises(ValueError, match="groups"):
        extract_fluxes(sim.reads, 10.0, omega)
    with pytest.raises(ValueError, match="groups"):
        extract_fluxes(sim.reads, 10.0, omega, groups=groups + 1)
