"""Benchmark: simulate_hxrg (target: a full 2048 x 2560 read in < 2 s), refcorr, and the cost of
fit_omega's nuisance term against the plain fit on the same groups.

The fit comparison runs both on fiber-like groups (2 rows x 2040 columns each, 8 segments of one
row and output) of a simulated exposure with 1/f noise; both are timed several times,
interleaved, and the best times are compared.

    python benchmarks/bench_noise.py [--reads 11] [--fibers 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pyapred import fit_omega, simulate_ramps
from pyapred.noise import HxrgNoise, refcorr, simulate_hxrg


def best_time(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=11)
    parser.add_argument("--fibers", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    simulate_hxrg(1, rows=slice(0, 8), rng=1)  # imports
    t_read = best_time(lambda: simulate_hxrg(1, rng=1), args.repeats)
    print(f"simulate_hxrg, one full 2048 x 2560 read: {t_read:.2f} s (target < 2 s)")
    diffs = np.diff(simulate_hxrg(2, rng=2), axis=0)
    t_ref = best_time(lambda: refcorr(diffs), args.repeats)
    print(f"refcorr, one full read difference: {t_ref:.2f} s")

    n_rows = 2 * args.fibers
    noise = HxrgNoise(white=10.0, c_pink=6.0, u_pink=3.0, acn=2.0, read_time=0.0)
    flux = np.zeros((n_rows, 2560))
    flux[:, 4:2044] = rng.uniform(100, 600, (n_rows, 2040))
    reads = simulate_ramps(flux, 0.0, n_reads=args.reads, rng=rng).reads
    reads = reads + simulate_hxrg(args.reads, noise, rows=slice(4, 4 + n_rows), rng=3)
    groups = reads[..., 4:2044].reshape(args.reads, args.fibers, 2 * 2040)
    segments = (np.arange(2)[:, None] * 4 + np.arange(4, 2044)[None, :] // 512).ravel()
    fit_omega(groups[:, :1], 10.0, segments=segments)  # compile
    plain = nuisance = np.inf
    for _ in range(args.repeats):
        plain = min(plain, best_time(lambda: fit_omega(groups, 10.0), 1))
        nuisance = min(nuisance, best_time(lambda: fit_omega(groups, 10.0, segments=segments), 1))
    iters = (fit_omega(groups, 10.0).n_iter.mean(),
             fit_omega(groups, 10.0, segments=segments).n_iter.mean())  # fmt: skip
    print(f"fit_omega on {args.fibers} fibers x {2 * 2040} pixels x {args.reads - 1} differences:")
    print(f"  plain {plain:.3f} s ({iters[0]:.1f} iterations), with the nuisance term "
          f"{nuisance:.3f} s ({iters[1]:.1f} iterations): ratio {nuisance / plain:.2f}"
    )  # fmt: skip


if __name__ == "__main__":
    main()
