"""The exposure's inputs: one chip's reads and calibration in memory, or read from its file.

The entrance of the exposure stages (file -> exposure -> per-fiber omega -> extraction ->
product): :class:`ChipExposure` holds what the stages need of one chip; :func:`load_chip` makes
one from a raw ``.apz`` or an ApogeeReduction.jl ``ar3Dcal`` file; :func:`match_inputs` pairs the
files of one exposure with their trace files by chip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, ReadRangeError
from ..solver.api import SCALE_RANGE

__all__ = [
    "CALIBRATION_BOUNDS",
    "DEFAULT_SATURATION_DN",
    "IDENTITY_KEYS",
    "TIMING_CARDS",
    "ChipExposure",
    "check_calibration",
    "check_calibration_options",
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
    saturation_cut : ndarray of bool ``(ny, nx)``, optional
        Pixels whose ramp the input file ends at saturation (an ar3Dcal file's
        ``last_unsaturated``): their later reads are NaN here, and
        :func:`~pyapred.exposure.extract_chip` flags them ``SATURATED``, not
        ``NONFINITE_READ``, as APRampFit's ``sutr_omega`` does (:func:`load_chip` sets it).
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
    saturation_cut: np.ndarray | None = None

    def __post_init__(self):
        """Checks what the stages rely on, naming ``source`` and the field: a cube of real
        numbers (big-endian FITS data, float16 and long doubles are converted to the type the
        kernels take), read times that rise, calibration maps of the chip's shape."""
        reads = self.reads
        if not isinstance(reads, np.ndarray) or reads.ndim != 3 or reads.dtype.kind not in "iuf":
            found = (f"{reads.dtype} array of shape {reads.shape}" if isinstance(reads, np.ndarray)
                     else type(reads).__name__)  # fmt: skip
            raise InputError(self.source, "reads", "a (n_reads, ny, nx) array of real numbers",
                             found)  # fmt: skip
        native = reads.dtype.newbyteorder("=")
        if reads.dtype.kind == "f" and reads.dtype.itemsize not in (4, 8):
            native = np.dtype(np.float32 if reads.dtype.itemsize < 4 else np.float64)
        if native != reads.dtype:
            object.__setattr__(self, "reads", reads.astype(native))
        n_reads, ny, nx = reads.shape
        if self.read_times is not None:
            try:
                times = np.asarray(self.read_times, dtype=np.float64)
            except (TypeError, ValueError):
                times = np.full(n_reads, np.nan)
            low, high = SCALE_RANGE
            steps = np.diff(times) if times.ndim == 1 else np.full(1, np.nan)
            rising = np.all((steps >= low) & (steps <= high))  # NaN fails too
            if times.shape != (n_reads,) or not rising:
                found = f"shape {times.shape}: {np.array2string(times, threshold=6)}"
                expected = f"{n_reads} finite, rising times (s), {low:g} to {high:g} s apart"
                raise InputError(self.source, "read_times", expected, found)
        for name in ("read_noise", "gain", "saturation"):
            value = getattr(self, name)
            if value is None:
                continue
            try:  # a map's shape without a float64 copy of it
                shape = np.shape(value if isinstance(value, np.ndarray) and value.dtype.kind in
                                 "iuf" else np.asarray(value, dtype=np.float64))  # fmt: skip
            except (TypeError, ValueError):
                raise InputError(self.source, name, "a number or an (ny, nx) map",
                                 repr(value)) from None  # fmt: skip
            if shape not in ((), (1,), (ny, nx)):
                raise InputError(self.source, name, f"a number or a ({ny}, {nx}) map",
                                 f"shape {shape}")  # fmt: skip
        cut = self.saturation_cut
        if cut is not None and not (isinstance(cut, np.ndarray) and cut.dtype == bool
                                    and cut.shape == (ny, nx)):  # fmt: skip
            found = (f"{cut.dtype} array of shape {cut.shape}" if isinstance(cut, np.ndarray)
                     else type(cut).__name__)  # fmt: skip
            raise InputError(self.source, "saturation_cut", f"None or a ({ny}, {nx}) bool map",
                             found)  # fmt: skip

    def __repr__(self) -> str:
        """Name, shape, type and calibration (a line, never whole arrays)."""

        def value(x) -> str:
            if x is None:
                return "-"
            x = np.asarray(x)
            return f"{float(x):.4g}" if x.ndim == 0 else f"map {x.shape}"

        return (
            f"ChipExposure {self.name}: reads {tuple(self.reads.shape)} {self.reads.dtype}, "
            f"read noise {value(self.read_noise)} DN, gain {value(self.gain)} e-/DN, "
            f"saturation {value(self.saturation)} DN; {self.telescope or '-'} MJD "
            f"{self.mjd or '-'}; from {self.source}"
        )


#: Default saturation level, DN (apogee_drp's ``satval``), when a file has no SATURATE card.
DEFAULT_SATURATION_DN = 55000.0


#: Plausible ranges of the calibration (``(low, high)``, inclusive): gain in e-/DN, single-read
#: noise and saturation in DN. APOGEE's detectors have gains of 1.9-3 e-/DN, read noise of a few
#: DN and saturate near 55000 DN; values outside these ranges are typing errors or corrupt
#: headers, and would give an all-NaN or meaningless product.
CALIBRATION_BOUNDS = {
    "gain": (0.01, 100.0),
    "read_noise": (0.01, 1000.0),
    "read_variance": (1e-4, 1e6),  # DN^2: an ar3Dcal file's readVarMat
    "saturation": (1.0, 1e6),
}
_CARDS = {"gain": ("GAIN", "--gain"), "read_noise": ("RDNOISE", "--read-noise"),
          "saturation": ("SATURATE", "--saturation")}  # fmt: skip


def _expected(name: str) -> str:
    low, high = CALIBRATION_BOUNDS[name]
    return f"a finite number > 0, within [{low:g}, {high:g}] (plausible for APOGEE)"


def _header_number(path, header, name: str, given, default=None) -> float:
    """``given`` (from its option), else the header card of ``name`` or ``default``, in range.

    A logical (a FITS ``T``, which astropy reads as True; a NumPy bool) is no number: ``float``
    made ``SATURATE = T`` a saturation of 1 DN, every pixel flagged saturated.
    """
    keyword, option = _CARDS[name]
    field_name = option if given is not None else f"header keyword {keyword}"
    value = given if given is not None else header.get(keyword, default)
    if value is None:
        raise InputError(path, field_name, f"a number (or pass {option})", "nothing")
    try:
        number = float("nan") if isinstance(value, (bool, np.bool_)) else float(value)
    except (TypeError, ValueError):
        number = float("nan")
    low, high = CALIBRATION_BOUNDS[name]
    if not (np.isfinite(number) and number > 0 and low <= number <= high):
        raise InputError(path, field_name, _expected(name), repr(value))
    return number


def _check_map(path, field_name: str, name: str, values) -> None:
    """A calibration map (or value) is finite and in range; the error names the first pixel."""
    values = np.asarray(values, dtype=np.float64)
    low, high = CALIBRATION_BOUNDS[name]
    bad = ~(np.isfinite(values) & (values >= low) & (values <= high))
    if name == "saturation":
        bad &= values != np.inf  # no saturation level: nothing masked
    if bad.any():
        where = np.argwhere(bad)[0] if values.ndim else ()
        first = float(values[tuple(where)])
        at = f" (first at row, column {tuple(int(i) for i in where)})" if values.ndim else ""
        raise InputError(path, field_name, _expected(name),
                         f"{int(bad.sum())} value(s) such as {first!r}{at}")  # fmt: skip


def check_calibration_options(options) -> None:
    """Refuse an implausible ``gain``, ``read_noise`` or ``saturation`` of a
    :class:`~pyapred.exposure.FitOptions` (:data:`CALIBRATION_BOUNDS`), naming its flag: what
    :func:`load_chip` would refuse for every file, said before any work (``pyapred night``).

    Raises
    ------
    InputError
    """
    for quantity in ("gain", "read_noise", "saturation"):
        value = getattr(options, quantity)
        if value is not None:
            _header_number(_CARDS[quantity][1], {}, quantity, value)


def check_calibration(chip: ChipExposure) -> None:
    """Refuse implausible gain, read noise or saturation of a chip (:data:`CALIBRATION_BOUNDS`).

    Raises
    ------
    InputError
        Naming ``chip.source`` and the quantity.
    """
    for name in ("gain", "read_noise", "saturation"):
        value = getattr(chip, name)
        if value is not None:
            _check_map(chip.source, name, name, value)


def load_chip(
    path: str | os.PathLike,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    saturation: float | None = None,
    identity: Mapping | None = None,
    out: np.ndarray | None = None,
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
    identity : mapping, optional
        ``chip``, ``telescope`` and ``mjd`` of a renamed file (``pyapred fit --chip
        --telescope --mjd``): each replaces what the name says, and all three are needed when
        the name says nothing (:func:`identify_exposure`). A ``.h5`` file is an ar3Dcal file.
    out : ndarray of uint16, optional
        Raw files only: the array to read the reads into (:func:`~pyapred.io.read_apz`'s
        ``out``, which refuses one they do not fit: ValueError), an earlier chip's cube that is
        no longer needed. A file whose reads need float32 gets a new array; an ar3Dcal file
        refuses ``out`` (ValueError).

    Returns
    -------
    ChipExposure
    """
    from ..io import parse_ar_name, read_apz, read_ar3dcal

    path = Path(path)
    if identity:
        with _named_as(path, identify_exposure(path, identity)) as alias:
            chip = load_chip(
                alias, gain=gain, read_noise=read_noise, saturation=saturation, out=out
            )
        return dataclasses.replace(chip, source=str(path))
    if path.suffix == ".h5":
        if out is not None:
            raise ValueError(f"out: only for raw .apz files, not the ar3Dcal file {path}")
        cal = read_ar3dcal(path)
        name = parse_ar_name(path)
        raw = cal.exposure
        # Which pixels' ramps end at saturation, from the reads as the file has them (the maps'
        # check below sets the reads of pixels without a gain to NaN).
        ended = _saturation_ends(cal.exposure.reads, cal.unsaturated_diffs)
        gain_map, reads = _ar3dcal_maps(path, cal, gain, read_noise, saturation)
        cut = None
        if ended is not None:
            cut, last_read = ended
            if gain is None:  # pixels without a gain have no flux, whatever their reads
                cut &= ~(np.isnan(cal.gain) | (cal.gain == 0))
            for k in range(1, reads.shape[0]):
                reads[k][last_read < k] = np.nan
        return ChipExposure(
            name=name.chip,
            reads=reads,
            read_noise=np.sqrt(cal.read_var) if read_noise is None else read_noise,
            gain=gain_map if gain is None else gain,
            saturation=saturation,
            read_times=(raw.read_times - raw.read_times[0]).sec,
            telescope=name.telescope,
            mjd=name.mjd,
            source=str(path),
            writable=True,
            timing=_timing(raw.read_times, getattr(raw, "header", None), path),
            saturation_cut=cut if cut is not None and cut.any() else None,
        )
    try:  # the raw type: half the memory of float32, and exact
        raw = read_apz(path, dtype=np.uint16, out=out)
    except ReadRangeError:  # a read outside [0, 65535] (not from the detector's 16-bit ADC)
        raw = None
    if raw is None:  # (outside the handler, whose traceback would keep ``out``)
        out = None  # not kept while the float32 cube is made
        raw = read_apz(path, dtype=np.float32)
    header = raw.header
    return ChipExposure(
        name=raw.name.chip_color,
        reads=raw.reads,
        **_raw_calibration(path, header, gain=gain, read_noise=read_noise, saturation=saturation),
        read_times=(raw.read_times - raw.read_times[0]).sec,
        telescope=raw.telescope,
        mjd=raw.mjd,
        source=str(path),
        writable=True,
        timing=_timing(raw.read_times, header, path),
    )


def survey_chip(
    path: str | os.PathLike,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    saturation: float | None = None,
    identity: Mapping | None = None,
) -> tuple[int, int, int]:
    """What :func:`load_chip` checks in a file, with no read decoded.

    Of a raw ``.apz``: the name, the HDU layout, every header card, the images' shapes, the
    read times and the calibration (the arguments, else the header cards). Of an ``ar3Dcal``
    file: its metadata and its gain and read-variance maps. So a bad file among an exposure's
    chips is refused before any chip is fitted. Same arguments as :func:`load_chip`.

    Returns
    -------
    tuple of int
        ``(n_reads, ny, nx)`` of the chip :func:`load_chip` would load (an ``ar3Dcal`` file's:
        the reads of its ``outdat``).

    Raises
    ------
    InputError
        Naming the file and the HDU or keyword.
    """
    from ..io import read_apz, read_ar3dcal

    path = Path(path)
    if identity:
        with _named_as(path, identify_exposure(path, identity)) as alias:
            return survey_chip(alias, gain=gain, read_noise=read_noise, saturation=saturation)
    if path.suffix == ".h5":  # (a bad map was found after the other chips were fitted)
        cal = read_ar3dcal(path, reads=slice(0, 0))
        _ar3dcal_maps(path, cal, gain, read_noise, saturation)
        return (cal.n_reads_used, *cal.exposure.reads.shape[1:])
    raw = read_apz(path, rows=slice(0, 0))  # headers, shapes and times only
    _raw_calibration(path, raw.header, gain=gain, read_noise=read_noise, saturation=saturation)
    _timing_cards(path, raw.header)
    return (raw.n_reads_in_file, *raw.image_shape)


def _saturation_ends(reads: np.ndarray, unsaturated_diffs: np.ndarray | None):
    """Where an ar3Dcal file's ramps end: ``(cut, last_read)``, or None without
    ``unsaturated_diffs`` (:attr:`pyapred.io.Ar3DCal.unsaturated_diffs`).

    ``last_read`` ``(ny, nx)`` is each pixel's last usable read (0-based), as APRampFit's
    ``sutr_omega`` rebuilds the reads from the differences: the last unsaturated one, or the one
    before the first non-finite read (a sum of differences is NaN from there on).
    ``cut`` marks the pixels that saturate with only finite differences before (``sutr_omega``
    flags those ``SATURATED``).
    """
    if unsaturated_diffs is None:
        return None
    n_reads = reads.shape[0]
    first_bad = np.full(reads.shape[1:], n_reads, dtype=np.int64)
    for k in range(n_reads - 1, -1, -1):  # plane by plane: no cube-sized mask
        first_bad[~np.isfinite(reads[k])] = k
    unsaturated = np.minimum(unsaturated_diffs, n_reads - 1)
    cut = (unsaturated < n_reads - 1) & ((unsaturated == 0) | (first_bad > unsaturated))
    return cut, np.minimum(unsaturated, first_bad - 1)


def _ar3dcal_maps(path, cal, gain, read_noise, saturation) -> tuple[np.ndarray, np.ndarray]:
    """An ar3Dcal file's gain map and reads, its maps (or the options given) checked: what
    :func:`load_chip` and :func:`survey_chip` both refuse."""
    gain_map, reads = cal.gain, cal.exposure.reads
    if gain is None:
        gain_map, reads = _without_uncalibrated_pixels(path, gain_map, reads)
        _check_map(path, "gainMat", "gain", gain_map)
    if read_noise is None:
        _check_map(path, "readVarMat", "read_variance", cal.read_var)
    for quantity, value in (("gain", gain), ("read_noise", read_noise),
                            ("saturation", saturation)):  # fmt: skip
        if value is not None:  # an option given: its range, naming the flag
            _header_number(path, {}, quantity, value)
    return gain_map, reads


def _without_uncalibrated_pixels(path, gain, reads) -> tuple[np.ndarray, np.ndarray]:
    """An ar3Dcal ``gainMat`` and reads without the pixels it leaves uncalibrated.

    ApogeeReduction.jl copies the gain calibration file into ``gainMat`` as it is, NaN and 0
    pixels included (it skips them for the median it puts around the frame, ``nanzeromedian``):
    those pixels get that median as their gain and NaN reads (``NONFINITE_READ``: no flux without
    a gain), with a warning; a map with no other pixel is refused. Other values are left to
    :func:`_check_map`.
    """
    import warnings

    from ..errors import InputWarning

    uncalibrated = np.isnan(gain) | (gain == 0)
    if not uncalibrated.any():
        return gain, reads
    if uncalibrated.all():
        raise InputError(path, "gainMat", "a gain (e-/DN) for some pixels", "NaN or 0 everywhere")
    gain = np.where(uncalibrated, np.median(gain[~uncalibrated]), gain)
    if not (reads.flags.writeable and reads.dtype.kind == "f"):  # read from the file: both
        reads = np.array(reads, dtype=np.result_type(reads.dtype, np.float32))
    reads[:, uncalibrated] = np.nan
    first = tuple(int(i) for i in np.argwhere(uncalibrated)[0])
    warnings.warn(
        f"{path}: gainMat: {int(uncalibrated.sum())} pixel(s) without a gain (NaN or 0, first at "
        f"row, column {first}): their reads are not used (flagged NONFINITE_READ)",
        InputWarning,
        stacklevel=3,
    )
    return gain, reads


def _raw_calibration(path, header, **given) -> dict:
    """A raw file's ``read_noise``, ``gain`` and ``saturation``: the options ``given``, else
    the header cards (saturation defaults to :data:`DEFAULT_SATURATION_DN`), in range."""
    return {
        "read_noise": _header_number(path, header, "read_noise", given["read_noise"]),
        "gain": _header_number(path, header, "gain", given["gain"]),
        "saturation": _header_number(
            path, header, "saturation", given["saturation"], DEFAULT_SATURATION_DN
        ),
    }


#: Exposure header cards a product keeps for ``pyapred guider`` (with the reads' TAI times).
TIMING_CARDS = ("DATE-OBS", "TIMESYS", "INTOFF", "INTDELAY", "NREAD", "CONFIGID")


#: The timing cards that hold text; the others hold a number (ms, a count, an identifier).
_TEXT_CARDS = ("DATE-OBS", "TIMESYS")


def _timing(read_times, header, path) -> dict:
    """``ChipExposure.timing`` from a file's read times (astropy Time) and header."""
    timing = {"read_times_tai_mjd": np.asarray(read_times.tai.mjd, dtype=np.float64)}
    timing.update(_timing_cards(path, header))
    return timing


def _timing_cards(path, header) -> dict:
    """The :data:`TIMING_CARDS` a header has, each a text or a finite number (an integer within
    int64), as the product stores them: a card without a value, a complex one or a 30-digit
    integer is refused here, before any chip is fitted, not by the product writer after.

    Raises
    ------
    InputError
        Naming the file and the card.
    """
    cards = {}
    for card in TIMING_CARDS if header is not None else ():
        if card not in header:
            continue
        value = header[card]
        value = value.item() if isinstance(value, np.generic) else value
        if card in _TEXT_CARDS:
            usable, expected = isinstance(value, str), "a text"
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            usable = number and (
                -(2**63) <= value < 2**63 if isinstance(value, int) else bool(np.isfinite(value))
            )
            expected = "a finite number (integers within int64)"
        if not usable:
            raise InputError(path, f"header keyword {card}", expected, repr(value))
        cards[card] = value
    return cards


#: The keys of an input's identity (``pyapred fit --chip --telescope --mjd``).
IDENTITY_KEYS = ("chip", "telescope", "mjd")


def identify_exposure(
    path: str | os.PathLike, identity: Mapping | None = None
) -> tuple[str, str, int, int]:
    """``(chip, telescope, mjd, exposure)`` from a raw or ar3Dcal file name.

    Parameters
    ----------
    path : str or os.PathLike
    identity : mapping, optional
        Any of ``chip`` ("R", "G", "B"), ``telescope`` ("apo", "lco") and ``mjd`` (SDSS MJD):
        each replaces what the name says. A name that says nothing needs all three, and its
        exposure number is then 0.

    Raises
    ------
    InputError
        A name that is neither a raw nor an ar3Dcal file's (without the three overrides), or an
        override out of range.
    """
    from ..io import parse_apz_name, parse_ar_name

    identity = dict(identity or {})
    unknown = set(identity) - set(IDENTITY_KEYS)
    if unknown:
        raise ValueError(f"identity: expected keys among {IDENTITY_KEYS}, got {sorted(unknown)}")
    _check_identity(identity)
    ar = parse_ar_name(path)
    if ar is not None:
        if ar.stage != "ar3Dcal":
            raise InputError(path, "file name", "a raw .apz or an ar3Dcal_*.h5 file", ar.stage)
        named = ar.chip, ar.telescope, ar.mjd, ar.exposure
    elif set(IDENTITY_KEYS) <= set(identity):
        try:
            name = parse_apz_name(path)
            named = name.chip_color, name.telescope, name.mjd, name.exposure
        except InputError:  # nothing in the name: the identity says it all
            named = identity["chip"], identity["telescope"], identity["mjd"], 0
    else:
        name = parse_apz_name(path)
        named = name.chip_color, name.telescope, name.mjd, name.exposure
    chip, telescope, mjd, exposure = named
    return (
        identity.get("chip", chip),
        identity.get("telescope", telescope),
        int(identity.get("mjd", mjd)),
        exposure,
    )


def _check_identity(identity: dict) -> None:
    """The overrides' values, each refused naming its flag."""
    from ..io.apz import EXPNUM_MJD_ZERO

    allowed = {"chip": ("R", "G", "B"), "telescope": ("apo", "lco")}
    for key, values in allowed.items():
        if key in identity and identity[key] not in values:
            raise InputError(f"--{key}", f"--{key}", " or ".join(values), repr(identity[key]))
    if "mjd" in identity:
        mjd = identity["mjd"]
        if not isinstance(mjd, (int, np.integer)) or not EXPNUM_MJD_ZERO <= mjd <= 99999:
            raise InputError("--mjd", "--mjd", f"an SDSS MJD, {EXPNUM_MJD_ZERO}..99999", repr(mjd))


@contextlib.contextmanager
def _named_as(path: Path, named: tuple[str, str, int, int]) -> Iterator[Path]:
    """``path`` under the name its identity gives it (a link in a temporary folder), for the
    readers that take the chip, telescope and night from the name; their errors name ``path``.
    """
    import os
    import tempfile

    from ..io import parse_ar_name
    from ..io.apz import CHIP_COLOR, EXPNUM_MJD_ZERO, apz_filename

    chip, telescope, mjd, exposure = named
    if path.suffix == ".h5":
        ar = parse_ar_name(path)
        kind = ar.image_type if ar is not None else "object"
        name = f"ar3Dcal_{telescope}_{mjd}_{exposure:04d}_{chip}_{kind}.h5"
    else:
        letter = {color: letter for letter, color in CHIP_COLOR.items()}[chip]
        name = apz_filename(telescope, letter, (mjd - EXPNUM_MJD_ZERO) * 10000 + exposure)
    if name == path.name:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pyapred-input-") as folder:
        alias = Path(folder) / name
        os.symlink(path.absolute(), alias)
        try:
            yield alias
        except InputError as exc:
            if exc.path != str(alias):
                raise
            expected = exc.expected.replace("as in the file name", "as --chip or the file name say")
            raise type(exc)(path, exc.field, expected, exc.found) from None


def match_inputs(
    inputs, trace_paths, *, traces_any_night: bool = False, identity: Mapping | None = None
) -> dict:
    """Pair input files with trace files by chip, checking that they are one exposure.

    Parameters
    ----------
    inputs : sequence of paths
        Raw ``.apz`` or ``ar3Dcal`` files, one per chip, of one exposure.
    trace_paths : sequence of paths
        One trace file per chip, named ``*Trace*_{tele}_{mjd}[_{EXP4}]_{chip}.h5``, of the
        exposure's telescope and night; with a single input, a single trace file whose name
        does not give a chip is accepted too.
    traces_any_night : bool
        Accept trace files of another night of the same telescope (``--traces-any-night``:
        e.g. ApogeeReduction.jl's fallback traces).
    identity : mapping, optional
        The chip, telescope and night of a single renamed input (:func:`identify_exposure`).

    Returns
    -------
    dict of str to (input path, trace path)
        By chip name, in R, G, B order.

    Raises
    ------
    InputError
        Exposures of different telescopes, nights or numbers, a chip given twice, a chip
        without a trace file or with two, or a trace file of another telescope or (without
        ``traces_any_night``) another night.
    """
    from ..traces import parse_trace_file_name

    if identity and len(inputs) != 1:
        flags = ", ".join(f"--{k}" for k in IDENTITY_KEYS if k in identity)
        raise InputError(flags, flags, "exactly one input file", f"{len(inputs)} inputs")
    chips: dict = {}
    first = None
    for path in inputs:
        try:
            chip, telescope, mjd, exposure = identify_exposure(path, identity)
        except InputError as exc:
            if exc.field != "file name" or exc.found is not None:
                raise
            missing = ", ".join(f"--{k}" for k in IDENTITY_KEYS if k not in (identity or {}))
            raise InputError(
                path, exc.field,
                f"{exc.expected}, or ar3Dcal_{{tele}}_{{mjd}}_{{EXP4}}_{{chip}}_{{type}}.h5; for a "
                f"renamed file (one input), say what its name does not with {missing}",
            ) from None  # fmt: skip
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
            _check_trace_night(path, parsed, first, traces_any_night)
            if parsed[2] in traces:
                expected = f"one trace file per chip; chip {parsed[2]} is also {traces[parsed[2]]}"
                raise InputError(path, "traces", expected)
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


def _check_trace_night(path, parsed: tuple, first: tuple | None, any_night: bool) -> None:
    """A trace file named for another telescope, or another night, does not fit the exposure."""
    if first is None:
        return
    (telescope, mjd, _), source = first
    if parsed[0] != telescope:
        raise InputError(path, "file name", f"a trace file of telescope {telescope} like {source}",
                         parsed[0])  # fmt: skip
    if parsed[1] != mjd and not any_night:
        raise InputError(
            path, "file name",
            f"a trace file of night {mjd} like {source} (or pass --traces-any-night)",
            f"night {parsed[1]}",
        )  # fmt: skip
