"""Reproduce the paper's synthetic-data tests (sections III.1 to III.3) as a rerunnable report.

``pyapred validate`` runs three studies on simulated ramps and writes ``report.md`` (with PNG
figures) and ``results.json`` (every number in the report):

1. **Single realisation (III.1).** 33 reads, 100 pixels, omega ~ U(0.5, 1), flux ~ U(800, 1200),
   read noise ~ U(14, 24). Omega and the fluxes are recovered after one fitted scale factor; the
   error-inflation factor of each model is computed; fresh pixels at 21 fluxes from 10 to 1000
   e-/read are extracted by the time-variable model (omega fixed at the fit), the constant model
   and the equal-weight slope, and their z-scores summarised.
2. **Flux levels (III.2).** The same omega, read noise and fluxes scaled to several levels, many
   realisations each: how omega's uncertainty and bias, and the extracted fluxes, depend on flux.
3. **Amplitude sweep (III.3).** omega ~ U(1 - A, 1) for many draws per amplitude A: the excess
   scatter of the median z-scores of each model, and the thresholds on A.

Every random number comes from one ``numpy.random.Generator`` seeded by ``seed`` (one child
stream per study, and in III.3 one per omega draw), so a run is deterministic for a given
backend, whatever the number of threads. Definitions follow
``../shared/docs/math-spec.md`` sections 5 to 7; ``docs/validation.md`` lists where they had to
be chosen because the paper's values were lost.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..arguments import MAX_SEED, at_least, json_line, path_argument
from ..errors import EXIT_FLAGGED, EXIT_OK
from ..simulate import omega_uniform, simulate_ramps
from ..solver import extract_fluxes, fit_constant, fit_equal_weight, fit_omega

__all__ = [
    "FULL",
    "QUICK",
    "StudySizes",
    "amplitude_sweep",
    "flux_levels",
    "run_validation",
    "single_realisation",
    "write_report",
]

# The paper's section III.1 configuration (math-spec section 7.2).
N_READS = 33
N_PIX = 100
FLUX_RANGE = (800.0, 1200.0)
NOISE_RANGE = (14.0, 24.0)
OMEGA_AMPLITUDE = 0.5
SCALE_FLUX = 1000.0  # the separate pixels that fix each method's flux scale
BIAS_FLUXES = np.logspace(1, 3, 21)  # e-/read, the section III.1 grid
NOISELESS_READ_NOISE = 19.0  # center of NOISE_RANGE, for the noise-free bias curves
BIAS_LIMIT = 0.05  # the second threshold: bias below 5 % of sigma_f ...
BIAS_QUANTILE = 95.0  # ... 95 % of the time
METHODS = ("time_variable", "constant", "equal_weight")


@dataclass(frozen=True)
class StudySizes:
    """Repeat counts and grids of one validation run.

    Attributes
    ----------
    name : str
        ``"full"`` (the paper's counts) or ``"quick"``.
    single_repeats : int
        Repeats per flux level of the section III.1 bias test (paper: 1000).
    level_fluxes : tuple of float
        Section III.2 flux levels, e-/read; the III.1 fluxes are scaled to mean about this.
    level_realisations : int
        Realisations per flux level (paper: 1000).
    amplitudes : tuple of float
        Section III.3 amplitudes A.
    sweep_realisations : int
        omega draws per amplitude (paper: 1000).
    sweep_flux_levels : int
        Log-spaced fluxes from 10 to 1000 e-/read in the sweep.
    sweep_examples : int
        Pixels per flux level and omega draw. The paper's text says 100; the full run uses
        1000, the repeat count of the III.1 test that III.3 says it follows, the count that
        reproduces the paper's threshold (``docs/validation.md``).
    reference_sets : int
        Sets of unit-Gaussian draws behind the expected statistics (paper: 1000).
    chunk : int
        omega draws simulated and fitted together (bounds memory: about
        ``chunk * sweep_examples * sweep_flux_levels * 33 * 8`` bytes of reads).
    """

    name: str
    single_repeats: int
    level_fluxes: tuple[float, ...]
    level_realisations: int
    amplitudes: tuple[float, ...]
    sweep_realisations: int
    sweep_flux_levels: int
    sweep_examples: int
    reference_sets: int
    chunk: int = 100


FULL = StudySizes(
    name="full",
    single_repeats=1000,
    level_fluxes=(3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0),
    level_realisations=1000,
    amplitudes=tuple(np.round(np.r_[np.arange(0.0, 0.1, 0.01), np.arange(0.1, 1.01, 0.1)], 3)),
    sweep_realisations=1000,
    sweep_flux_levels=21,
    sweep_examples=1000,
    reference_sets=1000,
    chunk=25,
)
QUICK = StudySizes(
    name="quick",
    single_repeats=300,
    level_fluxes=(5.0, 20.0, 100.0, 1000.0),
    level_realisations=40,
    amplitudes=(0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
    sweep_realisations=80,
    sweep_flux_levels=11,
    sweep_examples=50,
    reference_sets=200,
)

# Checks from issue 7 (the CLI exits 1 when one fails).
CHECKS = {
    "constant_inflation_above_2": "III.1 constant-model inflation factor > 2",
    "time_variable_inflation_near_1": "III.1 time-variable inflation factor within 0.1 of 1",
    "threshold_in_range": "III.3 {name} inside {lo:.1%}..{hi:.1%}",
}
# Per mode: which threshold is checked, and its bounds. The full run checks the paper's
# construction. At the quick run's counts its band is set by sampling noise (32 % at seed 104), so
# the quick run checks the same construction on the noise-free biases, which measures the
# models and not the counts (docs/validation.md).
THRESHOLD_CHECKS = {
    "quick": ("threshold_noiseless", (0.01, 0.10)),
    "full": ("threshold", (0.025, 0.05)),
}
_THRESHOLD_NAMES = {
    "threshold": "threshold (paper's construction)",
    "threshold_noiseless": "threshold (noise-free construction)",
}


# --------------------------------------------------------------------------------------------
# Statistics shared by the studies
# --------------------------------------------------------------------------------------------
def zscore_width(z, axis=None) -> np.ndarray:
    """Half the 15.87-84.13 percentile range: a robust sigma (1 for unit Gaussians)."""
    lo, hi = np.nanpercentile(z, [15.865, 84.135], axis=axis)
    return 0.5 * (hi - lo)


def inflation_factor(chi2, n_diff) -> float:
    """Error-inflation factor ``sqrt(sum chi2 / sum nu)`` with ``nu = n_diff - 1`` (spec 5.1)."""
    return float(np.sqrt(np.sum(chi2) / np.sum(np.asarray(n_diff) - 1)))


def flux_scale(flux, flux_var, truth) -> np.ndarray:
    """Per-row scale factor ``sum(ivar f_hat f) / sum(ivar f_hat^2)`` along the last axis.

    The one multiplicative factor that best matches fitted fluxes to the truth (spec 7.2);
    fluxes are multiplied by it and their sigmas too.
    """
    ivar = 1.0 / flux_var
    return np.sum(ivar * flux * truth, axis=-1) / np.sum(ivar * flux**2, axis=-1)


def omega_scale(omega, omega_cov, omega_true):
    """The one scale factor between fitted and true omega, and the z-scores after it.

    ``s`` minimises ``(s omega - omega_true)^T W (s omega - omega_true)`` over the free elements,
    with ``W`` the inverse marginal covariance (the fixed element carries no error); omega is
    then ``s omega`` and the fluxes ``flux / s`` (the reference's ``rescale=True``, spec 2.8,
    with the marginal rather than the conditional precision).

    Parameters
    ----------
    omega : ndarray, ``(..., K)``
    omega_cov : ndarray, ``(..., K, K)``
    omega_true : ndarray, ``(K,)``

    Returns
    -------
    scale : ndarray, ``(...)``
    z : ndarray, ``(..., K)``
        ``(s omega - omega_true) / (s sigma)``; NaN at the fixed element.
    chi2 : ndarray, ``(...)``
        ``r^T W r / s^2`` of the rescaled residual ``r`` over the free elements.
    err : ndarray, ``(..., K)``
        Marginal sigma of omega (0 at the fixed element).
    """
    err = np.sqrt(np.einsum("...kk->...k", omega_cov))
    fixed = err == 0
    # Unit variance on the fixed element makes the covariance invertible without coupling it.
    weight = np.linalg.inv(omega_cov + fixed[..., None] * np.eye(omega.shape[-1]))
    weight = np.where(fixed[..., None] | fixed[..., None, :], 0.0, weight)
    w_omega = np.einsum("...jk,...k->...j", weight, omega)
    scale = np.einsum("...k,...k->...", w_omega, omega_true) / np.einsum(
        "...k,...k->...", w_omega, omega
    )
    resid = scale[..., None] * omega - omega_true
    z = resid / np.where(fixed, np.nan, scale[..., None] * err)
    chi2 = np.einsum("...j,...jk,...k->...", resid, weight, resid) / scale**2
    return scale, z, chi2, err


def rereference(omega, omega_cov, ref: int):
    """Express omega fits with element ``ref`` fixed to 1 instead of their own fixed element.

    The likelihood depends only on the products flux * omega, so dividing omega by
    ``omega[ref]`` (and multiplying the fluxes by it) gives the fit with ``ref`` fixed; the
    covariance follows by linear propagation, ``J C J^T`` with
    ``J = (I - omega' e_ref^T) / omega[ref]``.

    Parameters
    ----------
    omega : ndarray, ``(G, K)``
    omega_cov : ndarray, ``(G, K, K)``
    ref : int

    Returns
    -------
    omega : ndarray, ``(G, K)``
    omega_cov : ndarray, ``(G, K, K)``
    norm : ndarray, ``(G,)``
        The old ``omega[ref]``: multiply fluxes and their sigmas by it.
    """
    norm = omega[:, ref]
    new = omega / norm[:, None]
    K = omega.shape[1]
    jac = (np.eye(K) - new[:, :, None] * np.eye(K)[ref][None, None, :]) / norm[:, None, None]
    cov = np.einsum("gij,gjk,glk->gil", jac, omega_cov, jac)
    return new, cov, norm


def fit_omega_batch(reads, read_noise) -> dict:
    """``fit_omega`` over groups, with the groups whose fit broke down marked as failed.

    At 3-5 e-/read a few groups' Gauss-Newton iterations end in a singular Schur complement;
    ``fit_omega`` flags them ``NOT_CONVERGED`` with a NaN covariance.

    Parameters
    ----------
    reads : ndarray, ``(n_reads, G, P)``
    read_noise : ndarray, ``(G, P)``

    Returns
    -------
    dict
        ``omega (G, K)``, ``omega_cov (G, K, K)``, ``converged (G,)``, ``n_iter (G,)``,
        ``failed (G,)``.
    """
    fit = fit_omega(reads, read_noise)
    return {
        "omega": fit.omega,
        "omega_cov": fit.omega_cov,
        "converged": fit.converged,
        "n_iter": fit.n_iter,
        "failed": ~np.isfinite(fit.omega_cov).all(axis=(1, 2)),
    }


def _unit_gaussian_medians(rng, n_sets: int, n_draws: int) -> np.ndarray:
    """Medians of ``n_draws`` unit Gaussians, ``(n_sets,)``, drawn in bounded blocks."""
    out = np.empty(n_sets)
    block = max(1, 2_000_000 // n_draws)
    for start in range(0, n_sets, block):
        stop = min(n_sets, start + block)
        out[start:stop] = np.median(rng.standard_normal((stop - start, n_draws)), axis=-1)
    return out


# --------------------------------------------------------------------------------------------
# Section III.1: one realisation
# --------------------------------------------------------------------------------------------
def single_realisation(rng: np.random.Generator, sizes: StudySizes) -> dict:
    """Section III.1: fit one synthetic fiber, then test flux extraction at 21 flux levels.

    Parameters
    ----------
    rng : numpy.random.Generator
    sizes : StudySizes

    Returns
    -------
    dict
        JSON-ready results; ``"_truth"`` holds the arrays that section III.2 reuses.
    """
    K = N_READS - 1
    omega_true = omega_uniform(K, OMEGA_AMPLITUDE, rng)
    flux_true = rng.uniform(*FLUX_RANGE, N_PIX)
    sigma = rng.uniform(*NOISE_RANGE, N_PIX)
    sim = simulate_ramps(flux_true, sigma, omega=omega_true, rng=rng)
    fit = fit_omega(sim.reads, sigma)

    scale, omega_z, omega_chi2, err = omega_scale(fit.omega, fit.omega_cov, omega_true)
    free = err > 0
    omega_resid = scale * fit.omega - omega_true
    flux_z = (fit.flux / scale - flux_true) * scale / np.sqrt(fit.flux_var)

    # Data-model chi2 of each model on the same 100 ramps (eq 24).
    on_data = _fit_three_ways(sim.reads, sigma, fit.omega)
    nu = N_READS - 2

    # Flux-bias test: per repeat, one test pixel per flux level (read noise redrawn) and a
    # separate set of 100 pixels at SCALE_FLUX with the original read noise, which fixes each
    # method's scale factor (spec 7.2, quirk Q10). omega stays at the fit; it is not refitted.
    R, L = sizes.single_repeats, BIAS_FLUXES.size
    test_sigma = rng.uniform(*NOISE_RANGE, (R, L))
    truth = np.concatenate(
        [np.broadcast_to(BIAS_FLUXES, (R, L)), np.full((R, N_PIX), SCALE_FLUX)], axis=1
    )
    noise = np.concatenate([test_sigma, np.broadcast_to(sigma, (R, N_PIX))], axis=1)
    test = simulate_ramps(truth, noise, omega=omega_true, rng=rng)
    bias_test = {}
    for name, result in _fit_three_ways(test.reads, noise, fit.omega).items():
        mult = flux_scale(result.flux[:, L:], result.flux_var[:, L:], SCALE_FLUX)[:, None]
        sig = np.sqrt(result.flux_var[:, :L]) * mult
        z = (result.flux[:, :L] * mult - BIAS_FLUXES) / sig
        bias_test[name] = {
            "z_median": np.median(z, axis=0).tolist(),
            "z_width": zscore_width(z, axis=0).tolist(),
            "sigma_median": np.median(sig, axis=0).tolist(),
        }
    medians = _unit_gaussian_medians(rng, sizes.reference_sets, R)
    widths = np.array([zscore_width(rng.standard_normal(R)) for _ in range(sizes.reference_sets)])
    sig_top = {name: bias_test[name]["sigma_median"][-1] for name in METHODS}
    const_bias = np.abs(bias_test["constant"]["z_median"])
    return {
        "config": {
            "n_reads": N_READS,
            "n_pix": N_PIX,
            "flux_range": FLUX_RANGE,
            "noise_range": NOISE_RANGE,
            "omega_amplitude": OMEGA_AMPLITUDE,
            "scale_flux": SCALE_FLUX,
            "repeats": R,
        },
        "omega_fit": {
            "n_iter": int(fit.n_iter),
            "converged": bool(fit.converged),
            "ref_index": int(fit.ref_index),
            "scale": float(scale),
            "omega_max_abs_error": float(np.max(np.abs(omega_resid))),
            "omega_z_median": float(np.median(omega_z[free])),
            "omega_z_std": float(np.std(omega_z[free])),
            "omega_chi2_per_dof": float(omega_chi2) / int(free.sum()),
            "omega_dof": int(free.sum()),
            "flux_z_median": float(np.median(flux_z)),
            "flux_z_std": float(np.std(flux_z)),
            "flux_chi2_per_dof": float(np.mean(flux_z**2)),
        },
        "inflation": {
            "joint_fit": float(fit.inflation),
            **{name: inflation_factor(r.chi2, r.n_diff) for name, r in on_data.items()},
        },
        "chi2_percentiles": {
            name: np.percentile(r.chi2, [16, 50, 84]).tolist() for name, r in on_data.items()
        }
        | {"expected": [float(v) for v in _chi2_percentiles(nu)]},
        "bias_test": {
            "flux": BIAS_FLUXES.tolist(),
            **bias_test,
            "reference": {
                "median_mean": float(medians.mean()),
                "median_std": float(medians.std()),
                "width_mean": float(widths.mean()),
                "width_std": float(widths.std()),
            },
            "constant_max_abs_bias": float(const_bias.max()),
            "constant_max_abs_bias_flux": float(BIAS_FLUXES[np.argmax(const_bias)]),
            "equal_weight_snr_loss": 1.0 - sig_top["time_variable"] / sig_top["equal_weight"],
            "constant_vs_time_variable_sigma_max_diff": float(
                np.max(
                    np.abs(
                        np.array(bias_test["constant"]["sigma_median"])
                        / np.array(bias_test["time_variable"]["sigma_median"])
                        - 1
                    )
                )
            ),
        },
        "_truth": {
            "omega": omega_true,
            "flux": flux_true,
            "sigma": sigma,
            "omega_hat": fit.omega,
            "omega_err": err,
            "scale": scale,
            "chi2": {name: r.chi2 for name, r in on_data.items()},
        },
    }


def _fit_three_ways(reads, read_noise, omega) -> dict:
    """Fluxes of every pixel by each of METHODS: omega fixed, omega = 1, equal weights."""
    return {
        "time_variable": extract_fluxes(reads, read_noise, omega),
        "constant": fit_constant(reads, read_noise),
        "equal_weight": fit_equal_weight(reads, read_noise),
    }


def _chi2_percentiles(nu: int) -> np.ndarray:
    from scipy.stats import chi2

    return chi2.ppf([0.16, 0.5, 0.84], nu)


# --------------------------------------------------------------------------------------------
# Section III.2: many realisations at several flux levels
# --------------------------------------------------------------------------------------------
def flux_levels(rng: np.random.Generator, sizes: StudySizes, truth: dict) -> dict:
    """Section III.2: omega and flux recovery versus flux, with the III.1 omega and read noise.

    For each level the III.1 fluxes are scaled to mean about ``level`` and ``level_realisations``
    data sets are simulated and fitted as groups of one ``fit_omega`` call. Each fit is then
    re-expressed (:func:`rereference`) with the true omega's largest element fixed to 1, an
    element chosen before seeing the data, so the truth is exactly ``omega_true /
    omega_true[ref]`` and no scale is fitted. (The fit's own
    fixed element, the largest of the initial guess, is selected for noise that makes it
    high, which biases the other elements low relative to it; a fitted scale removes that but
    also the error common to all elements, and the per-element z-scores then come out
    narrower than 1.) The fluxes, extracted with each realisation's omega, are scaled by the
    factor that matches that omega to the truth (:func:`omega_scale`, the paper's rescale), so
    errors of omega show up in them. Constant-flux data at the same fluxes, fitted with the
    constant model, give the reference behaviour of the fluxes.

    Parameters
    ----------
    rng : numpy.random.Generator
    sizes : StudySizes
    truth : dict
        ``"omega"``, ``"flux"`` and ``"sigma"`` of section III.1.

    Returns
    -------
    dict
    """
    omega_true, sigma = truth["omega"], truth["sigma"]
    ref = int(np.argmax(omega_true))  # fixed before seeing any data
    omega_ref = omega_true / omega_true[ref]
    R = sizes.level_realisations
    rows = []
    for level in sizes.level_fluxes:
        flux = np.broadcast_to(truth["flux"] * level / np.mean(FLUX_RANGE), (R, N_PIX))
        noise = np.broadcast_to(sigma, (R, N_PIX))
        sim = simulate_ramps(flux, noise, omega=omega_true, rng=rng)
        fit = fit_omega_batch(sim.reads, noise)
        ok = fit["converged"]  # statistics of the converged fits; their fraction is reported
        omega, cov, _ = rereference(fit["omega"][ok], fit["omega_cov"][ok], ref)
        err = np.sqrt(np.einsum("gkk->gk", cov))
        free = err > 0
        z_omega = ((omega - omega_ref) / np.where(free, err, np.nan))[free]
        groups = _group_index(int(ok.sum()), N_PIX)
        ext = extract_fluxes(sim.reads[:, ok], noise[ok], fit["omega"][ok], groups=groups)
        scale = omega_scale(fit["omega"][ok], fit["omega_cov"][ok], omega_true)[0][:, None]
        z_flux = (ext.flux / scale - flux[ok]) * scale / np.sqrt(ext.flux_var)
        const = simulate_ramps(flux, noise, n_reads=N_READS, rng=rng)
        cfit = fit_constant(const.reads, noise)
        z_const = (cfit.flux - flux) / np.sqrt(cfit.flux_var)
        p16, p50, p84 = np.percentile(z_omega, [15.865, 50, 84.135])
        rows.append(
            {
                "flux": float(level),
                "converged_fraction": float(np.mean(fit["converged"])),
                "failed_fraction": float(np.mean(fit["failed"])),
                "median_iterations": float(np.median(fit["n_iter"][~fit["failed"]])),
                "omega_rel_err_median": float(np.median((err / omega_ref)[free])),
                "omega_z_p16": float(p16),
                "omega_z_p50": float(p50),
                "omega_z_p84": float(p84),
                "omega_z_width": float(0.5 * (p84 - p16)),
                "omega_z_mean": float(np.mean(z_omega)),
                "flux_z_median": float(np.median(z_flux)),
                "flux_z_width": float(zscore_width(z_flux)),
                "constant_data_z_median": float(np.median(z_const)),
                "constant_data_z_width": float(zscore_width(z_const)),
            }
        )
    # Tolerances shrink with the number of realisations down to the stated floors.
    tol_omega = max(0.1, 3.0 / np.sqrt(R))
    tol_flux = max(0.05, 1.0 / np.sqrt(R))
    omega_ok = [
        r["converged_fraction"] >= 0.99
        and max(abs(r["omega_z_p16"] + 1), abs(r["omega_z_p50"]), abs(r["omega_z_p84"] - 1))
        <= tol_omega
        for r in rows
    ]
    flux_ok = [
        abs(r["flux_z_median"] - r["constant_data_z_median"]) <= tol_flux
        and abs(r["flux_z_width"] - r["constant_data_z_width"]) <= 2 * tol_flux
        for r in rows
    ]
    return {
        "realisations": R,
        "levels": rows,
        "omega_trusted_from": _lowest_passing_level(sizes.level_fluxes, omega_ok),
        "flux_trusted_from": _lowest_passing_level(sizes.level_fluxes, flux_ok),
        # In log flux and log error, as the figure draws it (and as a power law in flux is).
        "omega_10pct_flux": _crossing(
            [r["flux"] for r in rows],
            np.log([r["omega_rel_err_median"] for r in rows]),
            np.log(0.10),
            log=True,
        ),
        "criteria": {
            "omega": f"converged >= 99 %, z percentiles 16/50/84 within {tol_omega:.2f} of -1/0/1",
            "flux": f"median z within {tol_flux:.2f} and width within {2 * tol_flux:.2f} of "
            "constant-model fits to constant data",
        },
    }


def _lowest_passing_level(levels, ok) -> float | None:
    """Lowest level from which every higher level passes; None if the highest fails."""
    lowest = None
    for level, passed in sorted(zip(levels, ok, strict=True), reverse=True):
        if not passed:
            break
        lowest = float(level)
    return lowest


def _crossing(x, y, value: float, *, log: bool = False) -> float | None:
    """First x where the piecewise-linear y(x) reaches ``value`` going down x (decreasing y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xs = np.log(x) if log else x
    for i in range(len(x) - 1):
        if (y[i] - value) * (y[i + 1] - value) <= 0 and y[i] != y[i + 1]:
            t = (value - y[i]) / (y[i + 1] - y[i])
            hit = xs[i] + t * (xs[i + 1] - xs[i])
            return float(np.exp(hit) if log else hit)
    return None


# --------------------------------------------------------------------------------------------
# Section III.3: the amplitude sweep
# --------------------------------------------------------------------------------------------
def _noiseless_reads(flux, omega) -> np.ndarray:
    """Expected reads ``(n_reads, n_omega, n_flux)`` for omegas ``(n_omega, K)``: no noise."""
    steps = omega.T[:, :, None] * flux[None, None, :]
    return np.concatenate([np.zeros((1,) + steps.shape[1:]), np.cumsum(steps, axis=0)])


def amplitude_sweep(rng: np.random.Generator, sizes: StudySizes, progress=None) -> dict:
    """Section III.3: bias magnitude of each model versus the omega amplitude A and flux.

    For each A and each of ``sweep_realisations`` draws ``omega ~ U(1 - A, 1)``: 100 pixels at
    U(800, 1200) e-/read fit omega, and ``sweep_examples`` pixels per flux level are extracted
    with the fitted omega (time-variable) and with omega = 1 (constant). The median z-score per
    flux level is one realisation; the standard deviation over realisations minus that of
    unit-Gaussian medians is the bias magnitude (excess scatter).

    Each example stands for one repeat of the III.1 test, which has its own set of 100 scale
    pixels at SCALE_FLUX. Those scale factors are independent and precise to about 0.06 %, so
    each model's scale is taken at their expectation: the fit of a noise-free ramp at
    SCALE_FLUX (read noise NOISELESS_READ_NOISE). Noise-free ramps at every flux level give
    the models' biases themselves (no photon or read noise), whose scatter and percentiles
    over the omega draws set the noise-free threshold and the second threshold.

    Parameters
    ----------
    rng : numpy.random.Generator
    sizes : StudySizes
    progress : callable, optional
        Called with a short message as each amplitude ends (a full run takes minutes each).

    Returns
    -------
    dict
    """
    say = progress or (lambda message: None)
    R, E = sizes.sweep_realisations, sizes.sweep_examples
    fluxes = np.logspace(1, 3, sizes.sweep_flux_levels)
    L = fluxes.size
    expected_sets = _unit_gaussian_medians(rng, sizes.reference_sets * R, E).reshape(-1, R)
    expected = expected_sets.std(axis=1)
    s0 = float(expected.mean())
    test_flux = np.repeat(fluxes, E)
    names = ("time_variable", "constant")
    rows = []
    for amplitude in sizes.amplitudes:
        start = time.perf_counter()
        medians = {name: np.empty((R, L)) for name in names}
        clean_bias = {name: np.empty((R, L)) for name in names}
        n_conv = 0
        for lo in range(0, R, sizes.chunk):
            n = min(sizes.chunk, R - lo)
            # One child stream per draw: the same numbers whatever the thread count.
            omegas, reads, noise = _simulate_sweep_chunk(rng.spawn(n), amplitude, test_flux)
            fit = fit_omega(reads[:, :, :N_PIX], noise[:, :N_PIX])
            n_conv += int(np.sum(fit.converged))
            test_reads, test_noise = reads[:, :, N_PIX:], noise[:, N_PIX:]
            clean = _noiseless_reads(np.append(fluxes, SCALE_FLUX), omegas)
            noisy = {
                "time_variable": extract_fluxes(
                    test_reads, test_noise, fit.omega, groups=_group_index(n, test_flux.size)
                ),
                "constant": fit_constant(test_reads, test_noise),
            }
            clean_fits = {
                "time_variable": extract_fluxes(
                    clean, NOISELESS_READ_NOISE, fit.omega, groups=_group_index(n, L + 1)
                ),
                "constant": fit_constant(clean, NOISELESS_READ_NOISE),
            }
            for name in names:
                mult = SCALE_FLUX / clean_fits[name].flux[:, -1:]
                z = _scaled_z(noisy[name], mult, test_flux)
                medians[name][lo : lo + n] = np.median(z.reshape(n, L, E), axis=2)
                clean_bias[name][lo : lo + n] = _scaled_z(
                    clean_fits[name], mult, np.append(fluxes, SCALE_FLUX)
                )[:, :L]
        scatter = {name: m.std(axis=0) for name, m in medians.items()}
        magnitude = {name: np.abs(b) for name, b in clean_bias.items()}
        rows.append(
            {
                "amplitude": float(amplitude),
                "omega_fit_converged_fraction": n_conv / R,
                "excess_time_variable": (scatter["time_variable"] - s0).tolist(),
                "excess_constant": (scatter["constant"] - s0).tolist(),
                "mean_median_z_time_variable": medians["time_variable"].mean(axis=0).tolist(),
                "mean_median_z_constant": medians["constant"].mean(axis=0).tolist(),
                "noiseless_scatter_time_variable": clean_bias["time_variable"].std(axis=0).tolist(),
                "noiseless_scatter_constant": clean_bias["constant"].std(axis=0).tolist(),
                "noiseless_bias_time_variable_q95": np.percentile(
                    magnitude["time_variable"], BIAS_QUANTILE, axis=0
                ).tolist(),
                "noiseless_bias_constant_q95": np.percentile(
                    magnitude["constant"], BIAS_QUANTILE, axis=0
                ).tolist(),
                "noiseless_bias_constant_q99": np.percentile(
                    magnitude["constant"], 99, axis=0
                ).tolist(),
                "seconds": time.perf_counter() - start,
            }
        )
        say(f"A = {amplitude:g} done in {rows[-1]['seconds']:.0f} s")
    return _sweep_summary(rows, fluxes, s0, expected, R, E)


def _group_index(n_groups: int, n_pix: int) -> np.ndarray:
    """``groups`` for ``extract_fluxes``: row g of omega for every pixel of draw g."""
    return np.repeat(np.arange(n_groups)[:, None], n_pix, axis=1)


def _scaled_z(fit, mult, truth) -> np.ndarray:
    """z-scores of fluxes scaled by ``mult`` (fluxes and sigmas alike)."""
    return (fit.flux * mult - truth) / (np.sqrt(fit.flux_var) * mult)


def _simulate_sweep_chunk(rngs, amplitude: float, test_flux):
    """Reads ``(n_reads, n, P)``, read noise ``(n, P)`` and omegas ``(n, K)`` of ``n`` draws.

    Draw i uses generator ``rngs[i]`` only. Pixel order per draw: 100 omega-fit pixels, then
    the test pixels. The draws are simulated on a thread pool: NumPy's samplers release the
    GIL, and the Poisson draws are most of the full run's time.
    """
    from concurrent.futures import ThreadPoolExecutor

    n, K = len(rngs), N_READS - 1
    P = N_PIX + test_flux.size
    reads = np.empty((N_READS, n, P))
    noise = np.empty((n, P))
    omegas = np.empty((n, K))

    def simulate_draw(i: int) -> None:
        rng = rngs[i]
        omegas[i] = omega_uniform(K, amplitude, rng)
        flux = np.concatenate([rng.uniform(*FLUX_RANGE, N_PIX), test_flux])
        noise[i] = rng.uniform(*NOISE_RANGE, P)
        reads[:, i] = simulate_ramps(flux, noise[i], omega=omegas[i], rng=rng).reads

    with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 1)) as pool:
        list(pool.map(simulate_draw, range(n)))  # list() re-raises a worker's exception
    return omegas, reads, noise


def _sweep_summary(rows, fluxes, s0: float, expected, R: int, E: int) -> dict:
    """Fig 8 and Fig 9 numbers: the band, the polynomial and both thresholds.

    Besides the reported construction (Monte Carlo) and its noise-free twin, ``variants``
    holds the threshold under other readings of the paper's Fig 8 text, for
    ``docs/validation.md``.
    """
    amps = np.array([r["amplitude"] for r in rows])
    tv = np.array([r["excess_time_variable"] for r in rows])
    const = np.array([r["excess_constant"] for r in rows])
    mc = _fig8_threshold(amps, tv, const)
    # The same construction on the noise-free biases: no sampling-noise floor in the band.
    clean = _fig8_threshold(
        amps,
        np.array([r["noiseless_scatter_time_variable"] for r in rows]),
        np.array([r["noiseless_scatter_constant"] for r in rows]),
    )
    # Bias as the excess in quadrature, sqrt(std^2 - s0^2), negative excess counted as 0.
    quadrature = [np.sqrt(np.clip((x + s0) ** 2 - s0**2, 0.0, None)) for x in (tv, const)]
    coarse = np.isclose(amps * 10, np.round(amps * 10))  # the paper's "steps of 0.1"
    variants = {
        "monte_carlo_steps_of_0.1": _fig8_threshold(amps[coarse], tv[coarse], const[coarse]),
        "monte_carlo_band_of_per_amplitude_medians": _fig8_threshold(
            amps, np.median(tv, axis=1), const
        ),
        "monte_carlo_quadrature_excess": _fig8_threshold(amps, *quadrature),
    }
    q95_max = np.array([np.max(r["noiseless_bias_constant_q95"]) for r in rows])
    return {
        "flux": fluxes.tolist(),
        "realisations": R,
        "examples": E,
        "expected_scatter": s0,
        "expected_scatter_std": float(np.std(expected)),
        "amplitudes": rows,
        "time_variable_band": mc["band"],
        "constant_points": mc["points"],
        "polynomial": mc["polynomial"],
        "threshold": mc["threshold"],
        "noiseless_time_variable_band": clean["band"],
        "noiseless_constant_points": clean["points"],
        "noiseless_polynomial": clean["polynomial"],
        "threshold_noiseless": clean["threshold"],
        "variants": {
            name: {"threshold": v["threshold"], "band": v["band"]} for name, v in variants.items()
        },
        "noiseless_q95_max_over_flux": q95_max.tolist(),
        "second_threshold": _crossing(amps, q95_max, BIAS_LIMIT),
        "max_noiseless_bias_q99": float(
            max(np.max(r["noiseless_bias_constant_q99"]) for r in rows)
        ),
        "max_noiseless_bias_q95": float(q95_max.max()),
    }


def _fig8_threshold(amps, time_variable, constant) -> dict:
    """The paper's Fig 8: band, polynomial and threshold from bias-magnitude profiles.

    Parameters
    ----------
    amps : ndarray, ``(n_A,)``
    time_variable : ndarray, ``(n_A, n_flux)`` or ``(n_A,)``
        Bias magnitudes of the time-variable model; the band is their 5/50/95 percentiles,
        pooled over all amplitudes and fluxes.
    constant : ndarray, ``(n_A, n_flux)``
        Bias magnitudes of the constant model; its points are the medians over flux.

    Returns
    -------
    dict
        ``band`` (p05/p50/p95), ``points``, ``polynomial`` (4th order in A, highest power
        first, fitted to all points) and ``threshold`` (first A where the polynomial rises
        above the band's 95th percentile; None if it never does). Both are None with fewer
        than five amplitudes.
    """
    band = np.percentile(time_variable, [5, 50, 95])
    points = np.median(constant, axis=1)
    # A 4th-order fit needs five amplitudes; fewer (a custom grid) give no threshold.
    coeffs = np.polyfit(amps, points, 4) if amps.size > 4 else None
    return {
        "band": {"p05": float(band[0]), "p50": float(band[1]), "p95": float(band[2])},
        "points": points.tolist(),
        "polynomial": None if coeffs is None else coeffs.tolist(),
        "threshold": None if coeffs is None else _first_rise_above(coeffs, band[2], amps.max()),
    }


def _first_rise_above(coeffs, level: float, x_max: float) -> float | None:
    """First x in [0, x_max] where the polynomial becomes greater than ``level``."""
    x = np.linspace(0.0, x_max, 20001)
    above = np.polyval(coeffs, x) > level
    if not above.any():
        return None
    i = int(np.argmax(above))
    if i == 0:
        return 0.0
    y0, y1 = np.polyval(coeffs, x[i - 1 : i + 1])
    return float(x[i - 1] + (level - y0) / (y1 - y0) * (x[i] - x[i - 1]))


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------
# Values stated by the paper (or reproduced from its notebook, spec 5.1); None where lost.
PAPER = {
    "constant_inflation": 3.56,
    "constant_inflation_notebook": 3.913,
    "time_variable_inflation_notebook": 0.972,
    "omega_iterations": "3 or 4 (text); 5 (notebook, seed 104)",
    "threshold": 0.035,
    "second_threshold": None,
    "max_bias": 1.20,
    "equal_weight_snr_loss": None,
    "omega_high_flux_error_overestimate": 0.03,
}


def run_validation(
    seed: int = 104, sizes: StudySizes = FULL, backend: str = "numpy", progress=None
) -> dict:
    """Run the three studies and collect every number of the report.

    Parameters
    ----------
    seed : int
        Seeds one ``numpy.random.SeedSequence``; each study draws from its own child stream.
    sizes : StudySizes
        :data:`FULL` (the paper's counts) or :data:`QUICK`.
    backend : {"numpy"}
        Solver backend: NumPy only (:data:`BACKEND_NOTE`).
    progress : callable, optional
        Called with a short message as each study starts.

    Returns
    -------
    dict
        JSON-ready except for keys starting with ``_`` (arrays used by the figures).
    """
    if backend != "numpy":
        raise ValueError(f"backend: expected 'numpy', got {backend!r}")
    say = progress or (lambda message: None)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    start = time.perf_counter()
    timings = {}

    say("III.1 single realisation ...")
    t = time.perf_counter()
    single = single_realisation(streams[0], sizes)
    timings["single_realisation"] = time.perf_counter() - t

    say("III.2 flux levels ...")
    t = time.perf_counter()
    levels = flux_levels(streams[1], sizes, single["_truth"])
    timings["flux_levels"] = time.perf_counter() - t

    say("III.3 amplitude sweep ...")
    t = time.perf_counter()
    sweep = amplitude_sweep(streams[2], sizes, progress=lambda m: say(f"  {m}"))
    timings["amplitude_sweep"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start

    results = {
        "run": {
            "mode": sizes.name,
            "seed": seed,
            "backend": backend,
            "sizes": asdict(sizes),
            "runtime_s": timings,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "single_realisation": single,
        "flux_levels": levels,
        "amplitude_sweep": sweep,
        "paper": PAPER,
    }
    results["checks"] = evaluate_checks(results)
    return results


def evaluate_checks(results: dict) -> dict:
    """The pass/fail checks of issue 7 for this run's mode."""
    inflation = results["single_realisation"]["inflation"]
    key, (lo, hi) = THRESHOLD_CHECKS[results["run"]["mode"]]
    threshold = results["amplitude_sweep"][key]
    checks = {
        "constant_inflation_above_2": inflation["constant"] > 2.0,
        "time_variable_inflation_near_1": abs(inflation["time_variable"] - 1.0) <= 0.1,
        "threshold_in_range": threshold is not None and lo <= threshold <= hi,
    }
    return {
        name: {
            "passed": bool(passed),
            "description": CHECKS[name].format(name=_THRESHOLD_NAMES[key], lo=lo, hi=hi),
        }
        for name, passed in checks.items()
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _public(value):
    """Drop the ``_``-prefixed entries (arrays kept for the figures) before JSON."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_report(results: dict, out_dir) -> Path:
    """Write ``report.md``, ``results.json`` and ``figures/*.png`` under ``out_dir``.

    Parameters
    ----------
    results : dict
        The output of :func:`run_validation`.
    out_dir : str or Path
        Created if missing.

    Returns
    -------
    Path
        The path of ``report.md``.
    """
    import shutil
    import tempfile

    from ..io.atomic import write_bytes_atomic
    from ._report import FIGURE_NAMES, make_figures, render_markdown

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    # Everything is made first, the figures in a folder of their own, and only then put in
    # place: an interrupted run mixed its figures with the previous run's report.
    staging = Path(tempfile.mkdtemp(prefix=".figures.", suffix=".tmp", dir=out))
    try:
        figures = make_figures(results, staging)
        public = _public(results)
        # NaN (a figure with nothing to measure) is null: bare NaN is no JSON.
        summary = json_line(public, indent=1).encode()
        text = render_markdown(public, figures).encode()
        for name in FIGURE_NAMES:
            os.replace(staging / f"{name}.png", out / "figures" / f"{name}.png")
        write_bytes_atomic(out / "results.json", summary)
        report = out / "report.md"
        write_bytes_atomic(report, text)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


# --------------------------------------------------------------------------------------------
# Command line: pyapred validate
# --------------------------------------------------------------------------------------------
#: The most III.3 examples ``--examples`` takes: 100 times the full run's (10**30 failed with a
#: traceback after III.1 and III.2 had run; 10**7 ran on for hours).
MAX_EXAMPLES = 100_000

#: What ``pyapred validate --help`` says of the backend: why there is no ``--backend``.
BACKEND_NOTE = (
    "Runs on the NumPy backend (Numba kernels): the studies call the solver without its "
    "backend= switch, so a Julia run would need them rewritten; pyapred crossval compares the "
    "NumPy and Julia backends on the same inputs instead."
)


def add_arguments(parser) -> None:
    """Arguments of ``pyapred validate``."""
    import argparse

    parser.description = (
        "Reproduce the paper's synthetic-data tests (III.1-III.3) as a report (report.md, "
        f"results.json, figures); exit 1 when a check fails. {BACKEND_NOTE}"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small repeat counts, about 10 s on 2 cores (CI runs this)",
    )
    parser.add_argument(
        "--out", default="validation", type=path_argument,
        help="output folder (default ./validation)",
    )  # fmt: skip
    # Kept so that old invocations with --backend numpy still run (see BACKEND_NOTE).
    parser.add_argument("--backend", default="numpy", choices=["numpy"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--seed", type=at_least(0, MAX_SEED), default=104, help="random seed (default 104)"
    )
    parser.add_argument(
        "--examples",
        type=at_least(1, MAX_EXAMPLES),  # 10**30 failed after III.1 and III.2 had run
        metavar="N",
        help=f"III.3 pixels per flux level and omega draw, up to {MAX_EXAMPLES} (default: 1000 "
        "full, 50 quick; the paper's text says 100: docs/validation.md)",
    )


def _threshold_line(results: dict) -> str:
    """The III.3 thresholds, said so that a quick run's large one does not read as a failure."""
    sweep, sizes = results["amplitude_sweep"], results["run"]["sizes"]

    def percent(value) -> str:
        return f"{value:.2%}" if value is not None else "not reached"

    key, (lo, hi) = THRESHOLD_CHECKS[results["run"]["mode"]]
    noiseless = f"{percent(sweep['threshold_noiseless'])} on noise-free biases"
    if key == "threshold":
        paper = f"{percent(sweep['threshold'])} (paper's construction; paper 3.5 %)"
        return f"threshold: {paper}, {noiseless}"
    return (
        f"threshold: {percent(sweep['threshold'])} by the paper's construction: sampling noise "
        f"at the quick counts ({sizes['sweep_realisations']} draws x {sizes['sweep_examples']} "
        "examples), expected, not a failure (full run 3.6 %, paper 3.5 %); checked instead: "
        f"{noiseless} (pass {lo:.0%} to {hi:.0%})"
    )


def run(args) -> int:
    """``pyapred validate``: run the studies, write the report; exit 1 if a check fails."""
    import logging

    from ..io.atomic import writable_folder
    from ..io.paths import check_memory, check_output_path, physical_memory
    from ._report import FIGURE_NAMES

    log = logging.getLogger(__name__)
    sizes = QUICK if args.quick else FULL
    if args.examples is not None:
        # The sweep's omega draws are fitted `chunk` at a time: fewer where one draw's pixels
        # take much memory (--examples 100000 asked for 21.6 GiB after 75 s of work). One draw
        # holds its reads about three times over (measured: 0.74 GB at 500 examples, quick).
        per_draw = 4 * N_READS * (N_PIX + args.examples * sizes.sweep_flux_levels) * 8
        check_memory(per_draw, "--examples", "--examples", f"{args.examples} examples x "
                     f"{sizes.sweep_flux_levels} flux levels in one omega draw")  # fmt: skip
        chunk = int(min(sizes.chunk, max(1, physical_memory() // 2 // per_draw)))
        sizes = replace(sizes, sweep_examples=args.examples, chunk=chunk)
    # Every output, before minutes of work, not after: the folder, figures/ a folder, and no
    # folder (or special file) where results.json, report.md or a figure goes.
    out = Path(args.out)
    check_output_path(out, "--out", folder=True)
    check_output_path(out / "figures", "--out", folder=True)
    for name in ("results.json", "report.md", *(f"figures/{n}.png" for n in FIGURE_NAMES)):
        check_output_path(out / name, "--out", overwrite=True)
    writable_folder(args.out)
    log.info("pyapred validate (%s, seed %d, backend %s)", sizes.name, args.seed, args.backend)
    results = run_validation(args.seed, sizes, args.backend, progress=lambda m: log.info("  %s", m))
    report = write_report(results, args.out)
    single = results["single_realisation"]
    sweep = results["amplitude_sweep"]
    failed = [c["description"] for c in results["checks"].values() if not c["passed"]]
    if getattr(args, "json", False):
        print(json_line({
            "mode": sizes.name, "seed": args.seed, "backend": args.backend,
            "inflation": single["inflation"], "threshold": sweep["threshold"],
            "threshold_noiseless": sweep["threshold_noiseless"], "checks": results["checks"],
            "runtime_s": results["run"]["runtime_s"]["total"], "report": str(report),
        }))  # fmt: skip
        return EXIT_FLAGGED if failed else EXIT_OK
    print(
        f"pyapred validate ({sizes.name}): inflation: time-variable "
        f"{single['inflation']['time_variable']:.3f}, "
        f"constant {single['inflation']['constant']:.3f} (paper 3.56)"
    )
    print(f"  {_threshold_line(results)}")
    print(f"  runtime {results['run']['runtime_s']['total']:.1f} s; report: {report}")
    for description in failed:
        print(f"  CHECK FAILED: {description}")
    return EXIT_FLAGGED if failed else EXIT_OK
