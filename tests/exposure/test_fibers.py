"""Stage 2's model choice (``choose_models``) with and without the 1/f nuisance offsets."""

import dataclasses

import numpy as np

from pyapred import Flag, fit_constant, fit_omega, simulate_ramps
from pyapred.exposure import FitOptions
from pyapred.exposure.fibers import (
    MODEL_BORROWED,
    MODEL_TIME_VARIABLE,
    _significance,
    choose_models,
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
