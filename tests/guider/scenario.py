"""The sky shared by the guider tests: a cloud passing and the seeing drifting during one
APOGEE exposure, seen by SDSS-V guider frames and by the fiber."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.time import Time

from pyapred import guider

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "guider-plate-era"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason="../shared/fixtures (real plate-era guider frames) absent"
)

N_READS, INTOFF = 47, 10.647  # an APOGEE exposure: 47 reads of 10.647 s
START = Time("2025-05-01T04:00:00", scale="tai")  # true TAI start of the exposure
OFFSET = 150.0  # the guider starts this long before the exposure


def transparency(t):
    """A cloud passing mid-exposure (t: TAI s since the exposure start)."""
    return 1.0 - 0.3 * np.exp(-(((t - 250.0) / 60.0) ** 2))


def seeing(t):
    """Seeing drifting from 1.2 to 1.8 arcsec over the exposure."""
    return 1.2 + 0.6 * t / 490.0


def true_window_means(read_start):
    """Exact mean flux-in-fiber (APO, 3 arcsec) over each read-difference window."""
    t = read_start + 0.5 * INTOFF  # the middle of the slit is sampled half a read later
    means = []
    for lo, hi in zip(t[:-1], t[1:], strict=True):
        grid = np.linspace(lo, hi, 2001)
        means.append(np.mean(transparency(grid) * guider.fiber_coupling(seeing(grid), 3.0)))
    return np.array(means)


def write_frames(directory, rng, **kwargs):
    settings = dict(
        start=START - OFFSET * u.s,
        duration=800.0,
        transparency=lambda t: transparency(t - OFFSET),
        fwhm=lambda t: seeing(t - OFFSET),
        rng=rng,
        cameras=("gfa2n",),
        n_stars=30,
    )
    settings.update(kwargs)
    return guider.simulate_guider_frames(directory, **settings)


def exposure_header(**cards):
    header = {"DATE-OBS": START.isot, "TIMESYS": "TAI", "INTOFF": 10647, "NREAD": N_READS}
    header.update(cards)
    return header
