"""Memory and time of ``pyapred simulate``, which writes an exposure one chip at a time.

Runs ``pyapred simulate --out TMP --clouds`` in a fresh interpreter that reports its own peak
resident memory (``VmHWM``), and prints one JSON line: the peak as a ratio to one chip's float32
cube (``n_reads x ny x nx x 4`` bytes; ``ny = 2048`` for 300 fibers, ``nx`` = traced plus
reference columns), the wall time, and the load average before and after (the machine may be
shared: a load above the core count stretches the wall time, not the memory).

Target (issue 19): peak at most 2 x one chip's cube. Before the chips were streamed, the full
size (300 fibers x 2048 + 512 columns x 33 reads) peaked at 6.4 GB, 9.3 cubes.

Usage::

    python benchmarks/bench_simulate.py                        # full size (~0.7 GB of files)
    python benchmarks/bench_simulate.py --columns 512 --reads 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

# The child reports the peak RSS of its own address space (getrusage of the children would
# count the parent's memory too, inherited through fork).
_CHILD = """
import sys
from pyapred.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print("VmHWM", status.split("VmHWM:")[1].split()[0], file=sys.stderr)
sys.exit(code)
"""


def measure(n_fibers: int, n_columns: int, ref_columns: int, n_reads: int, seed: int) -> dict:
    from pyapred.simulate import N_FIBERS_FULL

    ny = 2048 if n_fibers == N_FIBERS_FULL else math.ceil(50 + (n_fibers - 1) * 6.6)
    cube_bytes = n_reads * ny * (n_columns + ref_columns) * 4
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as folder:
        command = [
            sys.executable, "-c", _CHILD, "simulate", "--out", folder, "--clouds", "--quiet",
            "--fibers", str(n_fibers), "--columns", str(n_columns),
            "--ref-columns", str(ref_columns), "--reads", str(n_reads), "--seed", str(seed),
        ]  # fmt: skip
        load_before = os.getloadavg()
        start = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        if run.returncode != 0:
            raise RuntimeError(f"pyapred simulate failed: {run.stderr[-2000:]}")
        files = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    peak = int(run.stderr.split("VmHWM")[-1].split()[0]) * 1024  # kB
    return {
        "shape_per_chip": [n_reads, ny, n_columns + ref_columns],
        "chips": 3,
        "chip_cube_gb": round(cube_bytes / 1e9, 3),
        "peak_rss_gb": round(peak / 1e9, 3),
        "peak_rss_over_chip_cube": round(peak / cube_bytes, 2),
        "target_over_chip_cube": 2.0,
        "wall_s": round(wall, 1),
        "files_gb": round(files / 1e9, 3),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fibers", type=int, default=300, help="fibers per chip (300)")
    parser.add_argument("--columns", type=int, default=2048, help="traced columns (2048)")
    parser.add_argument("--ref-columns", type=int, default=512, help="reference columns (512)")
    parser.add_argument("--reads", type=int, default=33, help="reads (33)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args = parser.parse_args()
    result = measure(args.fibers, args.columns, args.ref_columns, args.reads, args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
