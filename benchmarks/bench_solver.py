"""Speed and memory of the solver against the memory floor, as ratios measured side by side.

Figures (issue 20), on a float32 cube of APOGEE size (47 reads):

- S1: ``extract_fluxes`` on a full chip (2048 x 2048 pixels) against one ``np.diff`` pass over
  the same cube (the streaming floor: one read of the cube, one cube written), at 2 threads and
  at 1. Target: at most 3x at 2 threads.
- S2: ``find_jumps`` (with the true omega) against ``extract_fluxes`` on the same cube, and its
  peak memory, cube included, as a multiple of the cube (the peak counted from after the cube
  was built). Targets: at most 2x, at most 1.5x.
- S3: ``fit_omega`` on 300 groups x 2048 pixels, the best of three fits (as S1 and S2 and
  the issue's own table; the first fit of a process also maps its memory). Target: at most
  1.5 s.

``np.diff`` is timed into an output array that was written before (``np.subtract(..., out=)``):
a fresh 0.8 GB output costs page faults that can take ten times the pass itself on a virtual
machine, and that is not the floor. The first, cold ``np.diff`` is printed too.

Each figure runs in a fresh process, so that its peak resident memory is its own; the load
average is printed before and after. Usage::

    python benchmarks/bench_solver.py            # full size (needs ~4 GB of memory, minutes)
    python benchmarks/bench_solver.py --small    # a quick run at 1/16 of the size
    python benchmarks/bench_solver.py --only S3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time

import numpy as np


def _reset_peak() -> None:
    """Restart the peak-memory count here (Linux: ``/proc/self/clear_refs``), so that the
    temporaries of building a test cube do not count as the measured call's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # elsewhere the peak is the process's own, which can only be larger
        pass


def _rss_peak_bytes() -> int:
    """Peak resident memory since :func:`_reset_peak` (``VmHWM``), else since the start."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _make_cube(n_reads: int, shape: tuple, omega=None, seed: int = 0) -> np.ndarray:
    """A float32 ramp cube built read by read, so that building it needs no cube-sized
    temporaries: Poisson photons at 1-1000 e-/read (scaled by ``omega``), 15 e- read noise."""
    rng = np.random.default_rng(seed)
    flux = rng.uniform(1, 1000, shape)
    cube = np.empty((n_reads,) + shape, dtype=np.float32)
    cube[0] = rng.normal(0, 15, shape)
    level = np.zeros(shape)
    for j in range(1, n_reads):
        w = 1.0 if omega is None else omega[j - 1]
        level += rng.poisson(flux * w)
        cube[j] = level + rng.normal(0, 15, shape)
    return cube


def _best(func, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def _diff_floor(cube: np.ndarray, repeat: int = 3) -> tuple[float, float]:
    """``(cold, warm)`` seconds of one ``np.diff`` pass: into a fresh array, and into one that
    was written before."""
    start = time.perf_counter()
    out = np.diff(cube, axis=0)
    cold = time.perf_counter() - start
    warm = _best(lambda: np.subtract(cube[1:], cube[:-1], out=out), repeat)
    return cold, warm


def _extraction(ny: int, nx: int, n_reads: int, queue) -> None:
    import numba

    from pyapred import extract_fluxes

    omega = np.linspace(1.0, 0.8, n_reads - 1)
    extract_fluxes(_make_cube(n_reads, (2, 8)), 15.0, omega)  # compile outside the clock
    cube = _make_cube(n_reads, (ny, nx))
    cold, warm = _diff_floor(cube)
    times = {}
    for threads in (2, 1):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        times[threads] = _best(lambda: extract_fluxes(cube, 15.0, omega), 3)
    queue.put({"diff_cold": cold, "diff": warm, "extract": times})


def _jumps(ny: int, nx: int, n_reads: int, queue) -> None:
    from pyapred import extract_fluxes, find_jumps

    rng = np.random.default_rng(3)
    omega = 1.0 - 0.3 * np.exp(-0.5 * ((np.arange(n_reads - 1) - 20) / 5.0) ** 2)  # a cloud
    small = _make_cube(n_reads, (2, 8), omega)
    extract_fluxes(small, 15.0, omega)
    find_jumps(small, 15.0, omega=omega)
    base = _rss_now_bytes()
    cube = _make_cube(n_reads, (ny, nx), omega)
    hit = rng.random((ny, nx)) < 0.01  # a cosmic ray in 1% of the pixels, at a random read
    at = rng.integers(1, n_reads, (ny, nx))
    for j in range(1, n_reads):
        cube[j] += np.where(hit & (at <= j), 500.0, 0.0).astype(np.float32)
    del hit, at
    _reset_peak()
    extract_t, jumps_t = [], []
    for _ in range(3):  # interleaved, so that both see the same machine load
        extract_t.append(_best(lambda: extract_fluxes(cube, 15.0, omega), 1))
        jumps_t.append(_best(lambda: find_jumps(cube, 15.0, omega=omega), 1))
    peak = _rss_peak_bytes()
    queue.put({"extract": min(extract_t), "jumps": min(jumps_t), "peak_over_base": peak - base,
               "cube": cube.nbytes})  # fmt: skip


def _omega_fit(n_groups: int, n_pix: int, n_reads: int, queue) -> None:
    from pyapred import fit_omega, omega_uniform

    omega = omega_uniform(n_reads - 1, 0.3, np.random.default_rng(1))
    fit_omega(_make_cube(n_reads, (2, 8), omega), 15.0)
    cube = _make_cube(n_reads, (n_groups, n_pix), omega=omega)
    _, t_diff = _diff_floor(cube)
    base = _rss_now_bytes()
    _reset_peak()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fit = fit_omega(cube, 15.0)
        times.append(time.perf_counter() - start)
    peak = _rss_peak_bytes()
    queue.put({"t_diff": t_diff, "t_fit": min(times), "extra": max(peak - base, 0),
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
    parser.add_argument("--only", choices=("S1", "S2", "S3"))
    args = parser.parse_args()
    shrink = 4 if args.small else 1
    ny = nx = 2048 // shrink
    n_groups, n_pix, n_reads = 300 // shrink, 2048 // shrink, 47
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, float32 cubes, {n_reads} reads")
    if args.only in (None, "S1"):
        ex = _run(_extraction, ny, nx, n_reads)
        floor = ex["diff"]
        for threads, t in ex["extract"].items():
            print(f"S1 extract_fluxes {ny}x{nx}, {threads} thread(s): {t:.3f} s = "
                  f"{t / floor:.1f}x np.diff ({floor:.3f} s warm, {ex['diff_cold']:.3f} s cold)"
                  f"{' (target <= 3x)' if threads == 2 else ''}")  # fmt: skip
    if args.only in (None, "S2"):
        jm = _run(_jumps, ny, nx, n_reads)
        print(f"S2 find_jumps {ny}x{nx}: {jm['jumps']:.3f} s = "
              f"{jm['jumps'] / jm['extract']:.2f}x extract_fluxes ({jm['extract']:.3f} s) "
              f"(target <= 2x); peak memory {jm['peak_over_base'] / jm['cube']:.2f}x the "
              f"{jm['cube'] / 2**30:.2f} GiB cube, cube included (target <= 1.5x)")  # fmt: skip
    if args.only in (None, "S3"):
        om = _run(_omega_fit, n_groups, n_pix, n_reads)
        extra = om["extra"]
        print(f"S3 fit_omega {n_groups} groups x {n_pix} pixels: {om['t_fit']:.2f} s (target "
              f"<= 1.5 s at full size) = {om['t_fit'] / om['t_diff']:.0f}x np.diff "
              f"({om['t_diff']:.3f} s), {om['iters']} iterations at most, {om['converged']}/"
              f"{n_groups} converged, extra memory {extra / 2**30:.2f} GiB = "
              f"{extra / om['cube']:.2f}x its cube")  # fmt: skip
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
