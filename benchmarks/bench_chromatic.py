"""Benchmark: the chromatic model on a simulated seeing change, against the achromatic one.

Simulates an exposure whose seeing goes from 1.2 to 3.6 arcsec at the guider (the red-to-blue
omega difference changes by 3 % over the exposure; ``simulate_exposure("seeing-change")``) and
runs the exposure pipeline (:func:`pyapred.exposure.run_exposure`, three chips fitted jointly)
with ``chromatic`` off and on, interleaved, ``--repeats`` times (best time kept). It prints:

- the cost: the omega-fit stage and the whole run, chromatic over achromatic, side by side;
- gamma's z-scores against the truth over bright fibers, and how many take the chromatic model;
- the flux bias (mean z against the true exposure-averaged flux, with its standard error) at the
  red end of chip R and the blue end of chip B (the outer 10 % of the columns), for ramps cut
  short by saturation (all of them, and those cut before two thirds of the exposure) and for
  complete ramps, under both models;
- the bias of the fibers' joint fluxes at the reference read (the model's own normalisation) in
  their fit pixels at the same chip ends and in the middle of chip G, under both models;
- on a grey cloud (same size, ``"clouds"``): the fraction of bright fibers given the chromatic
  model;
- the guider's prediction of gamma from synthetic guider frames that see the same seeing: the
  chi2/dof of the fitted gamma against it per chromatic fiber. ``--figure PATH`` writes the
  comparison figure (``docs/figures/chromatic_guider.png`` is made this way).

    python benchmarks/bench_chromatic.py [--fibers 300] [--columns 512] [--reads 47] \
        [--seed 4] [--repeats 1] [--figure PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from astropy import units as u
from astropy.time import Time

from pyapred import Flag, guider
from pyapred.exposure import MODEL_CHROMATIC, ChipExposure, FitOptions, run_exposure
from pyapred.simulate import READ_INTERVAL_S, simulate_exposure


def inputs(sim):
    chips = {
        name: ChipExposure(name, c.reads, c.read_noise, gain=c.gain, saturation=c.saturation)
        for name, c in sim.chips.items()
    }
    return chips, {name: c.traces for name, c in sim.chips.items()}


def run(sim, chromatic: bool):
    chips, traces = inputs(sim)
    start = time.perf_counter()
    result = run_exposure(chips, traces, FitOptions(chromatic=chromatic, joint_chips=True))
    return result, time.perf_counter() - start, result.meta["timings_s"]["fit_omega"]


def flux_z(sim, result, name):
    chip = result.chips[name]
    true = sim.chips[name].flux / sim.chips[name].gain
    return (chip.flux - true) / np.sqrt(chip.flux_var), chip


def reference_read_z(sim, result, chip_name: str, columns: slice) -> tuple[np.ndarray, ...]:
    """The fibers' joint fluxes at the reference read (the model's own normalisation,
    ``omega[ref_index] == 1``) against the truth there, as z-scores of the fit pixels of
    ``chip_name`` in ``columns``, achromatic and chromatic: ``(z0, z1, fiber)`` (n,) each.

    The joint fit's pixels are each chip's fit pixels joined in chip order, then every fiber's
    valid pixels first (as :func:`pyapred.exposure.fit_fibers` orders them).
    """
    from pyapred.chromatic import chip_wavelength

    fits = result.fibers["joint"]
    names = list(result.chips)
    pixels = [result.chips[name].prepared.fit_pixels for name in names]
    chip = np.concatenate([np.full(p.rows.shape, i) for i, p in enumerate(pixels)], axis=1)
    rows = np.concatenate([p.rows for p in pixels], axis=1)
    cols = np.concatenate([p.cols for p in pixels], axis=1)
    valid = np.concatenate([p.valid for p in pixels], axis=1)
    order = np.argsort(~valid, axis=1, kind="stable")
    n_pix = fits.fit.flux.shape[1]
    chip, rows, cols, valid = (np.take_along_axis(a, order, axis=1)[:, :n_pix]
                               for a in (chip, rows, cols, valid))  # fmt: skip
    c = names.index(chip_name)
    simulated = sim.chips[chip_name]
    n_columns = simulated.traces.n_columns
    weights = sim.omega_at(chip_wavelength(chip_name, n_columns))  # (n_fibers, K, n_columns)
    at_ref = weights[:, fits.ref_index] / weights.mean(axis=1)  # (n_fibers, n_columns)
    fiber = np.broadcast_to(np.arange(valid.shape[0])[:, None], valid.shape)
    in_columns = np.zeros(n_columns, bool)
    in_columns[columns] = True
    take = valid & (chip == c) & fits.bright[:, None] & in_columns[cols]  # traced columns only
    fiber, r, col = fiber[take], rows[take], cols[take]
    truth = simulated.flux[r, col] * at_ref[fiber, col] / simulated.gain
    achromatic, chromatic = fits.fit, fits.chromatic
    z0 = (achromatic.flux[take] - truth) / np.sqrt(achromatic.flux_var[take])
    z1 = (chromatic.flux[take] - truth) / np.sqrt(chromatic.flux_var[take])
    return z0, z1, fiber


def fiber_mean_z(z, fiber) -> str:
    """Mean z with its standard error from the scatter of the fibers' own means: a fiber's
    pixels share its omega's (and gamma's) error, so they are not independent."""
    good = np.isfinite(z)
    z, fiber = z[good], fiber[good]
    ids, index = np.unique(fiber, return_inverse=True)
    per_fiber = np.bincount(index, z) / np.bincount(index)
    return f"{np.mean(z):+.3f} +- {np.std(per_fiber) / np.sqrt(ids.size):.3f} ({ids.size} fibers)"


def mean_z(z, mask) -> str:
    if not mask.any():
        return "      -        "
    return f"{np.mean(z[mask]):+.3f} +- {np.std(z[mask]) / np.sqrt(mask.sum()):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fibers", type=int, default=300)
    parser.add_argument("--columns", type=int, default=512)
    parser.add_argument("--reads", type=int, default=47)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--figure", help="write the guider comparison figure here (PNG)")
    args = parser.parse_args()
    from numba import get_num_threads

    size = dict(n_fibers=args.fibers, n_columns=args.columns, ref_columns=0, n_reads=args.reads)
    print(f"load average before: {os.getloadavg()}; numba threads {get_num_threads()}")
    sim = simulate_exposure("seeing-change", seed=args.seed, **size)
    truth_omega, truth_gamma = sim.chromatic_truth(0)
    science = sim.fiber_type != "fpi"
    ptp = np.median(np.ptp(2 * truth_gamma[science], axis=1))
    print(f"seeing change: {args.fibers} fibers x {args.columns} columns x {args.reads} reads, "
          f"red-to-blue omega difference {100 * ptp:.2f} % peak-to-peak")  # fmt: skip
    run(sim, False)  # compile and warm up
    run(sim, True)
    best = {False: (np.inf, np.inf), True: (np.inf, np.inf)}
    results = {}
    for _ in range(args.repeats):
        for chromatic in (False, True):
            result, total, fit = run(sim, chromatic)
            results[chromatic] = result
            best[chromatic] = (min(best[chromatic][0], total), min(best[chromatic][1], fit))
    (t0, f0), (t1, f1) = best[False], best[True]
    print(f"cost: omega-fit stage {f1:.2f} s vs {f0:.2f} s achromatic = {f1 / f0:.2f}x; "
          f"whole run {t1:.2f} s vs {t0:.2f} s = {t1 / t0:.2f}x; "
          f"load average {os.getloadavg()}")  # fmt: skip

    fits = results[True].fibers["joint"]
    cf = fits.chromatic
    omega, gamma = sim.chromatic_truth(fits.ref_index)
    free = np.arange(gamma.shape[1]) != fits.ref_index
    tried = fits.bright & np.isfinite(cf.p_value)
    z = (cf.gamma - gamma)[tried][:, free] / cf.gamma_error()[tried][:, free]
    chosen = fits.model == MODEL_CHROMATIC
    print(f"gamma z-scores over {tried.sum()} bright fibers: std {np.std(z):.3f}, mean "
          f"{np.mean(z):+.3f}; chromatic model for {chosen.sum()} of {fits.bright.sum()} bright "
          f"fibers")  # fmt: skip

    K = args.reads - 1
    edge = max(args.columns // 10, 1)
    print("flux bias, mean z (+- standard error):       achromatic          chromatic")
    ends = (("R", "red end", slice(0, edge)),
            ("B", "blue end", slice(args.columns - edge, args.columns)))  # fmt: skip
    for name, label, columns in ends:
        z0, chip = flux_z(sim, results[False], name)
        z1, _ = flux_z(sim, results[True], name)
        at_end = np.zeros(chip.flux.shape, bool)
        at_end[:, columns] = True
        clean = (chip.fiber >= 0) & ((chip.flags & (Flag.JUMP_DETECTED | Flag.TOO_FEW_DIFFS)) == 0)
        cut = (chip.flags & Flag.SATURATED) != 0
        true = sim.chips[name].flux / sim.chips[name].gain
        bright = true / np.sqrt(chip.flux_var) > 50
        for what, mask in (("ramps cut by saturation", cut),
                           ("  cut before 2/3", cut & (chip.n_diff <= 2 * K // 3)),
                           ("complete ramps, S/N > 50", ~cut & bright)):  # fmt: skip
            m = mask & clean & at_end
            print(f"  {name} {label:8s} {what:25s} n={m.sum():6d}  {mean_z(z0, m)}  "
                  f"{mean_z(z1, m)}")  # fmt: skip

    print("joint fluxes at the reference read, bright fibers' fit pixels (complete ramps), mean z:"
          "  achromatic          chromatic")  # fmt: skip
    for name, label, columns in (*ends, ("G", "middle", slice(2 * edge, args.columns - 2 * edge))):
        z0, z1, fiber = reference_read_z(sim, results[True], name, columns)
        print(f"  {name} {label:8s} n={z0.size:6d}  {fiber_mean_z(z0, fiber)}  "
              f"{fiber_mean_z(z1, fiber)}")  # fmt: skip

    grey = simulate_exposure("clouds", seed=args.seed + 1, **size)
    result, _, _ = run(grey, True)
    gfits = result.fibers["joint"]
    n_grey = int(np.sum(gfits.model == MODEL_CHROMATIC))
    print(f"grey cloud: chromatic model for {n_grey} of {gfits.bright.sum()} bright fibers "
          f"({100 * n_grey / max(gfits.bright.sum(), 1):.2f} %)")  # fmt: skip

    start = Time("2025-05-01T04:00:00", scale="tai")
    duration = K * READ_INTERVAL_S
    first, last = sim.fwhm[0, 0] - 0.5 * (sim.fwhm[0, 1] - sim.fwhm[0, 0]), sim.fwhm[0, -1]
    with tempfile.TemporaryDirectory() as directory:
        guider.simulate_guider_frames(
            directory, start=start - 100 * u.s, duration=duration + 200.0,
            transparency=lambda t: np.ones_like(t),
            fwhm=lambda t: first + (last - first) * np.clip((t - 100.0) / duration, 0.0, 1.0),
            rng=np.random.default_rng(args.seed), cadence=10.0, exptime=8.0, cameras=("gfa2n",),
        )  # fmt: skip
        rows = np.flatnonzero(chosen)
        source = {"omega": cf.omega[rows], "omega_cov": cf.omega_cov()[rows],
                  "gamma": cf.gamma[rows], "gamma_cov": cf.gamma_cov()[rows],
                  "span": fits.coordinate_span, "fiber_index": rows,
                  "read_times": start + sim.read_times * u.s}  # fmt: skip
        comparison = guider.compare(source, directory, row_phase=0.0, wavelength=1.6)
    chi2_dof = comparison.gamma_chi2 / comparison.gamma_dof
    print(f"guider prediction of gamma: chi2/dof of the fitted gamma against it over "
          f"{rows.size} chromatic fibers: mean {np.mean(chi2_dof):.3f}, median "
          f"{np.median(chi2_dof):.3f}; p < 0.01 for {np.mean(comparison.gamma_p_value < 0.01):.3f}"
          f" of them (0.01 expected)")  # fmt: skip
    if args.figure:
        comparison.plot(args.figure, max_fibers=6)
        print(f"figure: {args.figure}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
