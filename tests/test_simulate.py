"""``simulate_ramps``: the arguments it takes, refused by name (found by fuzzing the API)."""

from __future__ import annotations

import numpy as np
import pytest

from pyapred import simulate_ramps


@pytest.mark.parametrize(
    ("change", "match"),
    [
        # Every read inf or NaN (a divide-by-zero warning the only sign), or taken as given.
        ({"gain": 0.0}, "gain: expected finite values > 0"),
        ({"gain": np.nan}, "gain: expected finite values > 0"),
        ({"gain": -1.0}, "gain: expected finite values > 0"),
        ({"gain": np.ones(3)}, "gain: expected one number"),
        ({"read_noise": np.nan}, "read_noise: expected finite values >= 0"),
        ({"read_noise": -15.0}, "read_noise: expected finite values >= 0"),
        ({"read_noise": np.ones(4)}, "read_noise: expected a shape broadcastable"),
        # No photons at all, or NumPy's "lam < 0 or lam contains NaNs" / broadcast messages.
        ({"read_times": np.zeros(6)}, "read_times: expected 6 increasing times"),
        ({"read_times": np.arange(6.0)[::-1]}, "read_times: expected 6 increasing times"),
        ({"read_times": np.arange(5.0)}, "read_times: expected 6 increasing times"),
        ({"flux": np.nan}, "flux: expected finite values >= 0"),
        ({"saturation": np.nan}, "saturation: expected finite values > 0"),
        ({"cosmic_ray_rate": np.nan}, "cosmic_ray_rate: expected finite values >= 0"),
        ({"cosmic_ray_charge": (-500.0, -100.0)}, "cosmic_ray_charge: expected finite values"),
        ({"cosmic_ray_charge": (500.0, 100.0)}, r"cosmic_ray_charge: expected \(low, high\)"),
        ({"n_reads": 0, "omega": None}, "n_reads: expected an integer >= 2"),
    ],
)
def test_arguments_no_simulation_can_use_are_refused_by_name(change, match):
    args = {"flux": np.full(3, 100.0), "read_noise": 5.0, "omega": np.ones(5),
            "rng": np.random.default_rng(0)} | change  # fmt: skip
    with pytest.raises(ValueError, match=match):
        simulate_ramps(args.pop("flux"), args.pop("read_noise"), **args)


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="rng: expected a numpy.random.Generator"):
        simulate_ramps(np.ones(3), 5.0, n_reads=4, rng=1)


def test_valid_arguments_still_simulate():
    sim = simulate_ramps(
        np.full(3, 100.0), np.array([5.0, 6.0, 7.0]), omega=np.ones(5), gain=2.0,
        read_times=np.arange(6.0) * 10.6, rng=np.random.default_rng(0), saturation=1e5,
        cosmic_ray_rate=0.01,
    )  # fmt: skip
    assert sim.reads.shape == (6, 3) and np.isfinite(sim.reads).all() and sim.gain == 2.0


@pytest.mark.parametrize("mjd", [60781, 60000])
def test_a_simulated_file_starts_in_the_night_of_its_name(tmp_path, mjd):
    """``DATE-OBS`` of a simulated raw file lies in the SDSS night its name and EXPNUM encode
    (the night of a time is floor(MJD + 0.3)); it was a fixed date four nights later."""
    from astropy.time import Time

    from pyapred.io import read_apz
    from pyapred.simulate import write_simulated_apz

    path = write_simulated_apz(tmp_path, np.zeros((3, 4, 8)), mjd=mjd)
    raw = read_apz(path)
    assert raw.mjd == mjd
    assert int(np.floor(Time(raw.header["DATE-OBS"], scale="utc").mjd + 0.3)) == mjd
