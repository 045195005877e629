"""The exposure subcommands of ``pyapred``: ``simulate``, ``fit`` and ``demo``.

Each is an ``(add_arguments, run)`` pair registered in :data:`pyapred.cli.COMMANDS`; ``run``
returns the exit code (0 ok, 1 fit problems flagged, 2 bad input). The output flags
(``--json``, ``--quiet``, ``--verbose``, ``--log``) are added and given their meaning by
:mod:`pyapred.cli`: ``run`` prints its summary (as JSON with ``--json``), logs its steps, and
shows progress bars when ``args.progress`` is true.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .arguments import MAX_READS, MAX_SEED, at_least, file_argument, json_line, path_argument
from .errors import EXIT_BAD_INPUT, EXIT_FLAGGED, EXIT_OK, InputError

log = logging.getLogger(__name__)


def _num(value, spec: str = ".2f") -> str:
    """A figure of the demo's report, or ``n/a`` where there was nothing to measure."""
    return "n/a" if value is None else format(value, spec)


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
        # Said by pyapred.cli.main once the output flags are known (--quiet silences it).
        namespace.notices = [
            *getattr(namespace, "notices", []),
            f"{parser.prog}: warning: {message}",
        ]
        setattr(namespace, self.dest, values)


def _chip_letters(text: str) -> str:
    """An argparse type: chips among R, G and B, each once (``RGB``, ``R``, ``GB``)."""
    if not text or set(text) - set("RGB") or len(set(text)) != len(text):
        raise argparse.ArgumentTypeError(f"expected letters among R, G, B, each once; got {text!r}")
    return text


def _geometry_arguments(parser: argparse.ArgumentParser, *, columns: int, reads: int) -> None:
    parser.add_argument(
        "--seed", type=at_least(0, MAX_SEED), default=0, help="random seed (default 0)"
    )
    parser.add_argument(
        "--fibers", type=at_least(1, 300), default=300, help="fibers per chip (default 300)"
    )
    parser.add_argument(
        "--fibres", dest="fibers", type=at_least(1, 300), action=DeprecatedFlag, new="--fibers"
    )
    parser.add_argument(
        "--columns", type=at_least(1, 2048), default=columns,
        help=f"traced columns (default {columns})",
    )  # fmt: skip
    parser.add_argument(
        "--reads", type=at_least(3, MAX_READS), default=reads,
        help=f"reads, 3 to {MAX_READS} (default {reads})",
    )  # fmt: skip


def simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=path_argument, help="output folder")
    scenario = parser.add_mutually_exclusive_group()
    for name, text in (
        ("clouds", "a cloud passes mid-exposure (default)"),
        ("seeing", "a seeing drift, different for each fiber"),
        ("stable", "constant illumination"),
        (
            "seeing-change",
            "the seeing worsens from 1.2 to 3.6 arcsec: a transparency that "
            "changes with wavelength (pyapred fit --chromatic)",
        ),
        ("seeing-change-clouds", "the same seeing change with the passing cloud"),
    ):
        scenario.add_argument(
            f"--{name}", dest="scenario", action="store_const", const=name, help=text
        )
    _geometry_arguments(parser, columns=2048, reads=33)
    parser.add_argument(
        "--ref-columns", type=at_least(0, 512), default=512,
        help="reference-output columns (default 512)",
    )  # fmt: skip
    parser.add_argument(
        "--telescope", choices=("apo", "lco"), default="apo",
        help="telescope of the file names and of the FPI fibers (default apo)",
    )  # fmt: skip
    parser.add_argument(
        "--one-over-f", action="store_true",
        help="add H2RG correlated (1/f) read noise on APOGEE's clock (needs 2048 + 512 columns)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


def _simulated_files(out: Path, telescope: str, chips: str, mjd: int, exposure: int) -> list:
    """The files ``pyapred simulate`` writes, to check before any work."""
    from .io.apz import ApzName
    from .traces import trace_file_name

    letters = {"R": "a", "G": "b", "B": "c"}
    files = [out / ApzName.from_night(telescope, letters[c], mjd, exposure).filename for c in chips]
    files += [out / trace_file_name(telescope, mjd, c) for c in chips]
    return [*files, out / f"truth_{telescope}_{mjd}_{exposure:04d}.npz"]


def simulate_run(args: argparse.Namespace) -> int:
    """Write a synthetic three-chip exposure, chip by chip: .apz files, traces and a truth file."""
    from .io.paths import check_memory, check_output_path, remove_stale_temporaries
    from .simulate import READ_NOISE_DN, simulate_exposure_files, simulation_bytes

    if args.one_over_f and (args.columns, args.ref_columns) != (2048, 512):
        raise InputError(
            "--one-over-f", "--columns/--ref-columns", "2048 and 512 (the raw frame)",
            f"{args.columns} and {args.ref_columns}",
        )  # fmt: skip
    # Every output is checked before minutes of simulation (an existing one needs --overwrite).
    outputs = _simulated_files(args.out, args.telescope, "RGB", 60781, 1)
    for path in outputs:
        check_output_path(path, "--out", overwrite=args.overwrite)
    for path in outputs:  # left by a killed run (never a live one's: io.atomic's lock)
        remove_stale_temporaries(path)
    one_over_f = None
    if args.one_over_f:  # HxrgNoise's default 1/f amplitudes times the read noise, in DN
        from .noise import HxrgNoise

        rn = READ_NOISE_DN
        one_over_f = HxrgNoise(white=0.0, c_pink=0.6 * rn, u_pink=0.3 * rn, acn=0.2 * rn)
    # --reads 1000 at full size was a MemoryError traceback after seconds (37 s with 1/f).
    needed = simulation_bytes(
        n_fibers=args.fibers, n_columns=args.columns, ref_columns=args.ref_columns,
        n_reads=args.reads, n_chips=3, streamed=True, one_over_f=one_over_f,
    )  # fmt: skip
    check_memory(needed, "--reads", "--reads, --fibers, --columns, --one-over-f",
                 f"{args.reads} reads x {args.fibers} fibers x {args.columns} columns"
                 + (" with 1/f noise" if one_over_f else ""))  # fmt: skip
    scenario = args.scenario or "clouds"
    log.info(
        "pyapred simulate: %s, %d fibers x %d columns (+%d reference) x %d reads, 3 chips, "
        "seed %d, into %s", scenario, args.fibers, args.columns, args.ref_columns, args.reads,
        args.seed, args.out,
    )  # fmt: skip
    start = time.perf_counter()
    paths = simulate_exposure_files(
        args.out, scenario, seed=args.seed, n_fibers=args.fibers, n_columns=args.columns,
        ref_columns=args.ref_columns, n_reads=args.reads, telescope=args.telescope,
        overwrite=args.overwrite, one_over_f=one_over_f,
        progress=lambda message: log.info("pyapred simulate: %s", message),
    )  # fmt: skip
    log.info("pyapred simulate: done in %.1f s", time.perf_counter() - start)
    if args.json:
        print(json_line(paths))
        return EXIT_OK
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
    parser.add_argument("--out", required=True, type=file_argument,
                        help="product file: .h5, or .fits for the FITS flavour")  # fmt: skip
    parser.add_argument("--plots", type=path_argument, help="folder for PNG plots")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing product")
    parser.add_argument(
        "--traces-any-night", action="store_true",
        help="accept trace files of another night of the same telescope (e.g. fallback traces)",
    )  # fmt: skip
    identity = parser.add_argument_group(
        "identity of a renamed input (one input file; each overrides what its name says, and is "
        "needed where the name says nothing)"
    )
    identity.add_argument(
        "--chip", choices=("R", "G", "B"), help="the input's chip (raw files: a, b, c = R, G, B)"
    )
    identity.add_argument(
        "--telescope", choices=("apo", "lco"),
        help="the input's telescope: its FPI fibers and its trace files' telescope",
    )  # fmt: skip
    identity.add_argument(
        "--mjd", type=at_least(55562), metavar="N",
        help="the input's night (SDSS MJD), matched against the trace files' night",
    )  # fmt: skip
    add_option_arguments(parser)


def fit_run(args: argparse.Namespace) -> int:
    """Fit omega per fiber, choose models, extract every pixel, write the product."""
    from .exposure import config_source, options_from_arguments, resolve_backend, run_exposure
    from .io import is_fits_path
    from .io.paths import check_input_file, check_output_path, remove_stale_temporaries

    options = options_from_arguments(args)
    # The fit pixels' reads are kept for the ramp plots only (a quarter of a cube per chip).
    keep_fit_reads = args.plots is not None or getattr(args, "keep_fit_reads", False)
    options = dataclasses.replace(
        options, keep_fit_reads=keep_fit_reads,
        keep_constant=options.keep_constant or args.plots is not None,  # flux comparison plots
    )  # fmt: skip
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401  (the optional extra "plots")
        except ImportError:
            message = "pyapred fit: --plots needs matplotlib: pip install 'pyapred[plots]'"
            print(message, file=sys.stderr)
            return EXIT_BAD_INPUT
    # A renamed input's chip, telescope and night (one input: run_exposure checks it).
    identity = {k: getattr(args, k) for k in ("chip", "telescope", "mjd")}
    identity = {k: v for k, v in identity.items() if v is not None}
    backend = resolve_backend(options.backend, source=config_source(args, "backend"))
    options = dataclasses.replace(options, backend=backend)
    # Every path is checked before any work: nothing is fitted for an output that cannot be
    # written, and no output may replace an input.
    flagged = [("inputs", path) for path in args.inputs]
    flagged += [("--traces", path) for path in args.traces]
    if getattr(args, "config", None) is not None:  # read above; never replaced either
        flagged.append(("--config", args.config))
    inputs = [check_input_file(path, flag) for flag, path in flagged]
    check_output_path(args.out, "--out", inputs=inputs, overwrite=args.overwrite)
    if args.plots is not None:
        # Checked before it is resolved: a loop of symbolic links is refused here, by name.
        check_output_path(args.plots, "--plots", inputs=[*inputs, args.out], folder=True)
        if Path(args.plots).resolve() == Path(args.out).resolve():
            raise InputError(args.plots, "--plots", "a folder other than --out", str(args.out))
        from .plots import PLOT_NAME

        # A plot written over the product (exit 0), the log or an input (a config named like
        # a plot in the --plots folder), after the whole fit.
        named = [("--out", args.out), ("--log", getattr(args, "log", None)), *flagged]
        for flag, path in named:
            if path is None or Path(path).parent.resolve() != Path(args.plots).resolve():
                continue
            if PLOT_NAME.fullmatch(Path(path).name):
                raise InputError(path, flag, f"a name that no plot in {args.plots} takes",
                                 "a plot's name")  # fmt: skip
        # What the plots would replace: a folder or a special file named like a plot is
        # refused now, not after the fit (a plot replaces a file of its name, as --overwrite).
        if Path(args.plots).is_dir():
            for entry in sorted(Path(args.plots).iterdir()):
                if PLOT_NAME.fullmatch(entry.name):
                    check_output_path(entry, "--plots", inputs=inputs, overwrite=True)
    # A product under another name (.apz, .txt) is one that inspect and --config cannot read.
    if not (Path(args.out).suffix in (".h5", ".hdf5") or is_fits_path(args.out)):
        raise InputError(args.out, "--out", "a product name ending .h5 (HDF5) or .fits (FITS)",
                         Path(args.out).suffix or "no suffix")  # fmt: skip
    remove_stale_temporaries(args.out, keep=inputs)  # left by a killed run on the same output
    log.debug("pyapred fit: settings %s", options.to_record())
    start = time.perf_counter()
    result = run_exposure(
        args.inputs, args.traces, options, product=args.out, overwrite=args.overwrite,
        traces_any_night=args.traces_any_night, progress=args.progress,
        identity=identity or None,
    )  # fmt: skip
    # Again once the product is in place: a run killed just before this one may still have
    # held its temporary's lock as this one started (its process takes a moment to exit).
    remove_stale_temporaries(args.out, keep=inputs)
    plots = []
    if args.plots is not None:
        from .plots import save_plots

        log.info("pyapred fit: drawing the plots in %s", args.plots)
        plots = save_plots(result, args.plots)
    summary = result.summary()
    summary["product"] = result.meta["product"]
    summary["plots"] = [str(p) for p in plots]
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log.debug("pyapred fit: stage timings %s s", summary["timings_s"])
    if args.json:
        print(json_line(summary))
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
    parser.add_argument(
        "--out", type=path_argument, help="folder for files and plots (default: a temp dir)"
    )
    _geometry_arguments(parser, columns=96, reads=22)
    parser.add_argument(
        "--chips", type=_chip_letters, default="RGB", help="chips to simulate (default RGB)"
    )
    parser.add_argument("--joint-chips", action="store_true", help="fit omega over all chips")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier product.h5 and simulated files in --out (plots are always "
        "replaced)",
    )  # fmt: skip


def demo_run(args: argparse.Namespace) -> int:
    """Simulate a cloudy exposure, fit it from its files, plot, and compare with the truth."""
    from .exposure import (
        MODEL_BORROWED,
        MODEL_CONSTANT,
        MODEL_TIME_VARIABLE,
        FitOptions,
        run_exposure,
        truth_metrics,
    )
    from .io.atomic import writable_folder
    from .io.paths import check_memory, check_output_path
    from .simulate import simulate_exposure, simulation_bytes, write_simulated_exposure

    # All chips in memory at once, then the fit (--columns 2048 --reads 1000 was a MemoryError
    # traceback, and an empty --out left behind).
    needed = simulation_bytes(
        n_fibers=args.fibers, n_columns=args.columns, ref_columns=0, n_reads=args.reads,
        n_chips=len(args.chips), streamed=False,
    )  # fmt: skip
    check_memory(needed, "--reads", "--reads, --fibers, --columns, --chips",
                 f"{args.reads} reads x {args.fibers} fibers x {args.columns} columns x "
                 f"{len(args.chips)} chips")  # fmt: skip
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pyapred-demo-"))
    writable_folder(out)  # before the work
    # What it writes there, checked before the work too (a FIFO at product.h5, or --log's file
    # there, was refused after the simulation and the fit, its data/ left behind). A product or
    # raw file already there is replaced only with --overwrite, as in fit and simulate (a
    # product.h5 of the user's own was replaced without a word); plots, as fit --plots's, are.
    for path in (out / "product.h5", *_simulated_files(out / "data", "apo", args.chips, 60781, 1)):
        check_output_path(path, "--out", overwrite=args.overwrite)
    for folder in ("data", "plots"):
        check_output_path(out / folder, "--out", folder=True)
    start = time.perf_counter()
    step = "pyapred demo: %s"
    log.info(
        step, f"simulating a passing cloud over {args.fibers} fibers x {args.columns} columns x "
        f"{args.reads} reads, chips {args.chips}, seed {args.seed}",
    )  # fmt: skip
    sim = simulate_exposure(
        "clouds", seed=args.seed, n_fibers=args.fibers, n_columns=args.columns, ref_columns=0,
        n_reads=args.reads, chips=tuple(args.chips),
    )  # fmt: skip
    log.info(step, f"writing the raw files and traces to {out / 'data'}")
    paths = write_simulated_exposure(sim, out / "data", overwrite=True)
    lines = [
        f"pyapred demo: simulated a passing cloud (depth 60 %), {args.fibers} fibers x "
        f"{args.columns} columns x {args.reads} reads on chips {args.chips}, seed {args.seed}",
        f"  files: {out / 'data'}",
    ]
    log.info(step, "fitting omega per fiber and extracting every pixel, from the files")
    options = FitOptions(keep_constant=True, joint_chips=args.joint_chips)
    result = run_exposure(
        paths["apz"], paths["traces"], options, product=out / "product.h5", overwrite=True,
        keep_images=True, progress=args.progress,
    )  # fmt: skip
    product = result.meta["product"]
    flux_dn = {name: chip.flux / chip.gain for name, chip in sim.chips.items()}
    min_flux = {name: 100.0 / chip.gain for name, chip in sim.chips.items()}
    log.info(step, f"drawing the plots in {out / 'plots'}")
    try:
        from .plots import save_plots

        plots = save_plots(result, out / "plots", truth=sim.omega, true_flux=flux_dn)
    except ImportError:  # matplotlib is the optional extra "plots"
        plots = None
    log.info(step, "comparing with the truth")
    metrics = truth_metrics(result, sim.omega, flux_dn, min_flux=min_flux)
    seconds = time.perf_counter() - start
    lines.append(f"  simulate, write, fit: {seconds:.1f} s; product {product}")
    models = {}
    for key, fits in result.fibers.items():
        # (the demo fits no chromatic model)
        count = {model: int(np.count_nonzero(fits.model == model)) for model in
                 (MODEL_TIME_VARIABLE, MODEL_CONSTANT, MODEL_BORROWED)}  # fmt: skip
        models[key] = {
            "time_variable": count[MODEL_TIME_VARIABLE],
            "constant": count[MODEL_CONSTANT],
            "borrowed": count[MODEL_BORROWED],
        }
        om = metrics["omega"][key]
        lines.append(
            f"  omega {key}: {om['n_fibers']} bright fibers, z-score std {_num(om['z_std'])} "
            f"(ideal 1), median z {_num(om['z_median'], '+.2f')}; models: "
            f"{count[MODEL_TIME_VARIABLE]} time-variable, {count[MODEL_CONSTANT]} constant, "
            f"{count[MODEL_BORROWED]} borrowed"
        )
        if fits.fit is not None and fits.bright.any():
            # Omega at the exposure's mean (the fluxes' normalisation), against the truth's.
            fitted = fits.fit.normalized()[0][fits.bright]
            true = sim.omega[fits.bright] / sim.omega[fits.bright].mean(axis=1, keepdims=True)
            lines.append(
                f"    deepest point of the cloud, omega scaled to mean 1 (median over bright "
                f"fibers): fitted {np.median(np.nanmin(fitted, axis=1)):.3f}, "
                f"true {np.median(true.min(axis=1)):.3f}"
            )
        if key in metrics["borrowed"]:
            b = metrics["borrowed"][key]
            lines.append(
                f"    borrowed omega vs truth ({b['n_fibers']} faint fibers): "
                f"chi2/dof {_num(b['chi2_dof'])} (ideal 1; its elements' z std "
                f"{_num(b['z_std'])} "
                "is below 1 as they are correlated)"
            )
    for name, entry in metrics["flux"].items():
        lines.append(
            f"  flux bias, chip {name}, {entry['n_pixels']} pixels >= 100 e-/read: "
            f"constant model {_num(entry['constant_bias'], '+.2f')} sigma, "
            f"time-variable {_num(entry['variable_bias'], '+.3f')} sigma"
        )
    if plots is None:
        lines.append("  plots: skipped, matplotlib is missing (pip install 'pyapred[plots]')")
    else:
        lines.append(f"  plots: {out / 'plots'} ({len(plots)} PNG files)")
    if args.json:
        summary = {
            "out": out, "product": product, "seconds": round(seconds, 2), "models": models,
            **metrics, "plots": None if plots is None else [str(p) for p in plots],
        }  # fmt: skip
        print(json_line(summary))
    else:
        print("\n".join(lines))
    sys.stdout.flush()
    return EXIT_OK
