"""``pyapred guider``: compare a product's fitted omega with the guider's flux in the fiber.

``pyapred guider --product PRODUCT.h5 --guider FILES... --out FIGURE.png [--lag] [--json]``
reads the product's omega (:func:`~pyapred.guider.omega.read_product_omega`), takes the read
times from its metadata or from ``--exposure``, runs :func:`~pyapred.guider.compare.compare`,
draws the figure and prints a line per fiber (or a JSON summary). Exit codes: 0 nothing flagged,
1 something flagged (a disagreement, a clock offset, dropped frames, partial coverage), 2 bad
input (an :class:`~pyapred.errors.InputError`, raised for ``pyapred.cli.main`` to report).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..arguments import text_argument
from ..errors import EXIT_FLAGGED, EXIT_OK, InputError
from ..io.paths import check_input_file, check_output_path
from ..traces import N_FIBERS, fiber_id, fiber_index
from .compare import compare
from .frames import _expand_source, fits_input_errors
from .omega import has_fitted_omega, read_product_omega

__all__ = ["MAX_DIAMETER_ARCSEC", "add_arguments", "run"]

#: The largest ``--diameter`` taken: APOGEE's fibers are 2" (APO) and 1.3" (LCO) on the sky.
MAX_DIAMETER_ARCSEC = 60.0
#: The smallest: a fiber of 1e-300" couples no light (every result NaN).
MIN_DIAMETER_ARCSEC = 0.01


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``pyapred guider`` to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    parser.add_argument(
        "--product", required=True, type=text_argument, help="pyapred product (HDF5) with omega"
    )
    parser.add_argument(
        "--guider", required=True, nargs="+", type=text_argument,
        help="guider files: paths, a glob or a directory",
    )  # fmt: skip
    parser.add_argument(
        "--fibers", help="fiberIds (1-300, as SDSS numbers them), e.g. 10,20-25; default all fitted"
    )
    parser.add_argument(
        "--group", type=text_argument,
        help="the product's fiber group: R, G, B or joint (default)",
    )  # fmt: skip
    parser.add_argument(
        "--exposure",
        type=text_argument,
        help="apR-*.apz (or a FITS header) giving the read times, if the product lacks them",
    )
    parser.add_argument("--lag", action="store_true", help="fit a time lag within +-60 s")
    parser.add_argument("--out", required=True, help="figure to write (PNG)")
    parser.add_argument(
        "--telescope",
        choices=("apo", "lco"),
        help="fiber diameter default (from the product, else the frames' names)",
    )
    parser.add_argument("--diameter", type=float, help="fiber diameter on the sky, arcsec")
    parser.add_argument(
        "--wavelength", type=float,
        help="evaluate the fiber coupling at this wavelength (micron, e.g. 1.6), the guider's "
        "FWHM scaled as wavelength^-0.2; default: at the guider's FWHM",
    )  # fmt: skip
    parser.add_argument(
        "--timesys", choices=("UTC", "TAI", "TT"), help="override the exposure's TIMESYS"
    )


def _parse_fibers(text: str | None) -> list[int] | None:
    """fiberIds from ``10,20-25``: each once, in the order given; ValueError for anything else
    (a reversed range, a fiberId outside 1..300, nothing at all)."""
    if text is None:
        return None
    fibers: list[int] = []  # "" (an unset shell variable) is nothing at all, not every fiber
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"[0-9]+(-[0-9]+)?", part) and part:  # int() took "2_93" and "٢٩٣"
            raise ValueError(part)
        if "-" in part:
            a, b = (int(v) for v in part.split("-", 1))
            if not 1 <= a <= b <= N_FIBERS:
                raise ValueError(part)
            fibers.extend(i for i in range(a, b + 1) if i not in fibers)
        elif part:
            if not 1 <= int(part) <= N_FIBERS:
                raise ValueError(part)
            fibers.extend([int(part)] if int(part) not in fibers else [])
    if not fibers:
        raise ValueError(text)
    return fibers


def _exposure_times(path, n_reads: int, timesys: str | None):
    """The read times of ``--exposure`` that an omega over ``n_reads`` reads covers.

    An ``.apz`` is read as ``pyapred fit`` reads it (:func:`~pyapred.io.read_apz`, one row of
    each read decoded): the reads its HDUs hold, not a wrong ``NREAD`` (a file missing its
    last frames shifted every window by their time), each read's own ``DATE-OBS``, a read
    missing mid-file refused; the omega covers its last ``n_reads`` (an ar3Dcal product drops
    the first ones). Another FITS file: its header (``DATE-OBS``, ``INTOFF``, ``NREAD``).
    """
    from types import SimpleNamespace

    from ..io.apz import read_apz

    if Path(path).suffix != ".apz":
        return _exposure_header(path)
    raw = read_apz(path, rows=slice(0, 1))
    held = raw.n_reads_in_file
    if held < n_reads:
        raise InputError(path, "reads", f"at least the {n_reads} reads of the omega compared "
                         "(the same exposure)", f"{held}")  # fmt: skip
    if timesys is not None:  # the times again from the header, in the scale asked for
        header = raw.header.copy()
        header["NREAD"] = held
        return header
    return SimpleNamespace(read_times=raw.read_times[held - n_reads :], header=raw.header)


def _exposure_header(path) -> fits.Header:
    """The header of an APOGEE exposure file (``apR-*.apz``: HDU 1) that gives its read times."""
    path = os.fspath(path)
    with fits_input_errors(path), fits.open(path, memmap=False) as hdul:
        for hdu in hdul[:2]:
            if "DATE-OBS" in hdu.header and "INTOFF" in hdu.header:
                return hdu.header.copy()
    raise InputError(path, "HDU 0-1 DATE-OBS, INTOFF", "the exposure header with its read timing")


def run(args: argparse.Namespace) -> int:
    """Run ``pyapred guider``.

    Parameters
    ----------
    args : argparse.Namespace
        The options of :func:`add_arguments`.

    Returns
    -------
    int
        0 when nothing is flagged, 1 when something is.

    Raises
    ------
    pyapred.errors.InputError
        Bad input (exit code 2 in ``pyapred.cli.main``): an unwritable ``--out``, bad
        ``--fibers``, an unreadable product or exposure, no read times, no usable guider frame.
    """
    try:
        fiber_ids = _parse_fibers(args.fibers)
    except ValueError:
        raise InputError("--fibers", "--fibers", f"fiberIds 1-{N_FIBERS} such as 10,20-25",
                         args.fibers) from None  # fmt: skip
    if args.wavelength is not None and not 0.3 <= args.wavelength <= 3.0:
        raise InputError("--wavelength", "--wavelength", "a wavelength in micron, 0.3 to 3",
                         repr(args.wavelength))  # fmt: skip
    if args.diameter is not None and not (
        MIN_DIAMETER_ARCSEC <= args.diameter <= MAX_DIAMETER_ARCSEC
    ):
        raise InputError("--diameter", "--diameter",
                         f"a fiber diameter in arcsec, {MIN_DIAMETER_ARCSEC:g} to "
                         f"{MAX_DIAMETER_ARCSEC:g}",
                         repr(args.diameter))  # fmt: skip
    if Path(args.out).suffix.lower() != ".png":
        raise InputError(args.out, "--out", "a .png file name (the figure is a PNG)",
                         repr(Path(args.out).suffix or "no suffix"))  # fmt: skip
    inputs = [check_input_file(args.product, "--product")]
    if args.exposure:
        inputs.append(check_input_file(args.exposure, "--exposure"))
    # The guider frames are inputs too: --out may not replace one, nor may a FIFO among them
    # hang the run. Folders and broken links among them are dropped by the reader, as before.
    for path in _expand_source(args.guider):
        if os.path.isfile(path):
            inputs.append(path)
        elif os.path.exists(path) and not os.path.isdir(path):
            check_input_file(path, "--guider")  # a FIFO or device: named, not read
    check_output_path(args.out, "--out", inputs=inputs, overwrite=True)
    data = read_product_omega(args.product, args.group)
    fibers = None
    if fiber_ids is not None:  # users number fibers by fiberId; the product by 0-based index
        fibers = [int(fiber_index(i)) for i in fiber_ids]
        have = set(np.asarray(data["fiber_index"]).tolist())
        missing = [i for i, f in zip(fiber_ids, fibers, strict=True) if f not in have]
        if missing:
            raise InputError(args.product, "omega", "the --fibers' fiberIds among its fibers",
                             f"no fiberIds {missing}")  # fmt: skip
        fitted = has_fitted_omega(data["omega"], data["omega_cov"])
        fitted = dict(zip(np.asarray(data["fiber_index"]).tolist(), fitted, strict=True))
        unfitted = [i for i, f in zip(fiber_ids, fibers, strict=True) if not fitted[f]]
        if unfitted:  # their statistics would all be NaN
            found = f"fiberIds {unfitted} without one (a constant or fallback model)"
            raise InputError(args.product, "omega", "--fibers with a fitted omega", found)
    read_times = None
    if args.exposure:
        n_reads = np.shape(data["omega"])[-1] + 1
        read_times = _exposure_times(args.exposure, n_reads, args.timesys)
    elif data["read_times"] is None and not data["header"]:
        raise InputError(
            args.product, "metadata DATE-OBS, INTOFF", "the exposure's read times",
            "none: pass --exposure apR-*.apz (or any FITS with its header)",
        )  # fmt: skip
    try:
        result = compare(
            data, args.guider, read_times=read_times, fibers=fibers, fit_lag=args.lag,
            telescope=args.telescope, diameter=args.diameter, timesys=args.timesys,
            wavelength=args.wavelength,
        )  # fmt: skip
    except ValueError as exc:
        if isinstance(exc, InputError) and exc.path == "<header>":
            # Read times from a header: name the file (and the metadata) it came from.
            source, where = (args.exposure, "") if args.exposure else (args.product, "metadata/")
            raise InputError(source, where + exc.field, exc.expected, exc.found) from None
        if isinstance(exc, InputError):
            raise
        # The argument compare names decides what is blamed: an option, or the product.
        name = str(exc).split(":", 1)[0]
        option = {"diameter": "--diameter", "wavelength": "--wavelength",
                  "telescope": "--telescope", "fibers": "--fibers"}.get(name)  # fmt: skip
        if option is not None:
            raise InputError(option, option, "a value compare can use", str(exc)) from None
        if name == "read_times":
            source = args.exposure or args.product
            raise InputError(source, "read times", "the exposure's read times", str(exc)) from None
        # Neither input alone: frames that overlap (a singular spline) or omega of another
        # exposure both end here.
        raise InputError(
            "--guider and --product", "frames and omega",
            "guider frames in time order that do not overlap, and omega matching the exposure",
            str(exc),
        ) from None  # fmt: skip
    try:
        result.plot(args.out)
    except ImportError as exc:  # matplotlib is the optional 'plots' extra
        raise InputError(args.out, "--out", "matplotlib installed: pip install 'pyapred[plots]'",
                         str(exc)) from None  # fmt: skip
    if getattr(args, "json", False):
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(f"pyapred guider: {len(result.series)} guider frames, {len(result.fibers)} fibers")
        if np.isfinite(result.lag_err) or args.lag:
            print(f"  lag {result.lag:+.2f} +/- {result.lag_err:.2f} s; clock: {result.clock}")
        for i, f in enumerate(result.fibers):
            print(
                f"  fiberId {int(fiber_id(f))}: scale {result.scale[i]:.4f} "
                f"+/- {result.scale_err[i]:.4f}, "
                f"r {result.correlation[i]:.3f}, chi2/dof {result.chi2_dof[i]:.2f}, "
                f"rms {result.residual_rms[i]:.4f}, "
                f"explained {result.explained_variance[i]:.2f}"
                + (" DISAGREE" if result.disagree[i] else "")
                + (
                    f"; gamma vs guider chi2/dof "
                    f"{result.gamma_chi2[i] / max(int(result.gamma_dof[i]), 1):.2f}"
                    if result.gamma_guider is not None
                    else ""
                )
            )
        for path, reason in result.dropped:
            print(f"  dropped {path}: {reason}")
        print(f"  flags: {', '.join(result.flags) or 'none'}; figure: {args.out}")
    return EXIT_FLAGGED if result.flags else EXIT_OK
