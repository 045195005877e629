"""fit_omega(..., segments=...): the additive nuisance term of correlated (1/f) read noise."""

import numpy as np
import pytest

from pyapred import Flag, fit_omega, simulate_ramps

K, P, S = 8, 24, 3
OMEGA = np.linspace(1.0, 0.7, K)


def _with_offsets(reads, offsets, segments):
    out = reads.copy()
    out[1:] += np.cumsum(offsets[segments].T, axis=0)
    return out


def _gauge(offsets, omega):
    """Offsets in the fit's convention (sum 0 over differences) and each segment's flux shift."""
    shift = offsets.sum(axis=1) / omega.sum()
    return offsets - shift[:, None] * omega, shift


def test_noiseless_offsets_are_recovered_exactly():
    rng = np.random.default_rng(0)
    flux = rng.uniform(200, 2000, P)
    segments = np.arange(P) % S
    offsets = rng.normal(0, 30, (S, K))
    reads = np.concatenate([np.zeros((1, P)), np.cumsum(flux[None] * OMEGA[:, None], axis=0)])
    reads = _with_offsets(reads, offsets, segments)
    fit = fit_omega(reads, 10.0, segments=segments, ref_index=0)
    assert fit.converged and fit.n_iter <= 6
    np.testing.assert_allclose(fit.omega, OMEGA, atol=1e-12)
    want, shift = _gauge(offsets, OMEGA)
    np.testing.assert_allclose(fit.offsets, want, atol=1e-9)
    np.testing.assert_allclose(fit.flux, flux + shift[segments], rtol=1e-12)
    # Without the nuisance term the same data give a visibly wrong omega.
    assert np.abs(fit_omega(reads, 10.0, ref_index=0).omega - OMEGA).max() > 0.01


def _dense_omega_cov(fit, reads, sigma, segments):
    """omega's covariance from the full Hessian of (fluxes, free omega, offsets in z)."""
    d = np.diff(reads, axis=0).T  # (P, K)
    x = fit.omega
    n_seg = segments.max() + 1
    free = [k for k in range(K) if k != fit.ref_index]
    cols = P + len(free) + n_seg * (K - 1)
    jac = np.zeros((P, K, cols))
    for p in range(P):
        jac[p, :, p] = x
        for i, k in enumerate(free):
            jac[p, k, P + i] = fit.flux[p]
        base = P + len(free) + segments[p] * (K - 1)
        for k in range(K - 1):  # c = T z with c_{K-1} = -sum(z)
            jac[p, k, base + k] = 1.0
            jac[p, K - 1, base + k] = -1.0
    hess = np.zeros((cols, cols))
    tri = 2 * np.eye(K) - np.eye(K, k=1) - np.eye(K, k=-1)
    for p in range(P):
        cov = np.diag(np.maximum(fit.flux[p] * x, 0)) + sigma**2 * tri
        hess += jac[p].T @ np.linalg.solve(cov, jac[p])
    assert d.shape == (P, K)
    inv = np.linalg.inv(hess)
    out = np.zeros((K, K))
    idx = np.array(free)
    out[np.ix_(idx, idx)] = inv[P : P + len(free), P : P + len(free)]
    flux_var = np.diag(inv)[:P]
    return out, flux_var


def test_covariance_matches_the_dense_hessian():
    rng = np.random.default_rng(1)
    flux = rng.uniform(100, 900, P)
    segments = np.arange(P) % S
    sim = simulate_ramps(flux, 12.0, omega=OMEGA, rng=rng)
    reads = _with_offsets(sim.reads, rng.normal(0, 20, (S, K)), segments)
    fit = fit_omega(reads, 12.0, segments=segments)
    cov, flux_var = _dense_omega_cov(fit, reads, 12.0, segments)
    np.testing.assert_allclose(fit.omega_cov, cov, rtol=1e-7, atol=1e-14)
    np.testing.assert_allclose(fit.flux_var, flux_var, rtol=1e-7)


def test_errors_are_calibrated():
    rng = np.random.default_rng(2)
    flux = rng.uniform(100, 800, P)
    segments = np.arange(P) % S
    z_omega, z_flux = [], []
    for _ in range(80):
        sim = simulate_ramps(flux, 12.0, omega=OMEGA, rng=rng)
        offsets = rng.normal(0, 20, (S, K))
        fit = fit_omega(_with_offsets(sim.reads, offsets, segments), 12.0, segments=segments,
                        ref_index=0)  # fmt: skip
        z_omega.append((fit.omega[1:] - OMEGA[1:]) / np.sqrt(np.diag(fit.omega_cov)[1:]))
        _, shift = _gauge(offsets, OMEGA)
        z_flux.append((fit.flux - flux - shift[segments]) / np.sqrt(fit.flux_var))
    for z in (np.array(z_omega), np.array(z_flux)):
        # The z-scores of one trial are correlated (they share omega's fixed element and the
        # offsets), so the mean is tested against the scatter of the per-trial means.
        trial_means = z.mean(axis=1)
        error = trial_means.std(ddof=1) / np.sqrt(trial_means.size)
        assert abs(z.mean()) < 3 * error
        assert 0.9 < z.std() < 1.1


def test_groups_masks_and_labels():
    rng = np.random.default_rng(3)
    flux = rng.uniform(300, 900, (2, P))
    sim = simulate_ramps(flux, 12.0, omega=OMEGA, rng=rng)
    mask = np.zeros(sim.reads.shape, bool)
    mask[4:, 1, 0] = True
    mask[:, 1, 5] = True  # padding
    labels = np.arange(P) % 2  # broadcast to both groups
    fit = fit_omega(sim.reads, 12.0, mask=mask, segments=labels)
    assert fit.offsets.shape == (2, 2, K)
    assert np.all(fit.converged)
    np.testing.assert_allclose(np.nansum(fit.offsets, axis=-1), 0.0, atol=1e-8)
    one = fit_omega(sim.reads[:, 0], 12.0, segments=labels)
    np.testing.assert_allclose(one.omega, fit.omega[0], rtol=1e-10)
    assert one.offsets.shape == (2, K)
    assert fit_omega(sim.reads[:, 0], 12.0).offsets is None


def test_bad_segments():
    reads = simulate_ramps(np.full(4, 500.0), 10.0, n_reads=5, rng=np.random.default_rng(0)).reads
    with pytest.raises(ValueError, match="segments"):
        fit_omega(reads, 10.0, segments=[0, 1, -1, 0])
    with pytest.raises(ValueError, match="segments"):
        fit_omega(reads, 10.0, segments=[0.5, 1, 1, 0])
    with pytest.raises(ValueError, match="segments"):
        fit_omega(reads, 10.0, segments=[0, 1, 0])
    with pytest.raises(ValueError, match="segments"):
        fit_omega(reads, 10.0, segments=[0, 1, 1, 0], mode="reference")
    with pytest.raises(ValueError, match=r"segments: expected labels 0 \.\. 3"):
        fit_omega(reads, 10.0, segments=[0, 1, 10**9, 0])  # asked for 52 GiB of offsets
    with pytest.raises(ValueError, match=r"segments: expected labels 0 \.\. 3"):
        fit_omega(reads, 10.0, segments=[0, 1, 4, 0])  # the first label beyond the ranks


def test_segments_that_leave_omega_unconstrained_do_not_converge():
    """One pixel per segment: the offsets take every difference, and the inverted singular
    system gave a covariance with variances of -2e12, reported converged with no flag."""
    rng = np.random.default_rng(2)
    reads = simulate_ramps(rng.uniform(800, 1200, 30), 10.0, omega=OMEGA, rng=rng).reads
    fit = fit_omega(reads, 10.0, segments=np.arange(30))
    assert not fit.converged and fit.group_flags & Flag.NOT_CONVERGED
    assert fit.stop_reason == 2  # StopReason.BREAKDOWN
    assert fit_omega(reads, 10.0, segments=np.arange(30) % 3).converged


def _offset_ramps(seed, n_pix=60, n_segments=4, sigma=30.0):
    rng = np.random.default_rng(seed)
    segments = np.arange(n_pix) % n_segments
    reads = simulate_ramps(rng.uniform(200, 2000, n_pix), 10.0, omega=OMEGA, rng=rng).reads
    offsets = rng.normal(0, sigma, (n_segments, K))
    return _with_offsets(reads, offsets, segments), segments


def test_jump_search_judges_differences_against_the_offsets():
    reads, segments = _offset_ramps(1)
    reads[5:, 7] += 3000.0  # a cosmic ray in one pixel of segment 3
    fit = fit_omega(reads, 10.0, segments=segments, ref_index=0, jump_search=True)
    assert fit.converged
    np.testing.assert_array_equal(np.flatnonzero(fit.flags & Flag.JUMP_DETECTED), [7])
    assert fit.n_diff[7] == K - 1
    z = (fit.omega - OMEGA)[1:] / np.sqrt(np.diag(fit.omega_cov)[1:])
    assert np.abs(z).max() < 4
    # Without the search the ray pulls omega; without the offsets the search takes the shared
    # offsets for jumps.
    plain = fit_omega(reads, 10.0, segments=segments, ref_index=0)
    assert np.abs((plain.omega - OMEGA)[1:] / np.sqrt(np.diag(plain.omega_cov)[1:])).max() > 5
    blind = fit_omega(reads, 10.0, ref_index=0, jump_search=True)
    assert np.count_nonzero(blind.flags & Flag.JUMP_DETECTED) > 1


def test_jump_search_with_offsets_keeps_omega_calibrated():
    z = []
    for seed in range(12):
        reads, segments = _offset_ramps(10 + seed)
        fit = fit_omega(reads, 10.0, segments=segments, ref_index=0, jump_search=True)
        assert fit.converged and not np.any(fit.flags & Flag.JUMP_DETECTED)
        z.append((fit.omega - OMEGA)[1:] / np.sqrt(np.diag(fit.omega_cov)[1:]))
    z = np.concatenate(z)
    assert 0.75 < z.std() < 1.3 and abs(z.mean()) < 0.4


def test_jump_search_refits_groups_with_fewer_segments():
    """Only the group with a ray is refitted; its labels stop short of the other group's."""
    first, labels0 = _offset_ramps(30)
    second, _ = _offset_ramps(31)
    labels1 = np.arange(60) % 2
    second = _with_offsets(second, np.random.default_rng(2).normal(0, 30, (2, K)), labels1)
    second[4:, 3] += 2500.0
    reads = np.stack([first, second], axis=1)
    fit = fit_omega(reads, 10.0, segments=np.stack([labels0, labels1]), jump_search=True)
    assert np.all(fit.converged) and fit.offsets.shape == (2, 4, K)
    assert np.all(np.isnan(fit.offsets[1, 2:])) and np.all(np.isfinite(fit.offsets[1, :2]))
    np.testing.assert_array_equal(np.flatnonzero(fit.flags[1] & Flag.JUMP_DETECTED), [3])
    alone = fit_omega(second, 10.0, segments=labels1, jump_search=True, ref_index=fit.ref_index[1])
    np.testing.assert_allclose(alone.omega, fit.omega[1], rtol=1e-8)


def test_inflation_counts_the_offsets_degrees_of_freedom():
    # 60 pixels in 20 segments of 3, K = 8: the offsets take 20 x 7 of the 60 x 7 pixel degrees
    # of freedom. Not counting them put the inflation at sqrt(2/3) = 0.82 on a correct model.
    rng = np.random.default_rng(5)
    n_pix, n_seg, n_groups = 60, 20, 10
    segments = np.arange(n_pix) % n_seg
    inflation = []
    for _ in range(n_groups):
        flux = rng.uniform(200, 2000, n_pix)
        reads = simulate_ramps(flux, 10.0, omega=OMEGA, rng=rng).reads
        reads = _with_offsets(reads, rng.normal(0, 30, (n_seg, K)), segments)
        fit = fit_omega(reads, 10.0, segments=segments, ref_index=0)
        assert fit.converged
        inflation.append(float(fit.inflation))
    # Each value scatters by about sqrt(1 / (2 x 273)) = 0.043 around 1 (0.990 over 40 groups).
    assert abs(np.mean(inflation) - 1.0) < 0.05


def test_segments_of_one_pixel_are_a_degenerate_fit():
    # The offsets take all of each pixel's data: no degrees of freedom are left, and the fit
    # is not converged whatever its iteration did (some of these reported convergence).
    rng = np.random.default_rng(3)
    for n_diff, n_pix in [(2, 2), (2, 3), (4, 3), (4, 10), (7, 4)]:
        omega = np.linspace(1.0, 0.7, n_diff)
        reads = simulate_ramps(rng.uniform(10, 2000, n_pix), 10.0, omega=omega, rng=rng).reads
        fit = fit_omega(reads, 10.0, segments=np.arange(n_pix), ref_index=0)
        assert fit.group_flags & Flag.NOT_CONVERGED and not fit.converged, (n_diff, n_pix)
        assert fit.stop_reason != 0 and np.isnan(fit.inflation)
    # One segment of 2 pixels, 8 differences: 16 data for 2 fluxes, 7 omega elements and 7
    # offsets. It converged to chi2 3e-29 before omega's own elements were counted.
    reads = simulate_ramps(rng.uniform(500, 2000, 2), 15.0, omega=OMEGA, rng=rng).reads
    fit = fit_omega(reads, 15.0, segments=[0, 0], max_iter=500)
    assert fit.group_flags & Flag.NOT_CONVERGED and np.isnan(fit.inflation)
