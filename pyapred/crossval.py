"""``pyapred crossval``: run the NumPy and Julia backends on the same input and compare them.

Inputs: the conformance vectors (``--vectors [DIR]``), a simulated fiber (``--simulate``), or rows
of a raw exposure (``--apz FILE``).
For every output it prints the largest absolute and relative difference between the backends
(relative to the output's largest absolute value; with ``--json``, a JSON list of rows) and exits
1 beyond ``--rtol``. Without a Julia runtime it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from .arguments import MAX_READS, MAX_SEED, at_least, json_line
from .errors import EXIT_BAD_INPUT, EXIT_FLAGGED, EXIT_OK, InputError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vectors", nargs="?", const="", metavar="DIR",
                        help="the conformance vectors (default: julia/test/conformance "
                             "of the package)")  # fmt: skip
    source.add_argument("--simulate", action="store_true",
                        help="a simulated fiber under a changing sky")  # fmt: skip
    source.add_argument("--apz", metavar="FILE", help="a raw apR-/asR- exposure")
    # The flags of one source default to None, so that one given with another source is told
    # (it was ignored, silently); run() fills in the defaults of SOURCE_DEFAULTS.
    parser.add_argument("--rows", metavar="A:B", help="rows of --apz to fit (default 1000:1016)")
    parser.add_argument("--read-noise", type=float,
                        help="single-read noise of --apz, DN (default 10)")  # fmt: skip
    parser.add_argument("--gain", type=float, help="gain of --apz, e-/DN (1.9)")
    parser.add_argument("--rtol", type=float, default=None,
                        help="tolerance (default: per vector; 1e-10 simulated)")  # fmt: skip
    parser.add_argument("--seed", type=at_least(0, MAX_SEED), help="random seed of --simulate (7)")
    parser.add_argument("--pixels", type=at_least(1, 1_000_000),
                        help="pixels of --simulate, 1 to 1e6 (200)")  # fmt: skip
    parser.add_argument("--reads", type=at_least(3, MAX_READS),
                        help=f"reads of --simulate, 3 to {MAX_READS} (20)")  # fmt: skip


#: The flags that only one source takes, with their defaults.
SOURCE_DEFAULTS = {
    "apz": {"rows": "1000:1016", "read_noise": 10.0, "gain": 1.9},
    "simulate": {"seed": 7, "pixels": 200, "reads": 20},
}


def _source_flags(args: argparse.Namespace) -> None:
    """Refuse a flag of another source than the one chosen; fill in the chosen one's defaults."""
    source = "simulate" if args.simulate else "apz" if args.apz else "vectors"
    for owner, defaults in SOURCE_DEFAULTS.items():
        for name, default in defaults.items():
            value = getattr(args, name, None)
            if owner != source and value is not None:
                flag = "--" + name.replace("_", "-")
                raise InputError(flag, flag, f"--{owner} with it (--{source} does not take it)",
                                 repr(value))  # fmt: skip
            if value is None:
                setattr(args, name, default)


def _simulated_cases(args: argparse.Namespace) -> list[dict]:
    from .simulate import omega_uniform, simulate_ramps

    for flag, value, minimum in (("--pixels", args.pixels, 1), ("--reads", args.reads, 3)):
        if value < minimum:
            raise InputError(flag, flag, f"an integer >= {minimum}", str(value))

    rng = np.random.default_rng(args.seed)
    omega = omega_uniform(args.reads - 1, 0.5, rng)
    sim = simulate_ramps(rng.uniform(50, 1500, args.pixels), 15.0, omega=omega, rng=rng,
                         cosmic_ray_rate=0.01, saturation=40000.0)  # fmt: skip
    common = {"reads": sim.reads, "read_noise": 15.0}
    rtol = 1e-10 if args.rtol is None else args.rtol
    cases = [("fit_constant", {}), ("fit_equal_weight", {}), ("fit_omega", {}),
             ("extract_fluxes", {"omega": omega / omega.max()})]  # fmt: skip
    return [{"name": f"simulated {name}", "function": name, "rtol": rtol,
             "inputs": {**common, **extra}} for name, extra in cases]  # fmt: skip


def _apz_cases(args: argparse.Namespace) -> list[dict]:
    """The constant and equal-weight fits of some rows of a raw exposure's science area."""
    from .exposure.inputs import CALIBRATION_BOUNDS
    from .io import read_apz
    from .io.paths import check_input_file

    check_input_file(args.apz, "--apz")  # a FIFO hung the reader
    try:
        start, stop = (int(part) for part in args.rows.split(":"))
    except ValueError:
        start = stop = -1
    if not 0 <= start < stop <= 2048:
        raise InputError(args.apz, "--rows", "A:B with integers 0 <= A < B <= 2048", args.rows)
    for flag, value, bounds in (("--gain", args.gain, "gain"),
                                ("--read-noise", args.read_noise, "read_noise")):  # fmt: skip
        low, high = CALIBRATION_BOUNDS[bounds]
        if not low <= value <= high:
            raise InputError(flag, flag, f"a number in [{low:g}, {high:g}]", repr(value))
    raw = read_apz(args.apz, rows=slice(start, stop), dtype=np.float64)
    common = {"reads": np.ascontiguousarray(raw.science), "read_noise": args.read_noise,
              "gain": args.gain}  # fmt: skip
    rtol = 1e-10 if args.rtol is None else args.rtol
    return [{"name": f"{Path(args.apz).name} {name}", "function": name, "rtol": rtol,
             "inputs": common} for name in ("fit_constant", "fit_equal_weight")]  # fmt: skip


def _vector_cases(folder: Path | None) -> list[dict]:
    """The conformance vectors in ``folder`` that have a Julia twin."""
    from .conformance import NUMPY_ONLY, load_vector
    from .io.paths import check_input_file

    paths = sorted(folder.glob("*.toml")) if folder is not None else []
    if not paths:
        raise InputError(folder or "--vectors", "*.toml", "conformance vectors", "none")
    paths = [check_input_file(path, "--vectors") for path in paths]  # a FIFO hung the reader
    cases = []
    for path in paths:
        try:
            case = load_vector(path)
        except (ValueError, KeyError, TypeError) as exc:  # tomllib.TOMLDecodeError is a ValueError
            raise InputError(path, "TOML", "a conformance vector", str(exc)) from None
        # Functions with no backend argument run on NumPy only; runtests.jl checks their twins.
        if case["function"] not in NUMPY_ONLY:
            cases.append(case)
    return cases


def run(args: argparse.Namespace) -> int:
    """Compare the backends; 0 within tolerance, 1 beyond it, 2 without Julia or bad input."""
    from .conformance import compare, default_vector_dir, run_vector
    from .solver import JuliaBackendError, load_julia

    # The inputs are checked first, so that a bad one is reported with or without Julia.
    _source_flags(args)
    if args.rtol is not None and not 0 < args.rtol < np.inf:
        raise InputError("--rtol", "--rtol", "a finite tolerance > 0", repr(args.rtol))
    if args.simulate:
        cases = _simulated_cases(args)
    elif args.apz:
        cases = _apz_cases(args)
    else:
        cases = _vector_cases(Path(args.vectors) if args.vectors else default_vector_dir())
    try:
        load_julia()
    except JuliaBackendError as exc:
        print(f"pyapred crossval: {exc.reason}; see docs/julia.md", file=sys.stderr)
        return EXIT_BAD_INPUT
    as_json = getattr(args, "json", False)
    worst, rows = EXIT_OK, []
    if not as_json:
        print(f"{'case':<36} {'output':<14} {'max abs diff':>13} {'max rel diff':>13}")
    for number, case in enumerate(cases, start=1):
        log.info("pyapred crossval: %d of %d: %s", number, len(cases), case["name"])
        rtol = case["rtol"] if args.rtol is None else args.rtol
        report = compare(run_vector(case, "numpy"), run_vector(case, "julia"), rtol)
        for output, (abs_diff, rel_diff, ok) in report.items():
            rows.append({
                "case": case["name"], "output": output, "max_abs_diff": float(abs_diff),
                "max_rel_diff": float(rel_diff), "rtol": rtol, "ok": bool(ok),
            })  # fmt: skip
            mark = "" if ok else "  BEYOND TOLERANCE"
            if not as_json:
                print(f"{case['name']:<36} {output:<14} {abs_diff:13.3e} {rel_diff:13.3e}{mark}")
            worst = worst if ok else EXIT_FLAGGED
    if as_json:
        print(json_line(rows))  # a twin's mismatch is an infinite difference: null
    return worst
