"""Regenerate the solver conformance vectors in julia/test/conformance/ from the NumPy backend.

Usage: ``python scripts/make_conformance_vectors.py [OUTDIR] [--only NAME ...]``. Every case is
seeded, so a rerun rewrites the same files (up to the last bits of floating point on another
machine); ``--only`` writes just the named cases. Both the Python tests (tomllib) and
julia/test/runtests.jl (TOML) check their backend against these files. The exposure-stage vectors
are made by ``scripts/make_stage_vectors.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pyapred import simulate_ramps
from pyapred.conformance import dumps, run_vector
from pyapred.solver import api

RTOL = 1e-12
CASES: list[dict] = []


def case(name: str, function: str, description: str, **inputs) -> None:
    CASES.append({"name": name, "description": description, "function": function,
                  "rtol": RTOL, "inputs": inputs})  # fmt: skip


def ramps(seed, flux, n_reads=8, sigma=12.0, omega=None, **kwargs):
    rng = np.random.default_rng(seed)
    sim = simulate_ramps(np.asarray(flux, float), sigma, n_reads=n_reads, omega=omega, rng=rng,
                         **kwargs)  # fmt: skip
    return sim.reads


OMEGA7 = np.array([1.0, 0.9, 0.55, 0.8, 0.97, 0.7, 0.85])
FLUX5 = [400.0, 650.0, 900.0, 1200.0, 300.0]

# --- constant model --------------------------------------------------------------------------
case(
    "constant_basic",
    "fit_constant",
    "Brandt constant fit, 6 pixels, unit spacing",
    reads=ramps(1, [5.0, 50.0, 200.0, 800.0, 2000.0, 0.0]),
    read_noise=12.0,
)
case(
    "constant_gain_per_pixel",
    "fit_constant",
    "DN input, per-pixel gain and read noise",
    reads=ramps(2, [100.0, 300.0, 900.0, 50.0], gain=1.9),
    read_noise=np.array([6.0, 7.0, 8.0, 5.5]),
    gain=np.array([1.9, 1.8, 2.0, 1.7]),
)
case(
    "constant_three_pass",
    "fit_constant",
    "n_pass = 3 covariance refreshes",
    reads=ramps(3, [30.0, 600.0, 1500.0]),
    read_noise=10.0,
    n_pass=3,
)
case(
    "constant_one_pass",
    "fit_constant",
    "n_pass = 1: the median-rate covariance only",
    reads=ramps(3, [30.0, 600.0, 1500.0]),
    read_noise=10.0,
    n_pass=1,
)
case(
    "constant_zero_flux",
    "fit_constant",
    "zero flux: pure read noise",
    reads=ramps(4, [0.0, 0.0, 0.0, 0.0]),
    read_noise=15.0,
)
case(
    "constant_negative_flux",
    "fit_constant",
    "negative-going ramps (photon noise clipped at 0)",
    reads=-ramps(5, [20.0, 80.0, 300.0]),
    read_noise=12.0,
)
case(
    "constant_unequal_read_times",
    "fit_constant",
    "unequal read times; flux per unit time",
    reads=ramps(6, [100.0, 500.0, 1000.0], n_reads=6, read_times=[0.0, 1.0, 2.5, 3.0, 5.0, 5.5]),
    read_noise=9.0,
    read_times=np.array([0.0, 1.0, 2.5, 3.0, 5.0, 5.5]),
)
case(
    "constant_2d_pixels",
    "fit_constant",
    "pixel shape (ny, nx) = (2, 3)",
    reads=ramps(7, np.array([[10.0, 100.0, 400.0], [900.0, 0.0, 60.0]])),
    read_noise=11.0,
)

# --- masks ------------------------------------------------------------------------------------
masked = ramps(8, [200.0, 400.0, 600.0, 800.0, 1000.0, 50.0])
masked[3, 0] = np.nan  # NaN read in the middle
masked[0, 1] = np.inf  # first read not finite
mask = np.zeros(masked.shape, bool)
mask[2, 2] = True  # one masked read
mask[:, 3] = True  # all masked
mask[1:7, 4] = True  # only reads 0 and 7 left: no usable difference
mask[[1, 3, 5], 5] = True  # alternating: 1 usable difference
case(
    "constant_masks",
    "fit_constant",
    "NaN, inf, one masked read, all masked, none usable, one usable difference",
    reads=masked,
    read_noise=12.0,
    mask=mask,
)
case(
    "constant_saturation",
    "fit_constant",
    "saturation per pixel: mid-ramp, at the first read, never",
    reads=ramps(9, [3000.0, 10000.0, 200.0]),
    read_noise=12.0,
    saturation=np.array([15000.0, 5.0, 1e9]),
)
sat_reads = ramps(10, [2500.0, 2500.0])
case(
    "constant_two_usable_diffs",
    "fit_constant",
    "saturation leaves exactly 2 differences",
    reads=sat_reads,
    read_noise=12.0,
    saturation=float(sat_reads[2, 0] + 1.0),
)

# --- extraction with omega fixed ---------------------------------------------------------------
case(
    "extract_omega",
    "extract_fluxes",
    "eq-15 fluxes with a time-variable omega",
    reads=ramps(11, FLUX5, omega=OMEGA7),
    read_noise=12.0,
    omega=OMEGA7,
)
omega_nan = OMEGA7.copy()
omega_nan[2] = np.nan
case(
    "extract_omega_nan_element",
    "extract_fluxes",
    "a NaN omega element masks that difference",
    reads=ramps(12, FLUX5, omega=OMEGA7),
    read_noise=12.0,
    omega=omega_nan,
)
case(
    "extract_omega_groups",
    "extract_fluxes",
    "two omega rows selected by groups",
    reads=ramps(13, [100.0, 500.0, 900.0, 1500.0], omega=OMEGA7),
    read_noise=10.0,
    omega=np.stack([OMEGA7, np.linspace(1.0, 0.6, 7)]),
    groups=np.array([0, 1, 1, 0]),
)
case(
    "extract_omega_masked",
    "extract_fluxes",
    "omega with a mask, gain and saturation",
    reads=ramps(14, FLUX5, omega=OMEGA7, gain=2.0),
    read_noise=6.0,
    omega=OMEGA7,
    gain=2.0,
    mask=np.eye(8, 5, k=-2, dtype=bool),
    saturation=4000.0,
)

# --- equal weight ------------------------------------------------------------------------------
case(
    "equal_weight_basic",
    "fit_equal_weight",
    "Rauscher equal-weight slope",
    reads=ramps(15, [0.0, 10.0, 100.0, 1000.0, 3.0]) * np.array([1, 1, 1, 1, -1]),
    read_noise=12.0,
)
case(
    "equal_weight_masks",
    "fit_equal_weight",
    "equal weight with NaN, masks and saturation",
    reads=masked,
    read_noise=12.0,
    mask=mask,
    gain=1.5,
    saturation=2000.0,
)

# --- time-variable model ------------------------------------------------------------------------
tv_reads = ramps(16, FLUX5 + [800.0], omega=OMEGA7)
case(
    "initial_guess_default",
    "initial_guess",
    "five-step initial guess, corrected weights",
    reads=tv_reads,
    read_noise=12.0,
)
case(
    "initial_guess_reference",
    "initial_guess",
    "initial guess with the reference weights (Q1)",
    reads=tv_reads,
    read_noise=12.0,
    mode="reference",
)
case(
    "fit_omega_default",
    "fit_omega",
    "joint fit, default mode (relative tolerance)",
    reads=tv_reads,
    read_noise=12.0,
)
case(
    "fit_omega_reference",
    "fit_omega",
    "joint fit, reference mode (Q1, Q3, >= 3 iterations)",
    reads=tv_reads,
    read_noise=12.0,
    mode="reference",
)
case(
    "fit_omega_fixed_last",
    "fit_omega",
    "the fixed element is the last difference",
    reads=tv_reads,
    read_noise=12.0,
    ref_index=6,
)
tv_masked = ramps(17, FLUX5, omega=OMEGA7)
tv_mask = np.zeros(tv_masked.shape, bool)
tv_mask[3, 1] = True
tv_mask[5:, 2] = True
tv_masked[2, 4] = np.nan
case(
    "fit_omega_masks",
    "fit_omega",
    "joint fit with masked reads, NaN and saturation",
    reads=tv_masked,
    read_noise=12.0,
    mask=tv_mask,
    saturation=8000.0,
)
tv_nodata = ramps(18, FLUX5, omega=OMEGA7)
tv_nodata_mask = np.zeros(tv_nodata.shape, bool)
tv_nodata_mask[4, :] = True  # read 4 masked everywhere: differences 3 and 4 have no data
case(
    "fit_omega_element_no_data",
    "fit_omega",
    "omega elements with no data are NaN",
    reads=tv_nodata,
    read_noise=12.0,
    mask=tv_nodata_mask,
)
groups_reads = np.stack([ramps(19, FLUX5, omega=OMEGA7), ramps(20, FLUX5, omega=OMEGA7[::-1])],
                        axis=1)  # fmt: skip
groups_mask = np.zeros(groups_reads.shape, bool)
groups_mask[:, 1, 3:] = True  # padding pixels of group 1
case(
    "fit_omega_groups",
    "fit_omega",
    "two groups in one call, padding pixels",
    reads=groups_reads,
    read_noise=12.0,
    mask=groups_mask,
    gain=1.5,
)
empty_mask = np.zeros(groups_reads.shape, bool)
empty_mask[:, 1, :] = True
case(
    "fit_omega_empty_group",
    "fit_omega",
    "a group with no usable pixel",
    reads=groups_reads,
    read_noise=12.0,
    mask=empty_mask,
)
case(
    "fit_omega_unequal_read_times",
    "fit_omega",
    "joint fit with unequal read times",
    reads=ramps(21, FLUX5, n_reads=6, omega=OMEGA7[:5], read_times=[0.0, 1.0, 1.5, 3.0, 4.0, 6.0]),
    read_noise=10.0,
    read_times=np.array([0.0, 1.0, 1.5, 3.0, 4.0, 6.0]),
)
# A dead pixel: every difference exactly 0 (constant reads). Its initial flux has no weight in
# step 5 of the guess; NumPy falls back to the median rate (floored), and the fit goes on.
dead_reads = tv_reads.copy()
dead_reads[:, 2] = 1000.0
case(
    "initial_guess_dead_pixel",
    "initial_guess",
    "a dead pixel (all differences exactly 0) among live ones",
    reads=dead_reads,
    read_noise=12.0,
)
case(
    "fit_omega_dead_pixel",
    "fit_omega",
    "joint fit with a dead pixel (all differences exactly 0): the group still converges",
    reads=dead_reads,
    read_noise=12.0,
)
dead_groups = groups_reads.copy()
dead_groups[:, 0, 1] = 700.0  # group 0: one dead pixel
dead_groups[:, 1, [0, 3]] = 900.0  # group 1: two dead pixels
case(
    "fit_omega_dead_pixel_groups",
    "fit_omega",
    "two groups with gain: one dead pixel in the first, two in the second",
    reads=dead_groups,
    read_noise=12.0,
    gain=1.5,
)
case(
    "fit_omega_not_converged",
    "fit_omega",
    "max_iter = 1 stops before convergence",
    reads=tv_reads,
    read_noise=12.0,
    max_iter=1,
)


# --- the 1/f nuisance term: one offset per (segment, difference) ------------------------------
def with_offsets(reads, segments, seed, sigma=25.0):
    """Add seeded offsets per (segment, difference) to ``reads (n_reads, ..., n_pix)``."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, sigma, (reads.shape[0] - 1, int(segments.max()) + 1))
    steps = offsets[:, segments]  # (K, ..., n_pix)
    out = reads.copy()
    out[1:] += np.cumsum(steps, axis=0)
    return out


FLUX9 = [400.0, 650.0, 900.0, 1200.0, 300.0, 800.0, 500.0, 1500.0, 700.0]
seg9 = np.arange(9) % 3
case(
    "fit_omega_offsets",
    "fit_omega",
    "joint fit with one offset per (segment, difference), 3 segments",
    reads=with_offsets(ramps(23, FLUX9, omega=OMEGA7), seg9, 24),
    read_noise=12.0,
    segments=seg9,
)
off_reads = np.stack([ramps(25, FLUX9, omega=OMEGA7), ramps(26, FLUX9, omega=OMEGA7[::-1])], axis=1)
off_segments = np.stack([seg9, np.arange(9) // 5])  # group 1: 2 segments
off_reads = with_offsets(off_reads, off_segments, 27)
off_mask = np.zeros(off_reads.shape, bool)
off_mask[3, 0, 2] = True
off_mask[6:, 1, 4] = True
off_mask[:, 1, 8] = True  # a padding pixel
case(
    "fit_omega_offsets_groups",
    "fit_omega",
    "offsets in two groups with masks, padding, gain and a fixed element",
    reads=off_reads,
    read_noise=12.0,
    mask=off_mask,
    gain=1.5,
    ref_index=2,
    segments=off_segments,
)


# --- jump search ------------------------------------------------------------------------------
def with_jumps(reads, jumps):
    """Add ``size`` to every read after read ``k`` (a jump in difference ``k``) of ``pixel``."""
    out = reads.copy()
    for k, pixel, size in jumps:
        out[k + 1 :, pixel] += size
    return out


FLUX6 = [30.0, 200.0, 600.0, 1500.0, 80.0, 900.0]
case(
    "find_jumps_constant",
    "find_jumps",
    "constant-model search: none, one, two (apart), a small and a late jump; per-pixel noise",
    reads=with_jumps(
        ramps(28, FLUX6, n_reads=12),
        [(3, 1, 400.0), (2, 2, 900.0), (7, 2, 600.0), (5, 3, 150.0), (9, 4, 500.0), (0, 5, 800.0)],
    ),
    read_noise=np.array([12.0, 14.0, 12.0, 16.0, 12.0, 13.0]),
)
case(
    "find_jumps_omega",
    "find_jumps",
    "time-variable search with omega given, DN input and gain, max_jumps = 1 on a two-jump pixel",
    reads=with_jumps(
        ramps(29, FLUX5, omega=OMEGA7, gain=1.8),
        [(2, 0, 300.0), (4, 2, 500.0), (1, 3, 400.0), (5, 3, 450.0)],
    ),
    read_noise=7.0,
    omega=OMEGA7,
    gain=1.8,
    max_jumps=1,
)
jump_omega = np.stack([np.ones(9), np.linspace(1.0, 0.7, 9)])
jump_groups = np.array([0, 1, 0, 1, 0, 1])
jump_masked = np.where(jump_groups == 1, ramps(32, FLUX6, n_reads=10, omega=jump_omega[1]),
                       ramps(30, FLUX6, n_reads=10))  # fmt: skip
jump_masked = with_jumps(jump_masked, [(4, 0, 700.0), (6, 1, 900.0), (3, 2, 800.0), (2, 5, 600.0)])
jump_masked[5, 3] = np.nan
jump_mask = np.zeros(jump_masked.shape, bool)
jump_mask[2, 0] = True  # one masked read beside the jump
jump_mask[5:, 4] = True  # 4 differences left: one search at most
jump_mask[[1, 3, 5, 7], 5] = True  # 1 usable difference: nothing to search
case(
    "find_jumps_masks",
    "find_jumps",
    "search with masked reads, NaN, saturation and too few differences; 2 omega rows by groups",
    reads=jump_masked,
    read_noise=12.0,
    mask=jump_mask,
    saturation=np.array([1e9, 1e9, 4500.0, 1e9, 1e9, 1e9]),
    omega=jump_omega,
    groups=jump_groups,
)
JUMP_TIMES = [0.0, 1.0, 2.0, 3.5, 4.5, 5.5, 6.5, 8.0, 9.0, 10.0, 11.0, 12.0]
bad_read = ramps(31, FLUX6, n_reads=12, read_times=JUMP_TIMES)
bad_read[4, [0, 2]] += 700.0  # one bad read: +700 in difference 3, -700 in difference 4
bad_read[7, 3] -= 600.0
case(
    "find_jumps_two_adjacent",
    "find_jumps",
    "two adjacent jumps (one bad read) beside single jumps, unequal read times",
    reads=with_jumps(bad_read, [(8, 1, 900.0), (2, 4, 700.0)]),
    read_noise=12.0,
    two_adjacent=True,
    threshold=5.0,
    read_times=np.array(JUMP_TIMES),
)
# Faint pixels ruled by read noise (1 e- per read, read noise 5 e-): pixel 3's median rate is 0,
# which underrates its photon noise, and the search at that rate flags a clean difference
# (chi2 drop 20.42 against 20.25); searched again at its clean GLS rate (0.28 e- per read) it
# keeps it (18.53). Pixel 0's jump of 14 sigma is found both times.
case(
    "find_jumps_clean_rate",
    "find_jumps",
    "faint pixels: a false alarm at the median rate cleared at the clean rate; a real jump kept",
    reads=with_jumps(ramps(411, [1.0] * 6, n_reads=24, sigma=5.0), [(10, 0, 100.0)]),
    read_noise=5.0,
)

case(
    "fit_omega_jump_search",
    "fit_omega",
    "joint fit alternated with the jump search, jumps in two fit pixels",
    reads=with_jumps(tv_reads, [(2, 1, 1500.0), (5, 3, 2000.0)]),
    read_noise=12.0,
    jump_search=True,
)

# The nuisance term with the jump search: the search judges differences against the model with
# the segments' offsets, so a shared row offset is neither a jump nor hides one.
case(
    "fit_omega_offsets_jumps",
    "fit_omega",
    "offsets and the jump search: a cosmic ray in one pixel of a 3-pixel segment",
    reads=with_jumps(with_offsets(ramps(40, FLUX9, omega=OMEGA7), seg9, 41), [(3, 4, 1800.0)]),
    read_noise=12.0,
    segments=seg9,
    jump_search=True,
)
big_offsets = ramps(42, FLUX9, omega=OMEGA7)
big_offsets[4:, seg9 == 1] += 900.0  # one large offset in difference 3, shared by segment 1
case(
    "fit_omega_offsets_jumps_shared_step",
    "fit_omega",
    "offsets and the jump search: a large offset shared by a segment is no jump",
    reads=with_offsets(big_offsets, seg9, 43),
    read_noise=12.0,
    segments=seg9,
    jump_search=True,
)
FLUX24 = np.tile(FLUX9[:8], 3)
oj_segments = np.stack([np.arange(24) % 3, np.arange(24) // 12])  # 8 and 12 pixels per segment
oj_reads = np.stack([ramps(44, FLUX24, omega=OMEGA7), ramps(45, FLUX24, omega=OMEGA7[::-1])],
                    axis=1)  # fmt: skip
oj_reads = with_offsets(oj_reads, oj_segments, 46)
oj_reads[5:, 1, 6] += 2500.0  # a cosmic ray in group 1
oj_reads[2:, 0, 0] += 1600.0  # and one in group 0
oj_mask = np.zeros(oj_reads.shape, bool)
oj_mask[3, 0, 2] = True
oj_mask[6:, 1, 4] = True
oj_mask[:, 1, 23] = True  # a padding pixel
case(
    "fit_omega_offsets_jumps_groups",
    "fit_omega",
    "offsets and the jump search in two groups with masks, padding, gain and a fixed element",
    reads=oj_reads,
    read_noise=12.0,
    mask=oj_mask,
    gain=1.5,
    ref_index=2,
    segments=oj_segments,
    jump_search=True,
)


# --- chromatic model -------------------------------------------------------------------------
def chromatic_ramps(seed, flux, coordinate, omega, gamma, sigma=12.0, gain=1.0):
    """Reads whose difference k is ``flux * omega_k (1 + gamma_k c) `` (Poisson) plus read noise."""
    rng = np.random.default_rng(seed)
    flux, c = np.asarray(flux, float), np.asarray(coordinate, float)
    rate = flux[..., None] * omega * (1.0 + gamma * c[..., None])  # (..., K)
    counts = np.cumsum(rng.poisson(np.maximum(rate, 0.0)), axis=-1)
    reads = np.concatenate([np.zeros(counts.shape[:-1] + (1,)), counts], axis=-1)
    reads = reads + rng.normal(0.0, sigma * gain, reads.shape)
    return np.moveaxis(reads / gain, -1, 0)


GAMMA7 = np.array([0.0, 0.02, -0.03, 0.01, 0.04, -0.02, 0.03])
C12 = np.linspace(-1.0, 1.0, 12)
FLUX12 = [3000.0, 5200.0, 800.0, 4100.0, 2500.0, 6000.0, 1500.0, 3600.0, 4800.0, 900.0, 2200.0,
          5500.0]  # fmt: skip
case(
    "fit_omega_chromatic",
    "fit_omega_chromatic",
    "chromatic fit of one group, 12 pixels from -1 to 1, its test against the achromatic fit",
    reads=chromatic_ramps(50, FLUX12, C12, OMEGA7, GAMMA7),
    read_noise=12.0,
    coordinate=C12,
)
cg_reads = np.stack([chromatic_ramps(51, FLUX12, C12, OMEGA7, GAMMA7, gain=1.5),
                     chromatic_ramps(52, FLUX12, C12[::-1], OMEGA7[::-1], 0 * GAMMA7, gain=1.5)],
                    axis=1)  # fmt: skip
cg_mask = np.zeros(cg_reads.shape, bool)
cg_mask[4, 0, 3] = True  # a masked read
cg_mask[5:, 1, 7] = True  # a ramp cut short (saturation)
cg_mask[:, 1, 11] = True  # a padding pixel
case(
    "fit_omega_chromatic_groups",
    "fit_omega_chromatic",
    "two groups (chromatic, grey), masks, padding, gain, per-pixel coordinates, fixed element",
    reads=cg_reads,
    read_noise=np.array([[12.0] * 12, [11.0] * 12]),
    coordinate=np.stack([C12, 0.5 * C12 + 0.2]),
    mask=cg_mask,
    gain=1.5,
    ref_index=2,
)
case(
    "fit_omega_chromatic_jump_search",
    "fit_omega_chromatic",
    "chromatic fit on the achromatic fit's jump mask (cosmic rays in two pixels)",
    reads=with_jumps(
        chromatic_ramps(53, FLUX12, C12, OMEGA7, GAMMA7), [(2, 1, 2500.0), (5, 8, 3000.0)]
    ),  # fmt: skip
    read_noise=12.0,
    coordinate=C12,
    jump_search=True,
)


def _kernel_inputs(reads, read_noise):
    """The electron-unit (G, P, K) layout that fit_omega builds, for the kernel-level cases."""
    _, diffs, valid, flags, s2, dt, _ = api._group_inputs(reads, read_noise, 1.0, None, None,
                                                          None, "numpy")  # fmt: skip
    fit_pixel, _, _ = api._fit_pixels(valid, flags)
    return diffs, valid, s2, dt, fit_pixel


diffs, valid, s2, dt, fit_pixel = _kernel_inputs(tv_reads, 12.0)
omega0, flux0, kstar0 = api.backend_kernels().initial_guess(diffs, valid, s2, dt, fit_pixel)
case(
    "gauss_newton_step",
    "gauss_newton_step",
    "one Schur-complement Gauss-Newton step",
    diffs=diffs,
    valid=valid,
    s2=s2,
    dt=dt,
    flux=flux0,
    omega=omega0,
    ref_index=kstar0,
    fit_pixel=fit_pixel,
)
start = api.fit_omega(tv_reads, 12.0)
n_free = int(np.isfinite(start.omega).sum()) - 1
noise = np.random.default_rng(22).standard_normal((12, diffs.shape[1] + n_free))
case(
    "gibbs_sweeps",
    "gibbs",
    "12 Gibbs sweeps (4 burn-in) with given standard normal draws",
    diffs=diffs,
    valid=valid,
    s2=s2,
    dt=dt,
    fit_pixel=fit_pixel,
    omega=start.omega[None],
    flux=start.flux[None],
    kstar=int(start.ref_index),
    burn_in=4,
    noise=noise,
)


def main(argv: list[str]) -> int:
    only = set(argv[argv.index("--only") + 1 :]) if "--only" in argv else None
    argv = argv[: argv.index("--only")] if "--only" in argv else argv
    default = Path(__file__).resolve().parent.parent / "julia" / "test" / "conformance"
    outdir = Path(argv[0]) if argv else default
    outdir.mkdir(parents=True, exist_ok=True)
    cases = [vector for vector in CASES if only is None or vector["name"] in only]
    unknown = (only or set()) - {vector["name"] for vector in cases}
    if unknown:
        print(f"unknown cases: {sorted(unknown)}", file=sys.stderr)
        return 2
    for vector in cases:
        vector["expected"] = run_vector(vector, "numpy")
        # The size of a converged fit's last step is at the rounding level: not comparable
        # between implementations, so not part of a vector.
        vector["expected"].pop("step_size", None)
        # find_jumps' compact forms of diff_mask, jumps and jump_size (Python's JumpResult
        # only): the vector holds the arrays themselves, which both twins return.
        for key in ("diff_mask_bits", "jump_index", "jump_charge"):
            vector["expected"].pop(key, None)
        text = "# Generated by scripts/make_conformance_vectors.py; do not edit.\n" + dumps(vector)
        path = outdir / f"{vector['name']}.toml"
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print(f"wrote {len(cases)} vectors to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
