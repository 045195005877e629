"""The ``sky`` fixture: guider frames and a fitted omega of the same sky, made once."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import pyapred
from pyapred import guider

from .scenario import INTOFF, N_READS, true_window_means, write_frames


@pytest.fixture(scope="package")
def sky(tmp_path_factory):
    """SDSS-V guider frames of a transparency dip plus a seeing drift, and omega fitted from
    ramps that saw the same sky."""
    rng = np.random.default_rng(2024)
    directory = tmp_path_factory.mktemp("gcam")
    write_frames(directory, rng, cameras=("gfa1n", "gfa5n"), n_stars=20)
    frames = guider.read_guider_frames(directory)
    truth = true_window_means(np.arange(N_READS) * INTOFF)
    sim = pyapred.simulate_ramps(rng.uniform(3000, 5000, 300), 15.0, omega=truth, rng=rng)
    fit = pyapred.fit_omega(sim.reads, 15.0)
    return SimpleNamespace(directory=directory, frames=frames, truth=truth, fit=fit)
