"""APOGEE read times for the guider: from a header, a RawExposure, or a Time array, in TAI."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from astropy import units as u
from astropy.time import Time

from pyapred import guider
from pyapred.errors import InputError
from pyapred.guider.timing import exposure_read_times
from pyapred.io.apz import read_times_from_header

from .scenario import INTOFF, N_READS, START, exposure_header


def test_exposure_header_without_read_period_is_a_clear_error(sky):
    header = exposure_header()
    del header["INTOFF"]
    with pytest.raises(InputError) as err:
        guider.compare(sky.fit, sky.frames, read_times=header)
    assert err.value.field == "INTOFF"


def test_unknown_time_system_of_the_exposure_is_a_clear_error(sky):
    with pytest.raises(InputError, match="TIMESYS"):
        guider.compare(sky.fit, sky.frames, read_times=exposure_header(TIMESYS="GMT+1"))


def test_header_read_times_are_tai_with_intdelay_zero_when_absent():
    header = exposure_header(TIMESYS="UTC")
    times, returned = exposure_read_times(header)
    assert returned is header and times.scale == "tai" and times.size == N_READS
    utc_start = Time(START.isot, scale="utc")  # DATE-OBS read as UTC, as the header says
    assert abs((times[0] - utc_start).sec) < 1e-6
    np.testing.assert_allclose(np.diff((times - times[0]).sec), INTOFF, atol=1e-6)
    # The same rule as the raw reader's, in the header's scale; INTDELAY shifts every read.
    same = read_times_from_header(header)
    assert same.scale == "utc" and abs((same.tai[-1] - times[-1]).sec) < 1e-6
    delayed, _ = exposure_read_times(exposure_header(TIMESYS="UTC", INTDELAY=0.1))
    np.testing.assert_allclose((delayed - times).sec, 0.1, atol=1e-6)
    as_tai, _ = exposure_read_times(header, timesys="TAI")
    assert abs((times[0] - as_tai[0]).sec - 37.0) < 1e-6


def test_read_times_from_a_raw_exposure_and_too_few_reads():
    times = START + np.arange(5) * INTOFF * u.s
    raw = SimpleNamespace(read_times=times, header=exposure_header(NREAD=5))
    np.testing.assert_allclose((exposure_read_times(raw)[0] - times).sec, 0.0, atol=1e-9)
    recomputed, header = exposure_read_times(raw, timesys="UTC")  # from the header, as UTC
    assert header is raw.header and abs((recomputed[0] - times[0]).sec - 37.0) < 1e-6
    no_count = exposure_header()
    del no_count["NREAD"]
    for header in (exposure_header(NREAD=2), no_count):
        with pytest.raises(InputError) as err:
            exposure_read_times(header)
        assert err.value.field == "NREAD"
    # A corrupt count asked for gigabytes of read times (a MemoryError, or the OOM killer).
    for count in (1e9, 2.5, -3):
        with pytest.raises(InputError, match=r"NREAD: expected .* whole number 1 to 10000"):
            read_times_from_header(exposure_header(NREAD=count))
    with pytest.raises(ValueError, match="strictly increasing"):
        exposure_read_times(times[::-1])


def test_an_implausible_intdelay_is_refused_naming_the_card():
    """A corrupt INTDELAY of 1e7 s moved every read time by 115 days, into the product's read
    times and the guider comparison. (-999 and below are SDSS's "no value": no delay.)"""
    header = {"DATE-OBS": "2025-04-20T04:00:00", "INTOFF": 10647, "INTDELAY": 2e6}
    with pytest.raises(InputError, match="INTDELAY: expected a delay of at most 1e6 s"):
        read_times_from_header(header, 3)


def test_a_header_of_more_reads_gives_the_last_ones():
    """An ar3Dcal product's omega covers the last reads (ApogeeReduction.jl drops the first):
    the raw header's times started at its first read, shifting every window by the dropped
    reads' time."""
    header = {"DATE-OBS": "2025-05-01T04:00:00", "TIMESYS": "TAI", "INTOFF": 10647, "NREAD": 47}
    times, _ = exposure_read_times(header, n_reads=46)
    whole, _ = exposure_read_times(header, n_reads=47)
    assert times.size == 46 and (times - whole[1:]).sec.max() == 0.0
