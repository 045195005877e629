"""The exposure's inputs: one chip's reads and calibration in memory, or read from its file.

The entrance of the exposure stages (file -> exposure -> per-fiber omega -> extraction ->
product): :class:`ChipExposure` holds what the stages need of one chip; :func:`load_chip` makes
one from a raw ``.apz`` or an ApogeeReduction.jl ``ar3Dcal`` file; :func:`match_inputs` pairs the
files of one exposure with their trace files by chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, ReadRangeError

__all__ = [
    "DEFAULT_SATURATION_DN",
    "TIMING_CARDS",
    "ChipExposure",
    "identify_exposure",
    "load_chip",
    "match_inputs",
]


@dataclass(frozen=True)
class ChipExposure:
    """The reads of one chip and what is needed to fit them.

    Attributes
    ----------
    name : str
        Chip name ("R", "G" or "B").
    reads : ndarray, ``(n_reads, ny, nx)``
        Raw reads in DN (float32 keeps memory at one cube).
    read_noise : float or ndarray ``(ny, nx)``
        Single-read sigma, DN.
    gain : float or ndarray ``(ny, nx)``
        e-/DN.
    saturation : float or ndarray ``(ny, nx)``, optional
        DN; a read at or above it and every later read are masked.
    read_times : ndarray, ``(n_reads,)``, optional
        Seconds from the first read (for plots; the reads are taken as equally spaced).
    telescope, mjd : optional
        Checked for consistency across the chips of one call.
    source : str
        File name used in error messages.
    writable : bool
        The pipeline may overwrite ``reads`` in place: :func:`correct_1f` then corrects float
        reads without a copy (:func:`load_chip` sets it).
    timing : dict, optional
        What the product records of the exposure's timing, for ``pyapred guider``:
        ``read_times_tai_mjd`` (the reads' start times, TAI MJD) and the header cards
        ``DATE-OBS``, ``TIMESYS``, ``INTOFF``, ``INTDELAY``, ``NREAD`` and ``CONFIGID`` present
        (:func:`load_chip` fills it from the file).
    """

    name: str
    reads: np.ndarray
    read_noise: float | np.ndarray
    gain: float | np.ndarray = 1.0
    saturation: float | np.ndarray | None = None
    read_times: np.ndarray | None = None
    telescope: str | None = None
    mjd: int | None = None
    source: str = "<memory>"
    writable: bool = False
    timing: dict | None = None


#: Default saturation level, DN (apogee_drp's ``satval``), when a file has no SATURATE card.
DEFAULT_SATURATION_DN = 55000.0


def _header_number(path, header, keyword: str, given, option: str, default=None) -> float:
    """``given`` (from ``option``), else the header card ``keyword`` or ``default``; > 0."""

    field_name = option if given is not None else f"header keyword {keyword}"
    value = given if given is not None else header.get(keyword, default)
    if value is None:
        raise InputError(path, field_name, f"a number (or pass {option})", "nothing")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise InputError(path, field_name, "a finite number > 0", repr(value))
    return number


def load_chip(
    path,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    saturation: float | None = None,
) -> ChipExposure:
    """Read one chip from a raw ``.apz`` or an ApogeeReduction.jl ``ar3Dcal`` file.

    Raw files: reads as uint16 DN, the detector's type (float32 for a file with reads outside
    [0, 65535]); ``gain`` (e-/DN), ``read_noise`` (single-read DN) and
    ``saturation`` (DN) from the arguments, else from the ``GAIN``, ``RDNOISE`` and ``SATURATE``
    header cards (written by ``pyapred simulate``); saturation defaults to
    :data:`DEFAULT_SATURATION_DN`. ar3Dcal files: ApogeeReduction.jl's zero-pointed reads with
    its ``gainMat`` and ``sqrt(readVarMat)`` maps (no saturation masking unless given).

    Parameters
    ----------
    path : str or os.PathLike
    gain, read_noise, saturation : float, optional

    Returns
    -------
    ChipExposure
    """
    from ..io import parse_ar_name, read_apz, read_ar3dcal

    path = Path(path)
    if path.suffix == ".h5":
        cal = read_ar3dcal(path)
        name = parse_ar_name(path)
        raw = cal.exposure
        return ChipExposure(
            name=name.chip,
            reads=raw.reads,
            read_noise=np.sqrt(cal.read_var) if read_noise is None else read_noise,
            gain=cal.gain if gain is None else gain,
            saturation=saturation,
            read_times=(raw.read_times - raw.read_times[0]).sec,
            telescope=name.telescope,
            mjd=name.mjd,
            source=str(path),
            writable=True,
            timing=_timing(raw.read_times, getattr(raw, "header", None)),
        )
    try:  # the raw type: half the memory of float32, and exact
        raw = read_apz(path, dtype=np.uint16)
    except ReadRangeError:  # a read outside [0, 65535] (not from the detector's 16-bit ADC)
        raw = read_apz(path, dtype=np.float32)
    header = raw.header
    return ChipExposure(
        name=raw.name.chip_color,
        reads=raw.reads,
        read_noise=_header_number(path, header, "RDNOISE", read_noise, "--read-noise"),
        gain=_header_number(path, header, "GAIN", gain, "--gain"),
        saturation=_header_number(
            path, header, "SATURATE", saturation, "--saturation", DEFAULT_SATURATION_DN
        ),
        read_times=(raw.read_times - raw.read_times[0]).sec,
        telescope=raw.telescope,
        mjd=raw.mjd,
        source=str(path),
        writable=True,
        timing=_timing(raw.read_times, header),
    )


#: Exposure header cards a product keeps for ``pyapred guider`` (with the reads' TAI times).
TIMING_CARDS = ("DATE-OBS", "TIMESYS", "INTOFF", "INTDELAY", "NREAD", "CONFIGID")


def _timing(read_times, header) -> dict:
    """``ChipExposure.timing`` from a file's read times (astropy Time) and header."""
    timing = {"read_times_tai_mjd": np.asarray(read_times.tai.mjd, dtype=np.float64)}
    for card in TIMING_CARDS:
        if header is not None and card in header:
            value = header[card]
            timing[card] = value.item() if isinstance(value, np.generic) else value
    return timing


def identify_exposure(path) -> tuple[str, str, int, int]:
    """``(chip, telescope, mjd, exposure)`` from a raw or ar3Dcal file name."""
    from ..io import parse_apz_name, parse_ar_name

    ar = parse_ar_name(path)
    if ar is not None:
        if ar.stage != "ar3Dcal":
            raise InputError(path, "file name", "a raw .apz or an ar3Dcal_*.h5 file", ar.stage)
        return ar.chip, ar.telescope, ar.mjd, ar.exposure
    name = parse_apz_name(path)
    return name.chip_color, name.telescope, name.mjd, name.exposure


def match_inputs(inputs, trace_paths) -> dict:
    """Pair input files with trace files by chip, checking that they are one exposure.

    Parameters
    ----------
    inputs : sequence of paths
        Raw ``.apz`` or ``ar3Dcal`` files, one per chip, of one exposure.
    trace_paths : sequence of paths
        One trace file per chip, named ``*Trace*_{tele}_{mjd}[_{EXP4}]_{chip}.h5``; with a
        single input, a single trace file whose name does not give a chip is accepted too.

    Returns
    -------
    dict of str to (input path, trace path)
        By chip name, in R, G, B order.

    Raises
    ------
    InputError
        Exposures of different telescopes, nights or numbers, a chip given twice, or a chip
        without a trace file.
    """
    from ..traces import parse_trace_file_name

    chips: dict = {}
    first = None
    for path in inputs:
        chip, telescope, mjd, exposure = identify_exposure(path)
        key = (telescope, mjd, exposure)
        if first is None:
            first = (key, path)
        elif key != first[0]:
            raise InputError(
                path,
                "file name",
                f"the exposure of {first[1]} (telescope, MJD, number {first[0]}); "
                "one exposure per call",
                str(key),
            )
        if chip in chips:
            raise InputError(path, "chip", f"one file per chip; {chip} is also {chips[chip]}")
        chips[chip] = path
    traces: dict = {}
    for path in trace_paths:
        parsed = parse_trace_file_name(path)
        if parsed is not None:
            traces[parsed[2]] = path
        elif len(trace_paths) == 1 and len(chips) == 1:
            traces[next(iter(chips))] = path  # one of each: the name need not say the chip
        else:
            raise InputError(path, "file name", "traceMain_{tele}_{mjd}_{R|G|B}.h5")
    out = {}
    for chip in sorted(chips, key="RGB".index):
        if chip not in traces:
            raise InputError(chips[chip], "traces", f"a trace file for chip {chip}", "none given")
        out[chip] = (chips[chip], traces[chip])
    return out
