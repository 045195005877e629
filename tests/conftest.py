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
