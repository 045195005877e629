"""APOGEE read times for the guider comparison, on the TAI scale.

An exposure's read times come as an astropy ``Time`` array, a FITS header (through
:func:`pyapred.io.apz.read_times_from_header`, the rule the raw reader uses) or the I/O layer's
``RawExposure``; :func:`exposure_read_times` turns any of them into TAI read start times.
APOGEE headers say ``TIMESYS = 'UTC'`` (UTC is assumed when the card is missing); each header's
``TIMESYS`` is honoured and can be overridden to test the hypothesis that ``DATE-OBS`` is TAI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from astropy.io import fits
from astropy.time import Time

from ..errors import InputError
from ..io.apz import read_times_from_header
from .frames import header_number

__all__ = ["MIN_READS", "exposure_read_times", "seconds_since"]

#: Fewest reads of an exposure given by its header (two read-difference windows).
MIN_READS = 3


def seconds_since(times: Time, t0: Time) -> np.ndarray:
    """TAI seconds from ``t0`` to ``times`` (exact ``Time`` arithmetic, then float64).

    Parameters
    ----------
    times : astropy.time.Time, scalar or ``(n,)``
    t0 : astropy.time.Time, scalar

    Returns
    -------
    ndarray, float64, ``(n,)``
    """
    return np.atleast_1d((times.tai - t0.tai).sec).astype(np.float64)


def _header_read_times(header: Mapping, n_reads: int | None, timesys: str | None) -> Time:
    """TAI read times from an exposure header; ``INTDELAY`` is 0 when absent. A header whose
    ``NREAD`` is below ``n_reads`` is another exposure's (an ar3Dcal product's may be above it:
    ApogeeReduction.jl drops the first reads)."""
    stated = header_number(header.get("NREAD")) if n_reads is not None else math.nan
    if stated > 0 and stated < n_reads:
        raise InputError("<header>", "NREAD", f"at least the {n_reads} reads of the omega "
                         "compared (the same exposure)", f"{stated:g}")  # fmt: skip
    reads = n_reads
    if n_reads is not None and stated > n_reads:
        # The omega of an ar3Dcal product covers the last n_reads (the first were dropped): its
        # windows start there, not at the first read (every window was shifted by the dropped
        # reads' time).
        reads = np.arange(int(stated) - n_reads, int(stated))
    times = read_times_from_header(header, reads, timesys=timesys, default_intdelay=0.0)
    if times.size < MIN_READS:
        raise InputError("<header>", "NREAD", f"at least {MIN_READS} reads", repr(times.size))
    return times.tai


def exposure_read_times(
    exposure, *, n_reads: int | None = None, timesys: str | None = None
) -> tuple[Time, Mapping | None]:
    """Read times (TAI) and header of an exposure given in any of the accepted forms.

    Parameters
    ----------
    exposure : astropy.time.Time, Mapping, or object with ``read_times`` (and ``header``)
        A ``Time`` array of read start times; a FITS header / dict with ``DATE-OBS``,
        ``INTOFF`` (ms), optionally ``TIMESYS`` (UTC if absent) and ``INTDELAY`` (s, 0 if
        absent) (see :func:`pyapred.io.apz.read_times_from_header`); or the I/O layer's
        ``RawExposure`` (``pyapred.io.read_apz``), whose ``read_times`` are used unless
        ``timesys`` is given.
    n_reads : int, optional
        For headers: the number of reads (default ``NREAD``, else ``NFRAMES``).
    timesys : {"UTC", "TAI", "TT"}, optional
        Overrides ``TIMESYS``: the read times are recomputed from the header.

    Returns
    -------
    (Time, Mapping or None)
        ``(n_reads,)`` TAI read times and the header when known.

    Raises
    ------
    pyapred.errors.InputError
        A header without usable ``DATE-OBS``, ``TIMESYS`` or ``INTOFF``, or with fewer than
        ``MIN_READS`` reads.
    ValueError
        Times that are not a 1-D, strictly increasing array of at least 2 reads.
    """
    header = None
    if isinstance(exposure, Time):
        times = exposure
    elif isinstance(exposure, (Mapping, fits.Header)):
        header = exposure
        times = _header_read_times(exposure, n_reads, timesys)
    elif hasattr(exposure, "read_times"):
        times, header = exposure.read_times, getattr(exposure, "header", None)
        if not isinstance(times, Time):
            raise ValueError("exposure.read_times: expected an astropy Time array")
        if timesys is not None and header is not None:
            times = _header_read_times(header, times.size, timesys)
    else:
        raise ValueError(
            "exposure: expected an astropy Time array, a FITS header or an object with read_times"
        )
    times = times.tai
    if times.ndim != 1 or times.size < 2:
        raise ValueError(f"read_times: expected a 1-D Time array of >= 2 reads, got {times.shape}")
    if not np.all(np.diff(seconds_since(times, times[0])) > 0):
        raise ValueError("read_times: expected strictly increasing times")
    return times, header
