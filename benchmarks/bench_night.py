"""P4: ``pyapred night`` on Dask, 2 workers against 1, and the Dask path against a plain loop.

Eight small simulated exposures are fitted three ways in one run, each with warm workers (the
numba kernels loaded, one untimed exposure per worker first) and single-threaded numerics:

- a plain Python loop over :func:`pyapred.night.process_exposure` in this process;
- a ``LocalCluster`` of 1 spawned worker (1 thread);
- a ``LocalCluster`` of 2 spawned workers (1 thread each).

Printed: the wall times, the parallel efficiency ``t(1 worker) / (2 t(2 workers))`` (target at
least 0.8 on a 2-core machine), the per-exposure overhead of the Dask path
``(t(1 worker) - t(loop)) / n``, the CPU seconds of the thread running each exposure (equal
in all three when the difference is waiting, not work), the cluster start-up time, and the
load average before and after (the machines are shared: a load above the core count lowers
the efficiency).

Usage::

    python benchmarks/bench_night.py                  # 8 exposures of 40 fibers x 256 columns
    python benchmarks/bench_night.py --exposures 4 --columns 96 --reads 12   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def simulate_night(folder: Path, n: int, fibers: int, columns: int, reads: int) -> None:
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    for number in range(1, n + 2):  # exposure n + 1 warms the workers up
        sim = simulate_exposure(
            "clouds", seed=number, n_fibers=fibers, n_columns=columns, ref_columns=0,
            n_reads=reads,
        )  # fmt: skip
        write_simulated_exposure(sim, folder, exposure=number, overwrite=True)


def timed_task(task):
    """:func:`pyapred.night.process_exposure` and the CPU seconds of the thread that ran it."""
    from pyapred.night import process_exposure

    start = time.thread_time()
    result = process_exposure(task, resume=False)
    return result, time.thread_time() - start


def timed_dask(tasks, warm, workers: int) -> tuple[float, float, float]:
    """(cluster start-up s, wall s, task CPU s) of the tasks on a new cluster of ``workers``."""
    from dask.distributed import wait

    from pyapred.night import _client

    start = time.perf_counter()
    with _client("local", workers, 1) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - start
        addresses = list(client.scheduler_info()["workers"])
        warm_ups = [
            client.submit(timed_task, w, workers=[a], pure=False)
            for w, a in zip(warm, addresses, strict=False)
        ]
        wait(warm_ups)
        start = time.perf_counter()
        futures = [client.submit(timed_task, t, pure=False) for t in tasks]
        results = client.gather(futures)
        wall = time.perf_counter() - start
    assert all(r.status == "done" for r, _ in results), [r.error for r, _ in results]
    return startup, wall, sum(cpu for _, cpu in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=8)
    parser.add_argument("--fibers", type=int, default=40)
    parser.add_argument("--columns", type=int, default=256)
    parser.add_argument("--reads", type=int, default=20)
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    from pyapred.night import find_exposures

    with tempfile.TemporaryDirectory(prefix="bench-night-") as scratch:
        raw = Path(scratch) / "raw"
        simulate_night(raw, args.exposures, args.fibers, args.columns, args.reads)
        load_before = os.getloadavg()

        def tasks(name: str):
            found = find_exposures(raw / "apR-a-*.apz", [raw], Path(scratch) / name)
            (Path(scratch) / name).mkdir()
            return found[:-1], [found[-1]] * 2

        loop_tasks, warm = tasks("loop")
        with threadpool_limits(1):
            timed_task(warm[0])
            start = time.perf_counter()
            results = [timed_task(t) for t in loop_tasks]
            loop = time.perf_counter() - start
        assert all(r.status == "done" for r, _ in results), [r.error for r, _ in results]
        loop_cpu = sum(cpu for _, cpu in results)
        startup_1, one, one_cpu = timed_dask(*tasks("one"), workers=1)
        startup_2, two, two_cpu = timed_dask(*tasks("two"), workers=2)
        load_after = os.getloadavg()
    n = args.exposures
    report = {
        "exposures": n,
        "geometry": {"fibers": args.fibers, "columns": args.columns, "reads": args.reads},
        "loop_s": round(loop, 2),
        "dask_1_worker_s": round(one, 2),
        "dask_2_workers_s": round(two, 2),
        "P4_parallel_efficiency": round(one / (2 * two), 3),
        "dask_overhead_per_exposure_s": round((one - loop) / n, 3),
        "loop_per_exposure_s": round(loop / n, 3),
        "task_cpu_per_exposure_s": {
            "loop": round(loop_cpu / n, 3),
            "dask_1_worker": round(one_cpu / n, 3),
            "dask_2_workers": round(two_cpu / n, 3),
        },
        "cluster_startup_s": {"1_worker": round(startup_1, 2), "2_workers": round(startup_2, 2)},
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in load_after],
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
