"""Speed and memory of the solver, printed as ratios measured side by side in one run.

Figures (issue 2):

- S1: ``extract_fluxes`` on a full chip (2048 x 2048 pixels x 47 reads) against one ``np.diff``
  pass over the same cube. Target: at most 10x.
- S2: ``fit_omega`` on 300 groups x 2048 pixels x 47 reads. Target: at most 30 s and at most 1 GB
  of extra memory (also printed as a ratio against one ``np.diff`` pass over its cube).
- S3: peak memory of the full-chip extraction (S1), cube included, as a multiple of the cube.
  Target: at most 2.5x.

Each figure runs in a fresh process, so that its peak resident memory is its own. Usage::

    python benchmarks/bench_solver.py            # full size (needs ~6 GB of memory, a few minutes)
    python benchmarks/bench_solver.py --small    # a quick run at 1/16 of the size
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _make_cube(n_reads: int, shape: tuple, omega=None, seed: int = 0) -> np.ndarray:
    """A ramp cube built read by read, so that building it needs no cube-sized temporaries."""
    rng = np.random.default_rng(seed)
    flux = rng.uniform(1, 1000, shape)
    cube = np.empty((n_reads,) + shape)
    cube[0] = rng.normal(0, 15, shape)
    level = np.zeros(shape)
    for j in range(1, n_reads):
        w = 1.0 if omega is None else omega[j - 1]
        level += rng.poisson(flux * w)
        cube[j] = level + rng.normal(0, 15, shape)
    return cube


def _time(func, repeat: int = 1) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def _extraction(ny: int, nx: int, n_reads: int, queue) -> None:
    from pyapred import extract_fluxes

    # Warm the JIT cache on a tiny cube first (compilation is not what we measure).
    extract_fluxes(_make_cube(n_reads, (2, 8)), 15.0, np.ones(n_reads - 1))
    base = _rss_now_bytes()
    cube = _make_cube(n_reads, (ny, nx))
    omega = np.linspace(1.0, 0.8, n_reads - 1)
    t_extract = _time(lambda: extract_fluxes(cube, 15.0, omega))
    peak = _rss_peak_bytes()  # before np.diff, whose output is itself a cube
    t_diff = _time(lambda: np.diff(cube, axis=0), repeat=2)
    queue.put({"t_diff": t_diff, "t_extract": t_extract, "peak_over_base": peak - base,
               "cube": cube.nbytes})  # fmt: skip


def _omega_fit(n_groups: int, n_pix: int, n_reads: int, queue) -> None:
    from pyapred import fit_omega, omega_uniform

    fit_omega(_make_cube(n_reads, (2, 8)), 15.0)
    omega = omega_uniform(n_reads - 1, 0.3, np.random.default_rng(1))
    cube = _make_cube(n_reads, (n_groups, n_pix), omega=omega)
    t_diff = _time(lambda: np.diff(cube, axis=0), repeat=2)
    base = _rss_now_bytes()
    start = time.perf_counter()
    fit = fit_omega(cube, 15.0)
    t_fit = time.perf_counter() - start
    peak = _rss_peak_bytes()
    queue.put({"t_diff": t_diff, "t_fit": t_fit, "extra": max(peak - base, 0),
               "cube": cube.nbytes, "iters": int(fit.n_iter.max()),
               "converged": int(fit.converged.sum())})  # fmt: skip


def _run(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=args + (queue,))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1/16 of the full sizes")
    args = parser.parse_args()
    shrink = 4 if args.small else 1
    ny = nx = 2048 // shrink
    n_groups, n_pix, n_reads = 300 // shrink, 2048 // shrink, 47

    ex = _run(_extraction, ny, nx, n_reads)
    print(
        f"S1 extract_fluxes {ny}x{nx}x{n_reads}: {ex['t_extract']:.2f} s, np.diff pass "
        f"{ex['t_diff']:.2f} s -> {ex['t_extract'] / ex['t_diff']:.1f}x np.diff (target <= 10x)"
    )
    peak = ex["peak_over_base"] / ex["cube"]
    print(f"S3 peak memory of the extraction, cube included: {peak:.2f}x the "
          f"{ex['cube'] / 2**30:.2f} GiB cube (target <= 2.5x)")  # fmt: skip
    om = _run(_omega_fit, n_groups, n_pix, n_reads)
    extra = om["extra"]
    print(f"S2 fit_omega {n_groups} groups x {n_pix} pixels x {n_reads} reads: {om['t_fit']:.1f} s "
          f"(target <= 30 s at full size), {om['t_fit'] / om['t_diff']:.0f}x np.diff "
          f"({om['t_diff']:.3f} s), {om['iters']} iterations, {om['converged']}/{n_groups} "
          f"converged, extra memory {extra / 2**30:.2f} GiB = {extra / om['cube']:.2f}x "
          f"its cube (target <= 1 GB)")  # fmt: skip


if __name__ == "__main__":
    main()
