"""Benchmark: find_jumps against one extract_fluxes pass on the same cube (target ratio <= 3).

Both run on an APOGEE-like cube (47 reads, fluxes 10-1000 e-/read, a passing cloud in omega
unless ``--constant``, a cosmic ray in 1% of the pixels) with the same, true omega. Each is
timed several times, interleaved, and the best times are compared. Numba compiles on a small
cube first.

    python benchmarks/bench_jumps.py [--ny 256] [--nx 2048] [--repeats 3] [--constant]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pyapred import extract_fluxes, find_jumps, omega_cloud, simulate_ramps


def make_cube(ny: int, nx: int, n_reads: int, cloud: bool, rng: np.random.Generator):
    flux = np.exp(rng.uniform(np.log(10.0), np.log(1000.0), (ny, nx)))
    sigma = rng.uniform(14.0, 24.0, (ny, nx))
    omega = omega_cloud(n_reads - 1, 0.4 if cloud else 0.0, 20, 5)
    # A CR in ~1% of the pixels: the per-difference rate that gives it.
    sim = simulate_ramps(flux, sigma, omega=omega, cosmic_ray_rate=0.01 / (n_reads - 1), rng=rng)
    return sim.reads.astype(np.float32), sigma, omega, sim


def best_time(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ny", type=int, default=256)
    parser.add_argument("--nx", type=int, default=2048)
    parser.add_argument("--reads", type=int, default=47)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--constant", action="store_true", help="no cloud: a constant sky")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    reads, sigma, omega, sim = make_cube(args.ny, args.nx, args.reads, not args.constant, rng)
    small = np.ascontiguousarray(reads[:, :4, :64])
    extract_fluxes(small, sigma[:4, :64], omega)  # compile
    find_jumps(small, sigma[:4, :64], omega=omega)

    extract_t, jumps_t = [], []
    for _ in range(args.repeats):  # interleaved, so that both see the same machine load
        extract_t.append(best_time(lambda: extract_fluxes(reads, sigma, omega), 1))
        jumps_t.append(best_time(lambda: find_jumps(reads, sigma, omega=omega), 1))
    res = find_jumps(reads, sigma, omega=omega)
    n_pix = args.ny * args.nx
    hit = (sim.jumps > 0).any(axis=0)
    print(f"cube {reads.shape} float32, {n_pix} pixels, {hit.mean():.2%} hit by a cosmic ray")
    print(f"extract_fluxes: {min(extract_t):.3f} s   find_jumps: {min(jumps_t):.3f} s")
    print(f"ratio find_jumps / extract_fluxes = {min(jumps_t) / min(extract_t):.2f} (target <= 3)")
    found = res.jumps & (sim.jumps > 0)
    print(
        f"jumps injected {int((sim.jumps > 0).sum())}, flagged {int(res.jumps.sum())}, "
        f"of which injected {int(found.sum())}"
    )


if __name__ == "__main__":
    main()
