"""Edge cases of the solver API (issue 18, "nothing fails silently").

Every function is swept over degenerate inputs: zero, negative, huge and NaN reads, extreme read
noise and gain, 3 reads, saturated, masked, dead and single pixels, an empty pixel axis. The
rules (``docs/flags.md``):

- a NaN in a per-pixel output carries a flag that says why: ``TOO_FEW_DIFFS`` for a flux or its
  variance; in an ``OmegaFit`` the pixel's flags or its group's (a group that did not converge
  flags every pixel's joint flux with it);
- a NaN in a per-group output carries a nonzero group flag, and a group that did not converge is
  flagged ``NOT_CONVERGED`` (or ``EMPTY_GROUP``);
- invalid arguments raise ``ValueError`` naming the argument, never a ``SystemError`` or a Numba
  error.
"""

import numpy as np
import pytest

from pyapred import (
    Flag,
    extract_fluxes,
    find_jumps,
    fit_constant,
    fit_equal_weight,
    fit_omega,
    initial_guess,
    sample_omega,
    simulate_ramps,
)
from pyapred.solver.api import StopReason


def ramps(n_reads=10, n_pix=6, flux=200.0, sigma=10.0, seed=0):
    rng = np.random.default_rng(seed)
    return simulate_ramps(np.full(n_pix, flux), sigma, n_reads=n_reads, rng=rng).reads


def _nan_some(reads):
    reads = reads.copy()
    reads[reads.shape[0] // 2, : max(reads.shape[1] // 2, 1)] = np.nan
    return reads


def _dead(reads):
    reads = reads.copy()
    reads[:, 0] = 1000.0
    return reads


def _mask_read(reads, j):
    mask = np.zeros(reads.shape, bool)
    mask[j] = True
    return mask


#: name -> (reads, read_noise, keyword arguments)
CASES = {
    "normal": lambda: (ramps(), 10.0, {}),
    "zero reads": lambda: (np.zeros((10, 6)), 10.0, {}),
    "negative ramps": lambda: (-ramps(), 10.0, {}),
    "huge reads": lambda: (ramps() * 1e30, 10.0, {}),
    "constant reads": lambda: (np.full((10, 6), 1234.0), 10.0, {}),
    "some NaN reads": lambda: (_nan_some(ramps()), 10.0, {}),
    "all NaN": lambda: (np.full((10, 6), np.nan), 10.0, {}),
    "all inf": lambda: (np.full((10, 6), np.inf), 10.0, {}),
    "dead pixel": lambda: (_dead(ramps()), 10.0, {}),
    "faint": lambda: (ramps(flux=0.5), 10.0, {}),
    "read noise huge": lambda: (ramps(), 1e30, {}),
    "read noise tiny": lambda: (ramps(), 1e-30, {}),
    "faint, read noise tiny": lambda: (ramps(flux=0.5, sigma=1e-30), 1e-30, {}),
    "gain huge": lambda: (ramps(), 10.0, {"gain": 1e30}),
    "gain tiny": lambda: (ramps(), 10.0, {"gain": 1e-30}),
    "3 reads": lambda: (ramps(3), 10.0, {}),
    "3 reads, one masked": lambda: (ramps(3), 10.0, {"mask": _mask_read(ramps(3), 1)}),
    "all saturated": lambda: (ramps(), 10.0, {"saturation": -1e300}),
    "saturated from read 2": lambda: (ramps(), 10.0, {"saturation": ramps()[2].min()}),
    "all masked": lambda: (ramps(), 10.0, {"mask": np.ones((10, 6), bool)}),
    "one read masked everywhere": lambda: (ramps(), 10.0, {"mask": _mask_read(ramps(), 4)}),
    "single pixel": lambda: (ramps(n_pix=1), 10.0, {}),
    "single faint pixel, 3 reads": lambda: (ramps(3, 1, 0.5, 1e-30, seed=1), 1e-30, {}),
    "empty pixel axis": lambda: (np.zeros((10, 0)), 10.0, {}),
}

OMEGAS = {
    "ones": lambda K: np.ones(K),
    "zeros": lambda K: np.zeros(K),
    "negative": lambda K: -np.linspace(1.0, 0.5, K),
    "NaN element": lambda K: np.r_[np.nan, np.ones(K - 1)],
    "all NaN": lambda K: np.full(K, np.nan),
    "zeros and NaN": lambda K: np.r_[np.zeros(2), np.full(K - 2, np.nan)],
}

#: Functions that need at least one pixel (a group to fit).
NEEDS_PIXELS = {"fit_omega", "initial_guess"}


def check_flux_fit(fit):
    """NaN flux or variance only with TOO_FEW_DIFFS, and always with it; NaN chi2 flagged."""
    nan = np.isnan(fit.flux) | np.isnan(fit.flux_var)
    too_few = (fit.flags & Flag.TOO_FEW_DIFFS).astype(bool)
    assert np.array_equal(nan, too_few)
    assert np.all(fit.flags[np.isnan(fit.chi2)] != 0)


def check_omega_fit(fit):
    group_flags = np.atleast_1d(fit.group_flags)
    G = group_flags.size
    flags = np.reshape(fit.flags, (G, -1))
    flagged = group_flags != 0
    omega = np.reshape(fit.omega, (G, -1))
    no_data = (group_flags & (Flag.OMEGA_ELEMENT_NO_DATA | Flag.EMPTY_GROUP)).astype(bool)
    assert np.all(no_data[np.isnan(omega).any(axis=1)])
    for name in ("omega_cov", "inflation", "step_size", "damping"):
        value = np.reshape(getattr(fit, name), (G, -1))
        assert np.all(flagged[np.isnan(value).any(axis=1)]), name
    for name in ("flux", "flux_var", "chi2"):
        nan = np.isnan(np.reshape(getattr(fit, name), (G, -1)))
        assert np.all((flags != 0) | flagged[:, None] | ~nan), name
    # Pixels left out are flagged, and only they have no joint flux at all.
    left_out = (flags & Flag.NOT_IN_OMEGA_FIT).astype(bool)
    assert np.all(np.isnan(np.reshape(fit.flux, (G, -1)))[left_out])
    converged = np.atleast_1d(fit.converged)
    failed = (group_flags & (Flag.NOT_CONVERGED | Flag.EMPTY_GROUP)).astype(bool)
    assert np.array_equal(~converged | (group_flags & Flag.EMPTY_GROUP).astype(bool), failed)
    reason = np.atleast_1d(fit.stop_reason)
    assert np.array_equal(reason == StopReason.CONVERGED, converged & ~failed)
    assert np.array_equal(reason == StopReason.EMPTY, (group_flags & Flag.EMPTY_GROUP) != 0)


def run(name, reads, read_noise, kwargs, omega=None):
    K = reads.shape[0] - 1
    if name == "fit_constant":
        check_flux_fit(fit_constant(reads, read_noise, **kwargs))
    elif name == "fit_equal_weight":
        check_flux_fit(fit_equal_weight(reads, read_noise, **kwargs))
    elif name == "extract_fluxes":
        check_flux_fit(extract_fluxes(reads, read_noise, OMEGAS[omega](K), **kwargs))
    elif name == "find_jumps":
        result = find_jumps(reads, read_noise, omega=OMEGAS[omega](K), **kwargs)
        check_flux_fit(result.flux)
        assert np.all(np.isfinite(result.jump_size))
    elif name == "fit_omega":
        for jump_search in (False, True):
            check_omega_fit(fit_omega(reads, read_noise, jump_search=jump_search, **kwargs))
        check_omega_fit(fit_omega(reads, read_noise, mode="reference", **kwargs))
    elif name == "initial_guess":
        omega, flux, _ = initial_guess(reads, read_noise, **kwargs)
        fit = fit_omega(reads, read_noise, **kwargs)
        # NaN exactly where fit_omega has no data (its flags say why).
        assert np.array_equal(np.isnan(flux), (fit.flags & Flag.TOO_FEW_DIFFS) != 0)
        if np.isnan(omega).any():
            assert fit.group_flags & (Flag.OMEGA_ELEMENT_NO_DATA | Flag.EMPTY_GROUP)


CALLS = [("fit_constant", None), ("fit_equal_weight", None), ("fit_omega", None),
         ("initial_guess", None)]  # fmt: skip
CALLS += [(f, omega) for f in ("extract_fluxes", "find_jumps") for omega in OMEGAS]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("function", "omega"), CALLS, ids=lambda v: v)
def test_nan_only_with_a_flag_that_says_why(case, function, omega):
    reads, read_noise, kwargs = CASES[case]()
    with np.errstate(all="ignore"):
        if reads.shape[1] == 0 and function in NEEDS_PIXELS:
            with pytest.raises(ValueError, match="reads: expected at least one pixel"):
                run(function, reads, read_noise, kwargs, omega)
        else:
            run(function, reads, read_noise, kwargs, omega)


def test_groups_with_edge_cases_side_by_side():
    # One batch: a normal group, an all-NaN (empty) group, a zero group, a dead-pixel group and
    # a faint group; each is flagged for itself, none disturbs the others.
    groups = [ramps(), np.full((10, 6), np.nan), np.zeros((10, 6)), _dead(ramps()),
              ramps(flux=0.5)]  # fmt: skip
    fit = fit_omega(np.stack(groups, axis=1), 10.0)
    check_omega_fit(fit)
    alone = fit_omega(groups[0], 10.0)
    np.testing.assert_array_equal(fit.omega[0], alone.omega)
    assert fit.group_flags[1] == Flag.EMPTY_GROUP | Flag.OMEGA_ELEMENT_NO_DATA
    assert np.all(fit.converged[[0, 2, 3, 4]])


@pytest.mark.parametrize("function", ["fit_constant", "fit_equal_weight", "extract_fluxes",
                                      "find_jumps"])  # fmt: skip
def test_infinite_reads_are_flagged_without_a_warning(function):
    """fit_equal_weight warned "invalid value encountered in subtract" (inf - inf) from a
    difference it does not use: an error under ``-W error``."""
    import warnings

    reads = ramps()
    reads[:, 3] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = call(function, reads, 10.0)
    flags = fit.flux.flags if function == "find_jumps" else fit.flags
    assert flags[3] & Flag.NONFINITE_READ and np.isnan(fit.flux.flux[3] if function ==
                                                       "find_jumps" else fit.flux[3])  # fmt: skip


ALL = ("fit_constant", "fit_equal_weight", "extract_fluxes", "find_jumps", "fit_omega",
       "initial_guess")  # fmt: skip


def call(function, reads, read_noise, **kwargs):
    K = len(reads) - 1  # (np.shape refuses a ragged list itself)
    if function in ("extract_fluxes",):
        return extract_fluxes(reads, read_noise, kwargs.pop("omega", np.ones(max(K, 1))), **kwargs)
    return {"fit_constant": fit_constant, "fit_equal_weight": fit_equal_weight,
            "find_jumps": find_jumps, "fit_omega": fit_omega,
            "initial_guess": initial_guess}[function](reads, read_noise, **kwargs)  # fmt: skip


BAD_ARGUMENTS = [
    ("read noise 0", {"read_noise": 0.0}, "read_noise"),
    ("read noise negative", {"read_noise": -1.0}, "read_noise"),
    ("read noise NaN", {"read_noise": np.nan}, "read_noise"),
    ("read noise inf", {"read_noise": np.inf}, "read_noise"),
    ("gain 0", {"gain": 0.0}, "gain"),
    ("gain NaN", {"gain": np.nan}, "gain"),
    ("2 reads", {"reads": ramps(2)}, "reads"),
    ("1 read", {"reads": ramps(2)[:1]}, "reads"),
    ("complex reads", {"reads": ramps().astype(complex)}, "reads"),
    ("mask shape", {"mask": np.zeros((10, 5), bool)}, "mask"),
    ("mask dtype", {"mask": np.zeros((10, 6))}, "mask"),
    ("saturation NaN", {"saturation": np.nan}, "saturation"),
    ("read noise shape", {"read_noise": np.ones(5)}, "read_noise"),
    # Beyond SCALE_RANGE (reads: MAX_READ) the squares overflow (or underflow) to NaN and inf
    # without a flag.
    ("read noise 1e-300", {"read_noise": 1e-300}, r"read_noise: .* within \[1e-30, 1e\+30\]"),
    ("read noise 1e300", {"read_noise": 1e300}, "read_noise"),
    ("gain 1e-300", {"gain": 1e-300}, "gain"),
    ("gain 1e300", {"gain": 1e300}, "gain"),
    ("reads near 1e200", {"reads": ramps() * 1e200}, r"reads: .*float32.* found .*e\+20\d"),
    ("reads offset 1e300", {"reads": ramps() + 1e300}, "reads"),
    # Wrong types: NumPy's messages ("could not convert string to float") named no argument.
    ("gain a string", {"gain": "x"}, "gain: expected real numbers"),
    ("read noise complex", {"read_noise": 1j}, "read_noise: expected real numbers"),
    ("saturation complex", {"saturation": 1j}, "saturation: expected real numbers"),
    ("ragged reads", {"reads": [[1.0, 2.0], [3.0], [4.0, 5.0]]}, "reads: .* ragged list"),
]


@pytest.mark.parametrize("function", ALL)
@pytest.mark.parametrize(
    ("label", "change", "match"), BAD_ARGUMENTS, ids=[b[0] for b in BAD_ARGUMENTS]
)
def test_invalid_arguments_raise_value_error(function, label, change, match):
    args = {"reads": ramps(), "read_noise": 10.0} | change
    with pytest.raises(ValueError, match=match):
        call(function, args.pop("reads"), args.pop("read_noise"), **args)


@pytest.mark.parametrize(
    ("function", "kwargs", "match"),
    [
        ("extract_fluxes", {"omega": np.ones(3)}, r"omega.*are the reads \(n_reads, \*pixel"),
        ("find_jumps", {"omega": np.ones(3)}, "omega"),
        ("find_jumps", {"threshold": 0.0}, "threshold"),
        ("fit_omega", {"rtol": 0.0}, "rtol"),
        ("fit_omega", {"max_iter": 0}, "max_iter"),
        ("fit_omega", {"ref_index": 9}, "ref_index"),
        # Below 0 Numba wrapped to the last element and the fit returned ref_index -1.
        ("fit_omega", {"ref_index": -1}, r"ref_index: expected whole numbers in \[0, 9\)"),
        ("fit_omega", {"ref_index": 2.5}, "ref_index: expected whole numbers"),
        # A bool is no count (True ran one iteration, False found no jumps) and no threshold
        # (True cut at 1 sigma).
        ("fit_omega", {"max_iter": True}, "max_iter: expected an integer"),
        ("find_jumps", {"max_jumps": np.bool_(False)}, "max_jumps: expected an integer"),
        ("extract_fluxes", {"n_pass": True}, "n_pass: expected an integer"),
        ("find_jumps", {"threshold": True}, "threshold: expected a value > 0"),
        ("fit_omega", {"jump_search": True, "jump_threshold": np.bool_(True)}, "jump_threshold"),
        ("fit_omega", {"mode": "fast"}, "mode"),
        ("fit_omega", {"read_times": np.zeros(10)}, "read_times"),
        ("initial_guess", {"read_times": np.arange(9.0)}, "read_times"),
        ("fit_constant", {"read_times": np.arange(10.0) * 1e300}, "1e-30 to 1e\\+30 apart"),
        ("fit_omega", {"read_times": np.arange(10.0) * 1e-300}, "read_times"),
        # Huge, NaN or array options: a Numba TypingError, an OverflowError (threshold**2) or
        # NumPy's "truth value of an array is ambiguous" before.
        ("fit_constant", {"read_times": "abc"}, "read_times: expected real numbers"),
        ("extract_fluxes", {"omega": np.array(["a"] * 9)}, "omega: expected real numbers"),
        # omega 1e160 gave flux 0 and variance 0, unflagged; a NaN element masks a difference.
        ("extract_fluxes", {"omega": np.r_[1e160, np.ones(8)]}, "omega: expected values within"),
        ("find_jumps", {"omega": np.r_[-1e31, np.ones(8)]}, "omega: expected values within"),
        ("extract_fluxes", {"n_pass": 10**20}, "n_pass: expected an integer"),
        ("fit_constant", {"n_pass": np.nan}, "n_pass: expected an integer"),
        ("find_jumps", {"max_jumps": 10**20}, "max_jumps: expected an integer"),
        ("find_jumps", {"threshold": 1e200}, "threshold: .* at most 1e\\+06"),
        ("find_jumps", {"two_adjacent": np.array([True, False])}, "two_adjacent"),
        ("fit_omega", {"jump_search": True, "jump_threshold": 1e200}, "jump_threshold"),
        ("fit_omega", {"max_iter": np.nan}, "max_iter: expected an integer"),
        ("fit_omega", {"rtol": "x"}, "rtol: expected a finite value"),
        ("fit_omega", {"rtol": np.array([1e-8, 1e-8])}, "rtol"),
        # "no" (a truthy string) ran the search.
        ("fit_omega", {"jump_search": "no"}, "jump_search: expected True or False"),
    ],
)
def test_invalid_options_raise_value_error(function, kwargs, match):
    with pytest.raises(ValueError, match=match):
        call(function, ramps(), 10.0, **kwargs)


@pytest.mark.parametrize("shape", [(10, 0), (10, 3, 0)])
def test_no_pixel_is_a_value_error_not_a_numba_error(shape):
    # fit_omega on zero pixels used to raise SystemError from the initial-guess kernel.
    for function in (fit_omega, initial_guess):
        with pytest.raises(ValueError, match="reads: expected at least one pixel"):
            function(np.zeros(shape), 10.0)
    with pytest.raises(ValueError, match="reads: expected at least one pixel"):
        sample_omega(np.zeros((10, 0)), 10.0, 5, burn_in=1, rng=np.random.default_rng(0))
    # The per-pixel functions return empty results.
    assert fit_constant(np.zeros(shape), 10.0).flux.shape == shape[1:]
    assert find_jumps(np.zeros(shape), 10.0).flux.flux.shape == shape[1:]


@pytest.mark.parametrize(
    ("n_samples", "burn_in", "match"),
    [(2.5, 1, "n_samples: expected an integer >= 2"), (True, 1, "n_samples"),
     (5, -1, "burn_in: expected an integer >= 0"), (5, 1.5, "burn_in")],
)  # fmt: skip
def test_sample_omega_counts_as_every_option_takes_them(n_samples, burn_in, match):
    """``int()`` took 2.5 samples as 2 and True as 1; the counts are checked as every other."""
    with pytest.raises(ValueError, match=match):
        sample_omega(ramps()[:, 0], 10.0, n_samples, burn_in=burn_in,
                     rng=np.random.default_rng(0))  # fmt: skip


def test_no_group_is_an_empty_result():
    fit = fit_omega(np.zeros((10, 0, 4)), 10.0)
    assert fit.omega.shape == (0, 9) and fit.stop_reason.shape == (0,)


def test_describe_flags_names_every_bit_and_refuses_what_is_no_flag_value():
    from pyapred import Flag, describe_flags

    assert describe_flags(Flag.SATURATED | Flag.TOO_FEW_DIFFS) == ["SATURATED", "TOO_FEW_DIFFS"]
    assert describe_flags(np.int64(3)) == describe_flags(np.array(3)) == [
        "MASKED_READ", "NONFINITE_READ"]  # fmt: skip
    assert describe_flags(0) == []
    # A bit no flag names (a newer product) is named by its number, not dropped.
    assert describe_flags(1 << 16 | 1) == ["MASKED_READ", "bit 16"]
    for bad in (3.7, -1, True, np.array([1, 2])):
        with pytest.raises(ValueError, match="value: expected one flag value"):
            describe_flags(bad)


def test_a_bad_map_value_is_located_in_the_error():
    """One NaN in a chip-sized read-noise or saturation map refused the call without saying
    where: the error names the first bad pixel and how many more."""
    reads = np.cumsum(np.full((5, 3, 4), 50.0), axis=0)
    noise = np.full((3, 4), 10.0)
    noise[1, 2], noise[2, 3] = np.nan, -1.0
    with pytest.raises(ValueError, match=r"read_noise: .* got nan at index \(1, 2\) and 1 more"):
        fit_constant(reads, noise)
    saturation = np.full((3, 4), 1e5)
    saturation[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"saturation: .* got nan at index \(0, 1\)$"):
        fit_constant(reads, 10.0, saturation=saturation)
    with pytest.raises(ValueError, match=r"gain: .* got 0$"):
        fit_constant(reads, 10.0, gain=0.0)
