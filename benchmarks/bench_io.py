"""Speed and memory of ``read_apz``, printed as ratios measured side by side in one run.

Figures (issues 4 and 5):

- R1: ``read_apz`` on a 47-read full chip (2048 x 2560) against astropy's bare decompression
  of the same HDUs (every ``hdul[k].section[:]``, nothing kept). ``read_apz`` decodes the
  Rice tiles with its own parallel kernel, fused with the read accumulation, so it beats the
  bare decompression it used to trail. Target: at most 0.5.
- R2: peak traced memory of ``read_apz`` (its result included) as a multiple of the int32
  cube (47 x 2048 x 2560 x 4 bytes). Target: at most 2x, with no extra full-cube copies.
- R3: ``read_apz`` with its kernel against ``read_apz`` with astropy decoding every HDU
  (``pyapred.io.apz.FAST_RICE = False``, the reader before issue 5). Target: at least 2x.
  The kernel runs rows in parallel: the ratio grows with free cores.

The file is simulated (Poisson ramps over a bias, Gaussian read noise) and written once with
``write_apz``, or given with ``--file``; the readers then alternate, and the best of
``--repeat`` runs is kept, both in wall-clock and in CPU time (CPU time counts every thread:
with the kernel's threads it exceeds the wall-clock time).
Usage::

    python benchmarks/bench_io.py              # full size: ~1 GB of memory, about a minute
    python benchmarks/bench_io.py --small      # 128 rows instead of 2048
    python benchmarks/bench_io.py --file apR-a-52190001.apz   # an existing exposure
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from astropy.io import fits

from pyapred.io import apz, apz_filename, make_headers, read_apz, write_apz


def make_file(folder: Path, n_reads: int, ny: int, seed: int = 0) -> Path:
    """A simulated exposure, built read by read so that only the uint16 cube is held."""
    rng = np.random.default_rng(seed)
    nx = 2560
    flux = rng.gamma(0.5, 60.0, (ny, nx))  # mostly faint, some bright pixels (DN per read)
    level = rng.normal(10000.0, 500.0, (ny, nx))
    reads = np.empty((n_reads, ny, nx), np.uint16)
    for k in range(n_reads):
        if k:
            level += rng.poisson(flux)
        reads[k] = np.clip(np.round(level + rng.normal(0, 10, (ny, nx))), 0, 65535)
    _, headers = make_headers(n_reads, date_obs="2025-04-20T04:00:00.000", chip="a")
    path = folder / apz_filename("apo", "a", 52190065)
    return write_apz(path, reads, headers)


def bare_decompression(path: Path) -> None:
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul[1:]:
            hdu.section[:]


def timed(func) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    func()
    return time.perf_counter() - wall, time.process_time() - cpu


def read_with_astropy(path: Path) -> None:
    """``read_apz`` with astropy decoding every HDU (pyapred's kernel switched off)."""
    apz.FAST_RICE = False
    try:
        read_apz(path)
    finally:
        apz.FAST_RICE = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="128 rows instead of 2048")
    parser.add_argument("--reads", type=int, default=47)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--file", type=Path, help="an existing .apz instead of a simulated one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        if args.file is None:
            path = make_file(Path(folder), args.reads, 128 if args.small else 2048)
        else:
            path = args.file
        read_apz(path, rows=slice(0, 1))  # compiles the kernels or loads them from the cache
        with fits.open(path) as hdul:
            n_reads, (ny, nx) = len(hdul) - 2, hdul[1].shape
        print(
            f"file: {n_reads} reads x {ny} x {nx}, {path.stat().st_size / 2**20:.0f} MiB "
            f"(ready in {time.perf_counter() - start:.0f} s)"
        )
        runners = {
            "bare": lambda: bare_decompression(path),
            "astropy": lambda: read_with_astropy(path),
            "kernel": lambda: read_apz(path),
        }
        best = {name: np.full(2, np.inf) for name in runners}
        for _ in range(args.repeat):  # alternate, so all see the same machine load
            for name, run in runners.items():
                best[name] = np.minimum(best[name], timed(run))
        bare, before, reader = best["bare"], best["astropy"], best["kernel"]
        for label, i in (("wall", 0), ("CPU", 1)):
            print(
                f"R1 ({label}) read_apz {reader[i]:.2f} s, bare astropy decompression "
                f"{bare[i]:.2f} s: ratio {reader[i] / bare[i]:.2f} (target <= 0.5)"
            )
        for label, i in (("wall", 0), ("CPU", 1)):
            print(
                f"R3 ({label}) read_apz with astropy decoding {before[i]:.2f} s, with pyapred's "
                f"kernel {reader[i]:.2f} s: {before[i] / reader[i]:.2f}x faster (target >= 2)"
            )

        tracemalloc.start()
        exposure = read_apz(path)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        int32_cube = n_reads * ny * nx * 4
        print(
            f"R2 read_apz peak traced memory {peak / 2**20:.0f} MiB = "
            f"{peak / int32_cube:.2f} x the int32 cube (target <= 2); "
            f"result {exposure.reads.nbytes / 2**20:.0f} MiB ({exposure.reads.dtype})"
        )


if __name__ == "__main__":
    main()
