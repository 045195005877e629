"""Fixtures of the stage tests: one small simulated chip and its traces."""

import pytest


@pytest.fixture(scope="module")
def small_chip():
    """Chip R of a small cloudy exposure (40 fibers, 96 + 16 columns, 20 reads) as a
    ``ChipExposure``, with its ``Traces``."""
    from pyapred.exposure import ChipExposure
    from pyapred.simulate import simulate_exposure

    sim = simulate_exposure("clouds", seed=8, chips=("R",), n_fibers=40, n_columns=96,
                            ref_columns=16, n_reads=20)  # fmt: skip
    c = sim.chips["R"]
    return ChipExposure("R", c.reads, c.read_noise, gain=c.gain, saturation=c.saturation), c.traces
