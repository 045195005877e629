"""Guider comparison: guider frames -> expected flux in a fiber -> comparison with the fitted omega.

The guider measures transparency and seeing several times a minute. For a circular Gaussian PSF
of width ``FWHM`` centered on a fiber of diameter ``D`` the fraction of light entering the fiber is
``1 - 2**(-(D / FWHM)**2)``; times the transparency ``T`` and normalised by its maximum this is the
guider's prediction of omega (Li, McKinnon, Saydjari et al., section IV). This package

1. reads SDSS-V ``proc-gimg-gfa{1-6}{n|s}-NNNN.fits`` camera files, the nightly
   ``gcam-{mjd}.fits`` summary and plate-era ``gimg``/processed ``gimg`` frames
   (:func:`read_guider_frames`; :mod:`~pyapred.guider.frames`);
2. turns them into a flux-in-fiber time series (:func:`guider_series`;
   :mod:`~pyapred.guider.fiber_flux`, with :func:`fiber_coupling` and :func:`flux_in_fiber`);
3. averages that series over each read-difference window of an APOGEE exposure
   (:func:`predict_omega`; :mod:`~pyapred.guider.windows`), in TAI, from read times given as
   ``Time``, a header or a ``RawExposure`` (:func:`exposure_read_times`;
   :mod:`~pyapred.guider.timing`, with :func:`pyapred.io.apz.read_times_from_header`);
4. fits it to the fitted omega, taken from a fit, arrays or a product
   (:mod:`~pyapred.guider.omega`), optionally with a time lag, and reports the agreement
   (:func:`compare` -> :class:`GuiderComparison`; :mod:`~pyapred.guider.compare`).

:mod:`~pyapred.guider.synthetic` writes SDSS-V frames (:func:`write_proc_gimg`,
:func:`simulate_guider_frames`); :mod:`~pyapred.guider.cli` is ``pyapred guider``.

Times: guider ``DATE-OBS`` is TAI (``TIMESYS='TAI'``; plate-era strings end in a misleading ``Z``).
APOGEE ``DATE-OBS`` is UTC by its header; each file's ``TIMESYS`` is honoured and everything is
compared in TAI (``../shared/docs/formats.md`` section 4). A positive ``lag`` means the exposure's
read times must be moved later to line up with the guider.

astropy and scipy are imported here; ``import pyapred`` does not import this package.
"""

from ..io.apz import read_times_from_header
from .compare import GuiderComparison, compare
from .fiber_flux import (
    FIBER_DIAMETER_ARCSEC,
    GuiderSeries,
    chromatic_prediction,
    fiber_coupling,
    flux_in_fiber,
    guider_series,
)
from .frames import (
    GuiderFrame,
    GuiderFrames,
    read_gcam_summary,
    read_guider_frame,
    read_guider_frames,
)
from .synthetic import simulate_guider_frames, write_proc_gimg
from .timing import exposure_read_times
from .windows import GuiderPrediction, predict_omega

__all__ = [
    "FIBER_DIAMETER_ARCSEC",
    "GuiderComparison",
    "GuiderFrame",
    "GuiderFrames",
    "GuiderPrediction",
    "GuiderSeries",
    "chromatic_prediction",
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
