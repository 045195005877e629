"""fit_omega (Schur Gauss-Newton), initial_guess and sample_omega."""

import numpy as np
import pytest

from pyapred import (
    Flag,
    extract_fluxes,
    fit_constant,
    fit_omega,
    initial_guess,
    omega_uniform,
    sample_omega,
    simulate_ramps,
)
from pyapred.solver import _numpy

from . import dense


def paper_example():
    """The paper's section III.1 data set, drawn exactly as the reference notebook does.

    Legacy global-RNG stream seeded with 104: omega, then fluxes, then read noise, then per-pixel
    Poisson increments, then the read noise of all reads (spec section 7).
    """
    rs = np.random.RandomState(104)
    omega = 1.0 - 0.5 * rs.uniform(0, 1, 32)
    flux = rs.uniform(800, 1200, 100)
    sigma = rs.uniform(14, 24, 100)
    counts = np.zeros((100, 33))
    for p in range(100):
        counts[p, 1:] = np.cumsum(rs.poisson(flux[p] * omega))
    counts += rs.randn(100, 33) * sigma[:, None]
    return counts.T.copy(), sigma, omega, flux


def _inflation(fit):
    return np.sqrt(np.mean(fit.chi2) / np.mean(fit.n_diff - 1))


def test_paper_example_reference_mode():
    reads, sigma, omega_true, _ = paper_example()
    fit = fit_omega(reads, sigma, mode="reference")
    assert fit.converged and fit.n_iter <= 10
    assert fit.n_iter == 5  # as reproduced from the reference notebook (spec 7.2)
    assert fit.omega[fit.ref_index] == 1.0
    tv = extract_fluxes(reads, sigma, fit.omega)
    const = fit_constant(reads, sigma)
    assert abs(_inflation(tv) - 1.0) < 0.1
    assert abs(_inflation(const) - 3.913) < 0.05
    # The notebook's figures for the same data (spec 5.1): 0.972 and 3.913.
    assert abs(_inflation(tv) - 0.972) < 0.01
    truth = omega_true / omega_true[fit.ref_index]
    err = np.sqrt(np.diag(fit.omega_cov))
    free = err > 0
    assert np.max(np.abs(fit.omega[free] - truth[free]) / err[free]) < 4


def test_default_mode_agrees_with_reference_mode():
    reads, sigma, _, _ = paper_example()
    ref = fit_omega(reads, sigma, mode="reference")
    default = fit_omega(reads, sigma)
    assert default.converged and default.ref_index == ref.ref_index
    err = np.sqrt(np.diag(ref.omega_cov))
    assert np.max(np.abs(default.omega - ref.omega) / np.where(err > 0, err, 1)) < 1e-3
    np.testing.assert_allclose(default.omega_cov, ref.omega_cov, rtol=1e-3, atol=1e-12)


def test_schur_step_equals_dense_normal_equations():
    rng = np.random.default_rng(20)
    P, K = 7, 6
    omega = rng.uniform(0.5, 1.0, K)
    sigma = rng.uniform(10, 20, P)
    sim = simulate_ramps(rng.uniform(100, 900, P), sigma, omega=omega, rng=rng)
    diffs = np.diff(sim.reads, axis=0).T.copy()
    flux0 = rng.uniform(100, 900, P)
    omega0 = rng.uniform(0.5, 1.0, K)
    omega0[2] = 1.0
    d_flux, d_omega, H = dense.gauss_newton_step(diffs, sigma**2, flux0, omega0, 2)
    fast_flux, fast_omega, sch = _numpy.gauss_newton_step(
        diffs[None], np.ones((1, P, K), bool), (sigma**2)[None], np.ones(K), flux0[None],
        omega0[None], np.array([2]), np.ones((1, P), bool),
    )  # fmt: skip
    np.testing.assert_allclose(fast_omega[0], d_omega, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(fast_flux[0], d_flux, rtol=1e-9, atol=1e-10)
    # The Schur complement's inverse is the omega block of H^-1 (marginal covariance).
    free = np.arange(K) != 2
    cov_dense = np.linalg.inv(H)[P:, P:]
    np.testing.assert_allclose(np.linalg.inv(sch[0][np.ix_(free, free)]), cov_dense, rtol=1e-9)


def test_marginal_flux_variance_matches_dense_inverse():
    rng = np.random.default_rng(21)
    P, K = 12, 8
    omega = rng.uniform(0.6, 1.0, K)
    sigma = rng.uniform(10, 20, P)
    sim = simulate_ramps(rng.uniform(300, 900, P), sigma, omega=omega, rng=rng)
    fit = fit_omega(sim.reads, sigma, mode="reference")
    # Rebuild H at the parameters of the last linearisation (quirk Q3): one step before the end.
    diffs = np.diff(sim.reads, axis=0).T
    # Converged to 1e-10, so evaluating at the solution differs negligibly.
    omega_hat = np.maximum(fit.omega, 1e-10)
    _, _, H = dense.gauss_newton_step(diffs, sigma**2, fit.flux, omega_hat, fit.ref_index)
    cov = np.linalg.inv(H)
    np.testing.assert_allclose(fit.flux_var, np.diag(cov)[:P], rtol=1e-6)
    free = np.arange(K) != fit.ref_index
    np.testing.assert_allclose(fit.omega_cov[np.ix_(free, free)], cov[P:, P:], rtol=1e-6)
    assert np.all(fit.omega_cov[fit.ref_index] == 0) and np.all(
        fit.omega_cov[:, fit.ref_index] == 0
    )


def test_omega_recovery_z_scores_over_2048_pixels():
    rng = np.random.default_rng(22)
    n_groups, n_pix, n_reads = 6, 2048, 47
    omegas = np.stack([omega_uniform(n_reads - 1, 0.3, rng) for _ in range(n_groups)])
    reads = np.empty((n_reads, n_groups, n_pix))
    sigma = rng.uniform(14, 24, (n_groups, n_pix))
    for g in range(n_groups):
        flux = rng.uniform(100, 1000, n_pix)
        reads[:, g] = simulate_ramps(flux, sigma[g], omega=omegas[g], rng=rng).reads
    fit = fit_omega(reads, sigma)
    assert fit.converged.all()
    z = []
    for g in range(n_groups):
        truth = omegas[g] / omegas[g, fit.ref_index[g]]
        err = np.sqrt(np.diag(fit.omega_cov[g]))
        free = err > 0
        z.append((fit.omega[g, free] - truth[free]) / err[free])
    z = np.concatenate(z)
    assert 0.8 <= np.std(z) <= 1.2
    assert abs(np.mean(z)) < 0.3


def test_groups_are_independent_and_padding_is_ignored():
    rng = np.random.default_rng(23)
    omega = [omega_uniform(15, 0.4, rng), omega_uniform(15, 0.2, rng)]
    sims = [simulate_ramps(rng.uniform(500, 900, 30), 15.0, omega=o, rng=rng) for o in omega]
    reads = np.stack([s.reads for s in sims], axis=1)
    reads = np.concatenate([reads, np.zeros((16, 2, 3))], axis=2)  # 3 padding pixels
    mask = np.zeros(reads.shape, bool)
    mask[:, :, 30:] = True
    both = fit_omega(reads, 15.0, mask=mask)
    for g in range(2):
        alone = fit_omega(sims[g].reads, 15.0)
        np.testing.assert_allclose(both.omega[g], alone.omega, rtol=1e-12)
        np.testing.assert_allclose(both.flux[g, :30], alone.flux, rtol=1e-12)
        np.testing.assert_allclose(both.omega_cov[g], alone.omega_cov, rtol=1e-9, atol=1e-15)
        assert both.n_iter[g] == alone.n_iter
    assert np.all(np.isnan(both.flux[:, 30:]))
    assert np.all(both.flags[:, 30:] & Flag.NOT_IN_OMEGA_FIT)


def test_masked_reads_in_the_omega_fit():
    rng = np.random.default_rng(24)
    omega = omega_uniform(20, 0.3, rng)
    sim = simulate_ramps(rng.uniform(500, 3000, 80), 15.0, omega=omega, rng=rng, saturation=40000.0)
    reads = sim.reads.copy()
    reads[7, 3] = np.nan
    fit = fit_omega(reads, 15.0, saturation=40000.0)
    assert fit.converged and np.all(np.isfinite(fit.omega))
    assert fit.flags[3] & Flag.NONFINITE_READ
    assert np.any(fit.flags & Flag.SATURATED)
    truth = omega / omega[fit.ref_index]
    err = np.sqrt(np.diag(fit.omega_cov))
    free = err > 0
    assert np.max(np.abs(fit.omega[free] - truth[free]) / err[free]) < 5


def test_omega_element_without_data_is_flagged_not_singular():
    rng = np.random.default_rng(25)
    omega = omega_uniform(10, 0.3, rng)
    sim = simulate_ramps(rng.uniform(500, 900, 40), 15.0, omega=omega, rng=rng)
    mask = np.zeros(sim.reads.shape, bool)
    mask[5] = True  # read 5 bad everywhere: differences 4 and 5 have no data
    fit = fit_omega(sim.reads, 15.0, mask=mask)
    assert fit.group_flags & Flag.OMEGA_ELEMENT_NO_DATA
    assert np.isnan(fit.omega[4]) and np.isnan(fit.omega[5])
    assert np.all(fit.omega_cov[4] == 0) and np.all(fit.omega_cov[:, 5] == 0)
    assert np.all(np.isfinite(np.delete(fit.omega, [4, 5])))
    extracted = extract_fluxes(sim.reads, 15.0, fit.omega, mask=mask)
    assert np.all(np.isfinite(extracted.flux))


def test_empty_group_and_forced_reference_read():
    rng = np.random.default_rng(26)
    omega = omega_uniform(12, 0.3, rng)
    sim = simulate_ramps(rng.uniform(500, 900, 20), 15.0, omega=omega, rng=rng)
    reads = np.stack([sim.reads, np.full_like(sim.reads, np.nan)], axis=1)
    fit = fit_omega(reads, 15.0, ref_index=3)
    assert fit.ref_index.tolist() == [3, 3]
    assert fit.omega[0, 3] == 1.0 and fit.converged[0]
    assert fit.group_flags[1] & Flag.EMPTY_GROUP and np.all(np.isnan(fit.omega[1]))


@pytest.mark.parametrize("how", ["default", "jump_search", "segments"])
def test_the_chi2_is_eq24_at_the_returned_solution(how):
    """The chi2 comes from the solution's own evaluation of the normal equations (no pass of
    its own): each fitted pixel's ``r^T C^-1 r`` at the returned fluxes and omega, NaN for the
    others and for an empty group, on whichever path finished the fit."""
    rng = np.random.default_rng(31)
    K, P = 14, 24
    omega = omega_uniform(K, 0.3, rng)
    sim = simulate_ramps(rng.uniform(200, 2000, (2, P)), 12.0, omega=omega, rng=rng)
    reads = np.concatenate([sim.reads, np.full((K + 1, 1, P), np.nan)], axis=1)  # empty group
    mask = rng.random(reads.shape) < 0.05
    mask[6] = True  # differences 5 and 6 have no data: omega NaN there
    mask[:, 0, 3] = True  # a pixel with no usable difference
    options = {"jump_search": {"jump_search": True},
               "segments": {"segments": np.repeat([[0, 1]], 3, axis=0).repeat(P // 2, axis=1)},
               "default": {}}[how]  # fmt: skip
    fit = fit_omega(reads, 12.0, mask=mask, **options)
    assert fit.group_flags[2] & Flag.EMPTY_GROUP and np.all(np.isnan(fit.chi2[2]))
    fitted = ~(fit.flags & Flag.NOT_IN_OMEGA_FIT).astype(bool)
    assert not fitted[0, 3] and np.isnan(fit.chi2[0, 3])
    assert np.all(np.isnan(fit.chi2[~fitted]))
    for g, p in zip(*np.nonzero(fitted), strict=True):
        bad = mask[:, g, p]
        usable = ~(bad[1:] | bad[:-1])
        if fit.jump_mask is not None:
            usable &= ~fit.jump_mask[g, p]
        d = np.diff(reads[:, g, p])
        if fit.offsets is not None:
            d = d - np.nan_to_num(fit.offsets[g, p // (P // 2)])
        expected = dense.chi2_at(d, 12.0, fit.flux[g, p], fit.omega[g], usable=usable)
        np.testing.assert_allclose(fit.chi2[g, p], expected, rtol=1e-11)


def test_gain_scales_fluxes_not_omega():
    """Reads in DN with gain g fit as the same reads times g in electrons: omega and chi2 the
    same, fluxes (and the offsets of ``segments``, in the reads' units) times g, flux
    variances times g^2."""
    rng = np.random.default_rng(27)
    omega = omega_uniform(12, 0.3, rng)
    sim = simulate_ramps(rng.uniform(500, 900, 50), 15.0, omega=omega, gain=1.9, rng=rng)
    in_dn = fit_omega(sim.reads, 15.0 / 1.9, gain=1.9)
    in_e = fit_omega(sim.reads * 1.9, 15.0)
    np.testing.assert_allclose(in_dn.omega, in_e.omega, rtol=1e-10)
    np.testing.assert_allclose(in_dn.flux * 1.9, in_e.flux, rtol=1e-10)
    np.testing.assert_allclose(in_dn.flux_var * 1.9**2, in_e.flux_var, rtol=1e-10)
    np.testing.assert_allclose(in_dn.chi2, in_e.chi2, rtol=1e-10)
    # With the nuisance term: 5 segments, each with its own offsets (DN per read interval).
    segments = np.arange(50) % 5
    reads = sim.reads.copy()
    reads[1:] += np.cumsum(rng.normal(0.0, 20.0, (5, 12))[segments].T, axis=0)
    in_dn = fit_omega(reads, 15.0 / 1.9, gain=1.9, segments=segments)
    in_e = fit_omega(reads * 1.9, 15.0, segments=segments)
    assert in_dn.converged and np.abs(in_e.offsets).max() > 10.0
    np.testing.assert_allclose(in_dn.omega, in_e.omega, rtol=1e-10)
    np.testing.assert_allclose(in_dn.offsets * 1.9, in_e.offsets, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(in_dn.flux * 1.9, in_e.flux, rtol=1e-10)
    np.testing.assert_allclose(in_dn.flux_var * 1.9**2, in_e.flux_var, rtol=1e-10)


def test_initial_guess_is_normalised_at_its_maximum():
    reads, sigma, _, _ = paper_example()
    for mode in ("reference", "default"):
        omega, flux, k = initial_guess(reads, sigma, mode=mode)
        assert omega[k] == 1.0 and np.all(omega <= 1.0) and np.all(flux > 0)
    # The reference's (2 sigma^2)^2 error term changes the weights, hence the guess.
    assert not np.allclose(initial_guess(reads, sigma, mode="reference")[0], omega)
    # A misspelt mode is refused (it ran the default mode), as by fit_omega and APRampFit.
    with pytest.raises(ValueError, match="mode: expected 'default' or 'reference'"):
        initial_guess(reads, sigma, mode="refrence")


def test_a_single_group_s_maps_are_checked_against_its_own_pixel_shape():
    """The messages showed the internal group axis: "shape (1, 39) does not broadcast to the
    pixel shape (1, 40)"."""
    reads = simulate_ramps(np.full(40, 1000.0), 10.0, n_reads=8, rng=np.random.default_rng(0)).reads
    cases = (({"read_noise": np.ones(39)}, r"read_noise: shape \(39,\) .* \(40,\)"),
             ({"gain": np.ones((2, 40))}, r"gain: shape \(2, 40\) .* \(40,\)"),
             ({"saturation": np.ones(3)}, r"saturation: shape \(3,\) .* \(40,\)"))  # fmt: skip
    for kwargs, words in cases:
        with pytest.raises(ValueError, match=words):
            fit_omega(reads, **{"read_noise": 10.0, **kwargs})


def test_gibbs_samples_of_an_element_without_data_are_flagged():
    """A read bad in every pixel: its two differences' samples are NaN. OmegaSamples had no
    flags, and the start fit's OMEGA_ELEMENT_NO_DATA was dropped."""
    rng = np.random.default_rng(1)
    reads = simulate_ramps(rng.uniform(800, 1200, 30), 10.0, n_reads=9, rng=rng).reads
    reads[4] = np.nan
    samples = sample_omega(reads, 10.0, 10, burn_in=2, rng=rng)
    assert np.isnan(samples.omega_mean[[3, 4]]).all() and np.isnan(samples.omega_samples).any()
    assert samples.group_flags & Flag.OMEGA_ELEMENT_NO_DATA
    reads = simulate_ramps(rng.uniform(800, 1200, 30), 10.0, n_reads=9, rng=rng).reads
    assert sample_omega(reads, 10.0, 10, burn_in=2, rng=rng).group_flags == 0


def test_gibbs_sampler_agrees_with_the_linearised_posterior():
    rng = np.random.default_rng(28)
    omega = omega_uniform(10, 0.4, rng)
    sigma = rng.uniform(14, 24, 60)
    sim = simulate_ramps(rng.uniform(800, 1200, 60), sigma, omega=omega, rng=rng)
    fit = fit_omega(sim.reads, sigma)
    samples = sample_omega(sim.reads, sigma, 3000, burn_in=100, rng=rng)
    assert samples.ref_index == fit.ref_index
    err = np.sqrt(np.diag(fit.omega_cov))
    free = err > 0
    shift = (samples.omega_mean[free] - fit.omega[free]) / err[free]
    assert np.max(np.abs(shift)) < 0.25
    ratio = np.sqrt(np.diag(samples.omega_cov)[free]) / err[free]
    assert 0.8 < np.median(ratio) < 1.2
    assert samples.omega_samples.shape == (3000, 10) and samples.flux_samples.shape == (3000, 60)
    assert np.all(np.isfinite(samples.flux.flux))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reads": np.zeros((5, 2, 3, 4))}, "dimensions"),
        ({"mode": "fast"}, "mode"),
        ({"rtol": 0.0}, "rtol"),
        ({"max_iter": 0}, "max_iter"),
        ({"ref_index": 9}, "ref_index"),
        ({"ref_index": 1.5}, "ref_index: expected whole numbers"),  # was truncated to 1
        ({"ref_index": "a"}, "ref_index: expected whole numbers"),
        ({"ref_index": [1, 2, 3]}, "ref_index: expected whole numbers"),
        ({"read_noise": -1.0}, "read_noise"),
    ],
)
def test_fit_omega_bad_arguments(kwargs, match):
    args = {"reads": np.zeros((6, 4)), "read_noise": 10.0} | kwargs
    with pytest.raises(ValueError, match=match):
        fit_omega(args.pop("reads"), args.pop("read_noise"), **args)


def test_a_failed_group_is_flagged_without_failing_the_batch():
    # At ~3 e-/read the plain Gauss-Newton iteration breaks down (singular Schur complement) or
    # stalls in some groups; this batch used to raise LinAlgError for all 50 groups. The
    # reference iteration still stalls in a few, flagged; default mode converges in all.
    rng = np.random.default_rng(0)
    omega = omega_uniform(32, 0.5, rng)
    reads = np.empty((33, 50, 100))
    sigma = rng.uniform(14, 24, (50, 100))
    for g in range(50):
        flux = rng.uniform(800, 1200, 100) * 0.003
        reads[:, g] = simulate_ramps(flux, sigma[g], omega=omega, rng=rng).reads
    fit = fit_omega(reads, sigma, mode="reference")
    broken = ~fit.converged
    assert broken.any()
    assert np.all(fit.group_flags[broken] & Flag.NOT_CONVERGED)
    assert np.all(np.isfinite(fit.omega[~broken]))
    assert np.all(np.isfinite(fit.omega_cov[~broken]))
    fit = fit_omega(reads, sigma)
    assert np.all(fit.converged) and np.all(fit.group_flags == 0)


def test_one_compiled_difference_kernel_for_batches_and_calibration_forms():
    """A batch of groups taken as a view of a bigger cube (as the pipeline batches its fibers),
    and a gain given as a map or one number, reach the difference kernel in one form: one
    compiled kernel per reads dtype, and the same fit."""
    rng = np.random.default_rng(21)
    omega = np.linspace(1.0, 0.7, 7)
    cube = simulate_ramps(rng.uniform(200, 800, (4, 25)), 12.0, n_reads=8, omega=omega,
                          rng=rng).reads.astype(np.float32)  # fmt: skip
    whole = fit_omega(np.ascontiguousarray(cube[:, :2]), 12.0, gain=1.5)
    compiled = len(_numpy._prepare_diffs_flat.signatures)
    batch = fit_omega(cube[:, :2], 12.0, gain=np.full((2, 25), 1.5))
    np.testing.assert_array_equal(batch.omega, whole.omega)
    np.testing.assert_array_equal(batch.flux, whole.flux)
    assert len(_numpy._prepare_diffs_flat.signatures) == compiled


def test_kernels_that_call_blas_run_with_one_blas_thread(monkeypatch):
    """The Numba kernel that calls BLAS from its threads (``flux_quad_kernel``, ``np.dot`` per
    group) runs with BLAS limited to one thread, on every path that reaches it: OpenBLAS's own
    threads spinning against Numba's made the fibers' stage 35 % slower once (an unwrapped
    ``finish_groups``). The normal equations call no BLAS (``_upper_accumulate``)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    calls = []

    def checked(kernel):
        def run(*args):
            calls.append((kernel.__name__, blas_threads()))
            return kernel(*args)

        return run

    monkeypatch.setattr(_numpy, "flux_quad_kernel", checked(_numpy.flux_quad_kernel))
    rng = np.random.default_rng(5)
    omega = omega_uniform(11, 0.3, rng)
    reads = simulate_ramps(rng.uniform(200, 900, (3, 40)), 12.0, omega=omega, rng=rng).reads
    reads[6:, 0, 3] += 800.0  # a jump for the search to find and refit around
    segments = np.tile(np.repeat([0, 1], 20), (3, 1))
    with threadpool_limits(limits=2, user_api="blas"):
        if not blas_threads() or max(blas_threads()) < 2:
            pytest.skip("BLAS runs one thread here whatever the limit: nothing to check")
        fit_omega(reads, 12.0)
        fit_omega(reads, 12.0, jump_search=True)
        fit_omega(reads, 12.0, segments=segments)
        fit_omega(reads, 12.0, mode="reference")
        sample_omega(reads[:, 0], 12.0, 3, burn_in=2, rng=rng)
        assert blas_threads() and max(blas_threads()) >= 2  # the limit is restored after each
    assert {name for name, _ in calls} == {"flux_quad_kernel"}
    assert all(max(threads) == 1 for _, threads in calls), calls


@pytest.mark.parametrize("k, n", [(1, 1), (5, 64), (46, 64), (47, 17)])
def test_upper_accumulate_is_the_upper_triangle_of_the_product(k, n):
    """``_upper_accumulate``, the normal equations' products by tiles: the upper triangle of
    ``a[:, :n] @ b[:, :n].T`` added to what ``acc`` held, with K padded to a multiple of 4 and
    a block's columns past ``n`` ignored; a NaN or an infinity reaches the sums it is in (no
    fast-math assumption drops it)."""
    rng = np.random.default_rng(k)
    k4 = (k + 3) // 4 * 4
    a, b = np.zeros((k4, 64)), np.zeros((k4, 64))
    a[:k], b[:k] = rng.normal(size=(k, 64)), rng.normal(size=(k, 64))
    a[:, n:] = b[:, n:] = 1e300  # past the block's pixels: must not be read
    start = rng.normal(size=(k4, k4))
    acc = start.copy()
    _numpy._upper_accumulate(a, b, n, acc)
    upper = np.triu_indices(k)
    want = start[:k, :k] + a[:k, :n] @ b[:k, :n].T
    np.testing.assert_allclose(acc[:k, :k][upper], want[upper], rtol=1e-13, atol=1e-13)
    a[0, 0], b[k - 1, 0] = np.nan, np.inf
    acc = start.copy()
    _numpy._upper_accumulate(a, b, n, acc)
    assert np.isnan(acc[0]).all() and not np.isfinite(acc[: k - 1, k - 1]).any()


def test_the_chord_gradient_is_the_new_points_with_the_earlier_elimination():
    """A chord step's right-hand side: the gradient at the new point (the full kernel's ``gw``
    and ``x^T C^-1 r`` there), reduced with the earlier point's ``e_hat`` and ``sqrt_d``, which
    it leaves as they were; inactive groups keep theirs."""
    rng = np.random.default_rng(30)
    G, P, K = 3, 150, 9  # more pixels than one block of the kernels
    omega = np.stack([omega_uniform(K, 0.3, rng) for _ in range(G)])
    reads = np.stack(
        [simulate_ramps(rng.uniform(50, 900, P), 15.0, omega=o, rng=rng).reads for o in omega],
        axis=1,
    )
    diffs = np.diff(reads, axis=0).transpose(1, 2, 0).copy()
    valid = rng.random((G, P, K)) > 0.05
    diffs[~valid] = 0.0
    s2 = rng.uniform(100, 400, (G, P))
    dt = rng.uniform(0.8, 1.2, K)
    fit_pixel = rng.random((G, P)) > 0.1
    fit_pixel[:, 64:128] = False  # a block with no fitted pixel
    flux = np.where(fit_pixel, np.median(diffs, axis=2), 0.0)
    earlier = _numpy._Normal(G, P, K)
    earlier.evaluate(diffs, valid, s2, dt, flux, omega, np.ones(G, bool), fit_pixel)
    new_flux = np.where(fit_pixel, flux * 1.02 + 0.5, 0.0)
    new_omega = omega * rng.uniform(0.98, 1.02, (G, K))
    at_new = _numpy._Normal(G, P, K)
    at_new.evaluate(diffs, valid, s2, dt, new_flux, new_omega, np.ones(G, bool), fit_pixel)
    gf = at_new.gf_hat * at_new.sqrt_d
    sd = earlier.sqrt_d
    want_gf_hat = np.where(sd > 0, gf / np.where(sd > 0, sd, 1.0), 0.0)
    want_rhs = at_new.gw - np.einsum("gpk,gp->gk", earlier.e_hat, want_gf_hat)
    active = np.array([True, False, True])
    kept = {name: getattr(earlier, name).copy() for name in ("e_hat", "sqrt_d", "sch")}
    rhs_before, gf_hat_before = earlier.rhs.copy(), earlier.gf_hat.copy()
    earlier.chord(diffs, valid, s2, dt, new_flux, new_omega, active, fit_pixel)
    scale = np.abs(want_rhs[active]).max()
    np.testing.assert_allclose(earlier.rhs[active], want_rhs[active], rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(earlier.gf_hat[active], want_gf_hat[active], rtol=1e-12,
                               atol=1e-12 * np.abs(want_gf_hat).max())  # fmt: skip
    np.testing.assert_array_equal(earlier.rhs[1], rhs_before[1])
    np.testing.assert_array_equal(earlier.gf_hat[1], gf_hat_before[1])
    for name, value in kept.items():
        np.testing.assert_array_equal(getattr(earlier, name), value)


def test_chord_steps_reach_the_full_steps_solution(monkeypatch):
    """Chord steps (``CHORD_STEP``) take the late iterations of bright groups, and their solution
    is the full steps' to 1e-12: the earlier system differs from the current one by about the
    last step, below ``CHORD_STEP``. With a threshold 1000 times larger (chords from the second
    or third iteration) the fit still converges, to the same solution within ``rtol``."""
    rng = np.random.default_rng(31)
    G, P, K = 4, 300, 24
    reads = np.stack(
        [
            simulate_ramps(rng.uniform(200, 2000, P), 15.0, omega=omega_uniform(K, 0.3, rng),
                           rng=rng).reads
            for _ in range(G)
        ],
        axis=1,
    )  # fmt: skip
    chords = []
    original = _numpy._Normal.chord

    def counted(self, *args):
        chords.append(int(np.count_nonzero(args[6])))
        return original(self, *args)

    monkeypatch.setattr(_numpy._Normal, "chord", counted)
    monkeypatch.setattr(_numpy, "CHORD_STEP", 0.0)
    full = fit_omega(reads, 15.0)
    assert not chords
    monkeypatch.setattr(_numpy, "CHORD_STEP", 1e-5)
    chord = fit_omega(reads, 15.0)
    assert sum(chords) >= G  # every group took at least one chord step
    assert full.converged.all() and chord.converged.all()
    np.testing.assert_array_equal(chord.n_iter, full.n_iter)
    np.testing.assert_allclose(chord.omega, full.omega, rtol=1e-12)
    np.testing.assert_allclose(chord.flux, full.flux, rtol=1e-12)
    np.testing.assert_allclose(chord.omega_cov, full.omega_cov, rtol=1e-10, atol=1e-20)
    chords.clear()
    monkeypatch.setattr(_numpy, "CHORD_STEP", 1e-2)
    early = fit_omega(reads, 15.0)
    assert sum(chords) > 2 * G and early.converged.all()
    sigma = np.sqrt(np.einsum("gkk->gk", full.omega_cov))
    free = sigma > 0
    assert np.max(np.abs(early.omega - full.omega)[free] / sigma[free]) < 1e-6
    assert np.max(np.abs(early.flux - full.flux) / np.sqrt(full.flux_var)) < 1e-6


def test_the_fused_update_kernels_are_the_numpy_expressions_they_replace():
    """The iteration's flux bookkeeping, fused into kernels that read the (G, P) rows of the
    ``rows`` groups: the same values as the NumPy expressions on gathered rows, bit for bit,
    with NumPy's NaN rules (a NaN anywhere makes ``max`` NaN; ``np.maximum`` keeps NaN)."""
    rng = np.random.default_rng(4)
    G, P = 7, 37
    flux = rng.normal(50, 40, (G, P))
    d_flux = rng.normal(0, 3, (G, P))
    fit_pixel = rng.random((G, P)) > 0.2
    scale = rng.uniform(0.5, 80, (G, P))
    previous = flux + rng.normal(0, 1, (G, P))
    d_flux[2, 5] = np.nan  # a non-finite step: not finite, and NaN where it is fitted
    fit_pixel[2, 5] = True
    d_flux[3, 6] = np.inf
    fit_pixel[3, 6] = False  # outside the fit: not finite, but its size counts as 0
    scale[4, 1], fit_pixel[4, 1] = 0.0, False  # 0 / 0: NaN
    flux[5, 2] = np.nan
    rows = np.array([0, 2, 3, 4, 5, 6])
    finite, largest = np.empty(rows.size, dtype=bool), np.empty(rows.size)
    _numpy.flux_step_summary_kernel(d_flux, fit_pixel, scale, rows, finite, largest)
    with np.errstate(invalid="ignore"):
        want = (np.abs(np.where(fit_pixel[rows], d_flux[rows], 0.0)) / scale[rows]).max(axis=1)
    np.testing.assert_array_equal(finite, np.isfinite(d_flux[rows]).all(axis=1))
    np.testing.assert_array_equal(largest, want)
    assert np.isnan(largest[[1, 3]]).all() and list(finite) == [1, 0, 0, 1, 1, 1]
    lam = rng.uniform(0.1, 1, rows.size)
    for relative in (True, False):
        new_flux, step = np.empty((rows.size, P)), np.empty(rows.size)
        _numpy.flux_update_kernel(flux, d_flux, lam, rows, fit_pixel, previous, scale, relative,
                                  new_flux, step)  # fmt: skip
        want_flux = np.where(fit_pixel[rows], flux[rows] + lam[:, None] * d_flux[rows], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            change = np.abs(want_flux - previous[rows])
            want_step = (change / scale[rows] if relative else change).max(axis=1)
        np.testing.assert_array_equal(new_flux, want_flux)
        np.testing.assert_array_equal(step, want_step)
        assert np.isnan(step[[1, 4]]).all() and np.isfinite(step[[0, 2, 5]]).all()
    for floor in (-np.inf, 1e-10):
        stored = [rng.normal(size=(G, P)) for _ in range(3)]
        want = [array.copy() for array in stored]
        _numpy.flux_store_kernel(new_flux, rows, fit_pixel, floor, *stored)
        want[0][rows] = new_flux
        want[1][rows] = new_flux
        want[2][rows] = np.where(fit_pixel[rows], np.maximum(new_flux, floor), 0.0)
        for got, expected in zip(stored, want, strict=True):
            np.testing.assert_array_equal(got, expected)


def _spec_initial_guess(d, usable, s2, dt, reference):
    """Spec section 2.6 for one group, written as the spec writes it (three divisions and a
    square root per weight in step 3, five and a square root in step 5): what the kernel's
    multiplied-out weights must reproduce. d, usable (P, K); s2 (P,)."""
    floor = np.full(s2.shape, 1e-10) if reference else 1e-10 * np.minimum(1.0, np.sqrt(s2))
    err = np.sqrt(((2 * s2) ** 2 if reference else 2 * s2)[:, None] + np.maximum(d, 0.0))
    f0 = np.array([np.median(row[ok] / dt[ok]) for row, ok in zip(d, usable, strict=True)])
    f0 = np.maximum(f0, floor)
    d_floor = np.maximum(d, floor[:, None])
    om_pix = d / (f0[:, None] * dt)
    om_err = np.abs(om_pix / d_floor) * err
    weigh = usable & (om_err > 0)
    w = np.where(weigh, 1.0 / np.where(weigh, om_err, 1.0) ** 2, 0.0)
    omega = np.maximum((w * om_pix).sum(axis=0) / w.sum(axis=0), 1e-10)
    k_star = int(np.argmax(omega))
    scale = omega[k_star]
    omega, omega_err = omega / scale, w.sum(axis=0) ** -0.5 / scale
    fl_pix = d / (omega * dt)
    fl_err = np.sqrt((fl_pix / d_floor * err) ** 2 + (fl_pix / omega * omega_err) ** 2)
    weigh = usable & (fl_err > 0)
    wf = np.where(weigh, 1.0 / np.where(weigh, fl_err, 1.0) ** 2, 0.0)
    num, den = (wf * fl_pix).sum(axis=1), wf.sum(axis=1)
    flux = np.where(den > 0, np.maximum(num / np.where(den > 0, den, 1.0), floor), f0 * scale)
    return omega, flux, k_star


@pytest.mark.parametrize("reference", [False, True])
def test_initial_guess_is_the_spec_s_five_steps(reference):
    """The kernel's weights take two divisions (their ratios multiplied out): the guess is the
    spec's form to rounding, with negative differences (floored: nearly no weight), a dead pixel
    (every difference 0: no weight), masked differences and unequal read intervals."""
    rng = np.random.default_rng(31)
    omega = omega_uniform(11, 0.4, rng)
    dt = rng.uniform(5.0, 12.0, 11)
    reads = simulate_ramps(
        rng.uniform(0.2, 5.0, 40), 10.0, omega=omega, read_times=np.r_[0, np.cumsum(dt)], rng=rng
    ).reads
    d = np.diff(reads, axis=0).T.copy()  # (P, K), many differences below 0
    d[3] = 0.0  # a dead pixel
    usable = rng.random(d.shape) > 0.1
    d[~usable] = 0.0
    s2 = rng.uniform(50.0, 150.0, 40)
    assert (d[usable] < 0).mean() > 0.05
    want = _spec_initial_guess(d, usable, s2, dt, reference)
    fit_pixel = np.ones((1, 40), dtype=bool)
    got = _numpy.initial_guess(d[None], usable[None], s2[None], dt, fit_pixel, reference=reference)
    np.testing.assert_allclose(got[0][0], want[0], rtol=1e-13)
    np.testing.assert_allclose(got[1][0], want[1], rtol=1e-13)
    assert got[2][0] == want[2]


def test_a_warm_start_guesses_only_the_fluxes_it_lacks():
    """A warm start takes the initial guess's fluxes only where it has none: the guess computes
    those alone (``flux_pixel``), and a group whose start is dropped (a new pivot without a
    start value) gets all of its own. The fit is the same bits as from a guess of every flux."""
    rng = np.random.default_rng(8)
    omega = omega_uniform(9, 0.3, rng)
    omega[4] = 0.2  # below PIVOT_RATIO of the largest: a pivot asked for here moves
    reads = simulate_ramps(rng.uniform(200, 900, (3, 30)), 12.0, omega=omega, rng=rng).reads
    diffs = np.ascontiguousarray(np.diff(reads, axis=0).transpose(1, 2, 0))
    valid = np.ones(diffs.shape, dtype=bool)
    s2 = np.full(diffs.shape[:2], 144.0)
    dt = np.ones(9)
    fit_pixel = np.ones(s2.shape, dtype=bool)
    some = rng.random(fit_pixel.shape) < 0.5
    full = _numpy.initial_guess(diffs, valid, s2, dt, fit_pixel)
    part = _numpy.initial_guess(diffs, valid, s2, dt, fit_pixel, flux_pixel=some)
    np.testing.assert_array_equal(part[0], full[0])  # omega
    np.testing.assert_array_equal(part[2], full[2])  # the pivots
    np.testing.assert_array_equal(part[1][some], full[1][some])
    assert np.all(np.isnan(part[1][~some]))

    target = np.full(3, 4)
    options = {"reference": False, "rtol": 1e-8, "max_iter": 50, "ref_index": target}
    cold = _numpy.fit_omega_groups(diffs, valid, s2, dt, fit_pixel, **options)
    start_flux = np.where(some, np.nan, cold["flux"])  # pixels without a start flux
    start_omega = cold["omega"].copy()
    start_omega[1] = np.nan  # group 1's start is dropped at its new pivot
    kwargs = options | {"start": (start_omega, start_flux)}
    guess = _numpy.initial_guess
    asked = []

    def recorded(*args, flux_pixel=None, **kw):
        asked.append(flux_pixel)
        return guess(*args, flux_pixel=flux_pixel, **kw)

    def every_flux(*args, flux_pixel=None, **kw):
        return guess(*args, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_numpy, "initial_guess", recorded)
        warm = _numpy.fit_omega_groups(diffs, valid, s2, dt, fit_pixel, **kwargs)
        patch.setattr(_numpy, "initial_guess", every_flux)
        again = _numpy.fit_omega_groups(diffs, valid, s2, dt, fit_pixel, **kwargs)
    np.testing.assert_array_equal(asked[0], some)  # a partial guess, then group 1's fluxes
    assert len(asked) == 2 and asked[1] is None
    for key in ("omega", "flux", "omega_cov", "n_iter", "ref_index"):
        np.testing.assert_array_equal(warm[key], again[key])


def test_reprs_of_empty_groups_show_no_error_and_no_convergence():
    """An empty group's covariance is zeros: its omega error is not 0 but absent, and a
    chromatic fit counts its converged groups among those with data."""
    from pyapred import fit_omega_chromatic

    rng = np.random.default_rng(4)
    reads = simulate_ramps(rng.uniform(800, 1200, (2, 60)), 12.0, n_reads=8, rng=rng).reads
    mask = np.zeros(reads.shape, bool)
    mask[:, 1] = True  # the second group has no usable read
    fit = fit_omega(reads[:, 1:], 12.0, mask=mask[:, 1:])
    assert fit.group_flags & Flag.EMPTY_GROUP
    assert "median omega error -" in repr(fit)
    chromatic = fit_omega_chromatic(reads, 12.0, np.linspace(-1, 1, 60), mask=mask)
    assert repr(chromatic).startswith("ChromaticFit: 2 groups, 1 of 1 with data converged")
