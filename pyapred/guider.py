"""Guider comparison: guider frames -> expected flux in a fiber -> comparison with the fitted omega.

The guider measures transparency and seeing several times a minute. For a circular Gaussian PSF
of width ``FWHM`` centered on a fiber of diameter ``D`` the fraction of light entering the fiber is
``1 - 2**(-(D / FWHM)**2)``; times the transparency ``T`` and normalised by its maximum this is the
guider's prediction of omega (Li, McKinnon, Saydjari et al., section IV). This module

1. reads SDSS-V ``proc-gimg-gfa{1-6}{n|s}-NNNN.fits`` camera files, the nightly
   ``gcam-{mjd}.fits`` summary and plate-era ``gimg``/processed ``gimg`` frames
   (:func:`read_guider_frames`);
2. turns them into a flux-in-fiber time series (:func:`guider_series`);
3. averages that series over each read-difference window of an APOGEE exposure
   (:func:`predict_omega`), in TAI;
4. fits it to the fitted omega, optionally with a time lag, and reports the agreement
   (:func:`compare` -> :class:`GuiderComparison`).

Times: guider ``DATE-OBS`` is TAI (``TIMESYS='TAI'``; plate-era strings end in a misleading ``Z``).
APOGEE ``DATE-OBS`` is UTC by its header; each file's ``TIMESYS`` is honoured and everything is
compared in TAI (``../shared/docs/formats.md`` section 4). A positive ``lag`` means the exposure's
read times must be moved later to line up with the guider.

astropy and scipy are imported here; ``import pyapred`` does not import this module.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from .errors import InputError
from .io.atomic import usual_permissions

__all__ = [
    "FIBER_DIAMETER_ARCSEC",
    "GuiderComparison",
    "GuiderFrame",
    "GuiderFrames",
    "GuiderPrediction",
    "GuiderSeries",
    "compare",
    "exposure_read_times",
    "fiber_coupling",
    "flux_in_fiber",
    "guider_series",
    "predict_omega",
    "read_gcam_summary",
    "read_guider_frame",
    "read_guider_frames",
    "read_times_from_header",
    "simulate_guider_frames",
    "write_proc_gimg",
]

#: Fiber diameter on the sky, arcsec, per telescope. APO: 3.0, the value the paper uses (section
#: IV). LCO: 1.3, the 120 micron APOGEE fiber core at the du Pont plate scale (f/7.5, 2.5 m:
#: 11.0 arcsec/mm; Wilson et al. 2019, PASP 131, 055001). The same core at the Sloan plate scale
#: (217.7358 mm/deg, guider header ``PLATSCAL``) is 1.98 arcsec; pass ``diameter=2.0`` for it.
FIBER_DIAMETER_ARCSEC = {"apo": 3.0, "lco": 1.3}
TIME_SCALES = ("TAI", "UTC", "TT")  # TIMESYS values understood
SENTINEL = -900.0  # SDSS writes -999 (and -99999.9) for "no value"
SELECT_PAD = 90.0  # s of guider frames kept beyond the exposure (and the lag range)
PAPER_THRESHOLD = 0.035  # amplitude above which the paper prefers the time-variable model
_SDSSV_NAME = re.compile(r"(?:proc-)?gimg-(gfa\d)([ns])-(\d+)\.fits", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _number(value) -> float:
    """A header value as float; NaN for missing, non-numeric or sentinel values."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) and x > SENTINEL else math.nan


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


def _seconds(times: Time, t0: Time) -> np.ndarray:
    """TAI seconds since ``t0`` (exact Time arithmetic, then float64)."""
    return np.atleast_1d((times.tai - t0.tai).sec).astype(np.float64)


def _tai_minus_utc(t: Time) -> float:
    """TAI - UTC (leap seconds) at ``t``, s."""
    return float(round((t.tai.mjd - t.utc.mjd) * 86400.0))


@contextlib.contextmanager
def _atomic_write(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    usual_permissions(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------
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
        ``ref_mag - mag`` (plate era).
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


def _frame_times(path, header: Mapping, default_timesys: str) -> tuple[Time, float, Time]:
    scale = _timesys(path, header, default_timesys)
    start = _parse_date(path, header, scale)
    exptime = _number(header.get("EXPTIMEN", header.get("EXPTIME")))
    if not exptime > 0:
        raise InputError(path, "EXPTIME", "a positive integration time in s", repr(exptime))
    mid = start + exptime / 2 * u.s
    tai_mid = _number(header.get("TAI_MID"))
    if math.isfinite(tai_mid):
        # TAI_MID is TAI seconds of MJD (coordio getMetadata): trust it for the mid-point.
        mid = Time(tai_mid / 86400.0, format="mjd", scale="tai")
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
    with _fits_errors(path), fits.open(path, memmap=False) as hdul:
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
def _fits_errors(path: str):
    """Turn astropy's errors on a damaged file into an InputError naming it."""
    try:
        yield
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        found = f"{type(exc).__name__}: {exc}"[:200]
        raise InputError(path, "file", "a readable FITS file", found) from None


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
    config_id = _number(header.get("CONFIGID"))
    config_id = int(config_id) if math.isfinite(config_id) else None
    fwhm_fit, camera_fwhm = _number(header.get("FWHMFIT")), _number(header.get("FWHM"))
    fwhm_fit = fwhm_fit if fwhm_fit > 0 else math.nan
    camera_fwhm = camera_fwhm if camera_fwhm > 0 else math.nan
    star_ids, star_zp = np.array([], dtype=str), np.array([], dtype=np.float64)
    if "GAIAMATCH" in names:
        table = hdul["GAIAMATCH"].data
        columns = [] if table is None else [c.lower() for c in table.columns.names]
        if table is not None and len(table):
            for column in ("source_id", "zp"):
                if column not in columns:
                    raise InputError(
                        path, f"GAIAMATCH.{column}", "a column of the Gaia match table"
                    )
            zp = np.asarray(table["zp"], dtype=np.float64)
            good = np.isfinite(zp) & (zp > SENTINEL)
            star_ids = np.asarray(table["source_id"])[good].astype(str)
            star_zp = zp[good]
    if star_zp.size == 0:
        r_zpt = _number(header.get("R_ZPT"))
        if math.isfinite(r_zpt):
            star_ids, star_zp = np.array([f"R_ZPT:{camera}"]), np.array([r_zpt])
    problems = []
    image_type = str(header.get("IMAGETYP", "object")).strip().lower()
    if image_type != "object":
        problems.append(f"IMAGETYP is {image_type!r}, not 'object'")
    if not (math.isfinite(fwhm_fit) or math.isfinite(camera_fwhm)):
        problems.append("no valid FWHM or FWHMFIT (NaN, missing or -999)")
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
        rms=_number(header.get("RMS")),
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
    probe_id = np.asarray(table["fiberid"])[use].astype(np.int64)
    probe_fwhm = np.asarray(table["fwhm"], dtype=np.float64)[use]
    light = np.asarray(table["ref_mag"], np.float64) - np.asarray(table["mag"], np.float64)
    good = use & np.isfinite(light)
    seeing = _number(header.get("SEEING"))
    if not seeing > 0:
        valid = probe_fwhm[np.isfinite(probe_fwhm) & (probe_fwhm > 0)]
        seeing = float(np.median(valid)) if valid.size else math.nan
    problems = []
    if image_type != "object":
        problems.append(f"IMAGETYP is {image_type!r}, not 'object'")
    if not seeing > 0:
        problems.append("no valid SEEING and no measured probe fwhm")
    if not good.any():
        problems.append("no stars: no enabled guide probe with finite mag and ref_mag")
    return GuiderFrame(
        kind="plate-gproc",
        fwhm=seeing,
        rms=_number(header.get("GDRMS")),
        star_ids=np.array([f"probe:{i}" for i in np.asarray(table["fiberid"])[good]]),
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
    with _fits_errors(path), fits.open(path, memmap=False) as hdul:
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
        gdrms = np.asarray(table["gdrms"], np.float64) if "gdrms" in columns else None
    frames = []
    for row, date in enumerate(dates):
        start = _parse_date(f"{path}[row {row}]", {"DATE-OBS": date}, "TAI")
        valid = np.isfinite(fwhm[row]) & (fwhm[row] > 0) & (nstars[row] > 0)
        seeing = float(np.median(fwhm[row][valid])) if valid.any() else math.nan
        problems = () if valid.any() else ("no camera with stars and a valid fwhm",)
        frames.append(
            GuiderFrame(
                path=f"{path}[row {row}]",
                kind="gcam",
                start=start,
                exptime=float(exptime),
                mid=start + exptime / 2 * u.s,
                fwhm=seeing,
                rms=math.nan if gdrms is None else _number(gdrms[row]),
                image_type="object",
                frame_number=row,
                problems=problems,
            )
        )
    return frames


def _expand_source(source) -> list[str]:
    """Paths from a directory, a glob pattern, a path, or a sequence of those."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if os.path.isdir(text):
            paths = sorted(
                p
                for p in glob.glob(os.path.join(text, "**", "*"), recursive=True)
                if re.search(r"\.fits(\.gz|\.fz)?$", p, re.IGNORECASE)
            )
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
    frames, rejected, first_error = [], [], None
    for path in _expand_source(source):
        try:
            if os.path.basename(path).lower().startswith("gcam-"):
                rows = read_gcam_summary(path, exptime=gcam_exptime)
                frames.extend(f for f in rows if window is None or _overlaps(f, window))
            else:
                frame = read_guider_frame(path, window=window)
                if frame is not None:
                    frames.append(frame)
        except InputError as exc:
            first_error = first_error or exc
            rejected.append((path, str(exc)))
    if not frames and first_error is not None:
        raise first_error
    if not frames:
        raise InputError(
            os.fspath(source)
            if isinstance(source, (str, os.PathLike))
            else ", ".join(map(os.fspath, source)) or "guider frames",
            "DATE-OBS", f"guider frames between {window[0].isot} and {window[1].isot} TAI",
            "none in that span",
        )  # fmt: skip
    frames.sort(key=lambda f: f.start.mjd)
    return GuiderFrames(frames=frames, rejected=rejected)


# --------------------------------------------------------------------------------------------
# The flux-in-fiber model
# --------------------------------------------------------------------------------------------
def fiber_coupling(fwhm, diameter: float) -> np.ndarray:
    """Fraction of a centered circular Gaussian PSF inside a circular fiber.

    ``1 - 2**(-(D / FWHM)**2)``, i.e. ``1 - exp(-R**2 / (2 sigma**2))`` with ``R = D/2`` and
    ``FWHM = 2 sqrt(2 ln 2) sigma``.

    Parameters
    ----------
    fwhm : array_like
        PSF FWHM, arcsec (> 0).
    diameter : float
        Fiber diameter, arcsec.

    Returns
    -------
    ndarray, the shape of ``fwhm``
    """
    fwhm = np.asarray(fwhm, dtype=np.float64)
    return -np.expm1(-np.log(2.0) * (diameter / fwhm) ** 2)


def flux_in_fiber(transparency, fwhm, diameter: float) -> np.ndarray:
    """Relative flux entering a fiber: ``T * coupling(FWHM)``, normalised by its maximum.

    Parameters
    ----------
    transparency, fwhm : array_like, ``(n_frames,)``
        Relative transparency and seeing FWHM (arcsec) per guider frame.
    diameter : float
        Fiber diameter, arcsec.

    Returns
    -------
    ndarray, ``(n_frames,)``, maximum 1
    """
    flux = np.asarray(transparency, dtype=np.float64) * fiber_coupling(fwhm, diameter)
    return flux / np.max(flux)


@dataclass(frozen=True)
class GuiderSeries:
    """The guider's flux-in-fiber time series, one entry per guider exposure (epoch).

    SDSS-V camera files of the same guider frame (same frame number) form one epoch.

    Attributes
    ----------
    start, mid : astropy.time.Time, ``(n,)``
        Integration start and middle, TAI.
    exptime : ndarray, ``(n,)``
        Integration time, s.
    fwhm : ndarray, ``(n,)``
        Seeing FWHM, arcsec.
    transparency, transparency_err : ndarray, ``(n,)``
        Median over stars of ``10**(0.4 (zp - zp_ref))``, the star's reference being its median
        over the series; error from the stars' scatter (0 with a single star). All 1 and 0 when
        the frames carry no photometry (gcam summary: seeing only).
    n_stars : ndarray of int, ``(n,)``
    flux, flux_err : ndarray, ``(n,)``
        ``transparency * fiber_coupling(fwhm, diameter)`` normalised by its maximum, and its error.
    config_id : ndarray of int, ``(n,)``
        -1 where unknown.
    diameter : float
        Fiber diameter used, arcsec.
    paths : tuple of tuple of str
        The files of each epoch.
    dropped : tuple of (str, str)
        ``(path, reason)`` for frames left out.
    has_photometry : bool
        False for a seeing-only series.
    """

    start: Time
    mid: Time
    exptime: np.ndarray
    fwhm: np.ndarray
    transparency: np.ndarray
    transparency_err: np.ndarray
    n_stars: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    config_id: np.ndarray
    diameter: float
    paths: tuple
    dropped: tuple
    has_photometry: bool

    def __len__(self) -> int:
        return len(self.flux)


def _epoch_key(frame: GuiderFrame):
    if frame.kind == "proc-gimg" and frame.frame_number is not None:
        return ("sdss-v", frame.site, frame.frame_number)
    return ("single", frame.path)


def _site(frames: Sequence[GuiderFrame]) -> str:
    sites = {f.site for f in frames if f.site}
    return sites.pop() if len(sites) == 1 else "apo"


def guider_series(
    frames,
    *,
    telescope: str | None = None,
    diameter: float | None = None,
    seeing: str = "best",
) -> GuiderSeries:
    """Combine guider frames into the flux-in-fiber series.

    Parameters
    ----------
    frames : GuiderFrames, sequence of GuiderFrame, or what :func:`read_guider_frames` accepts
    telescope : {"apo", "lco"}, optional
        Picks the default fiber diameter; default from the file names (``n``/``s``), else APO.
    diameter : float, optional
        Fiber diameter, arcsec; default ``FIBER_DIAMETER_ARCSEC[telescope]``.
    seeing : {"best", "camera"}
        SDSS-V: ``"best"`` uses ``FWHMFIT`` (the best-focus FWHM fitted across the six cameras,
        the focus of the fibers), falling back to the median camera ``FWHM``; ``"camera"`` always
        uses the median of the cameras' ``FWHM``.

    Returns
    -------
    GuiderSeries

    Raises
    ------
    pyapred.errors.InputError
        No usable frame (each frame's reason is in the message).
    """
    if seeing not in ("best", "camera"):
        raise ValueError(f"seeing: expected 'best' or 'camera', got {seeing!r}")
    frames = _as_frames(frames)
    dropped = list(frames.rejected)
    telescope = (telescope or _site(frames.frames)).lower()
    if telescope not in FIBER_DIAMETER_ARCSEC:
        raise ValueError(
            f"telescope: expected one of {sorted(FIBER_DIAMETER_ARCSEC)}, got {telescope!r}"
        )
    diameter = FIBER_DIAMETER_ARCSEC[telescope] if diameter is None else float(diameter)
    if not diameter > 0:
        raise ValueError(f"diameter: expected > 0 arcsec, got {diameter}")

    groups: dict = {}
    for frame in frames.frames:
        if frame.problems:
            dropped.append((frame.path, "; ".join(frame.problems)))
        else:
            groups.setdefault(_epoch_key(frame), []).append(frame)
    if not groups:
        reasons = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in dropped[:6])
        where = dropped[0][0] if dropped else "guider frames"
        raise InputError(where, "guider frames", "at least one usable object frame", reasons)

    epochs = sorted(groups.values(), key=lambda g: min(f.start.mjd for f in g))
    start = Time([min(g, key=lambda f: f.start.mjd).start for g in epochs])
    mid = Time([Time(np.mean([f.mid.mjd for f in g]), format="mjd", scale="tai") for g in epochs])
    exptime = np.array([max(f.exptime for f in g) for g in epochs])
    fwhm = np.empty(len(epochs))
    for i, group in enumerate(epochs):
        best = np.array([f.fwhm_fit for f in group]) if seeing == "best" else np.array([])
        camera = np.array([f.camera_fwhm if f.kind == "proc-gimg" else f.fwhm for f in group])
        values = best if np.isfinite(best).any() else camera
        fwhm[i] = np.nanmedian(values) if np.isfinite(values).any() else math.nan
    config = np.array(
        [next((f.config_id for f in g if f.config_id is not None), -1) for g in epochs]
    )
    star_ids = [np.concatenate([f.star_ids for f in g]) for g in epochs]
    star_zp = [np.concatenate([f.star_zp for f in g]) for g in epochs]
    has_photometry = any(s.size for s in star_zp)
    if has_photometry:
        transparency, transparency_err, n_stars = _transparency(star_ids, star_zp)
    else:
        transparency, transparency_err = np.ones(len(epochs)), np.zeros(len(epochs))
        n_stars = np.zeros(len(epochs), dtype=np.int64)

    keep = np.isfinite(transparency) & (transparency > 0)
    for i in np.flatnonzero(~keep):
        for f in epochs[i]:
            dropped.append((f.path, "no star seen in another frame (transparency undefined)"))
    mid_seconds = _seconds(mid, mid[0])
    for i in range(1, len(epochs)):
        if keep[i] and np.any(keep[:i] & (np.abs(mid_seconds[:i] - mid_seconds[i]) < 1e-3)):
            keep[i] = False
            dropped.extend((f.path, "same time as an earlier frame (duplicate)") for f in epochs[i])
    if not keep.any():
        raise InputError(
            epochs[0][0].path, "GAIAMATCH/zp", "stars measured in at least two guider frames"
        )
    coupling = fiber_coupling(fwhm[keep], diameter)
    flux = transparency[keep] * coupling
    peak = flux.max()
    return GuiderSeries(
        start=start[keep],
        mid=mid[keep],
        exptime=exptime[keep],
        fwhm=fwhm[keep],
        transparency=transparency[keep],
        transparency_err=transparency_err[keep],
        n_stars=n_stars[keep],
        flux=flux / peak,
        flux_err=transparency_err[keep] * coupling / peak,
        config_id=config[keep],
        diameter=diameter,
        paths=tuple(tuple(f.path for f in g) for g, k in zip(epochs, keep, strict=True) if k),
        dropped=tuple(dropped),
        has_photometry=has_photometry,
    )


def _overlaps(frame: GuiderFrame, window: tuple[Time, Time]) -> bool:
    return (frame.start + frame.exptime * u.s) >= window[0] and frame.start <= window[1]


def _as_frames(frames, window: tuple[Time, Time] | None = None) -> GuiderFrames:
    """GuiderFrames from themselves, a list of GuiderFrame, or files to read."""
    if isinstance(frames, GuiderFrames):
        return frames
    if isinstance(frames, (list, tuple)) and all(isinstance(f, GuiderFrame) for f in frames):
        return GuiderFrames(list(frames), [])
    return read_guider_frames(frames, window=window)


def _transparency(star_ids: list, star_zp: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-epoch median over stars of ``10**(0.4 (zp - median_epochs zp))``.

    Only stars measured in at least two epochs carry information about changes (a single
    epoch is its own reference: transparency 1).
    """
    ids = np.concatenate(star_ids)
    unique, inverse = np.unique(ids, return_inverse=True)
    epoch = np.repeat(np.arange(len(star_ids)), [s.size for s in star_ids])
    zp = np.concatenate(star_zp)
    n_epochs = len(star_ids)
    # Several values of one star in one epoch (two cameras): average them.
    sums = np.zeros((n_epochs, unique.size))
    counts = np.zeros((n_epochs, unique.size))
    np.add.at(sums, (epoch, inverse), zp)
    np.add.at(counts, (epoch, inverse), 1.0)
    with np.errstate(invalid="ignore"):
        grid = sums / counts
    seen = np.sum(np.isfinite(grid), axis=0) >= min(2, n_epochs)
    grid = grid[:, seen]
    ratio = 10.0 ** (0.4 * (grid - np.nanmedian(grid, axis=0)))
    n_stars = np.sum(np.isfinite(ratio), axis=1)
    transparency = np.full(n_epochs, np.nan)
    error = np.zeros(n_epochs)
    for i in np.flatnonzero(n_stars):
        values = ratio[i][np.isfinite(ratio[i])]
        transparency[i] = np.median(values)
        if values.size > 1:
            mad = 1.4826 * np.median(np.abs(values - transparency[i]))
            error[i] = 1.2533 * mad / np.sqrt(values.size)  # standard error of a median
    return transparency, error, n_stars


# --------------------------------------------------------------------------------------------
# APOGEE read times
# --------------------------------------------------------------------------------------------
def read_times_from_header(
    header: Mapping, n_reads: int | None = None, *, timesys: str | None = None, path="<header>"
) -> Time:
    """Start times of the reads of an APOGEE exposure from its header, TAI scale.

    ``t_k = DATE-OBS + INTDELAY + k * INTOFF`` for ``k = 0 .. n_reads - 1`` (``INTOFF`` in ms,
    ``INTDELAY`` in s and 0 when absent, ``DATE-OBS`` the start of integration), as
    ``pyapred.io.read_apz`` does. ``TIMESYS`` is honoured; it defaults to UTC, as in the
    documented APOGEE headers.

    Parameters
    ----------
    header : Mapping
        FITS header or dict with ``DATE-OBS``, ``INTOFF`` and ``NREAD`` (or ``NFRAMES``).
    n_reads : int, optional
        Overrides ``NREAD``/``NFRAMES`` (trust the number of read HDUs over the card).
    timesys : {"UTC", "TAI", "TT"}, optional
        Overrides the header's ``TIMESYS`` (to test the hypothesis that DATE-OBS is TAI).
    path : str, optional
        File named in error messages.

    Returns
    -------
    astropy.time.Time, ``(n_reads,)``
    """
    scale = timesys.upper() if timesys else _timesys(path, header, "UTC")
    if scale not in TIME_SCALES:
        raise ValueError(f"timesys: expected one of {TIME_SCALES}, got {timesys!r}")
    start = _parse_date(path, header, scale)
    interval = _number(header.get("INTOFF"))
    if not interval > 0:
        raise InputError(path, "INTOFF", "the read period in ms (10647 for APOGEE)", repr(interval))
    if n_reads is None:
        card = _number(header.get("NREAD", header.get("NFRAMES")))
        n_reads = int(card) if math.isfinite(card) else 0
    if n_reads < 3:
        raise InputError(path, "NREAD", "at least 3 reads", repr(n_reads))
    delay = _number(header.get("INTDELAY", 0.0))
    delay = delay if math.isfinite(delay) else 0.0
    return start + (delay + np.arange(n_reads) * (interval / 1000.0)) * u.s


def exposure_read_times(
    exposure, *, n_reads: int | None = None, timesys: str | None = None
) -> tuple[Time, Mapping | None]:
    """Read times (TAI) and header of an exposure given in any of the accepted forms.

    Parameters
    ----------
    exposure : astropy.time.Time, Mapping, or object with ``read_times`` (and ``header``)
        A ``Time`` array of read start times; a FITS header / dict (see
        :func:`read_times_from_header`); or the I/O layer's ``RawExposure``
        (``pyapred.io.read_apz``), whose ``read_times`` are used unless ``timesys`` is given.
    n_reads : int, optional
        For headers: the number of reads (default ``NREAD``).
    timesys : str, optional
        Overrides ``TIMESYS``: the read times are recomputed from the header.

    Returns
    -------
    (Time, Mapping or None)
        ``(n_reads,)`` TAI read times and the header when known.
    """
    header = None
    if isinstance(exposure, Time):
        times = exposure
    elif isinstance(exposure, (Mapping, fits.Header)):
        header = exposure
        times = read_times_from_header(exposure, n_reads, timesys=timesys)
    elif hasattr(exposure, "read_times"):
        times, header = exposure.read_times, getattr(exposure, "header", None)
        if not isinstance(times, Time):
            raise ValueError("exposure.read_times: expected an astropy Time array")
        if timesys is not None and header is not None:
            times = read_times_from_header(header, times.size, timesys=timesys)
    else:
        raise ValueError(
            "exposure: expected an astropy Time array, a FITS header or an object with read_times"
        )
    times = times.tai
    if times.ndim != 1 or times.size < 2:
        raise ValueError(f"read_times: expected a 1-D Time array of >= 2 reads, got {times.shape}")
    if not np.all(np.diff(_seconds(times, times[0])) > 0):
        raise ValueError("read_times: expected strictly increasing times")
    return times, header


# --------------------------------------------------------------------------------------------
# Averaging the series over read-difference windows
# --------------------------------------------------------------------------------------------
class _WindowAverager:
    """Linear map from the guider frames' values to their curve's mean over any time windows.

    Each guider value is the mean of the sky over the frame's integration, not a point sample.
    The curve is therefore the cubic spline through the frame mid-times (constant beyond the
    first and last) whose mean over each frame's integration equals the frame's value
    (area-preserving, so a dip is not smoothed by the frames' own averaging). Being linear in
    the values, it also propagates their covariance exactly.

    Parameters
    ----------
    start, end, mid : ndarray, ``(n,)``
        Frame integration start, end and middle, s (any common origin); ``mid`` increasing.
    """

    def __init__(self, start: np.ndarray, end: np.ndarray, mid: np.ndarray):
        from scipy.interpolate import CubicSpline

        self.knots = mid
        n = mid.size
        if n > 1:
            # The cardinal basis: spline j interpolates the unit vector e_j at the knots.
            self._antiderivative = CubicSpline(mid, np.eye(n), axis=0).antiderivative()
        frame_means = self._means(start, end)
        self._to_knots = np.linalg.inv(frame_means)  # knot values from frame means

    def _integral(self, x: np.ndarray) -> np.ndarray:
        """``(len(x), n)``: integral from the first knot to ``x`` of each basis function."""
        n = self.knots.size
        if n == 1:
            return (x - self.knots[0])[:, None]
        inside = np.clip(x, self.knots[0], self.knots[-1])
        out = self._antiderivative(inside)
        out[:, 0] += np.minimum(x - self.knots[0], 0.0)  # constant e_0 before the first knot
        out[:, -1] += np.maximum(x - self.knots[-1], 0.0)  # constant e_n after the last
        return out

    def _means(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return (self._integral(hi) - self._integral(lo)) / (hi - lo)[:, None]

    def matrix(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``(K, n)`` matrix ``A``: ``A @ frame_values`` = the curve's mean over each window."""
        return self._means(lo, hi) @ self._to_knots


def _averager(series: GuiderSeries, t0: Time) -> _WindowAverager:
    start = _seconds(series.start, t0)
    return _WindowAverager(start, start + series.exptime, _seconds(series.mid, t0))


@dataclass(frozen=True)
class GuiderPrediction:
    """The guider's flux-in-fiber averaged over each read-difference window.

    Attributes
    ----------
    omega : ndarray, ``(K,)``
        Predicted omega, normalised to maximum 1 over the covered windows; NaN where the guider
        does not cover the window.
    omega_cov : ndarray, ``(K, K)``
        Its covariance from the transparency errors.
    covered : ndarray of bool, ``(K,)``
    window_start, window_end : ndarray, ``(K,)``
        Windows in TAI seconds since ``t0`` (lag and row phase applied).
    t0 : astropy.time.Time
        The first read time (TAI).
    amplitude : float
        ``1 - min/max`` of the covered prediction: the variability the guider sees.
    needs_time_variable : bool
        ``amplitude`` above the paper's 3.5 % threshold.
    """

    omega: np.ndarray
    omega_cov: np.ndarray
    covered: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray
    t0: Time
    amplitude: float
    needs_time_variable: bool


def _windows(read_times: Time, row_phase: float) -> tuple[Time, np.ndarray, np.ndarray]:
    t0 = read_times[0]
    seconds = _seconds(read_times, t0)
    seconds = seconds + row_phase * np.median(np.diff(seconds))
    return t0, seconds[:-1], seconds[1:]


def _coverage(series: GuiderSeries, t0: Time, lo, hi, max_gap: float) -> np.ndarray:
    """Windows inside the guider's span with no gap longer than ``max_gap`` s."""
    start = _seconds(series.start, t0)
    end = start + series.exptime
    mid = _seconds(series.mid, t0)
    covered = (lo >= start.min()) & (hi <= end.max())
    if mid.size > 1:
        gaps = np.diff(mid)
        a = np.clip(np.searchsorted(mid, lo, side="right") - 1, 0, mid.size - 2)
        b = np.clip(np.searchsorted(mid, hi, side="left"), 1, mid.size - 1)
        for k in np.flatnonzero(covered):
            covered[k] = gaps[a[k] : b[k]].max(initial=0.0) <= max_gap
    return covered


def predict_omega(
    series: GuiderSeries,
    read_times,
    *,
    lag: float = 0.0,
    row_phase: float = 0.5,
    max_gap: float = 120.0,
) -> GuiderPrediction:
    """Average the guider's flux-in-fiber over each read-difference window of an exposure.

    Use it before fitting: ``needs_time_variable`` says whether the guider saw a change larger
    than the paper's 3.5 % threshold during the exposure.

    Parameters
    ----------
    series : GuiderSeries
    read_times : astropy.time.Time, header or RawExposure
        See :func:`exposure_read_times`.
    lag : float, optional
        Seconds added to the read times.
    row_phase : float, optional
        Fraction of a read period between a read's start and the sampling of the fiber's rows
        (0.5: the middle of the slit).
    max_gap : float, optional
        A window whose neighbouring guider frames are further apart than this (s) is not covered.

    Returns
    -------
    GuiderPrediction
    """
    times, _ = exposure_read_times(read_times)
    t0, lo, hi = _windows(times, row_phase)
    lo, hi = lo + lag, hi + lag
    covered = _coverage(series, t0, lo, hi, max_gap)
    matrix = _averager(series, t0).matrix(lo, hi)
    omega = matrix @ series.flux
    cov = matrix @ (series.flux_err[:, None] ** 2 * matrix.T)
    peak = omega[covered].max() if covered.any() else math.nan
    omega, cov = omega / peak, cov / peak**2
    omega[~covered] = np.nan
    amplitude = 1.0 - np.min(omega[covered]) if covered.any() else math.nan
    return GuiderPrediction(
        omega=omega,
        omega_cov=cov,
        covered=covered,
        window_start=lo,
        window_end=hi,
        t0=t0,
        amplitude=float(amplitude),
        needs_time_variable=bool(amplitude > PAPER_THRESHOLD),
    )


# --------------------------------------------------------------------------------------------
# Omega from a fit or a product
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Omega:
    omega: np.ndarray  # (F, K)
    cov: np.ndarray  # (F, K, K)
    fibers: np.ndarray  # (F,) labels: product fiber indices, else rows
    read_times: Time | None
    header: Mapping | None


#: Exposure header cards that give the read times, looked for in a product's metadata.
TIME_CARDS = ("DATE-OBS", "TIMESYS", "INTOFF", "INTDELAY", "NREAD", "NFRAMES", "CONFIGID")


def _omega_arrays(source, fibers, group: str | None = None) -> _Omega:
    """Normalise the accepted omega inputs to (F, K) and (F, K, K) arrays.

    ``fibers`` selects by label (the product's fiber index, else the row); by default every
    fiber with at least three fitted elements (positive variance) is kept.
    """
    if isinstance(source, (str, os.PathLike)):
        return _omega_arrays(_load_product(os.fspath(source), group), fibers)
    labels, read_times, header = None, None, None
    if isinstance(source, Mapping):
        omega, cov = source["omega"], source["omega_cov"]
        labels = source.get("fiber_index")
        read_times, header = source.get("read_times"), source.get("header")
    elif isinstance(source, tuple):
        omega, cov = source
    elif hasattr(source, "omega") and hasattr(source, "omega_cov"):
        omega, cov = source.omega, source.omega_cov
        read_times, header = getattr(source, "read_times", None), getattr(source, "header", None)
    else:
        raise ValueError(
            "omega: expected an OmegaFit, (omega, omega_cov), a mapping or a product path"
        )
    omega = np.asarray(omega, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if omega.ndim == 1:
        omega, cov = omega[None], cov[None]
    if omega.ndim != 2 or cov.shape != omega.shape + omega.shape[-1:]:
        raise ValueError(
            "omega, omega_cov: expected shapes (F, K) and (F, K, K), "
            f"got {omega.shape}, {cov.shape}"
        )
    labels = np.arange(omega.shape[0]) if labels is None else np.asarray(labels, np.int64)
    if fibers is None:
        fitted = np.isfinite(omega) & (np.diagonal(cov, axis1=1, axis2=2) > 0)
        rows = np.flatnonzero(fitted.sum(axis=1) >= 3)
        if rows.size == 0:
            raise ValueError("omega: no fiber has a fitted omega (all variances are 0 or NaN)")
    else:
        wanted = np.atleast_1d(np.asarray(fibers, dtype=np.int64))
        missing = sorted(set(wanted.tolist()) - set(labels.tolist()))
        if missing:
            raise ValueError(f"fibers: {missing} not among the {labels.size} fibers given")
        rows = np.array([np.flatnonzero(labels == f)[0] for f in wanted])
    return _Omega(omega[rows], cov[rows], labels[rows], read_times, header)


def _load_product(path: str, group: str | None) -> dict:
    """Omega, covariance, fiber indices and read times of one fiber group of a product.

    Reads with :func:`pyapred.io.product.read_product`. The group is ``group``, else ``"joint"``
    when present, else the first of R, G, B. Read times come from the metadata:
    ``read_times_tai_mjd``, or the exposure header cards ``DATE-OBS``, ``TIMESYS``, ``INTOFF``
    (and ``INTDELAY``, ``CONFIGID``).
    """
    from .io.product import read_product

    product = read_product(path)
    groups, metadata = product.fibers, product.metadata
    if not groups:
        raise InputError(path, "fibers", "per-fiber omega in a /fibers/{group} group")
    preferred = [g for g in ("joint", "R", "G", "B") if g in groups] + sorted(groups)
    name = group or preferred[0]
    if name not in groups:
        raise InputError(path, f"fibers/{name}", f"one of the groups {sorted(groups)}")
    fits_ = groups[name]
    header = {key.upper(): _scalar(v) for key, v in metadata.items() if key.upper() in TIME_CARDS}
    read_times = metadata.get("read_times_tai_mjd")
    if read_times is not None:
        read_times = Time(np.asarray(read_times, np.float64), format="mjd", scale="tai")
    return {
        "omega": fits_.omega,
        "omega_cov": fits_.omega_cov,
        "fiber_index": fits_.fiber_index,
        "read_times": read_times,
        "header": header or None,
    }


def _scalar(value):
    value = value.decode() if isinstance(value, bytes) else value
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuiderComparison:
    """Fitted omega against the guider's flux-in-fiber prediction.

    Per-fiber arrays have shape ``(F,)``; per-window arrays ``(K,)``.

    Attributes
    ----------
    fibers : ndarray of int
        The product's 0-based fiber indices (``300 - fiberId``), else rows of the input omega.
    omega, omega_err : ndarray, ``(F, K)``
        The fitted omega and its standard errors (NaN where unused).
    used : ndarray of bool, ``(F, K)``
        Elements in the fit: finite, not the fixed reference, covered by the guider.
    guider, guider_err : ndarray, ``(K,)``
        The guider prediction at the best lag (normalised, maximum 1 over covered windows).
    frame_flux : ndarray, ``(n_frames,)``
        The guider frames' flux-in-fiber values on the same normalisation.
    window_start, window_end : ndarray, ``(K,)``
        Windows in TAI s since ``t0``, lag applied.
    t0 : astropy.time.Time
    scale, scale_err : ndarray
        Least-squares factor with ``omega ~ scale * guider``, weighted by omega's covariance plus
        the guider's; the error includes that of the guider's normalisation (its peak window).
    correlation : ndarray
        Pearson correlation of omega and the guider over the used elements.
    chi2, dof, chi2_dof, p_value : ndarray
        Of the scaled fit; ``dof = n_used - 1``.
    residual_rms : ndarray
        RMS of ``omega - scale * guider``.
    explained_variance : ndarray
        ``1 - var(residual) / var(omega)``: the part of omega's variance the guider explains.
    disagree : ndarray of bool
        ``p_value < alpha``: the two differ beyond their errors.
    lag, lag_err : float
        Best time lag (s; 0 and NaN when not fitted) and its 1-sigma error (from
        ``Delta chi2 = max(1, chi2/dof)``; inf when the lag is not constrained).
    lag_grid, lag_chi2 : ndarray or None
        Total chi2 over the lag grid.
    tai_minus_utc : float
        Leap seconds at the exposure, s.
    clock : str
        ``"not-fitted"``, ``"aligned"`` (lag ~ 0), ``"date-obs-is-tai"`` (lag ~ -(TAI-UTC): the
        exposure's times were read as UTC but are TAI), ``"date-obs-is-utc"`` (lag ~
        +(TAI-UTC)), ``"unexplained"`` or ``"undetermined"``.
    series : GuiderSeries
        The guider frames used.
    flags : tuple of str
        ``"disagree"``, ``"frames-dropped"``, ``"partial-coverage"``, ``"seeing-only"``,
        ``"lag-unconstrained"``, ``"clock-offset"``, ``"lag-at-edge"``.
    dropped : tuple of (str, str)
        Guider files left out, with the reason.
    """

    fibers: np.ndarray
    omega: np.ndarray
    omega_err: np.ndarray
    used: np.ndarray
    guider: np.ndarray
    guider_err: np.ndarray
    frame_flux: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray
    t0: Time
    scale: np.ndarray
    scale_err: np.ndarray
    correlation: np.ndarray
    chi2: np.ndarray
    dof: np.ndarray
    chi2_dof: np.ndarray
    p_value: np.ndarray
    residual_rms: np.ndarray
    explained_variance: np.ndarray
    disagree: np.ndarray
    lag: float
    lag_err: float
    lag_grid: np.ndarray | None
    lag_chi2: np.ndarray | None
    tai_minus_utc: float
    clock: str
    series: GuiderSeries
    flags: tuple
    dropped: tuple

    def to_dict(self) -> dict:
        """A JSON-ready summary (no per-window arrays except the guider curve)."""

        def clean(values):
            return [None if not np.isfinite(v) else float(v) for v in np.ravel(values)]

        return {
            "fibers": [int(f) for f in self.fibers],
            "t0_tai": self.t0.tai.isot,
            "lag_s": float(self.lag),
            "lag_err_s": None if not np.isfinite(self.lag_err) else float(self.lag_err),
            "tai_minus_utc_s": self.tai_minus_utc,
            "clock": self.clock,
            "scale": clean(self.scale),
            "scale_err": clean(self.scale_err),
            "correlation": clean(self.correlation),
            "chi2_dof": clean(self.chi2_dof),
            "p_value": clean(self.p_value),
            "residual_rms": clean(self.residual_rms),
            "explained_variance": clean(self.explained_variance),
            "disagree": [bool(d) for d in self.disagree],
            "guider": clean(self.guider),
            "n_guider_frames": len(self.series),
            "flags": list(self.flags),
            "dropped": [{"path": p, "reason": r} for p, r in self.dropped],
        }

    def plot(self, path=None, *, max_fibers: int = 10):
        """Omega with error bars against the guider curve, the guider's transparency and seeing,
        and the residuals, over read time.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Save the figure there (PNG; written to a temporary file, then renamed).
        max_fibers : int, optional
            Draw at most this many fibers (the best-measured ones).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure  # no pyplot: no global state, any backend

        fig = Figure(figsize=(8, 8.5), layout="tight")
        axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.6, 1]})
        top, middle, bottom = axes
        guide_t = _seconds(self.series.mid, self.t0)
        top.plot(guide_t, self.series.transparency, "o-", color="tab:red", ms=3)
        top.set_ylabel("transparency", color="tab:red")
        seeing_axis = top.twinx()
        seeing_axis.plot(guide_t, self.series.fwhm, "s-", color="tab:blue", ms=3)
        seeing_axis.set_ylabel("FWHM [arcsec]", color="tab:blue")
        top.set_title(
            f"guider vs omega: lag {self.lag:+.1f} s"
            + (f" +/- {self.lag_err:.1f} s" if np.isfinite(self.lag_err) else "")
            + f", clock: {self.clock}",
            fontsize=10,
        )
        mid = 0.5 * (self.window_start + self.window_end)
        half = 0.5 * (self.window_end - self.window_start)
        shown = np.argsort(np.nansum(self.omega_err**2, axis=1))[:max_fibers]
        middle.step(
            np.append(self.window_start, self.window_end[-1]),
            np.append(self.guider, self.guider[-1]),
            where="post",
            color="k",
            lw=2,
            label="guider flux in fiber",
        )
        middle.plot(guide_t, self.frame_flux, ".", color="0.5", label="guider frames")
        for n, f in enumerate(shown):
            use = self.used[f]
            scaled = self.omega[f] / self.scale[f]
            middle.errorbar(
                mid[use],
                scaled[use],
                xerr=half[use],
                yerr=self.omega_err[f][use] / self.scale[f],
                fmt="o",
                ms=3,
                lw=0.8,
                label=f"fiber {self.fibers[f]}" if n < 6 else None,
            )
            residual = (self.omega[f] - self.scale[f] * self.guider) / self.omega_err[f]
            bottom.plot(mid[use], residual[use], "o", ms=3)
        middle.set_ylabel("omega / scale")
        middle.legend(fontsize=8, loc="best")
        bottom.axhline(0, color="k", lw=1)
        bottom.set_ylabel("(omega - scale g) / sigma")
        bottom.set_xlabel(f"TAI seconds since first read {self.t0.tai.isot} (+ lag)")
        if path is not None:
            with _atomic_write(path) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
        return fig


def _fit_scale(omega, cov, used, g, g_cov):
    """Weighted least squares of ``omega ~ a g`` per fiber, in batch.

    Unused elements are neutralised (identity covariance, zero residual) so that all fibers
    share one batched solve. The guider's covariance enters as ``a**2 g_cov``, with ``a`` from a
    first pass without it.

    Returns
    -------
    a, a_var, chi2 : ndarray, ``(F,)``
    da_dg : ndarray, ``(F, K)``
        Derivative of ``a`` with respect to the guider curve (0 on unused elements).
    """
    both = used[:, :, None] & used[:, None, :]
    w = np.where(used, omega, 0.0)
    gm = np.where(used, g[None], 0.0)

    def solve(total):
        c = np.where(both, total, np.eye(omega.shape[1]))

        def apply(rhs):
            try:
                return np.linalg.solve(c, rhs)
            except np.linalg.LinAlgError:  # a singular covariance: least-squares inverse
                return np.linalg.pinv(c, hermitian=True) @ rhs

        return apply

    def weighted(total):
        solved = solve(total)(np.stack([w, gm], axis=-1))  # C^-1 omega, C^-1 g
        gwg = np.einsum("fk,fk->f", gm, solved[..., 1])
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.einsum("fk,fk->f", gm, solved[..., 0]) / gwg
        return a, gwg, solved

    a, gwg, solved = weighted(cov)
    if np.any(g_cov):
        a, gwg, solved = weighted(cov + (a**2)[:, None, None] * g_cov[None])
    c_w, c_g = solved[..., 0], solved[..., 1]
    chi2 = np.einsum("fk,fk->f", w - a[:, None] * gm, c_w - a[:, None] * c_g)
    with np.errstate(invalid="ignore", divide="ignore"):
        da_dg = (c_w - 2 * a[:, None] * c_g) / gwg[:, None]
        return a, 1.0 / gwg, chi2, da_dg


def compare(
    omega_fit_or_product,
    guider_frames,
    *,
    read_times=None,
    fibers=None,
    group: str | None = None,
    fit_lag: bool = False,
    lag_range: float = 60.0,
    lag_step: float = 0.5,
    telescope: str | None = None,
    diameter: float | None = None,
    seeing: str = "best",
    config_id: int | None = None,
    timesys: str | None = None,
    row_phase: float = 0.5,
    max_gap: float = 120.0,
    alpha: float = 1e-3,
) -> GuiderComparison:
    """Compare fitted omega with the guider's flux-in-fiber prediction.

    Parameters
    ----------
    omega_fit_or_product : OmegaFit, (omega, omega_cov), Mapping, or product path
        ``omega`` ``(K,)`` or ``(F, K)`` with covariance ``(K, K)`` or ``(F, K, K)``; the fixed
        element (covariance row 0) and NaN elements are left out of the fit.
    guider_frames : GuiderSeries, GuiderFrames, list of GuiderFrame, path, directory or glob
    read_times : astropy.time.Time, header or RawExposure, optional
        The exposure's ``n_reads = K + 1`` read times (see :func:`exposure_read_times`).
        Required unless the product carries them.
    fibers : sequence of int, optional
        Fibers to compare: a product's 0-based fiber indices (``300 - fiberId``), else rows of
        omega. Default: every fiber with a fitted omega (at least 3 elements of variance > 0).
    group : str, optional
        A product's fiber group (chip name or ``"joint"``); see :func:`_load_product`.
    fit_lag : bool, optional
        Fit a time lag on a grid over ``[-lag_range, lag_range]`` s, step ``lag_step``, refined.
    telescope, diameter, seeing
        See :func:`guider_series`.
    config_id : int, optional
        The exposure's ``CONFIGID`` (default from its header); guider frames of another
        configuration are dropped.
    timesys : str, optional
        Override the exposure header's ``TIMESYS``.
    row_phase, max_gap
        See :func:`predict_omega`.
    alpha : float, optional
        p-value below which a fiber is flagged as disagreeing.

    Returns
    -------
    GuiderComparison

    Raises
    ------
    pyapred.errors.InputError
        No usable guider frame, no frame of the exposure's configuration, or no time overlap.
    ValueError
        Bad arguments (shapes, missing read times).
    """
    from scipy import optimize, special

    data = _omega_arrays(omega_fit_or_product, fibers, group)
    source_times = read_times if read_times is not None else data.read_times
    if source_times is None and data.header:
        source_times = data.header
    if source_times is None:
        raise ValueError("read_times: required (the omega source carries no read times)")
    n_diff = data.omega.shape[1]
    times, header = exposure_read_times(source_times, n_reads=n_diff + 1, timesys=timesys)
    if times.size != n_diff + 1:
        raise ValueError(f"read_times: expected {n_diff + 1} reads for omega of length {n_diff}")
    if config_id is None and header is not None and _number(header.get("CONFIGID")) > 0:
        config_id = int(header["CONFIGID"])

    series = _select_series(
        guider_frames, times, config_id, telescope, diameter, seeing, lag_range if fit_lag else 0
    )
    flags = []
    if series.dropped:
        flags.append("frames-dropped")
    if not series.has_photometry:
        flags.append("seeing-only")

    t0, lo0, hi0 = _windows(times, row_phase)
    covered = _coverage(series, t0, lo0, hi0, max_gap)
    if not covered.any():
        raise InputError(
            series.paths[0][0],
            "DATE-OBS",
            f"guider frames covering the exposure ({times[0].isot} to {times[-1].isot} TAI)",
            f"frames from {series.start[0].isot} to {(series.start[-1]).isot} TAI with gaps",
        )
    diag = np.diagonal(data.cov, axis1=1, axis2=2)
    has_data = np.isfinite(data.omega) & (diag > 0)  # the fixed element has variance 0
    averager = _averager(series, t0)
    flux_var = series.flux_err**2

    def evaluate(lag, used):
        matrix = averager.matrix(lo0 + lag, hi0 + lag)
        g = matrix @ series.flux
        g_cov = matrix @ (flux_var[:, None] * matrix.T)
        return (g, g_cov, *_fit_scale(data.omega, data.cov, used, g, g_cov))

    # The lag search compares chi2 over one fixed set of elements: those covered at lag 0.
    used = has_data & covered[None]
    n_used = used.sum(axis=1)

    def total_chi2(lag):
        return float(np.nansum(evaluate(lag, used)[4]))

    lag, lag_err, grid, grid_chi2, clock = 0.0, math.nan, None, None, "not-fitted"
    tai_utc = _tai_minus_utc(times[0])
    if fit_lag:
        grid = np.arange(-lag_range, lag_range + lag_step / 2, lag_step)
        grid_chi2 = np.array([total_chi2(x) for x in grid])
        best = int(np.nanargmin(grid_chi2))
        if best in (0, grid.size - 1):
            flags.append("lag-at-edge")
        lo_b, hi_b = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
        refined = optimize.minimize_scalar(
            total_chi2, bounds=(lo_b, hi_b), method="bounded", options={"xatol": 1e-3}
        )
        lag, chi2_min = (
            (refined.x, refined.fun)
            if refined.fun <= grid_chi2[best]
            else (grid[best], grid_chi2[best])
        )
        total_dof = max(int(np.sum(n_used - 1) - 1), 1)
        threshold = chi2_min + max(1.0, chi2_min / total_dof)
        lag_err = _lag_error(total_chi2, grid, grid_chi2, lag, threshold, optimize)
        clock = _clock_verdict(lag, lag_err, tai_utc)
        if not np.isfinite(lag_err):
            flags.append("lag-unconstrained")
        if clock in ("date-obs-is-tai", "date-obs-is-utc", "unexplained"):
            flags.append("clock-offset")

    if lag != 0.0:
        covered = _coverage(series, t0, lo0 + lag, hi0 + lag, max_gap)
        used = has_data & covered[None]
    if not covered.all():
        flags.append("partial-coverage")
    g, g_cov, a, a_var, chi2, da_dg = evaluate(lag, used)
    # The guider curve is normalised by its peak window j: scale = a * g[j]. Its error adds the
    # peak's own uncertainty and its correlation with a.
    j = int(np.argmax(np.where(covered, g, -np.inf)))
    peak = g[j]
    scale = a * peak
    scale_var = peak**2 * a_var + a**2 * g_cov[j, j] + 2 * a * peak * (da_dg @ g_cov[:, j])
    dof = used.sum(axis=1) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2_dof = chi2 / dof
        p_value = np.where(dof > 0, special.chdtrc(np.maximum(dof, 1), chi2), np.nan)
    omega = np.where(used, data.omega, np.nan)
    omega_err = np.sqrt(np.where(used, diag, np.nan))
    residual = omega - a[:, None] * g[None]
    correlation = np.array([_pearson(o[ok], g[ok]) for o, ok in zip(omega, used, strict=True)])
    residual_rms = np.sqrt(np.nanmean(np.where(used, residual**2, np.nan), axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        explained = 1.0 - np.nanvar(residual, axis=1) / np.nanvar(omega, axis=1)
    disagree = np.nan_to_num(p_value, nan=1.0) < alpha
    if disagree.any():
        flags.append("disagree")
    t_lo, t_hi = lo0 + lag, hi0 + lag
    return GuiderComparison(
        fibers=data.fibers,
        omega=omega,
        omega_err=omega_err,
        used=used,
        guider=np.where(covered, g / peak, np.nan),
        guider_err=np.where(covered, np.sqrt(np.diag(g_cov)) / peak, np.nan),
        frame_flux=series.flux / peak,
        window_start=t_lo,
        window_end=t_hi,
        t0=t0,
        scale=scale,
        scale_err=np.sqrt(np.maximum(scale_var, 0.0)),
        correlation=correlation,
        chi2=chi2,
        dof=dof,
        chi2_dof=chi2_dof,
        p_value=p_value,
        residual_rms=residual_rms,
        explained_variance=explained,
        disagree=disagree,
        lag=float(lag),
        lag_err=float(lag_err),
        lag_grid=grid,
        lag_chi2=grid_chi2,
        tai_minus_utc=tai_utc,
        clock=clock,
        series=series,
        flags=tuple(flags),
        dropped=series.dropped,
    )


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _lag_error(chi2_of, grid, grid_chi2, lag, threshold, optimize) -> float:
    """Half the width of the ``chi2 <= threshold`` interval around ``lag`` (inf if open)."""
    bounds = []
    for side in (-1, 1):
        beyond = grid[(np.sign(grid - lag) == side) & (grid_chi2 > threshold)]
        if beyond.size == 0:
            return math.inf
        edge = beyond[np.argmin(np.abs(beyond - lag))]
        bounds.append(optimize.brentq(lambda x: chi2_of(x) - threshold, *sorted((lag, edge))))
    return 0.5 * (bounds[1] - bounds[0])


def _clock_verdict(lag: float, lag_err: float, tai_minus_utc: float) -> str:
    """Which clock hypothesis the fitted lag supports."""
    if not np.isfinite(lag_err):
        return "undetermined"
    tolerance = max(3.0 * lag_err, 1.5)
    hypotheses = {
        0.0: "aligned",
        -tai_minus_utc: "date-obs-is-tai",
        tai_minus_utc: "date-obs-is-utc",
    }
    matches = [name for value, name in hypotheses.items() if abs(lag - value) <= tolerance]
    if len(matches) == 1:
        return matches[0]
    return "undetermined" if matches else "unexplained"


def _select_series(frames, times, config_id, telescope, diameter, seeing, margin) -> GuiderSeries:
    """Frames of the exposure's configuration within its time span (+- margin), as a series."""
    if isinstance(frames, GuiderSeries):
        return frames
    window = (times[0] - (margin + SELECT_PAD) * u.s, times[-1] + (margin + SELECT_PAD) * u.s)
    frames = _as_frames(frames, window)
    inside, rejected = [], list(frames.rejected)
    for frame in frames.frames:
        if not _overlaps(frame, window):
            continue
        if config_id is not None and frame.config_id is not None and frame.config_id != config_id:
            rejected.append((frame.path, f"CONFIGID {frame.config_id} != exposure's {config_id}"))
            continue
        inside.append(frame)
    if not inside:
        spans = [f.start for f in frames.frames]
        path = frames.frames[0].path
        if rejected and len(rejected) > len(frames.rejected):
            raise InputError(
                path,
                "CONFIGID",
                f"guider frames of configuration {config_id}",
                "; ".join(r for _, r in rejected[-3:]),
            )
        raise InputError(
            path,
            "DATE-OBS",
            f"guider frames overlapping the exposure, {times[0].isot} to {times[-1].isot} TAI",
            f"{len(spans)} frame(s) from {min(spans, key=lambda t: t.mjd).isot} "
            f"to {max(spans, key=lambda t: t.mjd).isot} TAI",
        )
    return guider_series(
        GuiderFrames(inside, rejected), telescope=telescope, diameter=diameter, seeing=seeing
    )


# --------------------------------------------------------------------------------------------
# Writing SDSS-V frames (tests, simulations, examples)
# --------------------------------------------------------------------------------------------
def write_proc_gimg(
    path,
    *,
    date_obs: Time,
    exptime: float,
    fwhm: float | None,
    fwhm_fit: float | None = None,
    source_id=None,
    zp=None,
    r_zpt: float | None = None,
    config_id: int = 1,
    camera: str = "gfa1n",
    rms: float = 0.05,
    timesys: str = "TAI",
    image_shape: tuple[int, int] = (8, 8),
) -> None:
    """Write an SDSS-V ``proc-gimg`` camera file with the documented keywords.

    HDU 1 ``RAW`` carries ``TIMESYS``, ``DATE-OBS`` (ISO with a space), ``EXPTIME``,
    ``EXPTIMEN``, ``TAI_MID``, ``FWHM``, ``FWHMFIT``, ``RMS``, ``CONFIGID``, ``R_ZPT``,
    ``CAMNAME``; HDU 2 ``GAIAMATCH`` the per-star ``source_id`` and ``zp`` (omitted when no
    stars are given, as before cherno 1.0). ``None`` for a FWHM writes -999, as cherno does for
    NaN. The image is a small placeholder. Written to a temporary file, then renamed.

    Parameters
    ----------
    path : str or os.PathLike
    date_obs : astropy.time.Time
        Start of the integration (converted to ``timesys``).
    exptime : float
        s.
    fwhm, fwhm_fit : float or None
        Camera FWHM and best-focus FWHM, arcsec.
    source_id, zp : array_like, optional
        Gaia source ids and zero points (mag) of the matched stars.
    r_zpt : float, optional
        Camera median zero point (default the median of ``zp``, -999 without stars).
    config_id : int
    camera : str
        ``gfa{1-6}{n|s}``.
    rms : float
    timesys : str
    image_shape : (int, int)
    """
    start = getattr(date_obs, timesys.lower()).copy()
    start.precision = 6
    header = fits.Header()
    header["TIMESYS"] = (timesys, "Time system")
    header["DATE-OBS"] = (start.iso, "Time of the start of the exposure [TAI]")
    header["EXPTIME"] = (float(exptime), "Exposure time of single integration [s]")
    header["EXPTIMEN"] = (float(exptime), "Total exposure time [s]")
    header["TAI_MID"] = ((date_obs.tai + exptime / 2 * u.s).mjd * 86400.0, "TAI at mid-exposure")
    header["IMAGETYP"] = "object"
    header["CAMNAME"] = camera
    header["CARTID"] = "FPS-S" if camera.endswith("s") else "FPS-N"
    header["CONFIGID"] = int(config_id)
    header["FWHM"] = (-999.0 if fwhm is None else float(fwhm), "Mesured FWHM [arcsec]")
    header["FWHMFIT"] = (-999.0 if fwhm_fit is None else float(fwhm_fit), "Fitted FWHM [arcsec]")
    header["RMS"] = (float(rms), "Guide RMS [arcsec]")
    zp = None if zp is None else np.asarray(zp, dtype=np.float64)
    if r_zpt is None and zp is not None and np.isfinite(zp).any():
        r_zpt = float(np.nanmedian(zp))
    r_zpt = -999.0 if r_zpt is None or not np.isfinite(r_zpt) else r_zpt
    header["R_ZPT"] = (float(r_zpt), "median measured zeropoint of gaia sources")
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(np.zeros(image_shape, np.float32), header, name="RAW")]
    if zp is not None:
        ids = np.asarray(source_id, dtype=np.int64)
        gfa = int(re.sub(r"\D", "", camera) or 0)
        columns = [
            fits.Column("source_id", "K", array=ids),
            fits.Column("gfaNum", "I", array=np.full(ids.size, gfa)),
            fits.Column("zp", "D", array=zp),
        ]
        hdus.append(fits.BinTableHDU.from_columns(columns, name="GAIAMATCH"))
    with _atomic_write(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


def simulate_guider_frames(
    directory,
    *,
    start: Time,
    duration: float,
    transparency,
    fwhm,
    rng: np.random.Generator,
    cadence: float = 20.0,
    exptime: float = 15.0,
    n_stars: int = 30,
    zp_noise: float = 0.01,
    cameras: Sequence[str] = ("gfa1n", "gfa2n", "gfa3n", "gfa4n", "gfa5n", "gfa6n"),
    config_id: int = 1,
    first_frame: int = 1,
) -> list[str]:
    """Write SDSS-V guider frames that see a given transparency and seeing history.

    Frame ``i`` starts at ``start + i * cadence`` and integrates ``exptime`` s. Its ``FWHM`` and
    ``FWHMFIT`` are the mean of ``fwhm`` over the integration; each camera's ``n_stars`` Gaia
    stars get ``zp = zp0 + 2.5 log10(mean transparency) + N(0, zp_noise)``.

    Parameters
    ----------
    directory : str or os.PathLike
        Created if needed; files are named ``proc-gimg-{camera}-{NNNN}.fits``.
    start : astropy.time.Time
        Start of the first frame (TAI is written).
    duration : float
        s; frames are written while their start is before ``start + duration``.
    transparency, fwhm : callable
        Functions of TAI seconds since ``start`` (vectorised), relative transparency and arcsec.
    rng : numpy.random.Generator
    cadence, exptime : float
        s.
    n_stars : int
        Stars per camera.
    zp_noise : float
        Per-star zero-point noise, mag.
    cameras : sequence of str
    config_id, first_frame : int

    Returns
    -------
    list of str
        The paths written.
    """
    os.makedirs(directory, exist_ok=True)
    zp0 = rng.uniform(24.5, 25.5, (len(cameras), n_stars))
    paths = []
    for i, t in enumerate(np.arange(0.0, duration, cadence)):
        grid = np.linspace(t, t + exptime, 201)
        mean_t = float(np.mean(transparency(grid)))
        mean_fwhm = float(np.mean(fwhm(grid)))
        for c, camera in enumerate(cameras):
            zp = zp0[c] + 2.5 * np.log10(mean_t) + rng.normal(0.0, zp_noise, n_stars)
            path = os.path.join(
                os.fspath(directory), f"proc-gimg-{camera}-{first_frame + i:04d}.fits"
            )
            write_proc_gimg(
                path,
                date_obs=start + t * u.s,
                exptime=exptime,
                fwhm=mean_fwhm,
                fwhm_fit=mean_fwhm,
                source_id=(c + 1) * 10**6 + np.arange(n_stars),
                zp=zp,
                config_id=config_id,
                camera=camera,
            )
            paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Command line: pyapred guider
# --------------------------------------------------------------------------------------------
def _parse_fibers(text: str | None) -> list[int] | None:
    if not text:
        return None
    fibers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            fibers.extend(range(int(a), int(b) + 1))
        elif part:
            fibers.append(int(part))
    return fibers


def _exposure_header(path) -> fits.Header:
    """The header of an APOGEE exposure file (``apR-*.apz``: HDU 1) that gives its read times."""
    path = os.fspath(path)
    with _fits_errors(path), fits.open(path, memmap=False) as hdul:
        for hdu in hdul[:2]:
            if "DATE-OBS" in hdu.header and "INTOFF" in hdu.header:
                return hdu.header.copy()
    raise InputError(path, "HDU 0-1 DATE-OBS, INTOFF", "the exposure header with its read timing")


def run(args) -> int:
    """Run ``pyapred guider``; 0 agreement, 1 something flagged, 2 bad input (raised)."""
    from .io.atomic import writable_folder

    writable_folder(os.path.dirname(os.path.abspath(args.out)), path=args.out)
    try:
        fibers = _parse_fibers(args.fibers)
    except ValueError:
        raise InputError("--fibers", "--fibers", "indices such as 10,20-25", args.fibers) from None
    data = _load_product(args.product, args.group)
    read_times = None
    if args.exposure:
        read_times = _exposure_header(args.exposure)
    elif data["read_times"] is None and not data["header"]:
        raise InputError(
            args.product, "metadata DATE-OBS, INTOFF", "the exposure's read times",
            "none: pass --exposure apR-*.apz (or any FITS with its header)",
        )  # fmt: skip
    try:
        result = compare(
            data, args.guider, read_times=read_times, fibers=fibers, fit_lag=args.lag,
            telescope=args.telescope, diameter=args.diameter, timesys=args.timesys,
        )  # fmt: skip
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(args.product, "omega", "omega matching the exposure", str(exc)) from None
    try:
        result.plot(args.out)
    except ImportError as exc:  # matplotlib is the optional 'plots' extra
        raise InputError(args.out, "--out", "matplotlib installed: pip install 'pyapred[plots]'",
                         str(exc)) from None  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(f"pyapred guider: {len(result.series)} guider frames, {len(result.fibers)} fibers")
        if np.isfinite(result.lag_err) or args.lag:
            print(f"  lag {result.lag:+.2f} +/- {result.lag_err:.2f} s; clock: {result.clock}")
        for i, f in enumerate(result.fibers):
            print(
                f"  fiber {f}: scale {result.scale[i]:.4f} +/- {result.scale_err[i]:.4f}, "
                f"r {result.correlation[i]:.3f}, chi2/dof {result.chi2_dof[i]:.2f}, "
                f"rms {result.residual_rms[i]:.4f}, "
                f"explained {result.explained_variance[i]:.2f}"
                + (" DISAGREE" if result.disagree[i] else "")
            )
        for path, reason in result.dropped:
            print(f"  dropped {path}: {reason}")
        print(f"  flags: {', '.join(result.flags) or 'none'}; figure: {args.out}")
    return 1 if result.flags else 0
