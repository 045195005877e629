"""Stage 2: the model choice (``choose_models``) with and without the 1/f nuisance offsets, and
the chromatic model (``FitOptions.chromatic``, ``choose_chromatic``)."""

import dataclasses

import numpy as np
import pytest

from pyapred import Flag, fit_constant, fit_omega, simulate_ramps
from pyapred.exposure import FitOptions
from pyapred.exposure.fibers import (
    MODEL_BORROWED,
    MODEL_CONSTANT,
    MODEL_TIME_VARIABLE,
    _fit_reads,
    _significance,
    choose_models,
    segment_contrast,
)

K, P, G = 8, 120, 5
OMEGA = 1.0 - 0.3 * np.exp(-0.5 * ((np.arange(K) - 4.0) / 1.5) ** 2)


def _fits(seed=0):
    rng = np.random.default_rng(seed)
    flux = rng.uniform(400, 3000, (G, P))
    reads = simulate_ramps(flux, 10.0, omega=OMEGA, rng=rng).reads  # (N, G, P)
    segments = np.broadcast_to(np.arange(P) % 6, (G, P))
    fit = fit_omega(reads, 10.0, ref_index=0, segments=segments)
    return fit, fit_constant(reads, 10.0)


def _choose(fit, constant, **options):
    return choose_models(fit, constant, np.full(G, P), np.zeros(G, bool),
                         FitOptions(min_fit_pixels=10, **options))  # fmt: skip


def test_p_values_are_scipy_stats_chi2_survival_to_the_bit():
    # choose_models calls scipy.special.chdtrc (scipy.stats costs a third of a second to import):
    # the same numbers as scipy.stats.chi2.sf, a negative statistic (a time-variable fit with a
    # larger chi2 than the constant one) included, where the survival function is 1.
    from scipy.stats import chi2

    fit, constant = _fits()
    plain = dataclasses.replace(fit, offsets=None)
    worse = dataclasses.replace(plain, chi2=constant.chi2 + 1.0)  # every delta chi2 negative
    for each in (plain, worse):
        fits = _choose(each, constant)
        free = np.sum(np.isfinite(each.omega), axis=1) - 1
        np.testing.assert_array_equal(fits.p_value, chi2.sf(fits.delta_chi2, free))
    assert np.all(fits.delta_chi2 < 0) and np.all(fits.p_value == 1.0)
    for g in range(G):
        stat, p_value = _significance(fit.omega[g], fit.omega_cov[g], 0)
        assert p_value == chi2.sf(stat, K - 1)


def test_nuisance_decides_on_the_wald_statistic():
    fit, constant = _fits()
    fits = _choose(fit, constant)
    for g in range(G):
        stat, p_value = _significance(fit.omega[g], fit.omega_cov[g], 0)
        assert fits.delta_chi2[g] == stat and np.isclose(fits.p_value[g], p_value, rtol=1e-9)
    assert np.all(fits.model == MODEL_TIME_VARIABLE)
    # Without the offsets the statistic is the chi2 difference of the two fits.
    plain = _choose(dataclasses.replace(fit, offsets=None), constant)
    in_fit = ~(fit.flags & Flag.NOT_IN_OMEGA_FIT).astype(bool)
    want = np.where(in_fit, constant.chi2 - fit.chi2, 0.0).sum(axis=1)
    np.testing.assert_allclose(plain.delta_chi2, want)


def test_a_nuisance_fit_that_did_not_converge_borrows():
    fit, constant = _fits(1)
    stuck = dataclasses.replace(
        fit,
        converged=np.array([True, False, True, True, True]),
        group_flags=fit.group_flags | np.array([0, Flag.NOT_CONVERGED, 0, 0, 0]),
    )
    fits = _choose(stuck, constant, model="time-variable")
    assert fits.model[1] == MODEL_BORROWED and not fits.bright[1]
    assert fits.flags[1] & Flag.BORROWED_OMEGA and not fits.flags[1] & Flag.FALLBACK_CONSTANT
    assert fits.flags[1] & Flag.NOT_CONVERGED
    # Without the offsets the same fiber falls back to the constant model.
    plain = _choose(dataclasses.replace(stuck, offsets=None), constant, model="time-variable")
    assert plain.model[1] == 0 and plain.flags[1] & Flag.FALLBACK_CONSTANT


def test_stable_sky_p_values_stay_calibrated_with_the_jump_search():
    """The omega fit's jump search (4.5 sigma) masks cosmic rays that the first pass (8 sigma)
    left to the constant fit: compared on different data, the constant model lost chi2 to the
    jumps and a stable sky gave 34 of 703 bright fibers p < 0.01 (5 below 1e-3). Compared on
    the pixels that both fits saw alike: 14 (1 below 1e-3); 7 expected."""
    from pyapred.exposure import ChipExposure, run_exposure
    from pyapred.simulate import simulate_exposure

    p_values = []
    for seed in (11, 12, 13):
        sim = simulate_exposure("stable", seed=seed, n_fibers=300, n_columns=256, ref_columns=0,
                                n_reads=33, chips=("R",))  # fmt: skip
        chip = sim.chips["R"]
        exposure = ChipExposure("R", chip.reads, chip.read_noise, gain=chip.gain,
                                saturation=chip.saturation, read_times=sim.read_times)  # fmt: skip
        fibers = run_exposure({"R": exposure}, {"R": chip.traces}, FitOptions()).fibers["R"]
        assert fibers.fit.jump_mask[fibers.bright].any()  # the search found jumps to leave out
        p_values.append(fibers.p_value[fibers.bright])
    p_values = np.concatenate(p_values)
    assert p_values.size > 600
    assert np.mean(p_values < 0.01) <= 0.025
    assert np.sum(p_values < 1e-3) <= 2


def test_pixels_with_a_jump_leave_the_comparison_unless_all_of_a_fiber_s_have_one():
    fit, constant = _fits(1)
    fit = dataclasses.replace(fit, offsets=None)  # the chi2 comparison, not the Wald statistic
    plain = _choose(fit, constant)
    jumps = np.zeros(fit.flux.shape + (K,), bool)
    jumps[0, :10, 2] = True  # ten pixels of fiber 0
    jumps[1, :, 5] = True  # every pixel of fiber 1
    chosen = _choose(dataclasses.replace(fit, jump_mask=jumps), constant)
    left = np.arange(10, P)
    delta = np.sum(constant.chi2[0, left] - fit.chi2[0, left])
    np.testing.assert_allclose(chosen.delta_chi2[0], delta, rtol=1e-12)
    # Fiber 1 would compare nothing (p = 1 whatever its omega): it compares all its pixels.
    np.testing.assert_array_equal(chosen.delta_chi2[1:], plain.delta_chi2[1:])
    assert chosen.p_value[1] < 1e-6


def test_segment_contrast_by_hand():
    """chi2 about the weighted segment means, per degree of freedom, less 1."""
    flux = np.array([[1.0, 3.0, 5.0, 5.0], [0.0, 3.0, 9.0, np.nan]])
    var = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 1.0, 1.0]])
    segments = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    valid = np.array([[True] * 4, [True, True, True, True]])
    # Group 0: means 2 and 5, chi2 2 over 4 - 2 pixels: 0. Group 1: the NaN pixel is left out;
    # segment 0's weighted mean is (0 + 3 / 2) / 1.5 = 1, chi2 1 + 4 / 2 = 3 over 3 - 2: 2.
    np.testing.assert_allclose(segment_contrast(flux, var, segments, valid), [0.0, 2.0])
    # Padding, a non-positive variance and a segment of one pixel do not count; no segment of
    # two pixels left: NaN.
    valid[0, 1] = valid[0, 3] = False
    var[1, 0] = 0.0
    assert np.all(np.isnan(segment_contrast(flux, var, segments, valid)))


def test_segment_contrast_is_about_0_for_noise_and_grows_with_the_contrast():
    rng = np.random.default_rng(5)
    segments = np.broadcast_to(np.arange(400) // 20, (2, 400))
    mean = rng.uniform(100, 200, 20)[segments[0]]
    var = np.full((2, 400), 4.0)
    pattern = np.array([np.zeros(400), 2.0 * np.sin(np.arange(400))])  # contrast in group 1
    flux = mean + pattern + rng.normal(0, 2.0, (2, 400))
    contrast = segment_contrast(flux, var, segments, np.ones((2, 400), bool))
    assert abs(contrast[0]) < 3 * np.sqrt(2 / 380)  # chi2 / dof - 1 of noise alone
    assert contrast[1] == pytest.approx(0.5, abs=0.2)  # mean of (2 sin)^2 / 4


def test_a_significant_change_below_the_amplitude_threshold_keeps_the_constant_model():
    """The paper's two tests: a significant p-value and an amplitude of at least
    ``amplitude_threshold``; the second alone turns a significant fiber constant."""
    fit, constant = _fits()
    plain = dataclasses.replace(fit, offsets=None)
    base = _choose(plain, constant, amplitude_threshold=0.0)
    assert np.all(base.p_value < 1e-3) and np.all(base.model == MODEL_TIME_VARIABLE)
    above = _choose(plain, constant, amplitude_threshold=float(base.amplitude.max()) * 1.01)
    assert np.all(above.model == MODEL_CONSTANT)
    np.testing.assert_array_equal(above.p_value, base.p_value)  # the same test, another choice


def test_faint_fibers_borrow_only_an_omega_that_passes_both_tests():
    fit, constant = _fits()
    plain = dataclasses.replace(fit, offsets=None)
    n_pix = np.array([P, P, P, 3, 3])  # the last two are faint (fewer than min_fit_pixels)

    def choose(**options):
        return choose_models(plain, constant, n_pix, np.zeros(G, bool),
                             FitOptions(min_fit_pixels=10, **options))  # fmt: skip

    lend = choose(amplitude_threshold=0.0)
    assert np.all(lend.model[3:] == MODEL_BORROWED)
    assert np.all(lend.flags[3:] & Flag.BORROWED_OMEGA)
    keep = choose(amplitude_threshold=10.0)
    assert np.all(keep.model == MODEL_CONSTANT) and not np.any(keep.flags & Flag.BORROWED_OMEGA)


def test_fibers_whose_omega_error_is_too_large_are_not_bright_and_lend_nothing():
    """``max_omega_error`` decides brightness; with no bright fiber there is no omega to lend,
    even with the time-variable model forced (no fiber labelled borrowed, nor flagged)."""
    fit, constant = _fits()
    plain = dataclasses.replace(fit, offsets=None)
    for model in ("auto", "time-variable"):
        fits = _choose(plain, constant, model=model, max_omega_error=1e-9)
        assert not fits.bright.any()
        assert np.all(fits.model == MODEL_CONSTANT)
        assert not np.any(fits.flags & Flag.BORROWED_OMEGA)
    assert _choose(plain, constant).bright.all()


def test_excluded_and_faint_fibers_never_fall_back():
    """``FALLBACK_CONSTANT`` marks a fiber whose own fit failed; an excluded (FPI) fiber keeps
    the constant model without it and a faint one borrows, whatever their groups' flags say."""
    fit, constant = _fits()
    stuck = np.array([Flag.NOT_CONVERGED, Flag.NOT_CONVERGED, 0, 0, 0])
    plain = dataclasses.replace(fit, offsets=None, group_flags=fit.group_flags | stuck)
    n_pix = np.array([P, 3, P, P, P])
    excluded = np.array([True, False, False, False, False])
    fits = choose_models(plain, constant, n_pix, excluded, FitOptions(min_fit_pixels=10))
    assert not np.any(fits.flags[:2] & Flag.FALLBACK_CONSTANT)
    assert fits.model[0] == MODEL_CONSTANT and fits.model[1] == MODEL_BORROWED
    # A fitted fiber that failed does fall back.
    failed = dataclasses.replace(plain, group_flags=fit.group_flags | np.roll(stuck, 2))
    fits = choose_models(failed, constant, np.full(G, P), np.zeros(G, bool),
                         FitOptions(min_fit_pixels=10))  # fmt: skip
    assert fits.flags[2] & Flag.FALLBACK_CONSTANT and fits.model[2] == MODEL_CONSTANT


def test_fibers_fitted_in_batches_give_the_same_bits(tmp_path, monkeypatch):
    from pyapred.exposure import fibers, run_exposure
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=4, n_fibers=8, n_columns=256, ref_columns=0,
                            n_reads=7, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    options = FitOptions(min_fit_pixels=10)
    monkeypatch.setattr(fibers, "FIT_BATCH_BYTES", 2**40)  # every fiber in one call
    whole = run_exposure(paths["apz"], paths["traces"], options).fibers["R"]
    calls = []
    fit_omega = fibers.fit_omega
    monkeypatch.setattr(fibers, "fit_omega", lambda reads, *a, **k: calls.append(reads.shape[1])
                        or fit_omega(reads, *a, **k))  # fmt: skip
    monkeypatch.setattr(fibers, "FIT_BATCH_BYTES", 1)  # one fiber per batch
    batched = run_exposure(paths["apz"], paths["traces"], options).fibers["R"]
    assert len(calls) >= 4 and set(calls) == {1}
    for name, value in whole.fit.__dict__.items():
        np.testing.assert_array_equal(getattr(batched.fit, name), value, err_msg=name)
    for name in ("omega", "omega_cov", "model", "flags", "delta_chi2", "pixel_chi2_constant"):
        np.testing.assert_array_equal(getattr(batched, name), getattr(whole, name), err_msg=name)


def test_nuisance_fibers_fitted_in_batches_give_the_same_result(tmp_path, monkeypatch):
    from pyapred.exposure import fibers, run_exposure
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=3, n_fibers=8, n_columns=256, ref_columns=0,
                            n_reads=7, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    options = FitOptions(correct_1f="nuisance", segment_columns=32, min_fit_pixels=10)
    whole = run_exposure(paths["apz"], paths["traces"], options).fibers["R"]
    monkeypatch.setattr(fibers, "NUISANCE_BATCH_BYTES", 1)  # one fiber per batch
    batched = run_exposure(paths["apz"], paths["traces"], options).fibers["R"]
    assert whole.fit.offsets.shape[1] >= 2
    for name in ("omega_fit", "omega_cov", "delta_chi2", "model", "flags"):
        np.testing.assert_allclose(getattr(batched, name), getattr(whole, name), rtol=1e-10,
                                   atol=1e-14, err_msg=name)  # fmt: skip
    np.testing.assert_allclose(batched.fit.offsets, whole.fit.offsets, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(batched.offset_rms(), whole.offset_rms(), rtol=1e-10)


def test_nuisance_fibers_without_segment_contrast_are_not_fitted(tmp_path, monkeypatch):
    """With the nuisance term a fiber whose pixels show no flux contrast within their segments
    has no finite best omega (docs/noise.md): it is flagged, not fitted, and handled as a faint
    fiber; the other fibers are fitted as without the screen."""
    from pyapred.exposure import fibers, run_exposure
    from pyapred.io import read_product
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=18, n_fibers=30, n_columns=256, ref_columns=0,
                            n_reads=10, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    options = FitOptions(correct_1f="nuisance", segment_columns=32, min_fit_pixels=10)
    seen = []
    contrasts = fibers._segment_contrasts

    def spy(*args):
        seen.append((args[4], contrasts(*args)))  # (todo, contrast)
        return seen[-1][1]

    monkeypatch.setattr(fibers, "_segment_contrasts", spy)
    result = run_exposure(paths["apz"], paths["traces"], options, product=tmp_path / "p.fits")
    fits = result.fibers["R"]
    ((todo, contrast),) = seen
    low = (fits.flags & Flag.LOW_SEGMENT_CONTRAST).astype(bool)
    # NaN (no pixel shares a segment) is low too: the screen is not (contrast >= MIN).
    expected = todo[~(contrast >= fibers.MIN_SEGMENT_CONTRAST)]
    np.testing.assert_array_equal(np.flatnonzero(low), expected)
    assert low.any() and not low[todo].all()
    assert np.all(fits.fit.n_iter[low] == 0)
    assert np.all(fits.fit.group_flags[low] & Flag.EMPTY_GROUP)
    assert not np.any(fits.flags[low] & (Flag.FALLBACK_CONSTANT | Flag.NOT_CONVERGED))
    assert not fits.bright[low].any() and set(fits.model[low]) == {MODEL_BORROWED}
    assert result.summary()["fibers"]["R"]["low_segment_contrast"] == low.sum()
    assert not result.problems()
    # The flag reaches the product, and reads back.
    assert np.array_equal(read_product(tmp_path / "p.fits").fibers["R"].flags, fits.flags)
    # Without the screen the same fibers are fitted; the others' fits and every model are
    # unchanged.
    monkeypatch.setattr(fibers, "MIN_SEGMENT_CONTRAST", -np.inf)
    whole = run_exposure(paths["apz"], paths["traces"], options).fibers["R"]
    assert np.all(whole.fit.n_iter[low] > 0) and not np.any(whole.flags & Flag.LOW_SEGMENT_CONTRAST)
    kept = np.setdiff1d(todo, np.flatnonzero(low))
    np.testing.assert_allclose(fits.omega_fit[kept], whole.omega_fit[kept], rtol=1e-10)
    np.testing.assert_array_equal(fits.model, whole.model)
    # Every fiber screened: nothing fitted, nothing bright to borrow from, and still counted.
    monkeypatch.setattr(fibers, "MIN_SEGMENT_CONTRAST", np.inf)
    none = run_exposure(paths["apz"], paths["traces"], options)
    flagged = none.fibers["R"].flags & Flag.LOW_SEGMENT_CONTRAST
    assert np.count_nonzero(flagged) == todo.size and not none.fibers["R"].bright.any()
    assert set(none.fibers["R"].model) == {MODEL_CONSTANT}
    assert none.summary()["fibers"]["R"]["low_segment_contrast"] == todo.size
    # A NaN contrast (no two pixels of the fiber in one segment) is low: the fiber the screen
    # passed most clearly, given NaN, is flagged, not fitted, and borrows.
    monkeypatch.undo()
    nan_fiber = todo[np.nanargmax(contrast)]
    assert fits.fit.n_iter[nan_fiber] > 0 and fits.model[nan_fiber] != MODEL_BORROWED

    def nan_for_one(*args):
        values = np.array(contrasts(*args), dtype=np.float64)
        values[args[4] == nan_fiber] = np.nan
        return values

    monkeypatch.setattr(fibers, "_segment_contrasts", nan_for_one)
    fits = run_exposure(paths["apz"], paths["traces"], options).fibers["R"]
    low = (fits.flags & Flag.LOW_SEGMENT_CONTRAST).astype(bool)
    assert low[nan_fiber] and fits.fit.n_iter[nan_fiber] == 0
    assert fits.fit.group_flags[nan_fiber] & Flag.EMPTY_GROUP
    assert not fits.bright[nan_fiber] and fits.model[nan_fiber] == MODEL_BORROWED
    np.testing.assert_array_equal(np.flatnonzero(low), np.union1d(expected, [nan_fiber]))


# --------------------------------------------------------------------------------------------
# The chromatic model (FitOptions.chromatic)
# --------------------------------------------------------------------------------------------
def test_seeing_change_gets_the_chromatic_model_with_calibrated_gamma(seeing_change):
    from pyapred.exposure import MODEL_CHROMATIC

    sim, result = seeing_change
    fits = result.fibers["joint"]
    chosen = fits.model == MODEL_CHROMATIC
    assert chosen.sum() >= 0.5 * fits.bright.sum()
    assert fits.coordinate_span == (1.5145, 1.6965)
    omega, gamma = sim.chromatic_truth(fits.ref_index)
    free = np.arange(gamma.shape[1]) != fits.ref_index
    tried = fits.bright & np.isfinite(fits.chromatic.p_value)
    z = (fits.chromatic.gamma - gamma)[tried][:, free] / fits.chromatic.gamma_error()[tried][
        :, free
    ]
    assert abs(np.std(z) - 1.0) < 0.15
    # The omega used for extraction is the chromatic fit's at the middle of the span, mean 1.
    np.testing.assert_allclose(fits.omega[chosen].mean(axis=1), 1.0)
    # truth_metrics scores a chromatic fiber's own omega, not its grey fit's colour average:
    # z std 1.94 -> 1.31 here (1.12 over the chromatic fibers; the grey-fitted bright fibers,
    # 1.51, estimate their colours' average, not the middle value the truth holds).
    from pyapred.exposure import truth_metrics

    assert truth_metrics(result, sim.omega, {})["omega"]["joint"]["z_std"] < 1.45
    summary = result.summary()["fibers"]["joint"]
    assert summary["chromatic"]["chosen"] == int(chosen.sum())
    assert summary["models"]["time_variable_chromatic"] == int(chosen.sum())


def test_an_unconverged_chromatic_fit_is_not_chosen(seeing_change):
    from pyapred.exposure import MODEL_CHROMATIC
    from pyapred.exposure.fibers import choose_chromatic

    _, result = seeing_change
    fits = result.fibers["joint"]
    chosen = fits.model == MODEL_CHROMATIC
    assert chosen.any()
    before = dataclasses.replace(fits, model=np.where(chosen, MODEL_TIME_VARIABLE, fits.model))
    options = FitOptions(chromatic=True, joint_chips=True)
    again = choose_chromatic(before, fits.chromatic, fits.coordinate_span, options)
    np.testing.assert_array_equal(again.model, fits.model)  # the stage's own choice
    stuck = dataclasses.replace(fits.chromatic, converged=np.zeros_like(fits.chromatic.converged))
    again = choose_chromatic(before, stuck, fits.coordinate_span, options)
    assert not np.any(again.model == MODEL_CHROMATIC)


def test_chromatic_fibers_are_extracted_with_each_columns_omega(seeing_change):
    from pyapred.chromatic import chip_wavelength, wavelength_coordinate
    from pyapred.exposure import MODEL_CHROMATIC
    from pyapred.solver import extract_fluxes

    sim, result = seeing_change
    fits = result.fibers["joint"]
    chip = result.chips["B"]
    fiber = int(np.flatnonzero(fits.model == MODEL_CHROMATIC)[0])
    fibers, per_column = fits.column_omega("B", 256)
    row = per_column[list(fibers).index(fiber)]  # (n_columns, K)
    c = wavelength_coordinate(chip_wavelength("B", 256), fits.coordinate_span)
    expected = fits.chromatic.omega[fiber] * (1 + fits.chromatic.gamma[fiber] * c[:, None])
    np.testing.assert_allclose(row, expected / expected.mean(axis=1, keepdims=True), rtol=1e-12)
    # A pixel of that fiber without a jump: its flux is the extraction with its column's row.
    pixels = np.argwhere((chip.fiber == fiber) & ((chip.flags & Flag.JUMP_DETECTED) == 0))
    y, x = pixels[len(pixels) // 2]
    c_sim = sim.chips["B"]
    alone = extract_fluxes(c_sim.reads[:, y, x], c_sim.read_noise, row[x], gain=c_sim.gain,
                           saturation=c_sim.saturation)  # fmt: skip
    assert chip.flux[y, x] == pytest.approx(float(alone.flux), rel=1e-12)


def test_grey_cloud_rarely_gets_the_chromatic_model():
    """On achromatic data the chromatic model goes to at most 1 % of the bright fibers."""
    from pyapred.exposure import MODEL_CHROMATIC, ChipExposure, run_exposure
    from pyapred.simulate import simulate_exposure

    sim = simulate_exposure("clouds", seed=6, n_fibers=300, n_columns=96, ref_columns=0,
                            n_reads=20)  # fmt: skip
    chips = {n: ChipExposure(n, c.reads, c.read_noise, gain=c.gain, saturation=c.saturation)
             for n, c in sim.chips.items()}  # fmt: skip
    traces = {n: c.traces for n, c in sim.chips.items()}
    result = run_exposure(chips, traces, FitOptions(chromatic=True, joint_chips=True))
    fits = result.fibers["joint"]
    assert fits.bright.sum() > 200
    assert np.sum(fits.model == MODEL_CHROMATIC) <= 0.01 * fits.bright.sum()
    tried = np.isfinite(fits.chromatic.p_value)
    # The test's p-values are about uniform under the null.
    assert 0.02 < np.mean(fits.chromatic.p_value[tried] < 0.1) < 0.2


def test_chromatic_needs_known_chips_and_no_nuisance():
    with pytest.raises(ValueError, match="chromatic"):
        FitOptions(chromatic=True, correct_1f="nuisance")
    from pyapred.exposure.fibers import _fit_pixel_coordinates

    class Chip:
        name = "X"

    with pytest.raises(ValueError, match="R, G or B"):
        _fit_pixel_coordinates([Chip()])


@pytest.mark.parametrize("n_pix", [7, 5])
def test_fit_reads_are_the_fancy_index_in_c_order(n_pix):
    reads = np.arange(4 * 6 * 7, dtype=np.float32).reshape(4, 6, 7)
    valid = np.arange(6 * 7).reshape(6, 7) % 3 > 0
    rows = np.array([0, 2, 5])
    got, mask = _fit_reads(reads, valid, rows, n_pix)
    np.testing.assert_array_equal(got, reads[:, rows, :n_pix])
    np.testing.assert_array_equal(mask, np.broadcast_to(~valid[rows, :n_pix], got.shape))
    assert got.flags.c_contiguous and got.dtype == reads.dtype and mask.flags.c_contiguous


def test_fit_fibers_names_a_wrong_or_released_list_and_a_chip_twice(small_chip):
    """Prepared chips given as a tuple, none, released by an earlier fit, or one chip twice
    (omega errors too small by sqrt 2, with no flag): a message naming ``prepared``."""
    from pyapred.exposure import fit_fibers, prepare_chip

    chip, traces = small_chip
    options = FitOptions()
    prepared = prepare_chip(chip, traces, options)
    with pytest.raises(TypeError, match="prepared: expected a list of PreparedChip"):
        fit_fibers((prepared,), options)
    with pytest.raises(ValueError, match="prepared: expected one or more"):
        fit_fibers([], options)
    twice = [prepared, prepare_chip(chip, traces, options)]
    with pytest.raises(
        ValueError, match=r"prepared: expected each chip once, got chips \['R', 'R'\]"
    ):
        fit_fibers(twice, options)
    released = [prepared]
    fit_fibers(released, dataclasses.replace(options, keep_fit_reads=False))
    with pytest.raises(ValueError, match=r"prepared\[0\]: .* released .* prepare the chip again"):
        fit_fibers(released, options)


def test_choose_models_names_the_argument_that_does_not_fit():
    # A singular matrix, a failed unpacking or NumPy's broadcast errors before.
    fit, constant = _fits()
    options = FitOptions(min_fit_pixels=10)
    n_pix, excluded = np.full(G, P), np.zeros(G, bool)
    mixed = dataclasses.replace(fit, ref_index=np.arange(G))
    with pytest.raises(ValueError, match="fit: expected one ref_index for every fiber"):
        choose_models(mixed, constant, n_pix, excluded, options)
    single = dataclasses.replace(fit, omega=fit.omega[0])
    with pytest.raises(ValueError, match="fit: expected a batched OmegaFit"):
        choose_models(single, constant, n_pix, excluded, options)
    fewer = dataclasses.replace(constant, chi2=constant.chi2[:, :-1])
    with pytest.raises(
        ValueError, match=rf"constant: expected the fit's pixels, chi2 \({G}, {P}\)"
    ):
        choose_models(fit, fewer, n_pix, excluded, options)
    for bad in ([P] * G, np.full(G - 1, P), np.full(G, float(P))):
        with pytest.raises(ValueError, match=f"n_fit_pixels: expected an array of {G} integers"):
            choose_models(fit, constant, bad, excluded, options)
    with pytest.raises(ValueError, match=f"excluded: expected an array of {G} booleans"):
        choose_models(fit, constant, n_pix, np.zeros(G, int), options)
