"""The exposure subcommands of ``pyapred``: ``simulate``, ``fit`` and ``demo``.

Each is an ``(add_arguments, run)`` pair registered in :data:`pyapred.cli.COMMANDS`; ``run``
returns the exit code (0 ok, 1 fit problems flagged, 2 bad input).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import EXIT_BAD_INPUT, EXIT_FLAGGED, EXIT_OK, InputError


# --------------------------------------------------------------------------------------------
# pyapred simulate
# --------------------------------------------------------------------------------------------
class DeprecatedFlag(argparse.Action):
    """An old spelling of a flag (``--fibres``) that still works for one release, with a warning.

    ``parser.add_argument("--old", dest=..., action=DeprecatedFlag, new="--new", ...)``.
    """

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        message = f"{option_string} is deprecated and will be removed; use {self.new}"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        print(f"{parser.prog}: warning: {message}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _geometry_arguments(parser: argparse.ArgumentParser, *, columns: int, reads: int) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--fibers", type=int, default=300, help="fibers per chip (default 300)")
    parser.add_argument("--fibres", dest="fibers", type=int, action=DeprecatedFlag, new="--fibers")
    parser.add_argument(
        "--columns", type=int, default=columns, help=f"traced columns (default {columns})"
    )
    parser.add_argument("--reads", type=int, default=reads, help=f"reads (default {reads})")


def simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    scenario = parser.add_mutually_exclusive_group()
    for name, text in (
        ("clouds", "a cloud passes mid-exposure (default)"),
        ("seeing", "a seeing drift, different for each fiber"),
        ("stable", "constant illumination"),
    ):
        scenario.add_argument(
            f"--{name}", dest="scenario", action="store_const", const=name, help=text
        )
    _geometry_arguments(parser, columns=2048, reads=33)
    parser.add_argument(
        "--ref-columns", type=int, default=512, help="reference-output columns (default 512)"
    )
    parser.add_argument("--telescope", choices=("apo", "lco"), default="apo")
    parser.add_argument(
        "--one-over-f", action="store_true",
        help="add H2RG correlated (1/f) read noise on APOGEE's clock (needs 2048 + 512 columns)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


def simulate_run(args: argparse.Namespace) -> int:
    """Write a synthetic three-chip exposure: .apz files, trace files and a truth file."""
    from .simulate import simulate_exposure, write_simulated_exposure

    if args.one_over_f and (args.columns, args.ref_columns) != (2048, 512):
        raise InputError(
            "--one-over-f", "--columns/--ref-columns", "2048 and 512 (the raw frame)",
            f"{args.columns} and {args.ref_columns}",
        )  # fmt: skip
    sim = simulate_exposure(
        args.scenario or "clouds", seed=args.seed, n_fibers=args.fibers, n_columns=args.columns,
        ref_columns=args.ref_columns, n_reads=args.reads, telescope=args.telescope,
    )  # fmt: skip
    one_over_f = None
    if args.one_over_f:  # HxrgNoise's default 1/f amplitudes times the read noise, in DN
        from .noise import HxrgNoise

        rn = next(iter(sim.chips.values())).read_noise
        one_over_f = HxrgNoise(white=0.0, c_pink=0.6 * rn, u_pink=0.3 * rn, acn=0.2 * rn)
    paths = write_simulated_exposure(sim, args.out, overwrite=args.overwrite, one_over_f=one_over_f)
    for path in [*paths["apz"], *paths["traces"], paths["truth"]]:
        print(path)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# pyapred fit
# --------------------------------------------------------------------------------------------
def fit_arguments(parser: argparse.ArgumentParser) -> None:
    from .exposure import add_option_arguments

    parser.add_argument(
        "inputs", nargs="+", type=Path, help="raw .apz or ar3Dcal files, 1 per chip"
    )
    parser.add_argument(
        "--traces", nargs="+", required=True, type=Path,
        help="trace files (traceMain_{tele}_{mjd}_{chip}.h5), one per chip",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="product file (.h5)")
    parser.add_argument("--plots", type=Path, help="folder for PNG plots")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing product")
    parser.add_argument("--quiet", action="store_true", help="print only the JSON summary")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    add_option_arguments(parser)


def fit_run(args: argparse.Namespace) -> int:
    """Fit omega per fiber, choose models, extract every pixel, write the product."""
    from .exposure import options_from_arguments, resolve_backend, run_exposure
    from .io.atomic import writable_folder

    options = options_from_arguments(args)
    # The fit pixels' reads are kept for the ramp plots only (a quarter of a cube per chip).
    keep_fit_reads = args.plots is not None or getattr(args, "keep_fit_reads", False)
    options = dataclasses.replace(options, keep_fit_reads=keep_fit_reads)
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401  (the optional extra "plots")
        except ImportError:
            message = "pyapred fit: --plots needs matplotlib: pip install 'pyapred[plots]'"
            print(message, file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.out.exists() and not args.overwrite:
        raise InputError(args.out, "--out", "a new file (or pass --overwrite)", "an existing file")
    writable_folder(args.out.parent, path=args.out)
    options = dataclasses.replace(options, backend=resolve_backend(options.backend))
    start = time.perf_counter()
    result = run_exposure(
        args.inputs, args.traces, options, product=args.out, overwrite=args.overwrite,
        progress=not (args.quiet or args.json),
    )  # fmt: skip
    plots = []
    if args.plots is not None:
        from .plots import save_plots

        plots = save_plots(result, args.plots)
    summary = result.summary()
    summary["product"] = result.meta["product"]
    summary["plots"] = [str(p) for p in plots]
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if args.json or args.quiet:
        print(json.dumps(summary, default=str))
    else:
        _print_summary(summary)
    return EXIT_FLAGGED if summary["problems"] else EXIT_OK


def _print_summary(summary: dict) -> None:
    print(f"pyapred fit: {', '.join(summary['chips'])} in {summary['seconds']} s")
    for key, fib in summary["fibers"].items():
        models = ", ".join(f"{n} {c}" for n, c in fib["models"].items())
        chi_c, chi_v = fib["median_chi2_dof_constant"], fib["median_chi2_dof_variable"]
        line = f"  {key}: {models}; {fib['bright_fibers']} bright fibers"
        if chi_c is not None:
            line += f", median chi2/dof constant {chi_c:.2f} vs time-variable {chi_v:.2f}"
        print(line)
    for problem in summary["problems"]:
        print(f"  problem: {problem}")
    print(f"  product: {summary['product']}")
    if summary["plots"]:
        print(f"  plots: {Path(summary['plots'][0]).parent}")


# --------------------------------------------------------------------------------------------
# pyapred demo
# --------------------------------------------------------------------------------------------
def demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="folder for files and plots (default: a temp dir)")
    _geometry_arguments(parser, columns=96, reads=22)
    parser.add_argument("--chips", default="RGB", help="chips to simulate (default RGB)")
    parser.add_argument("--joint-chips", action="store_true", help="fit omega over all chips")


def demo_run(args: argparse.Namespace) -> int:
    """Simulate a cloudy exposure, fit it from its files, plot, and compare with the truth."""
    from .exposure import FitOptions, run_exposure, truth_metrics
    from .simulate import simulate_exposure, write_simulated_exposure

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pyapred-demo-"))
    start = time.perf_counter()
    sim = simulate_exposure(
        "clouds", seed=args.seed, n_fibers=args.fibers, n_columns=args.columns, ref_columns=0,
        n_reads=args.reads, chips=tuple(args.chips),
    )  # fmt: skip
    paths = write_simulated_exposure(sim, out / "data", overwrite=True)
    print(
        f"pyapred demo: simulated a passing cloud (depth 60 %), {args.fibers} fibers x "
        f"{args.columns} columns x {args.reads} reads on chips {args.chips}, seed {args.seed}"
    )
    print(f"  files: {out / 'data'}")
    options = FitOptions(keep_constant=True, joint_chips=args.joint_chips)
    result = run_exposure(
        paths["apz"], paths["traces"], options, product=out / "product.h5", overwrite=True,
        keep_images=True,
    )  # fmt: skip
    product = result.meta["product"]
    try:
        from .plots import save_plots

        plots = save_plots(result, out / "plots", truth=sim.omega)
    except ImportError:  # matplotlib is the optional extra "plots"
        plots = None
    flux_dn = {name: chip.flux / chip.gain for name, chip in sim.chips.items()}
    min_flux = {name: 100.0 / chip.gain for name, chip in sim.chips.items()}
    metrics = truth_metrics(result, sim.omega, flux_dn, min_flux=min_flux)
    print(f"  simulate, write, fit: {time.perf_counter() - start:.1f} s; product {product}")
    for key, fits in result.fibers.items():
        counts = np.bincount(fits.model, minlength=3)
        om = metrics["omega"][key]
        print(
            f"  omega {key}: {om['n_fibers']} bright fibers, z-score std {om['z_std']:.2f} "
            f"(ideal 1), median z {om['z_median']:+.2f}; models: {counts[1]} time-variable, "
            f"{counts[0]} constant, {counts[2]} borrowed"
        )
        if key in metrics["borrowed"]:
            b = metrics["borrowed"][key]
            print(
                f"    borrowed omega vs truth ({b['n_fibers']} faint fibers): "
                f"chi2/dof {b['chi2_dof']:.2f} (ideal 1; its elements' z std {b['z_std']:.2f} "
                "is below 1 as they are correlated)"
            )
    for name, entry in metrics["flux"].items():
        print(
            f"  flux bias, chip {name}, {entry['n_pixels']} pixels >= 100 e-/read: "
            f"constant model {entry['constant_bias']:+.2f} sigma, "
            f"time-variable {entry['variable_bias']:+.3f} sigma"
        )
    if plots is None:
        print("  plots: skipped, matplotlib is missing (pip install 'pyapred[plots]')")
    else:
        print(f"  plots: {out / 'plots'} ({len(plots)} PNG files)")
    sys.stdout.flush()
    return EXIT_OK
