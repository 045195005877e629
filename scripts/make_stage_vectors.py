"""Regenerate the exposure-stage vectors in julia/test/stages/ from pyapred's NumPy stages.

Usage: ``python scripts/make_stage_vectors.py [OUTDIR] [--only NAME ...]``.

A stage vector is a small exposure (3-4 fibers, 18 traced columns, 8-10 reads; one chip, or two
fitted jointly) with its options and what each stage of :mod:`pyapred.exposure` makes of it:

- ``[inputs]``: ``reads`` ``(n_chips, n_reads, ny, nx)`` whole DN (raw reads, uint16), the
  calibration (``read_noise``, ``gain``, ``saturation``: scalars or ``(n_chips, ny, nx)`` maps),
  the traces (``y_center``, 0-based and multiples of 2^-10 so that Julia's 1-based centers are
  exact, and ``sigma``, both ``(n_chips, n_fibers, n_columns)``) and ``excluded`` (FPI fibers);
- ``[options]``: the :class:`~pyapred.exposure.FitOptions` fields the stages use;
- ``[expected.prepare]``, ``[expected.fibers]``, ``[expected.extract]``: the outputs of
  ``prepare_chip`` (per chip), ``fit_fibers`` and ``extract_chip`` (per chip).

Floats of the expected outputs are written with 13 significant digits (the tests compare at
rtol 1e-10 of each output's largest value); float32 outputs (``rate``, ``purity``,
``omega_rough``) in float32's shortest exact form. Indices are 0-based, -1 for none, as in
Python. :func:`run_stages` is the reference: ``tests/exposure/test_stage_vectors.py`` replays it
and ``julia/test/runtests.jl`` runs APRampFit's stages on the same files.

Each case checks, when it is made, that it shows what it is for (a fiber that borrows, one that
falls back, ...) and that no pixel sits within 1e-6 of a selection threshold (signal-to-noise,
purity), so that last-bit differences between languages cannot change a decision.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pyapred.conformance import dumps
from pyapred.exposure import (
    ChipExposure,
    FitOptions,
    extract_chip,
    fit_fibers,
    prepare_chip,
)
from pyapred.solver import Flag
from pyapred.traces import Traces

RTOL = 1e-10
DIGITS = 13
CHIP_NAMES = ("R", "G", "B")
#: The FitOptions fields the stages use (the others choose the backend or what memory keeps).
STAGE_OPTIONS = (
    "model", "p_value", "amplitude_threshold", "min_fit_pixels", "max_omega_error", "min_snr",
    "core_halfwidth", "min_purity", "max_fit_pixels", "map_halfwidth", "joint_chips", "max_iter",
    "jump_search", "jump_threshold", "correct_1f", "segment_columns", "chromatic",
    "chromatic_p_value",
)  # fmt: skip
#: Small chips have few fit pixels per fiber: 8 rather than 20 make a fiber bright.
BASE_OPTIONS = {"min_fit_pixels": 8}


# --------------------------------------------------------------------------------------------
# Running the stages on a vector (the reference the tests replay)
# --------------------------------------------------------------------------------------------
def _per_chip(value, chip: int):
    value = np.asarray(value, dtype=np.float64)
    return value[chip] if value.ndim == 3 else float(value)


def stage_inputs(vector: dict) -> tuple[list[ChipExposure], list[Traces], FitOptions]:
    """The chips, traces and options of a stage vector (as loaded by ``load_vector``)."""
    inputs = vector["inputs"]
    reads = np.asarray(inputs["reads"])
    chips, traces = [], []
    for c in range(reads.shape[0]):
        saturation = inputs.get("saturation")
        chips.append(ChipExposure(
            name=CHIP_NAMES[c], reads=reads[c].astype(np.uint16),
            read_noise=_per_chip(inputs["read_noise"], c), gain=_per_chip(inputs["gain"], c),
            saturation=None if saturation is None else _per_chip(saturation, c),
        ))  # fmt: skip
        traces.append(Traces(
            y_center=np.asarray(inputs["y_center"][c], dtype=np.float64),
            sigma=np.asarray(inputs["sigma"][c], dtype=np.float64),
            excluded=np.asarray(inputs["excluded"], dtype=bool),
        ))  # fmt: skip
    return chips, traces, FitOptions(**vector["options"])


def _fit_pixel_fiber(prepared) -> np.ndarray:
    """``(ny, n_columns)``: the fiber whose omega fit uses each pixel, -1 for none."""
    fp = prepared.fit_pixels
    out = np.full(prepared.pixel_map.fiber.shape, -1, dtype=np.int64)
    fiber = np.broadcast_to(np.arange(fp.rows.shape[0])[:, None], fp.rows.shape)
    out[fp.rows[fp.valid], fp.cols[fp.valid]] = fiber[fp.valid]
    return out


def _jump_reads(prepared) -> np.ndarray:
    """``(ny, nx)``: bit j set when read j (0-based) is masked after a detected jump."""
    out = np.zeros(prepared.shape[1:], dtype=np.int64)
    for read, row, col in prepared.jumps:
        out[row, col] |= 1 << int(read)
    return out


def run_stages(vector: dict) -> dict:
    """Every stage's outputs for a vector: ``{"prepare": ..., "fibers": ..., "extract": ...}``,
    per-chip outputs with a leading chip axis."""
    chips, traces, options = stage_inputs(vector)
    if len(chips) > 1 and not options.joint_chips:
        raise ValueError("stage vectors: several chips only with joint_chips")
    prepared = [prepare_chip(chip, tr, options) for chip, tr in zip(chips, traces, strict=True)]
    kept = list(prepared)
    fibers = fit_fibers(prepared, options)
    results = [extract_chip(chip, prep, fibers, options)
               for chip, prep in zip(chips, kept, strict=True)]  # fmt: skip
    prepare = {
        "omega_rough": np.stack([p.omega_rough for p in kept]).astype(np.float32),
        "rate": np.stack([p.rate for p in kept]).astype(np.float32),
        "saturated": np.stack([p.saturated for p in kept]).astype(np.int64),
        "jump_reads": np.stack([_jump_reads(p) for p in kept]),
        "pixel_fiber": np.stack([p.pixel_map.fiber for p in kept]).astype(np.int64),
        "purity": np.stack([p.pixel_map.purity for p in kept]).astype(np.float32),
        "fit_pixel_fiber": np.stack([_fit_pixel_fiber(p) for p in kept]),
        "n_fit_pixels": np.stack([p.fit_pixels.count for p in kept]).astype(np.int64),
    }
    fit = fibers.fit
    fiber_out = {
        "ref_index": int(fibers.ref_index),
        "omega_fit": fibers.omega_fit,
        "omega_cov": fibers.omega_cov,
        "omega": fibers.omega,
        "model": fibers.model.astype(np.int64),
        "delta_chi2": fibers.delta_chi2,
        "p_value": fibers.p_value,
        "amplitude": fibers.amplitude,
        "chi2_dof_constant": fibers.chi2_dof_constant,
        "chi2_dof_variable": fibers.chi2_dof_variable,
        "n_fit_pixels": fibers.n_fit_pixels.astype(np.int64),
        "flags": fibers.flags.astype(np.int64),
        "bright": fibers.bright,
        "borrowed_omega": fibers.borrowed_omega,
        "borrowed_cov": fibers.borrowed_cov,
    }
    if fit is not None:
        fiber_out["fit_flags"] = fit.flags.astype(np.int64)
    rms = fibers.offset_rms()
    if rms is not None:  # the nuisance term: the fitted offsets' RMS per chip
        fiber_out["offset_rms"] = rms
    if fibers.chromatic is not None:  # the chromatic fit of the time-variable fibers
        chromatic = fibers.chromatic
        fiber_out |= {
            "coordinate_span": np.asarray(fibers.coordinate_span),
            "chromatic_omega": chromatic.omega,
            "chromatic_gamma": chromatic.gamma,
            "chromatic_cov": chromatic.cov,
            "chromatic_delta_chi2": chromatic.delta_chi2,
            "chromatic_p_value": chromatic.p_value,
            "chromatic_amplitude": chromatic.amplitude,
        }
    extract = {
        name: np.stack([getattr(r, name) for r in results]) for name in ("flux", "flux_var", "chi2")
    }
    for name in ("n_diff", "flags", "fiber"):
        extract[name] = np.stack([getattr(r, name) for r in results]).astype(np.int64)
    return {"prepare": prepare, "fibers": fiber_out, "extract": extract}


# --------------------------------------------------------------------------------------------
# Small simulated exposures
# --------------------------------------------------------------------------------------------
def binary(values) -> np.ndarray:
    """Round to multiples of 2^-10: exact in binary, so 1-based centers (+1) are exact too."""
    return np.round(np.asarray(values, dtype=np.float64) * 1024.0) / 1024.0


def make_traces(centers, n_columns: int, sigma=0.9, tilt=0.012) -> tuple[np.ndarray, np.ndarray]:
    """``(y_center, sigma)``, ``(n_fibers, n_columns)``: gently tilted traces."""
    x = np.arange(n_columns)
    y = binary(np.asarray(centers, float)[:, None] + tilt * (x - n_columns / 2))
    s = binary(np.broadcast_to(np.asarray(sigma, float).reshape(-1, 1), y.shape))
    assert np.all(np.abs(y - np.floor(y) - 0.5) > 0.01), "a center too close to a pixel edge"
    return y, s


def profile(y_center, sigma, rows) -> np.ndarray:
    traces = Traces(y_center=y_center, sigma=sigma)
    return traces.profile(rows)


def simulate_chip(
    rng, y_center, sigma, fiber_flux, omega, *, ny, nx, gain=1.9, read_noise=6.0, pedestal=100,
    dark=2.0, clip=65535, cosmic_rays=(), dead=(), row_offsets=None,
):  # fmt: skip
    """Raw reads ``(n_reads, ny, nx)`` (whole DN, float64) of fibers on Gaussian traces.

    ``fiber_flux`` ``(n_fibers,)`` or ``(n_fibers, n_columns)``: e- per read interval per column
    over a whole trace;
    ``omega`` ``(n_fibers, K)``, or ``(n_fibers, K, n_columns)`` (chromatic); ``cosmic_rays``:
    ``(k, row, col, e-)`` added from difference k on; ``dead``: ``(row, col)`` pixels whose reads
    are all equal; ``row_offsets`` ``(n_reads, ny, n_segments)`` DN added to every read of each
    row's segments of ``nx // n_segments`` columns (1/f-like offsets).
    """
    n_fibers, n_columns = y_center.shape
    K = omega.shape[1]
    base = np.rint(y_center).astype(np.int64)
    light = np.zeros((K, ny, nx))
    cols = np.broadcast_to(np.arange(n_columns), base.shape)
    for offset in range(-5, 6):
        rows = base + offset
        inside = (rows >= 0) & (rows < ny)
        flux = np.asarray(fiber_flux, float)
        frac = profile(y_center, sigma, rows) * (flux[:, None] if flux.ndim == 1 else flux)
        for k in range(K):
            weight = omega[:, k, :] if omega.ndim == 3 else omega[:, k, None]
            np.add.at(light[k], (rows[inside], cols[inside]), (frac * weight)[inside])
    light[:, :, :n_columns] += dark
    counts = np.zeros((K + 1, ny, nx))
    counts[1:] = np.cumsum(rng.poisson(light), axis=0)
    for k, row, col, charge in cosmic_rays:
        counts[k + 1 :, row, col] += charge
    noise = rng.normal(0.0, read_noise * gain, counts.shape)
    reads = pedestal + (counts + noise) / gain
    if row_offsets is not None:
        reads += np.repeat(row_offsets, nx // row_offsets.shape[-1], axis=-1)
    reads = np.rint(reads)
    for row, col in dead:
        reads[:, row, col] = pedestal + 37
    return np.clip(reads, 0, clip)


CASES: list[dict] = []


def case(name: str, description: str, chips: list[dict], y_center, sigma, excluded, *,
         checks=(), **options):  # fmt: skip
    """Register a vector: ``chips`` are dicts of ``reads`` and calibration; ``checks`` are
    functions of the stage outputs that must hold (what the case is for)."""
    inputs = {
        "reads": np.stack([c["reads"] for c in chips]).astype(np.int64),
        "read_noise": _stacked(chips, "read_noise"),
        "gain": _stacked(chips, "gain"),
    }
    saturation = _stacked(chips, "saturation")
    if saturation is not None:
        inputs["saturation"] = saturation
    assert inputs["reads"].min() >= 0 and inputs["reads"].max() <= 65535
    inputs["y_center"] = np.stack([y_center] * len(chips)) if np.ndim(y_center) == 2 else y_center
    inputs["sigma"] = np.stack([sigma] * len(chips)) if np.ndim(sigma) == 2 else sigma
    inputs["excluded"] = np.asarray(excluded, dtype=bool)
    defaults = FitOptions()
    values = {**BASE_OPTIONS, **options}
    opts = {key: values.get(key, getattr(defaults, key)) for key in STAGE_OPTIONS}
    opts = {key: value for key, value in opts.items() if value is not None}
    CASES.append({
        "name": name, "description": description, "kind": "stages", "rtol": RTOL,
        "inputs": inputs, "options": opts, "checks": checks,
    })  # fmt: skip


def _stacked(chips, key):
    values = [c.get(key) for c in chips]
    if all(v is None for v in values):
        return None
    if all(np.ndim(v) == 0 for v in values) and len(set(map(float, values))) == 1:
        return float(values[0])
    return np.stack([np.broadcast_to(np.asarray(v, float), chips[0]["reads"].shape[1:])
                     for v in values])  # fmt: skip


NY, NC, NX = 12, 16, 16
CENTERS3 = [2.3, 5.8, 9.2]
CENTERS4 = [1.75, 4.75, 7.8, 10.8]
CLOUD7 = np.array([1.0, 0.95, 0.62, 0.5, 0.83, 1.0, 0.97])
FLAT7 = np.ones(7)


def omegas(pattern, n_fibers, rng=None, jitter=0.0):
    pattern = np.asarray(pattern, float)
    out = np.tile(pattern, (n_fibers, 1))
    if rng is not None and jitter:
        out *= 1.0 + jitter * rng.uniform(-1, 1, out.shape)
    return out


def models_are(*expected):
    def check(out):
        assert list(out["fibers"]["model"]) == list(expected), out["fibers"]["model"]

    return check


def fiber_flag(fiber, bit, present=True):
    def check(out):
        assert bool(out["fibers"]["flags"][fiber] & bit) == present, out["fibers"]["flags"]

    return check


def _build() -> None:
    # 1. Constant sky: every fiber keeps the constant model; untraced columns are background.
    rng = np.random.default_rng(101)
    y, s = make_traces(CENTERS3, NC)
    reads = simulate_chip(rng, y, s, [2600.0, 3000.0, 2200.0], omegas(FLAT7, 3), ny=NY,
                          nx=NX + 2)  # fmt: skip
    case("stage_constant_sky", "constant illumination: every fiber keeps the constant model; "
         "columns 16-17 untraced (background)",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y, s,
         [False] * 3, checks=[models_are(0, 0, 0)])  # fmt: skip

    # 2. A cloud: every bright fiber takes the time-variable model.
    rng = np.random.default_rng(102)
    reads = simulate_chip(rng, y, s, [2600.0, 3000.0, 2200.0], omegas(CLOUD7, 3, rng, 0.01),
                          ny=NY, nx=NX)  # fmt: skip
    case("stage_cloud", "a cloud (omega down to 0.5): every bright fiber is time-variable",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y, s,
         [False] * 3, checks=[models_are(1, 1, 1)])  # fmt: skip

    # 3. A faint fiber borrows the bright fibers' mean omega.
    rng = np.random.default_rng(103)
    y4, s4 = make_traces(CENTERS4, NC, sigma=[0.85, 0.9, 0.95, 0.9])
    reads = simulate_chip(rng, y4, s4, [2800.0, 120.0, 3100.0, 2500.0],
                          omegas(CLOUD7, 4, rng, 0.01), ny=NY, nx=NX)  # fmt: skip
    case("stage_faint_borrows", "a faint fiber (no fit pixel above S/N 30) borrows the bright "
         "fibers' mean omega under a cloud",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y4, s4,
         [False] * 4,
         checks=[models_are(1, 2, 1, 1), fiber_flag(1, Flag.BORROWED_OMEGA)])  # fmt: skip

    # 4. Fits that fail fall back to the constant model: max_iter = 1 stops every omega fit
    # before it can converge (the iteration needs 2 steps at least); the faint fiber, which has
    # no fit of its own and nothing to borrow, is constant without the flag.
    rng = np.random.default_rng(104)
    reads = simulate_chip(rng, y4, s4, [3000.0, 120.0, 2800.0, 2600.0],
                          omegas(CLOUD7, 4, rng, 0.01), ny=NY, nx=NX)  # fmt: skip
    case("stage_fallback", "max_iter = 1: no omega fit converges, every bright fiber falls back "
         "to the constant model (FALLBACK_CONSTANT); the faint one is constant, not flagged",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y4, s4,
         [False] * 4, max_iter=1,
         checks=[models_are(0, 0, 0, 0), fiber_flag(0, Flag.FALLBACK_CONSTANT),
                 fiber_flag(1, Flag.FALLBACK_CONSTANT, False)])  # fmt: skip

    # 5. A saturated fiber: its core saturates mid-ramp (a per-pixel saturation map).
    rng = np.random.default_rng(105)
    reads = simulate_chip(rng, y, s, [2600.0, 25000.0, 2200.0], omegas(CLOUD7, 3, rng, 0.01),
                          ny=NY, nx=NX, clip=20000)  # fmt: skip
    sat_map = np.full((NY, NX), 20000.0)
    sat_map[:, ::5] = 19500.0
    row = int(np.rint(y[1, 0]))

    def saturated_core(out):
        assert out["prepare"]["saturated"][0, row, :NC].sum() >= 10
        assert (out["extract"]["flags"][0, row, :NC] & Flag.SATURATED).all()
        assert (out["prepare"]["fit_pixel_fiber"][0, row] != 1).all()

    case("stage_saturated_fiber", "the middle fiber saturates mid-ramp in its core (a "
         "saturation map): no fit pixels there, SATURATED pixels extracted from the reads before",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": sat_map}], y, s,
         [False] * 3, checks=[saturated_core])  # fmt: skip

    # 6. Cosmic rays: big ones the first pass finds (masked in the extraction), and a moderate
    # one in a fit pixel that only the omega fit's jump search finds.
    rng = np.random.default_rng(106)
    core = np.rint(y).astype(int)
    crs = [(2, core[0, 4], 4, 20000.0), (4, core[2, 9], 9, 15000.0), (3, 7, 15, 9000.0),
           (4, core[1, 12], 12, 240.0)]  # fmt: skip
    reads = simulate_chip(rng, y, s, [2600.0, 3000.0, 2200.0], omegas(CLOUD7, 3, rng, 0.01),
                          ny=NY, nx=NX, cosmic_rays=crs)  # fmt: skip

    def cosmic_rays(out):
        jumps = out["prepare"]["jump_reads"][0]
        assert jumps[core[0, 4], 4] and jumps[core[2, 9], 9] and jumps[7, 15]
        assert not jumps[core[1, 12], 12], "the moderate cosmic ray must pass the first pass"
        assert out["prepare"]["fit_pixel_fiber"][0, core[1, 12], 12] == 1
        assert (out["fibers"]["fit_flags"][1] & Flag.JUMP_DETECTED).any()
        assert out["extract"]["flags"][0, core[0, 4], 4] & Flag.JUMP_DETECTED

    case("stage_cosmic_rays", "cosmic rays: three found by the first pass (masked), one of 6 "
         "sigma in a fit pixel found by the omega fit's jump search",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y, s,
         [False] * 3, checks=[cosmic_rays])  # fmt: skip

    # 7. An FPI fiber: excluded from the omega fits and from the reference read.
    rng = np.random.default_rng(107)
    omega_fpi = omegas(CLOUD7, 4, rng, 0.01)
    omega_fpi[2] = 1.0  # the FPI lamp does not see the cloud
    reads = simulate_chip(rng, y4, s4, [2800.0, 2600.0, 4000.0, 2500.0], omega_fpi, ny=NY,
                          nx=NX)  # fmt: skip
    case("stage_fpi_fiber", "an FPI fiber (excluded): constant model and FPI_FIBER, no fit "
         "pixels; the others are time-variable",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y4, s4,
         [False, False, True, False],
         checks=[models_are(1, 1, 0, 1), fiber_flag(2, Flag.FPI_FIBER)])  # fmt: skip

    # 8. Dead pixels (every read equal): two beside fiber cores, inside their omega fits
    # (core_halfwidth = 1 and min_snr = 0 let them in; the row nearest the center stays live, so
    # the fiber's brightness in that column is not 0), one in the background.
    rng = np.random.default_rng(108)

    def beside(fiber, col):
        """The row next to the nearest one, still within 1 row of the trace center."""
        center = y[fiber, col]
        row = int(core[fiber, col]) + (1 if center > core[fiber, col] else -1)
        assert abs(row - center) <= 1.0
        return row, col

    dead = [beside(1, 6), beside(0, 10), (11, 3)]
    reads = simulate_chip(rng, y, s, [2600.0, 3000.0, 2200.0], omegas(CLOUD7, 3, rng, 0.01),
                          ny=NY, nx=NX, dead=dead)  # fmt: skip

    def dead_in_fit(out):
        for (row, col), fiber in zip(dead[:2], (1, 0), strict=True):
            assert out["prepare"]["fit_pixel_fiber"][0, row, col] == fiber
        assert np.all(np.isfinite(out["fibers"]["omega_fit"]))
        assert not (out["fibers"]["flags"] & Flag.NOT_CONVERGED).any()

    case("stage_dead_pixel", "dead pixels (all differences exactly 0), two inside omega fits "
         "(core_halfwidth = 1, min_snr = 0): the fits converge",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y, s,
         [False] * 3, min_snr=0.0, core_halfwidth=1.0,
         checks=[dead_in_fit, models_are(1, 1, 1)])  # fmt: skip

    # 9. model = "constant" on a cloud: nothing fitted, every fiber constant.
    rng = np.random.default_rng(109)
    reads = simulate_chip(rng, y, s, [2600.0, 3000.0, 2200.0], omegas(CLOUD7, 3, rng, 0.01),
                          ny=NY, nx=NX)  # fmt: skip
    case("stage_model_constant", "model = constant under a cloud: no omega fit",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y, s,
         [False] * 3, model="constant", checks=[models_are(0, 0, 0)])  # fmt: skip

    # 10. model = "time-variable" under a constant sky: forced, and the faint fiber borrows.
    rng = np.random.default_rng(110)
    reads = simulate_chip(rng, y4, s4, [2800.0, 120.0, 3100.0, 2500.0], omegas(FLAT7, 4),
                          ny=NY, nx=NX)  # fmt: skip
    case("stage_model_time_variable", "model = time-variable under a constant sky: bright "
         "fibers forced time-variable, the faint one borrows",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y4, s4,
         [False] * 4, model="time-variable", checks=[models_are(1, 2, 1, 1)])  # fmt: skip

    # 11. Per-pixel calibration maps, blended traces, at most 6 fit pixels, no jump search,
    # 10 reads, no saturation level.
    rng = np.random.default_rng(111)
    yb, sb = make_traces([2.3, 5.35, 7.3, 10.2], NC, sigma=[0.9, 1.1, 1.0, 0.9])
    cloud9 = np.array([1.0, 0.9, 0.7, 0.6, 0.65, 0.9, 1.0, 0.95, 0.8])
    gain_map = 1.9 + 0.1 * rng.uniform(-1, 1, (NY, NX))
    noise_map = 6.0 + 1.0 * rng.uniform(-1, 1, (NY, NX))
    reads = simulate_chip(rng, yb, sb, [2600.0, 1800.0, 2000.0, 2400.0],
                          omegas(cloud9, 4, rng, 0.01), ny=NY, nx=NX, gain=1.9)  # fmt: skip

    def blended(out):
        assert (out["prepare"]["purity"][0] < 0.95).sum() > 10
        assert (out["prepare"]["n_fit_pixels"][0] <= 6).all()

    case("stage_maps_blended", "gain and read-noise maps, blended traces (purity < 0.95), "
         "max_fit_pixels = 6, no jump search, 10 reads, no saturation level",
         [{"reads": reads, "read_noise": noise_map, "gain": gain_map}], yb, sb, [False] * 4,
         max_fit_pixels=6, jump_search=False, min_fit_pixels=5, checks=[blended])  # fmt: skip

    # 12. Two chips fitted jointly (joint_chips): one omega per fiber from both chips.
    rng = np.random.default_rng(112)
    omega_joint = omegas(CLOUD7, 3, rng, 0.01)
    yj = np.stack([y, binary(y - 0.12)])
    sj = np.stack([s, s])
    chips = []
    for c, (flux, gain) in enumerate([([1500.0, 1700.0, 300.0], 1.9), ([1300.0, 2000.0, 900.0],
                                                                       2.1)]):  # fmt: skip
        reads = simulate_chip(rng, yj[c], sj[c], flux, omega_joint, ny=NY, nx=NX, gain=gain)
        chips.append({"reads": reads, "read_noise": 6.5, "gain": gain, "saturation": 60000.0})
    case("stage_joint_chips", "two chips fitted jointly: one omega per fiber from the fit "
         "pixels of both", chips, yj, sj, [False] * 3, joint_chips=True,
         checks=[models_are(1, 1, 1)])  # fmt: skip

    # 13. The 1/f nuisance term: offsets per (row, 8 columns) and read under a cloud, fitted with
    # omega (correct_1f = "nuisance", segment_columns = 8); the model choice uses the Wald
    # statistic. A cosmic ray in a fit pixel is found by the jump search against the offsets.
    rng = np.random.default_rng(113)
    offsets = rng.normal(0.0, 10.0, (8, NY, 2))
    # Absorption lines: the flux contrast within a segment is what tells omega from the offsets.
    lines = 1.0 - 0.6 * np.abs(np.sin(0.9 * np.arange(NC)))
    spectra = np.array([5200.0, 6000.0, 4400.0])[:, None] * lines
    ray = (4, core[1, 12], 12, 250.0)
    reads = simulate_chip(rng, y, s, spectra, omegas(CLOUD7, 3, rng, 0.01), ny=NY, nx=NX,
                          row_offsets=offsets, cosmic_rays=[ray])  # fmt: skip

    def nuisance(out):
        assert out["fibers"]["offset_rms"][0] > 5.0
        assert (out["fibers"]["fit_flags"][1] & Flag.JUMP_DETECTED).any()

    case("stage_nuisance", "1/f-like offsets per (row, 8 columns) and read under a cloud, fitted "
         "as the nuisance term (segment_columns = 8); a cosmic ray found against the offsets",
         [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}], y, s,
         [False] * 3, correct_1f="nuisance", segment_columns=8,
         checks=[nuisance, models_are(1, 1, 1)])  # fmt: skip

    # 13b. The nuisance term with a faint fiber whose spectrum is flat: no flux contrast within
    # its segments beyond the noise, so omega cannot be told from its offsets. It is not fitted
    # (LOW_SEGMENT_CONTRAST) and borrows, as a faint fiber; the two fibers with absorption lines
    # are fitted.
    rng = np.random.default_rng(116)
    spectra = np.array([5200.0 * lines, np.full(NC, 700.0), 4400.0 * lines])
    reads = simulate_chip(rng, y, s, spectra, omegas(CLOUD7, 3, rng, 0.01), ny=NY, nx=NX,
                          row_offsets=rng.normal(0.0, 10.0, (8, NY, 2)))  # fmt: skip

    def screened(out):
        assert out["fibers"]["n_fit_pixels"][1] >= BASE_OPTIONS["min_fit_pixels"]

    case("stage_nuisance_low_contrast", "the nuisance term with a faint fiber of flat spectrum: "
         "no flux contrast within its segments, so it is not fitted (LOW_SEGMENT_CONTRAST) and "
         "borrows", [{"reads": reads, "read_noise": 6.0, "gain": 1.9, "saturation": 60000.0}],
         y, s, [False] * 3, correct_1f="nuisance", segment_columns=8,
         checks=[screened, models_are(1, 2, 1), fiber_flag(1, Flag.LOW_SEGMENT_CONTRAST),
                 fiber_flag(0, Flag.LOW_SEGMENT_CONTRAST, False)])  # fmt: skip

    # 14. The nuisance term over two chips fitted jointly: segments are per chip.
    rng = np.random.default_rng(114)
    chips = []
    for c, (flux, gain) in enumerate([([3000.0, 3400.0, 2800.0], 1.9), ([2600.0, 4000.0, 2800.0],
                                                                       2.1)]):  # fmt: skip
        spectra = np.array(flux)[:, None] * lines[:: -1 if c else 1]
        reads = simulate_chip(rng, yj[c], sj[c], spectra, omega_joint, ny=NY, nx=NX, gain=gain,
                              row_offsets=rng.normal(0.0, 4.0 + 6 * c, (8, NY, 2)))  # fmt: skip
        chips.append({"reads": reads, "read_noise": 6.5, "gain": gain, "saturation": 60000.0})

    def two_chips(out):
        rms = out["fibers"]["offset_rms"]
        assert rms.shape == (2,) and rms[1] > rms[0]

    case("stage_nuisance_joint_chips", "the nuisance term over two chips fitted jointly "
         "(segment_columns = 8): offsets per chip", chips, yj, sj, [False] * 3, joint_chips=True,
         correct_1f="nuisance", segment_columns=8,
         checks=[two_chips, models_are(1, 1, 1)])  # fmt: skip

    # 15. Chromatic transparency over two chips fitted jointly: fibers 0 and 1 see omega_k (1 +
    # gamma_k c) with gamma up to 8 % (c from the columns' wavelengths), fiber 2 a grey cloud.
    # The chromatic model is chosen for the first two only; their pixels are extracted with the
    # omega of their own column.
    from pyapred.chromatic import chip_wavelength, coordinate_span, wavelength_coordinate

    rng = np.random.default_rng(115)
    gamma7 = np.array([0.0, 0.03, 0.06, 0.08, 0.05, -0.02, 0.04])
    span = coordinate_span(CHIP_NAMES[:2])
    chips = []
    for c, (flux, gain) in enumerate([([4200.0, 3800.0, 4000.0], 1.9), ([3600.0, 4400.0, 3900.0],
                                                                       2.1)]):  # fmt: skip
        coord = wavelength_coordinate(chip_wavelength(CHIP_NAMES[c], NC), span)
        chromatic = omegas(CLOUD7, 3)[:, :, None] * (1 + gamma7[None, :, None] * coord)
        chromatic[2] = CLOUD7[:, None]  # a grey cloud
        reads = simulate_chip(rng, yj[c], sj[c], flux, chromatic, ny=NY, nx=NX, gain=gain)
        chips.append({"reads": reads, "read_noise": 6.5, "gain": gain, "saturation": 60000.0})
    case("stage_chromatic", "chromatic transparency (gamma up to 8 %) in two fibers of two chips "
         "fitted jointly, a grey cloud in the third: chromatic model for the first two",
         chips, yj, sj, [False] * 3, joint_chips=True, chromatic=True,
         checks=[models_are(3, 3, 1)])  # fmt: skip


# --------------------------------------------------------------------------------------------
# Margins: no decision within rounding of its threshold
# --------------------------------------------------------------------------------------------
def check_margins(vector: dict) -> None:
    """No fit-pixel candidate's S/N or purity within 1e-6 (relative) of its threshold, and the
    fibers' model decisions clear of theirs."""
    from pyapred.exposure.prepare import prepare_chip as _prepare

    chips, traces, options = stage_inputs(vector)
    for chip, tr in zip(chips, traces, strict=True):
        prep = _prepare(chip, tr, options)
        nc = tr.n_columns
        K = chip.reads.shape[0] - 1
        gain = np.broadcast_to(np.asarray(chip.gain, float), chip.reads.shape[1:])[:, :nc]
        sigma = np.broadcast_to(np.asarray(chip.read_noise, float), chip.reads.shape[1:])[:, :nc]
        signal = np.maximum(prep.rate[:, :nc], 0.0) * gain * K
        snr = signal / np.sqrt(signal + 2.0 * sigma**2 * gain**2)
        rows = np.arange(chip.reads.shape[1])[:, None, None]
        core = np.abs(rows - tr.y_center[None]) <= max(options.core_halfwidth, 0.5)
        near = core.any(axis=1)
        if options.min_snr > 0:
            gap = np.abs(snr[near] / options.min_snr - 1.0)
            assert gap.min() > 1e-6, f"{vector['name']}: S/N within {gap.min():.1e} of min_snr"
        purity = prep.pixel_map.purity[near].astype(np.float64)
        gap = np.abs(purity / options.min_purity - 1.0)
        assert gap.min() > 1e-6, f"{vector['name']}: purity within {gap.min():.1e} of min_purity"


def check_decisions(vector: dict, out: dict) -> None:
    fibers = out["fibers"]
    options = vector["options"]
    tested = fibers["p_value"][np.isfinite(fibers["p_value"])]
    if tested.size:
        gap = np.abs(np.log(np.maximum(tested, 1e-300) / options["p_value"]))
        assert gap.min() > 1e-3, f"{vector['name']}: a p-value at the threshold"
    if "chromatic_p_value" in fibers:
        tested = fibers["chromatic_p_value"][np.isfinite(fibers["chromatic_p_value"])]
        gap = np.abs(np.log(np.maximum(tested, 1e-300) / options["chromatic_p_value"]))
        assert gap.min() > 1e-3, f"{vector['name']}: a chromatic p-value at the threshold"
    amp = fibers["amplitude"][np.isfinite(fibers["amplitude"])]
    if amp.size:
        assert np.abs(amp / options["amplitude_threshold"] - 1).min() > 1e-6
    K = fibers["omega_cov"].shape[1]
    error = np.sqrt(np.maximum(np.diagonal(fibers["omega_cov"], axis1=1, axis2=2), 0.0))
    error = np.where(np.arange(K) == fibers["ref_index"], np.nan, error)
    with np.errstate(all="ignore"):
        median = np.array([np.nanmedian(e) if np.isfinite(e).any() else np.nan for e in error])
    median = median[np.isfinite(median) & (median > 0)]
    if median.size:
        gap = np.abs(median / options["max_omega_error"] - 1.0)
        assert gap.min() > 1e-6, f"{vector['name']}: a median omega error at the threshold"


def _returned(vector: dict, module, name: str) -> np.ndarray:
    """What ``module.name`` returned, concatenated, over a run of ``vector``'s stages."""
    seen = []
    original = getattr(module, name)

    def spy(*args):
        seen.append(original(*args))
        return seen[-1]

    setattr(module, name, spy)
    try:
        run_stages(vector)
    finally:
        setattr(module, name, original)
    return np.concatenate(seen)


def check_contrasts(vector: dict) -> None:
    """With the nuisance term, no fiber's segment contrast within 1e-6 (relative) of
    ``MIN_SEGMENT_CONTRAST``, the threshold below which it is not fitted."""
    from pyapred.exposure import fibers

    if "nuisance" not in vector["options"].get("correct_1f", "none"):
        return
    contrast = _returned(vector, fibers, "_segment_contrasts")
    gap = np.abs(contrast[np.isfinite(contrast)] / fibers.MIN_SEGMENT_CONTRAST - 1.0)
    assert gap.min(initial=1.0) > 1e-6, f"{vector['name']}: a segment contrast at the threshold"
    print(f"{vector['name']}: segment contrasts {np.round(contrast, 2).tolist()}")


def check_rough_errors(vector: dict) -> None:
    """No fiber's rough-shape error within 1e-6 (relative) of ``MAX_ROUGH_ERROR``, above which
    its jump detection takes the common shape."""
    from pyapred.exposure import prepare

    error = _returned(vector, prepare, "_rough_error")
    gap = np.abs(error[np.isfinite(error)] / prepare.MAX_ROUGH_ERROR - 1.0)
    assert gap.min(initial=1.0) > 1e-6, f"{vector['name']}: a rough-shape error at the threshold"


def main(argv: list[str]) -> int:
    only = set(argv[argv.index("--only") + 1 :]) if "--only" in argv else None
    argv = argv[: argv.index("--only")] if "--only" in argv else argv
    default = Path(__file__).resolve().parent.parent / "julia" / "test" / "stages"
    outdir = Path(argv[0]) if argv else default
    outdir.mkdir(parents=True, exist_ok=True)
    _build()
    cases = [vector for vector in CASES if only is None or vector["name"] in only]
    for vector in cases:
        checks = vector.pop("checks")
        out = run_stages(vector)
        for check in checks:
            check(out)
        check_margins(vector)
        check_decisions(vector, out)
        check_contrasts(vector)
        check_rough_errors(vector)
        vector["expected"] = out
        text = "# Generated by scripts/make_stage_vectors.py; do not edit.\n"
        text += dumps(vector, digits={"expected": DIGITS})
        path = outdir / f"{vector['name']}.toml"
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        models = out["fibers"]["model"].tolist()
        print(f"{vector['name']}: {len(text) / 1024:.0f} KiB, models {models}")
    print(f"wrote {len(cases)} vectors to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
