"""Speed and memory of the exposure pipeline, printed as ratios measured side by side in one run.

Figures (issue 5):

- P2: ``fit_omega`` for 300 fibers x 2048 pixels of one chip in one batched call. Target: at
  most 30 s. Printed beside the constant-model fit of the same pixels (the cheapest fit there is).
- P3: a whole simulated exposure, three ``.apz`` files to the product (``pyapred fit`` in a
  subprocess). Target: at most 60 s, peak RSS at most 2.5 x one chip's cube (``n_reads x 2048 x
  2560`` float32, the solver's arithmetic type). The pipeline holds raw chips as uint16, half
  that; the ratio to the uint16 cube is printed too. Printed beside the time of reading the three
  files alone (as uint16, as the pipeline reads them).

Usage::

    python benchmarks/bench_pipeline.py                # both, full size (~3 GB disk-free, minutes)
    python benchmarks/bench_pipeline.py --only P2
    python benchmarks/bench_pipeline.py --reads 20 --columns 512   # smaller P3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def p2(n_reads: int, n_fibers: int, n_pix: int, seed: int = 0) -> dict:
    from pyapred import fit_constant, fit_omega
    from pyapred.simulate import exposure_omega, simulate_ramps

    rng = np.random.default_rng(seed)
    omega = exposure_omega("clouds", 1, n_reads - 1, rng)[0]
    flux = np.exp(rng.uniform(np.log(50.0), np.log(3000.0), (n_fibers, n_pix)))
    reads = simulate_ramps(flux, 15.0, omega=omega, rng=rng).reads
    fit_omega(reads[:, :2, :64], 15.0)  # compile outside the clock
    fit_constant(reads[:, :2, :64], 15.0)
    start = time.perf_counter(), time.process_time()
    fit = fit_omega(reads, 15.0)
    omega_s = time.perf_counter() - start[0], time.process_time() - start[1]
    start = time.perf_counter(), time.process_time()
    fit_constant(reads, 15.0)
    constant_s = time.perf_counter() - start[0], time.process_time() - start[1]
    return {
        "shape": list(reads.shape),
        "fit_omega_wall_s": round(omega_s[0], 2),
        "fit_omega_cpu_s": round(omega_s[1], 2),
        "fit_constant_wall_s": round(constant_s[0], 2),
        "ratio_to_constant": round(omega_s[0] / constant_s[0], 2),
        "ratio_to_target_30s": round(omega_s[0] / 30.0, 3),
        "converged": int(fit.converged.sum()),
        "median_iterations": float(np.median(fit.n_iter)),
    }


def p3(n_reads: int, n_columns: int, folder: Path, seed: int = 0) -> dict:
    from pyapred.cli import COMMAND_MEMORY_ENVIRONMENT
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    ref_columns = 512 if n_columns == 2048 else 0
    sim = simulate_exposure(
        "clouds", seed=seed, n_columns=n_columns, ref_columns=ref_columns, n_reads=n_reads
    )
    paths = write_simulated_exposure(sim, folder, overwrite=True)
    ny, nx = sim.chips["R"].reads.shape[1:]
    cube_bytes = n_reads * ny * nx * 4
    del sim
    # Warm the Numba cache (the fit's kernels and the RICE decoder that the reading below uses) in
    # a throwaway run of the same command on one chip.
    command = [sys.executable, "-c", _CHILD, "fit", "--json", "--overwrite"]
    child = _same_pyapred(folder)
    subprocess.run(
        [*command, str(paths["apz"][0]), "--traces", str(paths["traces"][0]),
         "--out", str(folder / "warm.h5")],
        check=False, capture_output=True, **child,
    )  # fmt: skip
    # Read in a fresh interpreter too, set up as ``pyapred fit`` is (no NumPy huge-page advice,
    # large arrays from glibc's heap: pyapred.cli.console), without this process's heap.
    reading = subprocess.run(
        [sys.executable, "-c", _READ_CHILD, *map(str, paths["apz"])],
        env={**child["env"], **COMMAND_MEMORY_ENVIRONMENT}, cwd=folder, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    read_s = float(reading.stdout.split()[-1])
    start = time.perf_counter()
    cpu_before = _children_cpu()
    run = subprocess.run(
        [*command, *map(str, paths["apz"]), "--traces", *map(str, paths["traces"]),
         "--out", str(folder / "product.h5")],
        capture_output=True, text=True, **child,
    )  # fmt: skip
    wall = time.perf_counter() - start
    cpu = _children_cpu() - cpu_before
    if run.returncode not in (0, 1):
        raise RuntimeError(f"pyapred fit failed: {run.stderr[-2000:]}")
    peak = int(run.stderr.split("VmHWM")[-1].split()[0]) * 1024  # kB
    summary = json.loads(run.stdout)
    return {
        "chip_shape": [n_reads, ny, nx],
        "fit_wall_s": round(wall, 2),
        "fit_cpu_s": round(cpu, 2),
        "steps_s": summary["timings_s"],
        "read_three_apz_s": round(read_s, 2),
        "ratio_to_reading": round(wall / read_s, 2),
        "ratio_to_target_60s": round(wall / 60.0, 3),
        "peak_rss_gb": round(peak / 1e9, 3),
        "peak_rss_over_cube": round(peak / cube_bytes, 2),
        "peak_rss_over_uint16_cube": round(peak / (cube_bytes / 2), 2),
        "models_R": summary["fibers"]["R"]["models"],
    }


# The fit runs in a fresh interpreter, as the ``pyapred`` executable runs it (``cli.console``:
# the process's memory set up for a command), and reports its own peak RSS (VmHWM of its
# address space: getrusage would count the benchmark's memory, inherited through fork).
_CHILD = """
import sys
from pyapred.cli import console
code = console(sys.argv[1:])
status = open("/proc/self/status").read()
print("VmHWM", status.split("VmHWM:")[1].split()[0], file=sys.stderr)
sys.exit(code)
"""


# Reads the three files as the pipeline does (uint16), timed after the imports.
_READ_CHILD = """
import sys, time
import numpy as np
from pyapred.io import read_apz
start = time.perf_counter()
for path in sys.argv[1:]:
    read_apz(path, dtype=np.uint16)
print(time.perf_counter() - start)
"""


def _same_pyapred(folder: Path) -> dict:
    """``subprocess.run`` arguments under which a child imports this process's pyapred: its
    tree first on ``PYTHONPATH``, and a working directory (``folder``) without one of its own.
    A child run from a checkout's root imports that checkout whatever ``PYTHONPATH`` says, which
    made an A/B run of two trees compare one tree with itself."""
    import pyapred

    tree = str(Path(pyapred.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p)
    return {"env": {**os.environ, "PYTHONPATH": path}, "cwd": folder}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("P2", "P3"))
    parser.add_argument("--reads", type=int, default=47, help="reads (default 47)")
    parser.add_argument("--columns", type=int, default=2048, help="P3 traced columns")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f}")
    if args.only in (None, "P2"):
        print("P2", json.dumps(p2(args.reads, 300, 2048)))
    if args.only in (None, "P3"):
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
            print("P3", json.dumps(p3(args.reads, args.columns, Path(folder))))


if __name__ == "__main__":
    main()
