"""Benchmark: the 1/f routes of the exposure pipeline, calibration and cost, on one simulated chip.

Simulates one chip (default: 300 fibers on the full 2048 science columns and the reference
output, 10 reads, a passing cloud), writes it as a raw ``.apz`` twice, without and with
correlated (1/f) read noise (c_pink, u_pink and ACN at ``pyapred simulate --one-over-f``'s
amplitudes: 0.6, 0.3 and 0.2 times the read noise), and runs the exposure pipeline
(:func:`pyapred.exposure.run_exposure`, what ``pyapred fit`` calls) with every
``--correct-1f`` route. Per route it prints omega's z-scores over bright fibers (mean = bias,
its standard error from the per-fiber means, and std), the flux z-scores of bright pixels, the
time of the omega-fit stage and its ratio to the plain fit (``none``) on the same file, and the
RMS of the fitted offsets. Routes are run interleaved, ``--repeats`` times, best time kept.

With ``--subtract`` it also measures what subtracting the fitted offsets from the omega-fit
pixels before extraction would change (``docs/noise.md``, "Which route when").

    python benchmarks/bench_nuisance.py [--fibers 300] [--reads 10] [--seed 4] [--repeats 1] \
        [--segment-columns 512 64 ...] [--subtract]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pyapred.exposure import FitOptions, run_exposure, truth_metrics
from pyapred.noise import HxrgNoise
from pyapred.simulate import simulate_exposure, write_simulated_exposure

ROUTES = ("none", "refpix", "nuisance", "refpix+nuisance")


def one_over_f(read_noise: float) -> HxrgNoise:
    """``pyapred simulate --one-over-f``'s noise: HxrgNoise's default ratios times the read
    noise, on the compressed clock."""
    rn = read_noise
    return HxrgNoise(white=0.0, c_pink=0.6 * rn, u_pink=0.3 * rn, acn=0.2 * rn, read_time=0.0)


def run_route(paths, route: str, sim, name: str, columns: int = 512) -> dict:
    start = time.perf_counter()
    options = FitOptions(correct_1f=route, segment_columns=columns)
    result = run_exposure(paths["apz"], paths["traces"], options)
    total = time.perf_counter() - start
    chip = sim.chips[name]
    metrics = truth_metrics(
        result, sim.omega, {name: chip.flux / chip.gain}, min_flux={name: 100.0 / chip.gain}
    )
    rms = result.fibers[name].offset_rms()
    return {
        "omega": metrics["omega"][name],
        "flux": metrics["flux"][name],
        "fit_s": result.meta["timings_s"]["fit_omega"],
        "total_s": total,
        "rms": None if rms is None else float(rms[0]),
        "result": result,
    }


def subtraction_effect(result, sim, name: str) -> tuple[float, float, int]:
    """Flux z-score std of the bright fibers' fit pixels, extracted with omega fixed, without and
    with the fitted offsets subtracted from their differences."""
    from pyapred import extract_fluxes
    from pyapred.noise.segments import readout_keys, readout_segments

    fits = result.fibers[name]
    prepared = result.chips[name].prepared
    pixels = prepared.fit_pixels
    chip = sim.chips[name]
    bright = np.flatnonzero(fits.bright)
    keys = readout_keys(pixels.rows, pixels.cols, columns=result.options.segment_columns)
    labels = readout_segments(keys, pixels.valid)
    reads = np.asarray(prepared.fit_reads, dtype=np.float64)[:, bright]
    valid = pixels.valid[bright]
    offsets = np.nan_to_num(fits.fit.offsets[bright])  # (F, S, K) DN
    per_pixel = np.take_along_axis(offsets, labels[bright][..., None], axis=1)  # (F, P, K)
    corrected = reads.copy()
    corrected[1:] -= np.cumsum(np.moveaxis(per_pixel, -1, 0), axis=0)
    gain_map = np.broadcast_to(np.asarray(chip.gain, float), chip.flux.shape)
    truth = (chip.flux / gain_map)[pixels.rows[bright], pixels.cols[bright]]  # DN per read
    sigma = np.broadcast_to(np.asarray(chip.read_noise, float), chip.flux.shape)
    sigma = sigma[pixels.rows[bright], pixels.cols[bright]]
    gain = gain_map[pixels.rows[bright], pixels.cols[bright]]
    groups = np.broadcast_to(np.arange(bright.size)[:, None], valid.shape)
    out = []
    for data in (reads, corrected):
        fit = extract_fluxes(data, sigma, fits.omega[bright], groups=groups, gain=gain,
                             mask=np.broadcast_to(~valid, data.shape))  # fmt: skip
        z = (fit.flux - truth) / np.sqrt(fit.flux_var)  # omega at mean 1, as the truth
        out.append(float(np.nanstd(z[valid])))
    return out[0], out[1], int(valid.sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fibers", type=int, default=300)
    parser.add_argument("--reads", type=int, default=10)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    parser.add_argument("--segment-columns", type=int, nargs="+", default=[512])
    parser.add_argument("--subtract", action="store_true")
    args = parser.parse_args(argv)
    name = "R"
    start = time.perf_counter()
    sim = simulate_exposure("clouds", seed=args.seed, n_fibers=args.fibers, n_columns=2048,
                            ref_columns=512, n_reads=args.reads, chips=(name,))  # fmt: skip
    read_noise = float(np.median(sim.chips[name].read_noise))
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "no 1/f": write_simulated_exposure(sim, Path(tmp) / "clean"),
            "1/f": write_simulated_exposure(
                sim, Path(tmp) / "noisy", one_over_f=one_over_f(read_noise)
            ),
        }
        print(f"simulated and written in {time.perf_counter() - start:.1f} s: {args.fibers} "
              f"fibers x 2048 columns, {args.reads} reads, read noise {read_noise:.1f} DN; "
              f"1/f {one_over_f(read_noise)}")  # fmt: skip
        print(f"load average before: {os.getloadavg()}")
        for route in args.routes:  # warm-up: Numba's compiled kernels loaded, files cached
            run_route(files["no 1/f"], route, sim, name)
        variants = [(r, c) for r in args.routes for c in args.segment_columns
                    if r.endswith("nuisance") or c == args.segment_columns[0]]  # fmt: skip
        for label, paths in files.items():
            best: dict = {}
            for _ in range(args.repeats):
                for route, columns in variants:
                    got = run_route(paths, route, sim, name, columns)
                    key = route if not route.endswith("nuisance") else f"{route}/{columns}"
                    if key not in best or got["fit_s"] < best[key]["fit_s"]:
                        best[key] = got
            plain = best.get("none", {}).get("fit_s")
            print(f"\n{label}:")
            print("  route / columns       bias (mean z) +- se   z std  bright  flux bias  "
                  "flux z std   fit_omega s  / plain  offsets RMS DN")  # fmt: skip
            for route, got in best.items():
                o, f = got["omega"], got["flux"]
                ratio = f"{got['fit_s'] / plain:6.2f}" if plain else "     -"
                rms = "-" if got["rms"] is None else f"{got['rms']:.2f}"
                print(
                    f"  {route:20s}  {o['z_mean']:+6.3f} +- {o['z_mean_error']:.3f}  "
                    f"{o['z_std']:6.3f}  {o['n_fibers']:6d}  {f['variable_bias']:+9.3f}  "
                    f"{f['variable_z_std']:10.3f}  {got['fit_s']:12.2f}  {ratio}  {rms}"
                )
            if args.subtract:
                for route in [r for r in best if "nuisance" in r]:
                    kept, subtracted, n = subtraction_effect(best[route]["result"], sim, name)
                    print(
                        f"  {route}: fit-pixel flux z std {kept:.3f} as extracted, "
                        f"{subtracted:.3f} with the offsets subtracted ({n} pixels)"
                    )
        print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
