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
        # NumPy's "lam value too large", TypeError for 4.0 (with omega), and a rate of 2.
        ({"flux": np.r_[1e30, 1.0, 1.0]}, "flux: expected at most 1e\\+15 counts"),
        ({"n_reads": 6.0}, "n_reads: expected an integer >= 2"),
        ({"n_reads": True, "omega": None}, "n_reads: expected an integer >= 2"),
        ({"cosmic_ray_rate": 2.0}, r"cosmic_ray_rate: expected a probability in \[0, 1\]"),
    ],
)
def test_arguments_no_simulation_can_use_are_refused_by_name(change, match):
    args = {"flux": np.full(3, 100.0), "read_noise": 5.0, "omega": np.ones(5),
            "rng": np.random.default_rng(0)} | change  # fmt: skip
    with pytest.raises(ValueError, match=match):
        simulate_ramps(args.pop("flux"), args.pop("read_noise"), **args)


def test_omega_patterns_refuse_what_is_no_pattern():
    """NumPy's errors for 5.5 or -1 differences named nothing; periods of inf gave NaN."""
    from pyapred.simulate import omega_cloud, omega_drift, omega_uniform

    rng = np.random.default_rng(0)
    for call in (lambda: omega_uniform(5.5, 0.3, rng), lambda: omega_drift(-1, 0.1),
                 lambda: omega_cloud(True, 0.2, 0, 1)):  # fmt: skip
        with pytest.raises(ValueError, match="n_diff: expected an integer >= 1"):
            call()
    for kwargs, name in (({"periods": np.inf}, "periods"), ({"phase": np.nan}, "phase")):
        with pytest.raises(ValueError, match=name + ": expected finite values"):
            omega_drift(5, 0.1, **kwargs)
    assert omega_drift(np.int64(5), 0.1).shape == (5,) and omega_uniform(3, 0.2, rng).size == 3


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


def test_an_interrupted_simulation_leaves_no_partial_exposure(tmp_path, monkeypatch):
    """Ctrl-C after chip R left its .apz and trace file, and the rerun refused them ("expected a
    new file (or pass --overwrite)")."""
    import pyapred.simulate as simulate

    written = []
    real = simulate._write_raw

    def interrupted(*args, **kwargs):
        if written:
            raise KeyboardInterrupt
        written.append(real(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(simulate, "_write_raw", interrupted)
    sim = simulate.simulate_exposure("clouds", seed=1, n_fibers=10, n_columns=32, ref_columns=0,
                                     n_reads=5)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        simulate.write_simulated_exposure(sim, tmp_path)
    assert written and sorted(tmp_path.iterdir()) == []


def test_simulated_trace_heights_are_in_dn_per_read(tmp_path):
    """The trace format's height is DN per read; the simulated files held e- per read."""
    from pyapred.simulate import simulate_exposure, write_simulated_exposure
    from pyapred.traces import read_trace_file

    sim = simulate_exposure("clouds", seed=1, n_fibers=4, n_columns=16, ref_columns=0,
                            n_reads=4, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    chip = sim.chips["R"]
    height = read_trace_file(paths["traces"][0]).height
    np.testing.assert_allclose(height[: chip.fiber_flux.shape[0]], chip.fiber_flux / chip.gain)


def test_read_noise_in_the_units_of_the_reads_gives_calibrated_fits():
    """The reads are in DN and ``read_noise`` in e-: a fit of ``sim.reads`` with gain 2 needs
    ``read_noise_dn`` (``read_noise`` there overstated the errors by the gain: z std 0.76)."""
    from pyapred import fit_constant

    sim = simulate_ramps(np.full(20_000, 200.0), 12.0, n_reads=20, gain=2.0,
                         rng=np.random.default_rng(3))  # fmt: skip
    np.testing.assert_allclose(sim.read_noise_dn, 6.0)
    fit = fit_constant(sim.reads, sim.read_noise_dn, gain=sim.gain)
    z = (fit.flux * sim.gain - sim.flux) / (np.sqrt(fit.flux_var) * sim.gain)
    assert 0.98 < np.std(z) < 1.02
    assert 0.98 < np.mean(fit.chi2 / (fit.n_diff - 1)) < 1.02
    assert "read_noise_dn 6 DN" in repr(sim)
