import pytest


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``julia`` where no Julia runtime can be started."""
    from pyapred.solver._julia import _missing_reason

    reason = _missing_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("julia") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def seeing_change():
    """A simulated exposure under a seeing change (1.2 to 3.6 arcsec: the red-to-blue omega
    difference changes by 3 %), fitted jointly over the three chips with the chromatic model:
    ``(sim, result)``. Shared by the stage, product and guider tests of the chromatic model."""
    from pyapred.exposure import ChipExposure, FitOptions, run_exposure
    from pyapred.simulate import simulate_exposure

    sim = simulate_exposure("seeing-change", seed=5, n_fibers=80, n_columns=256, ref_columns=0,
                            n_reads=30)  # fmt: skip
    chips = {
        name: ChipExposure(name, c.reads, c.read_noise, gain=c.gain, saturation=c.saturation)
        for name, c in sim.chips.items()
    }
    traces = {name: c.traces for name, c in sim.chips.items()}
    result = run_exposure(chips, traces, FitOptions(chromatic=True, joint_chips=True))
    return sim, result
