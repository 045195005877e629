"""Synthetic SDSS-V guider frames, for tests, simulations and examples.

:func:`write_proc_gimg` writes one ``proc-gimg-gfa{1-6}{n|s}-NNNN.fits`` camera file with the
documented keywords; :func:`simulate_guider_frames` writes the frames that see a given
transparency and seeing history, which :func:`pyapred.guider.read_guider_frames` reads back.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

from ..io.atomic import atomic_path

__all__ = ["simulate_guider_frames", "write_proc_gimg"]


def write_proc_gimg(
    path: str | os.PathLike,
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
    if not isinstance(date_obs, Time):
        raise TypeError(f"date_obs: expected an astropy Time, got {type(date_obs).__name__}")
    if not 0 < float(exptime) < math.inf:
        raise ValueError(f"exptime: expected a time > 0 (s), got {exptime!r}")

    def card(value) -> float:  # SDSS writes "no value" as -999, never NaN (FITS has no NaN)
        return -999.0 if value is None or not math.isfinite(float(value)) else float(value)

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
    header["FWHM"] = (card(fwhm), "Mesured FWHM [arcsec]")
    header["FWHMFIT"] = (card(fwhm_fit), "Fitted FWHM [arcsec]")
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
    with atomic_path(path, overwrite=True, keep_suffix=True) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


def simulate_guider_frames(
    directory: str | os.PathLike,
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
    for name, value in (("duration", duration), ("cadence", cadence), ("exptime", exptime)):
        if not 0 < float(value) < math.inf:
            raise ValueError(f"{name}: expected a time > 0 (s), got {value!r}")
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
