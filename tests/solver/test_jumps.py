"""find_jumps and fit_omega's jump search: a dense transcription of Brandt's search, statistics."""

import math

import numpy as np
import pytest

from pyapred import (
    Flag,
    extract_fluxes,
    find_jumps,
    fit_omega,
    omega_cloud,
    simulate_ramps,
)

# 4.5 sigma for one jump; for two, the chi2 (2 dof) with the same tail probability (23.79).
THR_ONE, THR_TWO = 4.5**2, -2.0 * math.log(math.erfc(4.5 / math.sqrt(2.0)))


# --------------------------------------------------------------------------------------------
# Dense reference: Brandt's mask_jumps written out with explicit K x K matrices
# --------------------------------------------------------------------------------------------
def _covariance(rate_x, sigma2):
    K = rate_x.size
    T = 2 * np.eye(K) - np.eye(K, k=1) - np.eye(K, k=-1)
    return np.diag(np.maximum(rate_x, 0.0)) + sigma2 * T


def _gls(d, x, C, extra=()):
    """GLS of ``d = a x + sum_j b_j e_j`` (no ``a`` if x is None): ``(coefficients, chi2)``."""
    A = np.column_stack(([] if x is None else [x]) + [np.eye(d.size)[j] for j in extra])
    L = np.linalg.cholesky(C)  # whitened least squares
    coef, *_ = np.linalg.lstsq(np.linalg.solve(L, A), np.linalg.solve(L, d), rcond=None)
    r = np.linalg.solve(L, d - A @ coef)
    return coef, r @ r


def dense_search(d, x, ok, sigma2, two_adjacent):
    """The search of one pixel; returns the clean differences (bool, (K,)).

    Brandt's search with C at the median rate (:func:`dense_search_at_rate`); where it flags
    anything, the same search from the start with C at the GLS rate of the clean differences.
    """
    rate = max(np.median(d[ok] / x[ok]), 0.0)
    clean = dense_search_at_rate(d, x, ok, sigma2, two_adjacent, rate)
    if (clean == ok).all():
        return clean
    keep = np.flatnonzero(clean)
    (clean_rate,), _ = _gls(d[keep], x[keep], _covariance(rate * x, sigma2)[np.ix_(keep, keep)])
    return dense_search_at_rate(d, x, ok, sigma2, two_adjacent, max(clean_rate, 0.0))


def dense_search_at_rate(d, x, ok, sigma2, two_adjacent, rate):
    """Brandt's iterative search for one pixel with C at ``rate``; returns the clean differences.

    Each pass refits the kept differences with every single jump (and adjacent pair), compares
    the chi2 drops after subtracting their thresholds, drops the best, and stops when nothing
    passes or 3 differences are left.
    """
    ok = ok.copy()
    C_all = _covariance(rate * x, sigma2)
    while ok.sum() > 3:
        keep = np.flatnonzero(ok)
        C = C_all[np.ix_(keep, keep)]
        _, base = _gls(d[keep], x[keep], C)
        one = [base - _gls(d[keep], x[keep], C, [i])[1] for i in range(keep.size)]
        two = []
        if two_adjacent:
            two = [
                base - _gls(d[keep], x[keep], C, [i, i + 1])[1] if keep[i + 1] == keep[i] + 1
                else 0.0
                for i in range(keep.size - 1)
            ]  # fmt: skip
        best_one, best_two = max(one), max(two, default=0.0)
        if best_one > THR_ONE and best_one - THR_ONE > best_two - THR_TWO:
            ok[keep[int(np.argmax(one))]] = False
        elif best_two > THR_TWO:
            i = int(np.argmax(two))
            ok[keep[i]] = ok[keep[i + 1]] = False
        else:
            break
    return ok


def dense_final_fit(d, x, searched, clean, sigma2):
    """Two-pass GLS on the clean differences, then every flagged jump fitted at that flux."""
    keep = np.flatnonzero(clean)
    rate = max(np.median(d[keep] / x[keep]), 0.0)
    for _ in range(2):
        (flux,), _ = _gls(d[keep], x[keep], _covariance(rate * x, sigma2)[np.ix_(keep, keep)])
        rate = max(flux, 0.0)
    # All jumps free at once, on every difference the search saw, with C at the final flux.
    use = np.flatnonzero(searched)
    jumps = [int(np.flatnonzero(use == j)[0]) for j in np.flatnonzero(searched & ~clean)]
    C = _covariance(flux * x, sigma2)[np.ix_(use, use)]
    sizes, _ = _gls(d[use] - flux * x[use], None, C, jumps)
    return flux, dict(zip(use[jumps], sizes, strict=True))


def _cosmic_case(rng, n_pix, n_reads, omega=None, read_times=None):
    """Ramps with 0-3 jumps per pixel, many of them near the threshold, and a few bad reads."""
    flux = rng.uniform(0, 800, n_pix)
    sigma = rng.uniform(10, 25, n_pix)
    sim = simulate_ramps(flux, sigma, n_reads=n_reads, omega=omega, read_times=read_times, rng=rng)
    K = n_reads - 1
    jumps = np.zeros((K, n_pix))
    for p in range(n_pix):
        n = rng.choice(4, p=[0.4, 0.3, 0.2, 0.1])
        where = rng.choice(K, n, replace=False)
        # Sizes from invisible to obvious, both signs (a read glitch can be negative).
        jumps[where, p] = rng.choice([-1, 1], n) * rng.uniform(20, 400, n)
    reads = sim.reads.copy()
    reads[1:] += np.cumsum(jumps, axis=0)
    mask = rng.uniform(size=reads.shape) < 0.02
    return reads, sigma, mask


def _dense_reference(reads, sigma, mask, omega, dt, two_adjacent):
    K = reads.shape[0] - 1
    x = omega * dt
    d = np.diff(reads, axis=0)
    ok = ~(mask[1:] | mask[:-1]) & np.isfinite(omega)[:, None]
    clean = np.array(
        [dense_search(d[:, p], x, ok[:, p], sigma[p] ** 2, two_adjacent) for p in range(d.shape[1])]
    ).T
    assert clean.shape == (K, d.shape[1])
    return d, x, ok, clean


@pytest.mark.parametrize("two_adjacent", [False, True])
def test_constant_model_decisions_match_dense_brandt_search(two_adjacent):
    rng = np.random.default_rng(11)
    reads, sigma, mask = _cosmic_case(rng, n_pix=150, n_reads=16)
    K = reads.shape[0] - 1
    res = find_jumps(reads, sigma, mask=mask, two_adjacent=two_adjacent)
    d, x, ok, clean = _dense_reference(reads, sigma, mask, np.ones(K), np.ones(K), two_adjacent)
    assert res.jumps.sum() > 100  # the case exercises the search
    np.testing.assert_array_equal(res.diff_mask, ~clean)
    np.testing.assert_array_equal(res.jumps, ok & ~clean)
    np.testing.assert_array_equal(res.n_jumps, (ok & ~clean).sum(axis=0))
    np.testing.assert_array_equal(res.flux.n_diff, clean.sum(axis=0))
    for p in np.flatnonzero(res.n_jumps):
        flux, sizes = dense_final_fit(d[:, p], x, ok[:, p], clean[:, p], sigma[p] ** 2)
        np.testing.assert_allclose(res.flux.flux[p], flux, rtol=1e-9, atol=1e-9)
        for k, size in sizes.items():
            np.testing.assert_allclose(res.jump_size[k, p], size, rtol=1e-8, atol=1e-8)
    assert np.all(res.jump_size[~res.jumps] == 0)


def test_time_variable_decisions_match_dense_search_with_groups_and_read_times():
    rng = np.random.default_rng(12)
    n_reads = 14
    omega_a = 1.0 - 0.5 * rng.uniform(size=n_reads - 1)
    omega_b = omega_cloud(n_reads - 1, 0.6, 4, 3)
    read_times = np.cumsum(rng.uniform(0.8, 1.2, n_reads))
    dt = np.diff(read_times)
    reads_a, sigma_a, mask_a = _cosmic_case(rng, 60, n_reads, omega_a, read_times)
    reads_b, sigma_b, mask_b = _cosmic_case(rng, 60, n_reads, omega_b, read_times)
    omega_b[7] = np.nan  # a difference with no omega is masked, never searched
    reads = np.concatenate([reads_a, reads_b], axis=1)
    sigma = np.concatenate([sigma_a, sigma_b])
    mask = np.concatenate([mask_a, mask_b], axis=1)
    groups = np.repeat([0, 1], 60)
    res = find_jumps(
        reads, sigma, omega=np.stack([omega_a, omega_b]), groups=groups, mask=mask,
        read_times=read_times, two_adjacent=True,
    )  # fmt: skip
    assert res.jumps.sum() > 50
    assert not res.jumps[7, 60:].any() and res.diff_mask[7, 60:].all()
    for sl, omega in ((slice(0, 60), omega_a), (slice(60, 120), omega_b)):
        d, x, ok, clean = _dense_reference(reads[:, sl], sigma[sl], mask[:, sl], omega, dt, True)
        np.testing.assert_array_equal(res.diff_mask[:, sl], ~clean)
        np.testing.assert_array_equal(res.jumps[:, sl], ok & ~clean)


# --------------------------------------------------------------------------------------------
# Masks, flags, units and arguments
# --------------------------------------------------------------------------------------------
def test_masked_nonfinite_and_saturated_reads_are_never_searched():
    rng = np.random.default_rng(5)
    sim = simulate_ramps(rng.uniform(50, 300, 200), 15.0, n_reads=20, rng=rng)
    reads = sim.reads.copy()
    mask = np.zeros(reads.shape, dtype=bool)
    mask[8, :100] = True
    reads[8, :100] += 1e5  # garbage in the masked read
    reads[12, 100:150] = np.nan
    saturation = np.full(200, np.inf)
    saturation[150:] = reads[15, 150:]  # reads 15.. of these pixels are saturated
    res = find_jumps(reads, 15.0, mask=mask, saturation=saturation)
    assert not res.jumps.any()
    assert res.diff_mask[7:9, :100].all() and res.diff_mask[11:13, 100:150].all()
    assert res.diff_mask[14:, 150:].all() and not res.diff_mask[:14, 150:].any()
    assert np.all(res.flux.flags[:100] & Flag.MASKED_READ)
    assert np.all(res.flux.flags[100:150] & Flag.NONFINITE_READ)
    assert np.all(res.flux.flags[150:] & Flag.SATURATED)
    # Without jumps the fluxes are extract_fluxes' fluxes.
    ref = extract_fluxes(reads, 15.0, np.ones(19), mask=mask, saturation=saturation)
    np.testing.assert_allclose(res.flux.flux, ref.flux, rtol=1e-12)
    np.testing.assert_allclose(res.flux.flux_var, ref.flux_var, rtol=1e-12)
    np.testing.assert_allclose(res.flux.chi2, ref.chi2, rtol=1e-10)
    np.testing.assert_array_equal(res.flux.flags, ref.flags)


def test_flags_limits_and_units():
    rng = np.random.default_rng(6)
    sim = simulate_ramps(np.full(4, 100.0), 15.0, n_reads=12, rng=rng)
    reads = sim.reads.copy()
    reads[3:, 0] += 2000.0  # one jump
    for k in (2, 5, 8):  # three jumps
        reads[k:, 1] += 3000.0
    reads[1:, 2] += 1000.0 * np.arange(1, 12) ** 2  # nothing constant about this one
    mask = np.zeros(reads.shape, dtype=bool)
    mask[:8, 3] = True  # 3 clean differences left: no search possible
    res = find_jumps(reads, 15.0, mask=mask)
    assert res.n_jumps[0] == 1 and res.jumps[2, 0]
    assert res.n_jumps[1] == 3 and res.jumps[[1, 4, 7], 1].all()
    assert res.flux.flags[0] & Flag.JUMP_DETECTED and not res.flux.flags[0] & Flag.FEW_CLEAN_DIFFS
    assert res.flux.flags[2] & Flag.FEW_CLEAN_DIFFS and res.flux.n_diff[2] == 3
    assert res.flux.flags[3] & Flag.FEW_CLEAN_DIFFS and res.n_jumps[3] == 0
    np.testing.assert_allclose(res.jump_size[2, 0], 2000.0, atol=100)
    capped = find_jumps(reads, 15.0, mask=mask, max_jumps=1)
    assert capped.n_jumps[1] == 1
    assert not find_jumps(reads, 15.0, mask=mask, max_jumps=0).jumps.any()
    # DN in, DN out: the decisions do not depend on the gain.
    in_dn = find_jumps(reads / 2.5, 6.0, gain=2.5, mask=mask)
    np.testing.assert_array_equal(in_dn.jumps, res.jumps)
    np.testing.assert_allclose(in_dn.jump_size * 2.5, res.jump_size, rtol=1e-9)
    np.testing.assert_allclose(in_dn.flux.flux * 2.5, res.flux.flux, rtol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": np.nan}, "threshold"),
        ({"max_jumps": -1}, "max_jumps"),
        ({"omega": np.ones(3)}, "omega"),
        ({"omega": np.ones((2, 9))}, "groups"),
        ({"mask": np.zeros((10, 5), dtype=int)}, "mask"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_jumps(np.zeros((10, 5)), 10.0, **kwargs)


# --------------------------------------------------------------------------------------------
# Statistics on the APOGEE-like simulation of the issue
# --------------------------------------------------------------------------------------------
N_READS = 47


def _jump_sigma(flux, sigma, x):
    """Standard error of a jump's estimate in each difference, true model, (n_pix, K)."""
    K = x.size
    C = np.maximum(flux[:, None, None] * x, 0) * np.eye(K) + sigma[:, None, None] ** 2 * (
        2 * np.eye(K) - np.eye(K, k=1) - np.eye(K, k=-1)
    )
    Ci = np.linalg.inv(C)
    u = Ci @ x
    s = np.diagonal(Ci, axis1=1, axis2=2) - u**2 / (u @ x)[:, None]
    return 1.0 / np.sqrt(s)


def _apogee_case(rng, omega, n_clean=20000, n_hit=1000):
    """Clean pixels plus pixels with 1-2 jumps of 3 to 60 sigma at known differences.

    A jump's sigma is the standard error of its estimate under the true model. 5% of the pixels
    are hit (APOGEE: well under 1% per exposure): jumps below the threshold cannot be found and
    bias their pixel's flux, so the flux statistics depend on this fraction.
    """
    n_pix = n_clean + n_hit
    flux = np.exp(rng.uniform(np.log(10), np.log(1000), n_pix))
    sigma = rng.uniform(14, 24, n_pix)
    sim = simulate_ramps(flux, sigma, omega=omega, rng=rng)
    K = N_READS - 1
    hit = np.zeros((K, n_pix), dtype=bool)
    size_sigma = np.zeros((K, n_pix))
    for p in range(n_clean, n_pix):
        where = rng.choice(K, rng.choice([1, 2]), replace=False)
        hit[where, p] = True
        size_sigma[where, p] = np.exp(rng.uniform(np.log(3), np.log(60), where.size))
    jump_sigma = _jump_sigma(flux[n_clean:], sigma[n_clean:], omega).T
    jumps = np.zeros((K, n_pix))
    jumps[:, n_clean:] = size_sigma[:, n_clean:] * jump_sigma
    reads = sim.reads + np.concatenate([np.zeros((1, n_pix)), np.cumsum(jumps, axis=0)])
    return reads, sigma, flux, hit, size_sigma, n_clean


def _scores(res, hit, size_sigma, n_clean):
    big = hit & (size_sigma > 10)
    return {
        "completeness": res.jumps[big].mean(),
        "clean_flagged": res.jumps[:, :n_clean].any(axis=0).mean(),
    }


def test_constant_search_finds_jumps_without_false_alarms_and_unbiased_fluxes():
    rng = np.random.default_rng(2024)
    omega = np.ones(N_READS - 1)
    reads, sigma, flux, hit, size_sigma, n_clean = _apogee_case(rng, omega)
    res = find_jumps(reads, sigma)
    scores = _scores(res, hit, size_sigma, n_clean)
    z = (res.flux.flux - flux) / np.sqrt(res.flux.flux_var)
    print(scores, "z median", np.median(z), "z std", np.std(z))
    assert scores["completeness"] >= 0.95
    assert scores["clean_flagged"] <= 0.001
    assert abs(np.median(z)) < 0.03
    assert 0.97 <= np.std(z) <= 1.05


def test_time_variable_search_ignores_a_cloud_that_fools_the_constant_search():
    rng = np.random.default_rng(2025)
    omega = omega_cloud(N_READS - 1, 0.4, 20, 5)
    reads, sigma, flux, hit, size_sigma, n_clean = _apogee_case(rng, omega)
    # omega as the pipeline gets it: the joint fit of 100 bright pixels of the same exposure.
    bright = simulate_ramps(rng.uniform(800, 1200, 100), rng.uniform(14, 24, 100), omega=omega,
                            cosmic_ray_rate=0.002, rng=rng)  # fmt: skip
    fit = fit_omega(bright.reads, bright.read_noise, jump_search=True)
    constant = _scores(find_jumps(reads, sigma), hit, size_sigma, n_clean)
    variable = _scores(find_jumps(reads, sigma, omega=fit.omega), hit, size_sigma, n_clean)
    print("constant search:", constant, "time-variable search:", variable)
    assert constant["clean_flagged"] >= 5 * variable["clean_flagged"]
    assert constant["clean_flagged"] > 0.01
    assert variable["completeness"] >= 0.95
    assert variable["clean_flagged"] <= 0.001


# --------------------------------------------------------------------------------------------
# The joint fit with jump search
# --------------------------------------------------------------------------------------------
def _paper_example():
    """Spec section 7.2: seed 104, 33 reads, 100 pixels, omega ~ U(0.5, 1), f ~ U(800, 1200)."""
    legacy = np.random.RandomState(104)
    omega = 1.0 - 0.5 * legacy.uniform(0, 1, 32)
    flux = legacy.uniform(800, 1200, 100)
    sigma = legacy.uniform(14, 24, 100)
    sim = simulate_ramps(flux, sigma, omega=omega, rng=np.random.default_rng(104))
    return sim.reads, sigma


def test_joint_fit_with_jump_search_is_immune_to_cosmic_rays_in_fit_pixels():
    reads, sigma = _paper_example()
    clean = fit_omega(reads, sigma)
    hit = reads.copy()
    for pixel, diff, charge in ((7, 5, 1500.0), (42, 16, 2500.0), (88, 27, 3500.0)):
        hit[diff + 1 :, pixel] += charge
    ref = clean.ref_index
    plain = fit_omega(hit, sigma, ref_index=ref)
    searched = fit_omega(hit, sigma, ref_index=ref, jump_search=True)
    err = np.sqrt(np.diag(clean.omega_cov))
    free = np.arange(32) != ref
    dev_plain = np.abs(plain.omega - clean.omega)[free] / err[free]
    dev_searched = np.abs(searched.omega - clean.omega)[free] / err[free]
    print(
        "max |omega - clean| / sigma: without search", dev_plain.max(), "with", dev_searched.max()
    )
    assert dev_plain.max() > 1.0
    assert dev_searched.max() < 1.0
    assert np.all(searched.flags[[7, 42, 88]] & Flag.JUMP_DETECTED)
    np.testing.assert_array_equal(searched.n_diff[[7, 42, 88]], 31)
    assert not np.any(plain.flags & Flag.JUMP_DETECTED)


def test_joint_fit_jump_search_on_clean_groups_changes_nothing():
    reads, sigma = _paper_example()
    cube = np.stack([reads, reads[:, ::-1]], axis=1)  # two groups
    plain = fit_omega(cube, sigma[None, :])
    searched = fit_omega(cube, sigma[None, :], jump_search=True)
    assert not np.any(searched.flags & Flag.JUMP_DETECTED)
    np.testing.assert_array_equal(searched.omega, plain.omega)
    np.testing.assert_array_equal(searched.n_diff, plain.n_diff)
    with pytest.raises(ValueError, match="jump_threshold"):
        fit_omega(reads, sigma, jump_search=True, jump_threshold=-1)


def _pixels_with_jumps(seed: int, K: int, B: int, hit_rate: float):
    """``(rng, x, flux, s2, d, valid)`` of B pixels (K, B): APOGEE-like differences, with jumps
    of up to 400 e- in ``hit_rate`` of them (many near the threshold), 10 % unusable."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 1.0, (K, B)) * 10.6
    flux = rng.uniform(1.0, 500.0, B)
    s2 = rng.uniform(100.0, 400.0, B)
    d = flux * x + rng.normal(0.0, 1.0, (K, B)) * np.sqrt(flux * x + 2 * s2)
    d += (rng.random((K, B)) < hit_rate) * rng.uniform(0.0, 400.0, (K, B))
    valid = rng.random((K, B)) > 0.1
    return rng, x, flux, s2, d, valid


@pytest.mark.parametrize("two_adjacent", [True, False])
def test_block_screen_agrees_with_the_scalar_search(two_adjacent):
    """The vectorised first round says 'search' wherever search_pixel flags something (it may
    say so for a pixel within 1e-9 of the threshold, which search_pixel then leaves)."""
    from pyapred.solver._jumps import (
        _N_WORK,
        _block_needs_search,
        chi2_thresholds,
        search_at_rate,
        search_pixel,
    )

    K, B = 30, 400
    rng, x, flux, s2, d, valid = _pixels_with_jumps(4, K, B, 0.02)
    valid[:, :5] = False  # nothing to search
    valid[3:, 5:10] = False  # too few clean differences
    d, x = np.where(valid, d, 0.0), np.where(valid, x, 0.0)
    rate = np.maximum(flux + rng.normal(0.0, 5.0, B), 0.0)
    thr_one, thr_two = chi2_thresholds(4.5)
    needs = np.empty(B, dtype=bool)
    sxx, sxd = np.empty(B), np.empty(B)
    # The mask as the kernels hold it (uint8 bytes): a bool array would compile it once more.
    _block_needs_search(d, x, valid.view(np.uint8), valid.sum(axis=0), s2, rate, thr_one, thr_two,
                        two_adjacent, 10, needs, sxx, sxd)  # fmt: skip
    # Its sums are the first GLS pass's, bit for bit (find_jumps_kernel reuses them).
    from pyapred.solver._numpy import _block_pass

    want_xx, want_xd = np.empty(B), np.empty(B)
    _block_pass(d, x, valid, s2, rate, False, rate, want_xx, want_xd, np.empty((3, B)))
    np.testing.assert_array_equal(sxx, want_xx)
    np.testing.assert_array_equal(sxd, want_xd)
    found, first = np.array([
        [search(d[:, p].copy(), x[:, p].copy(), valid[:, p].copy(), s2[p], rate[p], thr_one,
                thr_two, two_adjacent, 10, np.empty((_N_WORK, K)))
         for search in (search_pixel, search_at_rate)]
        for p in range(B)
    ]).T  # fmt: skip
    assert 20 < needs.sum() < B - 20
    assert np.all(needs[found > 0])
    # The screen is the first search's first round (search_pixel searches again only where
    # that flags anything).
    assert np.array_equal(needs, first > 0)  # no pixel of this draw is that close


def _search_reference(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent, max_jumps):
    """search_at_rate written loop by loop, as spec section 1.6 reads (the factorisation, each
    substitution and each drop in its own loop), in plain Python: ``(n_flagged, valid, d, x)``."""
    from pyapred.solver._numpy import _backward

    d, x, valid = d.copy(), x.copy(), valid.copy()
    K = d.size
    back, u, z, cinv = np.zeros((4, K))
    n_valid, n_flagged = int(valid.sum()), 0
    while n_valid > 3 and n_flagged < max_jumps:
        (alpha, beta, piv, low, yx, yd), xu, xz = _forward_sums_reference(d, x, valid, s2, rate)
        if not xu > 0.0:
            break
        a = xz / xu
        _backward.py_func(low, piv, yx, u)
        _backward.py_func(low, piv, yd, z)
        back[K - 1] = alpha[K - 1]
        for k in range(K - 2, -1, -1):
            back[k] = alpha[k] - beta[k] * beta[k] / back[k + 1]
        for k in range(K):
            den = alpha[k]
            if k > 0:
                den -= beta[k - 1] * beta[k - 1] / piv[k - 1]
            if k < K - 1:
                den -= beta[k] * beta[k] / back[k + 1]
            cinv[k] = 1.0 / den
        best_one, k_one = 0.0, -1
        for k in range(K):
            s = cinv[k] - u[k] * u[k] / xu
            if valid[k] and s > 0.0:
                drop = (z[k] - a * u[k]) ** 2 / s
                if drop > best_one:
                    best_one, k_one = drop, k
        best_two, k_two = 0.0, -1
        for k in range(K - 1) if two_adjacent else ():
            s11 = cinv[k] - u[k] * u[k] / xu
            s22 = cinv[k + 1] - u[k + 1] * u[k + 1] / xu
            s12 = -cinv[k + 1] * beta[k] / piv[k] - u[k] * u[k + 1] / xu
            det = s11 * s22 - s12 * s12
            if valid[k] and valid[k + 1] and det > 0.0:
                q1, q2 = z[k] - a * u[k], z[k + 1] - a * u[k + 1]
                drop = (s22 * q1 * q1 - 2.0 * s12 * q1 * q2 + s11 * q2 * q2) / det
                if drop > best_two:
                    best_two, k_two = drop, k
        if k_one >= 0 and best_one > thr_one and best_one - thr_one > best_two - thr_two:
            flagged = [k_one]
        elif k_two >= 0 and best_two > thr_two:
            flagged = [k_two, k_two + 1]
        else:
            break
        valid[flagged] = False
        d[flagged] = x[flagged] = 0.0
        n_valid -= len(flagged)
        n_flagged += len(flagged)
    return n_flagged, valid, d, x


@pytest.mark.parametrize(
    ("sigmas", "two_adjacent", "max_jumps"),
    [
        (4.5, True, 10),
        (4.5, True, 1),
        (4.5, False, 1),
        (3.0, True, 4),
        (3.0, False, 10),
        (2.0, False, 3),
    ],
)
def test_search_at_rate_is_the_loop_by_loop_search_to_the_bit(sigmas, two_adjacent, max_jumps):
    """search_at_rate runs its recursions in shared loops and its drops without branches; it
    flags what the loop-by-loop transcription flags, round for round (the Julia twin is
    checked against the same conformance vectors). Low thresholds give several rounds."""
    from pyapred.solver._jumps import chi2_thresholds, search_at_rate

    K, B = 24, 150
    rng, x, flux, s2, d, valid = _pixels_with_jumps(8, K, B, 0.05)
    # Exact ties: equal differences kept apart by unusable ones have the same drop (first
    # isolated ones, then isolated pairs); the first of them is flagged.
    x[:, :10] = 10.6
    d[:, :10] = 1060.0 + 400.0 * np.isin(np.arange(K), (3, 4, 15, 16))[:, None]
    valid[:, :5] = (np.arange(K) % 2 == 0)[:, None]
    valid[:, 5:10] = (np.arange(K) % 3 != 2)[:, None]
    valid[:, 10:15] = True
    valid[3:, 15:20] = False  # too few clean differences
    d, x = np.where(valid, d, 0.0), np.where(valid, x, 0.0)
    rate = np.maximum(flux + rng.normal(0.0, 5.0, B), 0.0)
    rate[:10], s2[:10] = 100.0, 200.0
    thr_one, thr_two = chi2_thresholds(sigmas)
    flagged = np.zeros(B, dtype=int)
    for p in range(B):
        got_d, got_x, got_valid = d[:, p].copy(), x[:, p].copy(), valid[:, p].copy()
        n = search_at_rate(got_d, got_x, got_valid, s2[p], rate[p], thr_one, thr_two,
                           two_adjacent, max_jumps, np.empty((10, K)))  # fmt: skip
        want = _search_reference(d[:, p], x[:, p], valid[:, p], s2[p], rate[p], thr_one,
                                 thr_two, two_adjacent, max_jumps)  # fmt: skip
        assert n == want[0], p
        np.testing.assert_array_equal(got_valid, want[1])
        np.testing.assert_array_equal(got_d, want[2])
        np.testing.assert_array_equal(got_x, want[3])
        flagged[p] = n
    assert np.all(flagged[:10] > 0)  # the ties are met
    assert np.count_nonzero(flagged) > B // 4


def _forward_sums_reference(d, x, valid, s2, rate):
    """The factorisation of C at ``rate`` and the forward substitutions of x and d, each in its
    own loop: ``((alpha, beta, piv, low, yx, yd), x^T C^-1 x, x^T C^-1 d)``."""
    from pyapred.solver._numpy import _factor, _forward

    alpha, beta, piv, low, yx, yd = work = np.zeros((6, d.size))
    _factor.py_func(x, valid, s2, rate, alpha, beta, piv, low)
    _forward.py_func(low, x, yx)
    _forward.py_func(low, d, yd)
    xu = xz = 0.0
    for k in range(d.size):
        xu += yx[k] * yx[k] / piv[k]
        xz += yx[k] * yd[k] / piv[k]
    return tuple(work), xu, xz


def _clean_rate_reference(d, x, valid, s2, rate):
    """The GLS rate of the ``valid`` differences with C at ``rate``, loop by loop."""
    _, xu, xz = _forward_sums_reference(d, x, valid, s2, rate)
    return xz / xu


def test_search_pixel_searches_a_flagged_pixel_again_at_its_clean_rate():
    """search_pixel is search_at_rate at the given rate and, where that flags anything, a new
    search of the pixel's own differences with C at the GLS rate of those left clean."""
    from pyapred.solver._jumps import _N_WORK, chi2_thresholds, search_pixel

    K, B = 24, 300
    rng, x, flux, s2, d, valid = _pixels_with_jumps(9, K, B, 0.03)
    d, x = np.where(valid, d, 0.0), np.where(valid, x, 0.0)
    # Rates as the median gives them where read noise rules: often far too low.
    rate = np.maximum(flux * rng.uniform(0.0, 1.5, B), 0.0)
    thr_one, thr_two = chi2_thresholds(4.5)
    searched_again = moved = 0
    for p in range(B):
        got_d, got_x, got_valid = d[:, p].copy(), x[:, p].copy(), valid[:, p].copy()
        n = search_pixel(got_d, got_x, got_valid, s2[p], rate[p], thr_one, thr_two, True, 10,
                         np.empty((_N_WORK, K)))  # fmt: skip
        want = _search_reference(d[:, p], x[:, p], valid[:, p], s2[p], rate[p], thr_one,
                                 thr_two, True, 10)  # fmt: skip
        if want[0] > 0:
            clean_rate = _clean_rate_reference(want[2], want[3], want[1], s2[p], rate[p])
            first = want[1]
            want = _search_reference(d[:, p], x[:, p], valid[:, p], s2[p], max(clean_rate, 0.0),
                                     thr_one, thr_two, True, 10)  # fmt: skip
            searched_again += 1
            moved += not np.array_equal(first, want[1])
        assert n == want[0], p
        np.testing.assert_array_equal(got_valid, want[1])
        np.testing.assert_array_equal(got_d, want[2])
        np.testing.assert_array_equal(got_x, want[3])
    assert searched_again > 50 and moved > 5  # the second search happens, and matters


def test_faint_pixels_ruled_by_read_noise_see_the_expected_false_alarms():
    """At 1 e- per read, read noise 5 e- and 50 reads, the median rate that the covariance
    starts from scatters by 0.7 e- per read: a low draw underrates the photon noise. Searched
    again at the clean GLS rate, the clean pixels flagged are near the 0.033 % that 49 tests at
    4.5 sigma give (0.64 % with the median rate alone)."""
    rng = np.random.default_rng(31)
    n_pix = 40_000
    sim = simulate_ramps(np.full(n_pix, 1.0), 5.0, n_reads=50, rng=rng)
    flagged = (find_jumps(sim.reads, 5.0).n_jumps > 0).mean()
    print("clean pixels flagged", flagged)
    assert flagged < 0.0012


# --------------------------------------------------------------------------------------------
# The compact result: packed mask and a list of jumps, the same as the kernel's dense outputs
# --------------------------------------------------------------------------------------------
def _hostile_jump_case(shape=(7, 13)):
    """Cosmic rays, a cloud, per-group omega, a mask, saturation, per-pixel gain, and a pixel
    left with too few differences (NaN flux)."""
    rng = np.random.default_rng(11)
    K = 14
    omega = np.stack([omega_cloud(K, 0.4, 6, 2), np.linspace(1.0, 0.7, K)])
    groups = rng.integers(0, 2, shape)
    sim = simulate_ramps(rng.uniform(20, 3000, shape), 12.0, omega=omega[0], rng=rng,
                         cosmic_ray_rate=0.08, cosmic_ray_charge=(600, 5000))  # fmt: skip
    mask = rng.random(sim.reads.shape) < 0.03
    mask[2:, 0, 0] = True  # two reads left: one difference, no flux
    gain = rng.uniform(1.5, 2.5, shape)
    kwargs = dict(omega=omega, groups=groups, mask=mask, gain=gain, saturation=30000.0)
    return sim.reads, kwargs


@pytest.mark.parametrize("two_adjacent", [True, False])
def test_compact_result_equals_the_dense_kernel_outputs(two_adjacent):
    """find_jumps's packed mask and jump list (the search without dense outputs, then
    jump_sizes_kernel on the pixels with jumps) hold exactly what one kernel run with dense
    outputs writes."""
    from pyapred.solver import _jumps, api

    reads, kwargs = _hostile_jump_case()
    res = find_jumps(reads, 12.0, two_adjacent=two_adjacent, **kwargs)
    assert res.jump_index.shape[0] > 5 and res.diff_mask.shape == (14, 7, 13)
    # The kernel once more, writing every output dense.
    K, n_pix = 14, 7 * 13
    reads2d, bad, use_mask, sigma, gain, sat = api._pixel_inputs(
        reads, 12.0, kwargs["gain"], kwargs["mask"], kwargs["saturation"]
    )
    thr_one, thr_two = _jumps.chi2_thresholds(4.5)
    bits = np.empty((K, 12), dtype=np.uint8)
    jumps, size = np.empty((K, n_pix), dtype=bool), np.empty((K, n_pix))
    n_jumps = np.empty(n_pix, dtype=np.int64)
    out = api._flux_outputs(n_pix)
    # omega and groups as find_jumps passes them (another type would compile the kernel again).
    omega, groups = api._omega_rows(kwargs["omega"], kwargs["groups"], K, (7, 13))
    _jumps.find_jumps_kernel(
        reads2d, bad, use_mask, omega, groups, np.ones(K), sigma,
        gain, sat, thr_one, thr_two, two_adjacent, _jumps.NO_LIMIT, 2, bits, jumps, size,
        n_jumps, *out,
    )  # fmt: skip
    assert np.array_equal(res.diff_mask_bits, bits)
    assert np.all(bits[:, -1] & 0b111 == 0)  # 91 pixels: the last byte's 3 spare bits stay 0
    assert np.array_equal(res.jumps.reshape(K, -1), jumps)
    assert np.array_equal(res.jump_size.reshape(K, -1), size / gain)  # e- to the units of reads
    assert np.array_equal(res.jump_index, np.argwhere(res.jumps))
    assert np.array_equal(res.jump_charge, res.jump_size[res.jumps])
    assert np.array_equal(res.n_jumps.reshape(-1), n_jumps)
    unpacked = np.unpackbits(bits, axis=1, count=n_pix).astype(bool)
    assert np.array_equal(res.diff_mask.reshape(K, -1), unpacked)
    # Every flagged difference is unused, and the mask counts what n_diff leaves.
    assert np.all(res.diff_mask[res.jumps])
    assert np.array_equal(K - res.diff_mask.sum(axis=0), res.flux.n_diff)


def test_compact_result_of_a_single_pixel_and_of_a_clean_chip():
    sim = simulate_ramps(np.array([200.0]), 10.0, n_reads=20, rng=np.random.default_rng(2))
    reads = sim.reads[:, 0].copy()
    reads[12:] += 3000.0  # one cosmic ray
    one = find_jumps(reads, 10.0)  # pixel_shape ()
    assert one.jump_index.tolist() == [[11]] and one.jumps.shape == (19,)
    assert one.jump_size[11] == pytest.approx(3000.0, abs=60) and one.diff_mask[11]
    clean = find_jumps(sim.reads, 10.0)
    assert clean.jump_index.shape == (0, 2) and clean.jump_charge.shape == (0,)
    assert not clean.jumps.any() and not clean.diff_mask.any()
    assert "0 jumps in 0 pixels" in repr(clean) and "1 jumps in 1 pixels" in repr(one)


def test_a_pixel_fit_does_not_depend_on_the_block_it_falls_in():
    """The kernels work on blocks of pixels (256 for the search, 1024 for the extraction); a
    pixel's result is the same bits whether it is fitted with 1301 others, across the blocks'
    edges and in a last, partial block, or alone with a few neighbours."""
    from pyapred import extract_fluxes

    rng = np.random.default_rng(21)
    reads, sigma, mask = _cosmic_case(rng, n_pix=1301, n_reads=16)
    K = reads.shape[0] - 1
    omega = np.linspace(1.0, 0.7, K)
    whole = find_jumps(reads, sigma, mask=mask, omega=omega)
    fluxes = extract_fluxes(reads, sigma, omega, mask=mask)
    assert whole.jumps.sum() > 500  # the case exercises the search
    for start, stop in ((0, 7), (250, 263), (509, 515), (1019, 1030), (1290, 1301)):
        part = find_jumps(reads[:, start:stop], sigma[start:stop], mask=mask[:, start:stop],
                          omega=omega)  # fmt: skip
        np.testing.assert_array_equal(part.diff_mask, whole.diff_mask[:, start:stop])
        np.testing.assert_array_equal(part.jump_size, whole.jump_size[:, start:stop])
        np.testing.assert_array_equal(part.flux.flux, whole.flux.flux[start:stop])
        alone = extract_fluxes(reads[:, start:stop], sigma[start:stop], omega,
                               mask=mask[:, start:stop])  # fmt: skip
        np.testing.assert_array_equal(alone.flux, fluxes.flux[start:stop])
        np.testing.assert_array_equal(alone.chi2, fluxes.chi2[start:stop])


def test_deferred_covariance_of_the_jump_search_is_the_same_bits(monkeypatch):
    """The search's first fit stops at the solution (``finish=False``), the groups it leaves
    alone are finished at the end (``finish_groups``): the same bits as finishing every fit."""
    from pyapred.solver import _jumps, _numpy

    reads, sigma = _paper_example()
    hit = reads.copy()
    hit[6:, 7] += 1500.0  # a cosmic ray in the first group only
    # Three groups: one with a jump, one clean, one pivoted away from ref_index 0 (its first
    # difference is dark), and an empty one.
    dark = reads.copy()
    dark[1:] -= dark[1] - dark[0]
    cube = np.stack([hit, reads[:, ::-1], dark, reads], axis=1)
    mask = np.zeros(cube.shape, dtype=bool)
    mask[:, 3] = True
    kwargs = dict(jump_search=True, ref_index=0, mask=mask)
    deferred = fit_omega(cube, sigma[None, :], **kwargs)
    calls = []
    unpatched = _numpy.fit_omega_groups

    def always_finish(*args, finish=True, **options):
        calls.append(finish)
        return unpatched(*args, **options)

    monkeypatch.setattr(_jumps, "fit_omega_groups", always_finish)
    monkeypatch.setattr(_jumps, "finish_groups", lambda *args: {})  # nothing left to finish
    finished = fit_omega(cube, sigma[None, :], **kwargs)
    assert calls[0] is False and len(calls) == 2  # deferred, then the one refit
    assert deferred.flags[0, 7] & Flag.JUMP_DETECTED
    for name in ("omega", "omega_cov", "flux", "flux_var", "chi2", "n_iter", "converged",
                 "stop_reason", "ref_index"):  # fmt: skip
        np.testing.assert_array_equal(getattr(deferred, name), getattr(finished, name), name)
    assert np.isfinite(deferred.omega_cov[:2]).all() and np.isnan(deferred.omega[3]).all()


def test_finish_groups_completes_an_unfinished_fit_to_the_bit():
    from pyapred.solver import _numpy

    reads, sigma = _paper_example()
    cube = np.stack([reads, reads[:, ::-1]], axis=1).astype(np.float64)
    diffs = np.ascontiguousarray(np.diff(cube, axis=0).transpose(1, 2, 0))
    G, P, K = diffs.shape
    valid = np.ones(diffs.shape, dtype=bool)
    s2 = np.broadcast_to(sigma**2, (G, P)).copy()
    fit_pixel = np.ones((G, P), dtype=bool)
    options = dict(reference=False, rtol=1e-8, max_iter=50, ref_index=np.array([0, 5]))
    whole = _numpy.fit_omega_groups(diffs, valid, s2, np.ones(K), fit_pixel, **options)
    part = _numpy.fit_omega_groups(diffs, valid, s2, np.ones(K), fit_pixel, finish=False,
                                   **options)  # fmt: skip
    assert np.isnan(part["omega_cov"]).all() and np.isnan(part["chi2"]).all()
    done = _numpy.finish_groups(diffs, valid, s2, np.ones(K), fit_pixel, part)
    assert done.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(done[key], whole[key], key)
    with pytest.raises(ValueError, match="finish=False"):
        _numpy.fit_omega_groups(diffs, valid, s2, np.ones(K), fit_pixel, finish=False,
                                **options | {"reference": True})  # fmt: skip


def test_the_packed_mask_of_a_row_is_numpys_packbits():
    """``_pack_unused`` (a word and a multiplication for each whole byte) writes what
    ``np.packbits(usable == 0)`` does, for whole and partial last bytes."""
    from pyapred.solver._jumps import _pack_unused

    rng = np.random.default_rng(5)
    for n in [*range(1, 26), 255, 256]:
        for fraction in (0.0, 0.5, 1.0):
            usable = (rng.random(n) < fraction).astype(np.uint8)
            out = np.full((n + 7) // 8, 0xAA, dtype=np.uint8)
            _pack_unused(usable, out)
            np.testing.assert_array_equal(out, np.packbits(usable == 0), err_msg=f"n={n}")
