"""Guider file readers: SDSS-V ``proc-gimg`` camera files, plate-era frames, ``gcam`` summaries.

:func:`read_guider_frames` reads a directory, a glob, a path or a list of them into
:class:`GuiderFrames`: one :class:`GuiderFrame` per file (per row of a nightly
``gcam-{mjd}.fits`` summary), with the time, seeing and star photometry that the flux-in-fiber
model (:mod:`pyapred.guider.fiber_flux`) needs, and the files that could not be read.

Times: guider ``DATE-OBS`` is TAI (``TIMESYS='TAI'``; plate-era strings end in a misleading
``Z``); each file's ``TIMESYS`` is honoured and every time is returned on the TAI scale.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from ..errors import InputError

__all__ = [
    "SENTINEL",
    "TIME_SCALES",
    "GuiderFrame",
    "GuiderFrames",
    "as_guider_frames",
    "fits_input_errors",
    "header_number",
    "read_gcam_summary",
    "read_guider_frame",
    "read_guider_frames",
]

TIME_SCALES = ("TAI", "UTC", "TT")  # TIMESYS values understood in guider files
SENTINEL = -900.0  # SDSS writes -999 (and -99999.9) for "no value"
#: The largest zero point (mag) taken as one: a star's value of 1e10 overflowed the
#: transparency (10**(0.4 dzp)) with a numpy warning, the frame kept.
MAX_ZP = 100.0
_SDSSV_NAME = re.compile(r"(?:proc-)?gimg-(gfa\d)([ns])-(\d+)\.fits", re.IGNORECASE)


def header_number(value) -> float:
    """A header value as float; NaN for missing, non-numeric or sentinel (<= -900) values.

    A logical (FITS ``T``/``F``, a Python or NumPy bool) is not a number: ``float(True)`` is 1.

    Parameters
    ----------
    value : object
        A header card's value (number, numeric string, None, ...).

    Returns
    -------
    float
    """
    if isinstance(value, (bool, np.bool_)):
        return math.nan
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) and x > SENTINEL else math.nan


def _card_number(path, header: Mapping, *keys: str) -> float:
    """The first of ``keys`` the header has, as :func:`header_number` reads it; NaN if none.

    Raises
    ------
    InputError
        The card holds a FITS logical (``T``): a number card written as a flag is a corrupt
        header, and ``float(True)`` read ``FWHMFIT = T`` as a seeing of 1 arcsec. The frame is
        dropped with this reason, as for an implausible ``EXPTIME``.
    """
    key = next((key for key in keys if key in header), keys[0])
    value = header.get(key)
    if isinstance(value, (bool, np.bool_)):
        raise InputError(path, key, "a number, not a FITS logical", repr(value))
    return header_number(value)


def _timesys(path, header: Mapping, default: str) -> str:
    """The ``TIMESYS`` card, checked; ``default`` when the card is absent."""
    value = header.get("TIMESYS")
    if value is None:
        return default
    scale = str(value).strip().upper()
    if scale not in TIME_SCALES:
        raise InputError(path, "TIMESYS", f"one of {', '.join(TIME_SCALES)}", repr(value))
    return scale


def _parse_date(path, header: Mapping, scale: str, key: str = "DATE-OBS") -> Time:
    """``header[key]`` as a scalar TAI ``Time``; a trailing ``Z`` is ignored (plate-era TAI)."""
    value = header.get(key)
    if value is None:
        raise InputError(path, key, "an ISO date-time card")
    text = str(value).strip().rstrip("Zz").strip()
    try:
        return Time(text, scale=scale.lower()).tai
    except ValueError:
        expected = "an ISO date-time such as '2024-12-04 01:35:06.42'"
        raise InputError(path, key, expected, repr(value)) from None


#: Seeing FWHM (arcsec) a guider frame may report: outside it a card is corrupt (1e300 gave
#: all-NaN comparisons without a flag), and the frame has no valid FWHM.
FWHM_RANGE_ARCSEC = (0.1, 30.0)
#: The longest guider integration taken (s); EXPTIME beyond it is corrupt.
MAX_EXPTIME_S = 3600.0
#: The shortest (s): plate-era frames go down to 0.5 s; 1e-300 made every result NaN.
MIN_EXPTIME_S = 1e-3


def _valid_fwhm(value):
    """``value`` (a number or an array) where it is a plausible FWHM, NaN elsewhere."""
    low, high = FWHM_RANGE_ARCSEC
    value = np.asarray(value, dtype=np.float64)
    out = np.where((value >= low) & (value <= high), value, np.nan)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True, eq=False)
class GuiderFrame:
    """What one guider file says about the sky at one moment.

    Attributes
    ----------
    path : str
    kind : str
        ``"proc-gimg"`` (SDSS-V camera file), ``"plate-gproc"`` (processed plate-era frame),
        ``"plate-raw"`` (raw plate-era frame) or ``"gcam"`` (a row of the nightly summary).
    start : astropy.time.Time
        Start of the integration, TAI scale.
    exptime : float
        Integration time, s (``EXPTIMEN`` when present, else ``EXPTIME``).
    mid : astropy.time.Time
        Mid-integration, TAI (``TAI_MID`` when present).
    fwhm : float
        Seeing FWHM in arcsec (NaN if unknown): SDSS-V ``FWHMFIT`` when valid, else ``FWHM``;
        plate era ``SEEING``, else the median guide-probe fwhm; gcam the median camera fwhm.
    fwhm_fit : float
        SDSS-V ``FWHMFIT``: best-focus FWHM fitted across the six cameras, arcsec.
    camera_fwhm : float
        SDSS-V per-camera ``FWHM`` (25th percentile of the camera's sources), arcsec.
    rms : float
        Guide RMS, arcsec (``RMS`` / ``GDRMS``).
    config_id : int or None
        SDSS-V ``CONFIGID``.
    camera : str or None
        ``gfa1n`` ... ``gfa6s``.
    frame_number : int or None
        Guider frame counter (shared by the six SDSS-V cameras of one exposure).
    site : str or None
        ``"apo"`` or ``"lco"`` when the file says so.
    image_type : str or None
        ``IMAGETYP`` (lower case).
    star_ids : ndarray of str, ``(n_stars,)``
        Identity of each photometric measurement: Gaia ``source_id`` (SDSS-V ``GAIAMATCH``),
        ``R_ZPT:<camera>`` when only the camera zero point exists, or ``probe:<fiberid>``.
    star_zp : ndarray, float64, ``(n_stars,)``
        A zero-point-like magnitude, larger = more light: ``zp`` (SDSS-V), or
        ``ref_mag - mag`` (plate era). Values SDSS writes for "no value" (-999), non-finite
        ones and ones of ``MAX_ZP`` (100 mag) or more are left out.
    probe_id, probe_fwhm : ndarray, ``(n_probes,)``
        Plate era: enabled guide probes' ``fiberid`` and ``fwhm`` (arcsec; NaN where unmeasured).
    problems : tuple of str
        Why this frame cannot be used (empty if usable).
    """

    path: str
    kind: str
    start: Time
    exptime: float
    mid: Time
    fwhm: float = math.nan
    fwhm_fit: float = math.nan
    camera_fwhm: float = math.nan
    rms: float = math.nan
    config_id: int | None = None
    camera: str | None = None
    frame_number: int | None = None
    site: str | None = None
    image_type: str | None = None
    star_ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    star_zp: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.float64))
    probe_id: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    probe_fwhm: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.float64))
    problems: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return not self.problems

    def overlaps(self, window: tuple[Time, Time]) -> bool:
        """Whether the integration overlaps ``window`` (TAI ``Time`` pair, inclusive)."""
        return (self.start + self.exptime * u.s) >= window[0] and self.start <= window[1]


@dataclass(frozen=True)
class GuiderFrames:
    """Frames read from a set of files, and the files that could not be read.

    Attributes
    ----------
    frames : list of GuiderFrame
        Sorted by start time.
    rejected : list of (str, str)
        ``(path, reason)`` for each unreadable file.
    """

    frames: list
    rejected: list

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)


def as_guider_frames(frames, window: tuple[Time, Time] | None = None) -> GuiderFrames:
    """GuiderFrames from themselves, a list of GuiderFrame, or files to read.

    Parameters
    ----------
    frames : GuiderFrames, sequence of GuiderFrame, or what :func:`read_guider_frames` accepts
    window : (Time, Time), optional
        Passed to :func:`read_guider_frames` when files are read (frames given are kept as they
        are).

    Returns
    -------
    GuiderFrames
    """
    if isinstance(frames, GuiderFrames):
        return frames
    if isinstance(frames, (list, tuple)) and not frames:
        raise ValueError("frames: expected guider frames, files, a folder or a glob, got none")
    if isinstance(frames, (list, tuple)) and all(isinstance(f, GuiderFrame) for f in frames):
        return GuiderFrames(list(frames), [])
    if not isinstance(frames, (str, os.PathLike)) and not hasattr(frames, "__iter__"):
        raise TypeError(
            "frames: expected GuiderFrames, a list of GuiderFrame, or files, a folder or a "
            f"glob, got {type(frames).__name__}"
        )
    return read_guider_frames(frames, window=window)


def _frame_times(path, header: Mapping, default_timesys: str) -> tuple[Time, float, Time]:
    scale = _timesys(path, header, default_timesys)
    start = _parse_date(path, header, scale)
    exptime = _card_number(path, header, "EXPTIMEN", "EXPTIME")
    if not MIN_EXPTIME_S <= exptime <= MAX_EXPTIME_S:
        raise InputError(
            path,
            "EXPTIME",
            f"an integration time in s, {MIN_EXPTIME_S:g} to {MAX_EXPTIME_S:g}",
            repr(exptime),
        )
    mid = start + exptime / 2 * u.s
    tai_mid = _card_number(path, header, "TAI_MID")
    if math.isfinite(tai_mid):
        # TAI_MID is TAI seconds of MJD (coordio getMetadata): trust it for the mid-point,
        # within the integration (one integration time of slack each side). A TAI_MID of 0,
        # 1e20 or 400 s early made the frames' times go back, blamed on the product's omega.
        given = Time(tai_mid / 86400.0, format="mjd", scale="tai")
        off = abs((given - mid).to_value(u.s))
        if not off <= exptime:
            expected = ("the integration's mid-point (TAI s of MJD), within EXPTIME of "
                        "DATE-OBS + EXPTIME / 2")  # fmt: skip
            raise InputError(path, "TAI_MID", expected, f"{tai_mid!r}, {off:.3g} s away")
        mid = given
    return start, exptime, mid


def read_guider_frame(path, *, window: tuple[Time, Time] | None = None) -> GuiderFrame | None:
    """Read one SDSS-V ``proc-gimg`` camera file or one plate-era (raw or processed) frame.

    Parameters
    ----------
    path : str or os.PathLike
    window : (Time, Time), optional
        Only frames integrating within this span are read; for others only the header is
        parsed and None is returned (fast scans of a night's directory).

    Returns
    -------
    GuiderFrame or None
        Frames that are readable but cannot be used (a dark, a raw frame, no stars, no valid
        FWHM) come back with ``problems`` set.

    Raises
    ------
    pyapred.errors.InputError
        Unreadable file, missing or malformed time cards, unknown ``TIMESYS``.
    """
    path = os.fspath(path)
    with fits_input_errors(path), fits.open(path, memmap=False) as hdul:
        if window is not None and not _in_window(path, hdul, window):
            return None
        names = [hdu.name.upper() for hdu in hdul]
        if "RAW" in names or _SDSSV_NAME.search(os.path.basename(path)):
            return _read_proc_gimg(path, hdul, names)
        return _read_plate_gimg(path, hdul)


def _in_window(path: str, hdul, window: tuple[Time, Time]) -> bool:
    """Whether the frame overlaps ``window``, from the first two headers only."""
    try:
        header = hdul[1].header if hdul[1].name.upper() == "RAW" else hdul[0].header
    except IndexError:
        header = hdul[0].header
    start, exptime, _ = _frame_times(path, header, "TAI")
    return (start + exptime * u.s) >= window[0] and start <= window[1]


@contextlib.contextmanager
def fits_input_errors(path: str) -> Iterator[None]:
    """Turn astropy's errors on a damaged file, within the block, into an InputError naming it.

    Parameters
    ----------
    path : str
        The file named in the error (field ``"file"``, expected "a readable FITS file").
    """
    from astropy.io.fits.verify import VerifyWarning
    from astropy.utils.exceptions import AstropyUserWarning

    try:
        with warnings.catch_warnings():
            # astropy only warns about a header cut short (a truncated file), which then read
            # as a missing DATE-OBS card, and about data cut short ("File may have been
            # truncated"), whose frame was used as it was: the file is named for what it is.
            for category in (VerifyWarning, AstropyUserWarning):
                warnings.filterwarnings(
                    "error", message=r"(?s).*(corrupted|truncated)", category=category
                )
            yield
    except InputError:
        raise
    except (VerifyWarning, AstropyUserWarning) as exc:
        found = " ".join(str(exc).split())[:200]
        raise InputError(path, "file", "a complete FITS file", found) from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, MemoryError) as exc:
        found = f"{type(exc).__name__}: {exc}"[:200]
        raise InputError(path, "file", "a readable FITS file", found) from None


def _table_data(path: str, hdu, name: str, what: str):
    """A binary table HDU's rows (an image there was an AttributeError). A size declared beyond
    the file is refused as the file is opened (:func:`fits_input_errors`: astropy's warning
    that the file may have been truncated), before 2e9 declared rows are allocated."""
    if not isinstance(hdu, fits.BinTableHDU):
        raise InputError(path, name, f"a binary table ({what})", type(hdu).__name__)
    return hdu.data


def _read_proc_gimg(path: str, hdul, names: list[str]) -> GuiderFrame:
    """SDSS-V camera file: keywords in the ``RAW`` HDU header, stars in ``GAIAMATCH``."""
    if "RAW" not in names:
        raise InputError(path, "RAW", "an HDU named RAW holding the guider header")
    header = hdul["RAW"].header
    start, exptime, mid = _frame_times(path, header, "TAI")
    match = _SDSSV_NAME.search(os.path.basename(path))
    camera = str(header.get("CAMNAME", "")).strip().lower() or (match and match[1] + match[2])
    site = None
    if camera and camera[-1] in "ns":
        site = {"n": "apo", "s": "lco"}[camera[-1]]
    frame_number = int(match[3]) if match else None
    config_id = _card_number(path, header, "CONFIGID")
    config_id = int(config_id) if math.isfinite(config_id) else None
    fwhm_fit = _valid_fwhm(_card_number(path, header, "FWHMFIT"))
    camera_fwhm = _valid_fwhm(_card_number(path, header, "FWHM"))
    star_ids, star_zp = np.array([], dtype=str), np.array([], dtype=np.float64)
    if "GAIAMATCH" in names:
        table = _table_data(path, hdul["GAIAMATCH"], "GAIAMATCH", "the Gaia match table")
        columns = [] if table is None else [c.lower() for c in table.columns.names]
        if table is not None and len(table):
            for column in ("source_id", "zp"):
                if column not in columns:
                    raise InputError(
                        path, f"GAIAMATCH.{column}", "a column of the Gaia match table"
                    )
            zp = np.asarray(table["zp"], dtype=np.float64)
            good = np.isfinite(zp) & (zp > SENTINEL) & (zp < MAX_ZP)
            star_ids = np.asarray(table["source_id"])[good].astype(str)
            star_zp = zp[good]
    if star_zp.size == 0:
        r_zpt = _card_number(path, header, "R_ZPT")
        if math.isfinite(r_zpt) and SENTINEL < r_zpt < MAX_ZP:
            star_ids, star_zp = np.array([f"R_ZPT:{camera}"]), np.array([r_zpt])
    problems = []
    image_type = str(header.get("IMAGETYP", "object")).strip().lower()
    if image_type != "object":
        problems.append(f"IMAGETYP is {image_type!r}, not 'object'")
    if not (math.isfinite(fwhm_fit) or math.isfinite(camera_fwhm)):
        problems.append("no valid FWHM or FWHMFIT (NaN, missing, -999 or outside 0.1-30 arcsec)")
    if star_zp.size == 0:
        problems.append("no stars: GAIAMATCH empty or absent and R_ZPT missing or -999")
    return GuiderFrame(
        path=path,
        kind="proc-gimg",
        start=start,
        exptime=exptime,
        mid=mid,
        fwhm=fwhm_fit if math.isfinite(fwhm_fit) else camera_fwhm,
        fwhm_fit=fwhm_fit,
        camera_fwhm=camera_fwhm,
        rms=_card_number(path, header, "RMS"),
        config_id=config_id,
        camera=camera or None,
        frame_number=frame_number,
        site=site,
        image_type=image_type,
        star_ids=star_ids,
        star_zp=star_zp,
        problems=tuple(problems),
    )


def _read_plate_gimg(path: str, hdul) -> GuiderFrame:
    """Plate-era frame: primary header; processed files ('GPROC') carry the probe table in HDU 6."""
    header = hdul[0].header
    start, exptime, mid = _frame_times(path, header, "TAI")
    image_type = str(header.get("IMAGETYP", "")).strip().lower() or None
    processed = str(header.get("SDSSFMT", "")).upper().startswith("GPROC")
    frame = dict(path=path, start=start, exptime=exptime, mid=mid, image_type=image_type)
    match = re.search(r"gimg-(\d+)", os.path.basename(path))
    frame["frame_number"] = int(match[1]) if match else None
    if not processed:
        return GuiderFrame(
            kind="plate-raw",
            problems=("raw frame: no SEEING card and no guide-probe table",),
            **frame,
        )
    if len(hdul) < 7 or not isinstance(hdul[6], fits.BinTableHDU):
        raise InputError(path, "HDU 6", "the guide-probe binary table of a 'GPROC' file")
    table = hdul[6].data
    columns = [c.lower() for c in table.columns.names]
    for column in ("fwhm", "mag", "ref_mag", "fiberid"):
        if column not in columns:
            raise InputError(path, f"HDU 6.{column}", "a column of the guide-probe table")
    use = np.ones(len(table), dtype=bool)
    for flag in ("exists", "enabled"):
        if flag in columns:
            use &= np.asarray(table[flag], dtype=bool)
    if "fiber_type" in columns:
        use &= np.char.strip(np.asarray(table["fiber_type"]).astype(str)) == "GUIDE"
    ids = np.asarray(table["fiberid"])
    if ids.dtype.kind == "f":  # a NaN or 1e30 fiberid named every such probe "probe:nan": one star
        with np.errstate(invalid="ignore"):
            use &= np.isfinite(ids) & (ids == np.round(ids)) & (np.abs(ids) < 2**31)
        ids = np.where(use, ids, 0)
    probe_id = ids[use].astype(np.int64)
    probe_fwhm = np.asarray(table["fwhm"], dtype=np.float64)[use]
    ref_mag = np.asarray(table["ref_mag"], np.float64)
    mag = np.asarray(table["mag"], np.float64)
    light = ref_mag - mag
    # SDSS's -999 for "no value" made a probe's light 1015 mag (an overflow downstream).
    with np.errstate(invalid="ignore"):
        good = use & np.isfinite(light) & (mag > SENTINEL) & (ref_mag > SENTINEL)
        good &= np.abs(light) < MAX_ZP
    seeing = _valid_fwhm(_card_number(path, header, "SEEING"))
    if not seeing > 0:
        valid = probe_fwhm[np.isfinite(_valid_fwhm(probe_fwhm))]
        seeing = float(np.median(valid)) if valid.size else math.nan
    problems = []
    if image_type != "object":
        problems.append(f"IMAGETYP is {image_type!r}, not 'object'")
    if not seeing > 0:
        problems.append("no valid SEEING and no measured probe fwhm")
    if not good.any():
        problems.append("no stars: no enabled guide probe with valid mag and ref_mag")
    return GuiderFrame(
        kind="plate-gproc",
        fwhm=seeing,
        rms=_card_number(path, header, "GDRMS"),
        star_ids=np.array([f"probe:{int(i)}" for i in ids[good]]),
        star_zp=light[good],
        probe_id=probe_id,
        probe_fwhm=probe_fwhm,
        problems=tuple(problems),
        **frame,
    )


def read_gcam_summary(path, *, exptime: float = 15.0) -> list[GuiderFrame]:
    """Read the nightly ``gcam-{mjd}.fits`` summary table: one frame per row, seeing only.

    The table has no transparency column and no integration time, so the frames carry no star
    photometry (the model then uses seeing alone) and ``exptime`` is taken from the argument.
    The ``mjd`` column is ignored: the producing script parsed the TAI ``date-obs`` string as UTC.

    Parameters
    ----------
    path : str or os.PathLike
    exptime : float, optional
        Guider integration time, s (15 s in the documented APO example).

    Returns
    -------
    list of GuiderFrame
        ``fwhm`` is the median of the valid per-camera ``fwhm`` values.
    """
    path = os.fspath(path)
    with fits_input_errors(path), fits.open(path, memmap=False) as hdul:
        table = next((h.data for h in hdul if isinstance(h, fits.BinTableHDU)), None)
        if table is None:
            raise InputError(path, "HDU 1", "a binary table with one row per guider frame")
        columns = [c.lower() for c in table.columns.names]
        for column in ("date-obs", "fwhm"):
            if column not in columns:
                raise InputError(path, column, "a column of the gcam summary table")
        dates = np.char.strip(np.asarray(table["date-obs"]).astype(str))
        fwhm = np.atleast_2d(np.asarray(table["fwhm"], dtype=np.float64).T).T
        nstars = (
            np.atleast_2d(np.asarray(table["nstars"], dtype=np.float64).T).T
            if "nstars" in columns
            else np.ones_like(fwhm)
        )
        if nstars.shape != fwhm.shape:  # a broadcast error later, blamed on the product
            raise InputError(path, "nstars", f"one value per camera, as fwhm {fwhm.shape}",
                             f"shape {nstars.shape}")  # fmt: skip
        gdrms = np.asarray(table["gdrms"], np.float64) if "gdrms" in columns else None
    # Every row's date in one parse (one Time a row took 0.5 ms: 20 000 rows, 11 s); a date
    # that does not parse is then named by its row.
    try:
        starts = Time([str(d).strip().rstrip("Zz").strip() for d in dates], scale="tai")
        mids = starts + exptime / 2 * u.s
    except ValueError:
        starts = mids = None
    frames = []
    for row, date in enumerate(dates):
        if starts is None:
            start = _parse_date(f"{path}[row {row}]", {"DATE-OBS": date}, "TAI")
            mid = start + exptime / 2 * u.s
        else:
            start, mid = starts[row], mids[row]
        valid = np.isfinite(_valid_fwhm(fwhm[row])) & (nstars[row] > 0)
        seeing = float(np.median(fwhm[row][valid])) if valid.any() else math.nan
        problems = () if valid.any() else ("no camera with stars and a valid fwhm",)
        frames.append(
            GuiderFrame(
                path=f"{path}[row {row}]",
                kind="gcam",
                start=start,
                exptime=float(exptime),
                mid=mid,
                fwhm=seeing,
                rms=math.nan if gdrms is None else header_number(gdrms[row]),
                image_type="object",
                frame_number=row,
                problems=problems,
            )
        )
    return frames


def _expand_source(source) -> list[str]:
    """Paths from a directory, a glob pattern, a path, or a sequence of those.

    A name that exists is that file, even where it holds glob characters (``frame[1].fits``):
    so the paths a shell or an earlier expansion gave come back unchanged.
    """
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if os.path.isdir(text):
            paths = _fits_below(text)
        elif os.path.lexists(text):
            paths = [text]
        elif any(ch in text for ch in "*?["):
            paths = sorted(glob.glob(text, recursive=True))
        else:
            paths = [text]
        if not paths:
            raise InputError(
                text, "guider frames", "a FITS file, a directory or a glob matching some"
            )
        return paths
    paths = []
    for item in source:
        paths.extend(_expand_source(item))
    return paths


def _fits_below(folder: str) -> list[str]:
    """Every FITS name below ``folder`` (hidden names aside, as a glob's ``**/*``), sorted.

    Linked folders are followed, each folder once: two links to ``.`` made a glob's ``**``
    walk ever longer paths to the same frames (a hang).
    """
    fits_name = re.compile(r"\.fits(\.gz|\.fz)?$", re.IGNORECASE)
    seen, found = set(), []
    for root, folders, files in os.walk(folder, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:
            folders[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        folders[:] = [f for f in folders if not f.startswith(".")]
        # A folder named like a frame is listed too: it is dropped with its reason.
        found += [os.path.join(root, name) for name in [*files, *folders]
                  if not name.startswith(".") and fits_name.search(name)]  # fmt: skip
    return sorted(found)


def read_guider_frames(
    source, *, gcam_exptime: float = 15.0, window: tuple[Time, Time] | None = None
) -> GuiderFrames:
    """Read every guider file in a directory, glob, path or list of those.

    ``gcam-*.fits`` files are read as nightly summaries; other files as single frames. A file
    that cannot be read is rejected with its reason rather than stopping the rest.

    Parameters
    ----------
    source : str, os.PathLike or sequence of them
    gcam_exptime : float, optional
        Integration time assumed for summary-table rows, s.
    window : (Time, Time), optional
        Keep only frames overlapping this span (files outside it are not read beyond their
        header).

    Returns
    -------
    GuiderFrames

    Raises
    ------
    pyapred.errors.InputError
        No file matches, or no file could be read (the first file's error).
    """
    from ..io.paths import check_input_file

    frames, rejected, first_error = [], [], None
    for path in _expand_source(source):
        try:
            check_input_file(path, "guider frames")  # a FIFO would hang the reader
            if os.path.basename(path).lower().startswith("gcam-"):
                rows = read_gcam_summary(path, exptime=gcam_exptime)
                frames.extend(f for f in rows if window is None or f.overlaps(window))
            else:
                frame = read_guider_frame(path, window=window)
                if frame is not None:
                    frames.append(frame)
        except InputError as exc:
            first_error = first_error or exc
            rejected.append((path, str(exc)))
    if not frames and first_error is not None:
        raise first_error
    if not frames:  # files that hold no frame (a gcam summary of no rows), or none in window
        where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else (
            ", ".join(map(os.fspath, source)) or "guider frames")  # fmt: skip
        if window is None:  # (the message took window[0] of None: a TypeError)
            raise InputError(where, "guider frames", "at least one frame", "none")
        raise InputError(
            where, "DATE-OBS", f"guider frames between {window[0].isot} and {window[1].isot} TAI",
            "none in that span",
        )  # fmt: skip
    frames.sort(key=lambda f: f.start.mjd)
    return GuiderFrames(frames=frames, rejected=rejected)
