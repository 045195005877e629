"""Size, write time and read time of a product in format 1 and format 2, side by side in one run.

Figure (issue 19): one full exposure (3 chips x 2048 x 2560, 300 fibers per chip) held in
memory is written as a format-1 product (float64 and int64 images, contiguous, uncompressed:
the writer before issue 19, rebuilt here with h5py) and as a format-2 product
(``pyapred.io.write_product``: float32 images, uint8 ``ndiff``, uint16 flags, row chunks with
shuffle + gzip), with the compression threads the writer picks and with one thread. Target: the
format-2 file at most 30 % of the format-1 file. The writers alternate and the best of
``--repeat`` runs is kept, in wall-clock and in CPU time (CPU time counts every thread); the
load average is printed before and after, since the compression threads need free cores.

The in-memory result is a product read back (``--product``, e.g. what ``pyapred fit`` wrote for
``pyapred simulate --out /tmp/sim --clouds --seed 1``: its float32 images are what a format-1
file would hold to float32 precision, which changes neither file's size), or a synthetic
exposure (traces on a background, noise: less realistic, and less compressible, than a fit).
Files go to the system's temporary folder (``--folder`` to change): the times include the page
cache, not the disk.

Usage::

    python benchmarks/bench_product.py --product /tmp/p/pyapred_apo_60781_0001.h5
    python benchmarks/bench_product.py            # synthetic full exposure, ~2 GB of memory
    python benchmarks/bench_product.py --small    # 128 rows per chip
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from pyapred import Flag
from pyapred.io import ChipImages, FiberResults, ProductWriter, read_product, write_product
from pyapred.io.atomic import atomic_path
from pyapred.io.hdf5 import write_value

WRITER_KEYS = {"pyapred_version", "git_commit", "git_clean", "backend", "input_files",
               "input_sha256", "format_version"}  # fmt: skip


def synthetic(ny: int, seed: int = 1, n_reads: int = 33) -> tuple[dict, dict, dict]:
    """Chips, fiber groups and metadata of a synthetic exposure: 300 Gaussian traces per chip."""
    rng = np.random.default_rng(seed)
    nx, k = 2560, n_reads - 1
    rows = np.arange(ny)[:, None]
    centers = np.linspace(5, ny - 5, 300)
    chips, fibers = {}, {}
    for chip in "RGB":
        flux = rng.gamma(1.0, 300.0, 300)[:, None] * (0.5 + rng.random((1, nx)))
        nearest = np.abs(rows - centers[None, :]).argmin(axis=1)
        distance = rows - centers[nearest][:, None]
        rate = flux[nearest] * np.exp(-0.5 * (distance / 1.2) ** 2) + rng.normal(0, 0.5, (ny, nx))
        var = np.maximum(rate, 0) / (k * 0.5) + 100.0 / k**3
        rate += rng.normal(0, np.sqrt(var))
        n_diff = np.full((ny, nx), k, np.int16)
        n_diff[rng.random((ny, nx)) < 0.01] -= rng.integers(1, k, 1)[0]
        flags = np.zeros((ny, nx), np.int64)
        flags[np.abs(distance[:, 0]) > 3] = Flag.BACKGROUND
        flags[n_diff < k] |= Flag.JUMP_DETECTED
        chips[chip] = ChipImages(rate, 1 / var, rng.chisquare(k - 1, (ny, nx)), flags, n_diff)
        omega = 1 - 0.1 * rng.random((300, k))
        omega[:, 0] = 1.0
        a = rng.normal(0, 1e-3, (300, k, k))
        cov = np.einsum("nij,nkj->nik", a, a)
        cov[:, 0, :] = cov[:, :, 0] = 0.0
        fibers[chip] = FiberResults(
            np.arange(300), omega, cov, np.zeros(300, np.int64), ("time_variable",) * 300,
            np.zeros(300, np.int64), rng.random(300), rng.chisquare(k, 300), rng.random(300),
            rng.integers(100, 2048, 300), rng.integers(3, 10, 300),
        )  # fmt: skip
    times = 60781.2 + np.arange(n_reads) * 10.647 / 86400
    return chips, fibers, {"telescope": "apo", "mjd": 60781, "read_times_tai_mjd": times}


def from_product(path: Path) -> tuple[dict, dict, dict]:
    product = read_product(path)
    metadata = {k: v for k, v in product.metadata.items() if k not in WRITER_KEYS}
    return product.chips, product.fibers, metadata


def write_format_1(path: Path, chips: dict, fibers: dict, metadata: dict) -> None:
    """The format-1 writer (pyapred before issue 19), atomic as it was."""
    with atomic_path(path, overwrite=True) as tmp, h5py.File(tmp, "w", locking=False) as handle:
        handle.attrs["pyapred_product_format"] = 1
        for chip, images in chips.items():
            group = handle.create_group(chip)
            for name, attribute in (("dimage", "rate"), ("ivarimage", "ivar"),
                                    ("chisqimage", "chi2"), ("flags", "flags")):  # fmt: skip
                dtype = np.int64 if name == "flags" else np.float64
                group.create_dataset(name, data=np.asarray(getattr(images, attribute), dtype))
                group[name].attrs["units"] = {"dimage": "DN/read"}.get(name, "")
        meta = {"pyapred_version": "0.1.0", "backend": "numpy", "format_version": 1} | metadata
        for key, results in fibers.items():
            group = handle.create_group(f"fibers/{key}")
            group["fiber_index"] = np.asarray(results.fiber_index, np.int64) + 1
            group["omega"] = np.asarray(results.omega, np.float64)
            group["omega_cov"] = np.asarray(results.omega_cov, np.float64)
            group["ref_index"] = np.asarray(results.ref_index, np.int64) + 1
            write_value(group, "model", list(results.model))
            group["flags"] = np.asarray(results.flags, np.int64)
            for stat in ("delta_chi2", "p_value", "amplitude", "n_fit_pixels"):
                if getattr(results, stat) is not None:
                    meta[f"{key}_{stat}"] = np.asarray(getattr(results, stat))
        group = handle.create_group("metadata")
        for key, value in meta.items():
            write_value(group, key, value)


def write_format_2(path: Path, chips: dict, fibers: dict, metadata: dict, threads=None) -> None:
    if threads is None:
        write_product(path, chips=chips, fibers=fibers, metadata=metadata, overwrite=True)
        return
    with ProductWriter(path, overwrite=True, threads=threads) as writer:
        for chip, images in chips.items():
            writer.add_chip(chip, images)
        writer.finish(fibers=fibers, metadata=metadata)


def timed(func) -> np.ndarray:
    """Wall-clock and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    func()
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


def check_format_2(path: Path, chips: dict) -> None:
    """Format 2 holds the rates, ivar and chi2 to float32 rounding, the flags and ndiff exactly."""
    product = read_product(path)
    for chip, images in chips.items():
        back = product.chips[chip]
        for name in ("rate", "ivar", "chi2"):
            expected = np.asarray(getattr(images, name), np.float32)
            assert np.array_equal(getattr(back, name), expected, equal_nan=True), (chip, name)
        assert np.array_equal(back.flags, images.flags), (chip, "flags")
        assert np.array_equal(back.n_diff, images.n_diff), (chip, "n_diff")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", type=Path, help="a product to take the result from")
    parser.add_argument("--small", action="store_true", help="synthetic: 128 rows per chip")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="where to write (default: a temp folder)")
    args = parser.parse_args()
    print("load average (1, 5, 15 min) at start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.product is not None:
        chips, fibers, metadata = from_product(args.product)
        source = str(args.product)
    else:
        chips, fibers, metadata = synthetic(128 if args.small else 2048)
        source = "synthetic"
    shape = next(iter(chips.values())).rate.shape
    groups = {k: np.shape(v.omega) for k, v in fibers.items()}
    print(f"result ({source}): chips {list(chips)} of {shape}, fiber groups (n, K) {groups}")
    threads = ProductWriter("x.h5").threads
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        paths = {name: Path(folder) / f"{name}.h5" for name in ("v1", "v2", "v2_1")}
        writers = {
            "v1": lambda: write_format_1(paths["v1"], chips, fibers, metadata),
            "v2": lambda: write_format_2(paths["v2"], chips, fibers, metadata),
            "v2_1": lambda: write_format_2(paths["v2_1"], chips, fibers, metadata, threads=1),
        }
        readers = {name: (lambda p=p: read_product(p)) for name, p in paths.items()}
        write = {name: np.full(2, np.inf) for name in writers}
        read = {name: np.full(2, np.inf) for name in writers}
        for _ in range(args.repeat):  # alternate, so that all see the same machine load
            for name in writers:
                write[name] = np.minimum(write[name], timed(writers[name]))
                read[name] = np.minimum(read[name], timed(readers[name]))
        check_format_2(paths["v2"], chips)
        size = {name: path.stat().st_size for name, path in paths.items()}
    labels = {
        "v1": "format 1 (float64/int64, contiguous)",
        "v2": f"format 2 (float32, shuffle+gzip, {threads} threads)",
        "v2_1": "format 2 (1 thread)",
    }
    print(f"{'':44} {'size MB':>9} {'write s':>8} {'CPU s':>7} {'read s':>7}")
    for name, label in labels.items():
        print(
            f"{label:44} {size[name] / 1e6:9.1f} {write[name][0]:8.2f} {write[name][1]:7.2f} "
            f"{read[name][0]:7.2f}"
        )
    print(
        f"format 2 / format 1: size {size['v2'] / size['v1']:.3f} (target <= 0.30); write time "
        f"{write['v2'][0] / write['v1'][0]:.1f}x ({threads} threads), "
        f"{write['v2_1'][0] / write['v1'][0]:.1f}x (1 thread); read time "
        f"{read['v2'][0] / read['v1'][0]:.1f}x"
    )
    print("load average (1, 5, 15 min) at end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
