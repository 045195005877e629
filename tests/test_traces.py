import warnings
from dataclasses import fields

import numpy as np
import pytest

from pyapred.errors import InputError
from pyapred.traces import (
    Traces,
    fiber_id,
    fiber_index,
    fpi_fiber_indices,
    parse_trace_file_name,
    pixel_fiber_map,
    read_trace_file,
    select_fit_pixels,
    trace_brightness,
    write_trace_file,
)


def straight_traces(n_fibers=5, n_columns=8, spacing=6.6, sigma=1.1, first=10.0):
    y = first + spacing * np.arange(n_fibers)[:, None] + np.zeros((1, n_columns))
    return Traces(y_center=y, sigma=sigma)


def test_fiber_numbering_and_fpi_fibers():
    assert fiber_index(300) == 0 and fiber_index(1) == 299
    assert fiber_id(fiber_index(123)) == 123
    # 301 was -1 (the last fiber of the array it indexed), 2.5 was 297.5, True 299.
    for wrong in (301, 0, 2.5, True, "7", [1, 301], float("nan")):
        with pytest.raises(ValueError, match="fiber_id: expected whole fiberIds 1 to 300"):
            fiber_index(wrong)
    # fiberIds 75 and 225 (APO), 82 and 213 (LCO) are the FPI fibers.
    assert sorted(fpi_fiber_indices("apo")) == [75, 225]
    assert sorted(fpi_fiber_indices("LCO")) == [87, 218]
    with pytest.raises(ValueError, match="telescope"):
        fpi_fiber_indices("keck")


def test_from_trace_params_accepts_both_layouts_and_converts_to_0_based():
    n_columns, n_fibers = 6, 300
    params = np.zeros((n_columns, n_fibers, 3))  # Julia [x, fiberIndx, p]
    params[:, :, 0] = 1.0
    params[:, :, 1] = 11.0 + np.arange(n_fibers)[None, :]
    params[:, :, 2] = 1.2
    julia = Traces.from_trace_params(params, telescope="apo")
    h5py_order = Traces.from_trace_params(params.T, telescope="apo")
    assert julia.y_center.shape == (n_fibers, n_columns)
    np.testing.assert_array_equal(julia.y_center, h5py_order.y_center)
    assert julia.y_center[0, 0] == 10.0  # 1-based 11 is 0-based row 10
    assert np.flatnonzero(julia.excluded).tolist() == [75, 225]
    centers = Traces.from_centers(params[:, :, 1], sigma=1.0, telescope=None)
    np.testing.assert_array_equal(centers.y_center, julia.y_center)
    assert not centers.excluded.any()
    # The telescope is required (a forgotten one fitted the FPI fibers as bright fibers).
    for build in (Traces.from_trace_params, Traces.from_centers):
        with pytest.raises(TypeError, match="telescope"):
            build(params if build is Traces.from_trace_params else params[:, :, 1])


def test_traces_validate_their_arrays():
    """In memory as in a trace file: a reversed or crossing pair of fibers would attach fluxes to
    the wrong fiberIds without a word; 0 or more than 300 fibers, widths outside [0.1, 20] px
    and arrays of the wrong shape or kind failed later, inside NumPy or after the whole fit."""
    rising = np.array([[5.0] * 3, [12.0] * 3])
    with pytest.raises(ValueError, match="sigma"):
        Traces(y_center=rising, sigma=0.0)
    with pytest.raises(ValueError, match="excluded"):
        Traces(y_center=rising, sigma=1.0, excluded=[True])
    with pytest.raises(ValueError, match=r"sigma: expected widths in \[0.1, 20\] px"):
        Traces(y_center=rising, sigma=100.0)
    with pytest.raises(ValueError, match=r"sigma: expected a number .* got shape \(5,\)"):
        Traces(y_center=rising, sigma=np.ones(5))
    with pytest.raises(ValueError, match="y_center: expected numbers"):
        Traces(y_center=[["a", "b"]], sigma=1.0)
    with pytest.raises(ValueError, match="1 to 300 fibers"):
        Traces(y_center=np.zeros((0, 3)), sigma=1.0)
    with pytest.raises(ValueError, match="1 to 300 fibers"):
        Traces(y_center=np.arange(400.0)[:, None] * 5, sigma=1.0)
    with pytest.raises(ValueError, match="1 to 300 fibers"):
        Traces(y_center=np.zeros((2, 0)), sigma=1.0)
    with pytest.raises(ValueError, match="first fiberId 299 at 5.00, not above fiberId 300 at 12"):
        Traces(y_center=rising[::-1], sigma=1.0)
    crossing = rising.copy()
    crossing[1, 2] = 4.0
    with pytest.raises(ValueError, match="rising with the fiber index.* column 2"):
        Traces(y_center=crossing, sigma=1.0)
    Traces(y_center=rising, sigma=[[1.1], [1.2]])  # a width per fiber broadcasts


def test_profile_is_pixel_integrated_and_normalised():
    traces = straight_traces(n_fibers=1, n_columns=1, first=20.3)
    rows = np.arange(0, 40)[None, None, :]
    total = sum(traces.profile(np.full((1, 1), r)) for r in rows.ravel())
    assert total[0, 0] == pytest.approx(1.0, abs=1e-12)
    # Symmetric about the center 20.3: row 20 holds more than row 21.
    assert traces.profile(np.full((1, 1), 20)) > traces.profile(np.full((1, 1), 21))


def test_pixel_map_assigns_nearest_trace_and_marks_gaps_as_background():
    traces = straight_traces(n_fibers=3, spacing=12.0, sigma=1.0)
    pmap = pixel_fiber_map(traces, ny=50, halfwidth=2.5)
    assert pmap.fiber.shape == (50, 8)
    assert pmap.fiber[10, 0] == 0 and pmap.fiber[22, 0] == 1 and pmap.fiber[34, 0] == 2
    assert pmap.fiber[16, 0] == -1  # halfway between traces 12 px apart
    assert pmap.fiber[0, 0] == -1 and pmap.fiber[49, 0] == -1
    assert pmap.purity[10, 0] == pytest.approx(1.0)


def test_pixel_map_bright_neighbour_dominates_a_faint_fibers_wing():
    traces = straight_traces(n_fibers=2, spacing=5.0, sigma=1.2)
    equal = pixel_fiber_map(traces, ny=30, halfwidth=3.0)
    brightness = np.array([[1.0], [1000.0]]) * np.ones((1, 8))
    skewed = pixel_fiber_map(traces, ny=30, brightness=brightness, halfwidth=3.0)
    row = 12  # 2 px above fiber 0, 3 px below fiber 1
    assert equal.fiber[row, 0] == 0
    assert skewed.fiber[row, 0] == 1
    assert skewed.purity[10, 0] < 0.95 < equal.purity[10, 0]


def test_fiber_id_refuses_what_is_no_fiber_index():
    """300 gave fiberId 0, -1 gave 301 and 2.5 gave 297.5, as fiber_index once did the other
    way."""
    assert fiber_id(0) == 300 and fiber_id(np.array([299, 150])).tolist() == [1, 150]
    for index in (300, -1, 2.5, np.nan, "7", [0, 300]):
        with pytest.raises(ValueError, match="fiber_index: expected whole fiber indices 0 to 299"):
            fiber_id(index)


def test_pixel_map_and_fit_pixels_check_their_arguments():
    """The kernels check no bounds: a small snr or bad was read past its end (another answer
    each call), a NaN brightness made the whole map background, a NaN halfwidth gave NumPy's
    error, a negative one a map of background. Each is now a ValueError naming it."""
    traces = straight_traces()
    pmap = pixel_fiber_map(traces, 40)
    snr = np.full((40, 8), 100.0)
    assert select_fit_pixels(traces, pmap, snr).count.tolist() == [8] * 5
    for kwargs, name in (({"snr": np.full((1, 1), 100.0)}, "snr"),
                         ({"snr": np.full(40, 100.0)}, "snr"),
                         ({"snr": np.full((39, 8), 100.0)}, "snr"),
                         ({"bad": np.zeros((1, 1), bool)}, "bad"),
                         ({"core_halfwidth": np.nan}, "core_halfwidth"),
                         ({"min_snr": -1.0}, "min_snr"),
                         ({"max_pixels": 0}, "max_pixels")):  # fmt: skip
        with pytest.raises(ValueError, match=name + ": expected"):
            select_fit_pixels(traces, pmap, **{"snr": snr, **kwargs})
    narrow = pixel_fiber_map(Traces(traces.y_center[:, :4], traces.sigma[:, :4]), 40)
    with pytest.raises(ValueError, match=r"pixel_map: expected fiber and purity of \(40, 8\)"):
        select_fit_pixels(traces, narrow, snr)
    for kwargs, name in (({"brightness": np.r_[np.nan, np.ones(4)][:, None]}, "brightness"),
                         ({"brightness": np.ones((3, 8))}, "brightness"),
                         ({"halfwidth": np.nan}, "halfwidth"), ({"halfwidth": -1.0}, "halfwidth"),
                         ({"halfwidth": np.inf}, "halfwidth"), ({"ny": 0}, "ny"),
                         ({"ny": 40.0}, "ny")):  # fmt: skip
        with pytest.raises(ValueError, match=name + ": expected"):
            pixel_fiber_map(traces, **{"ny": 40, **kwargs})
    for rate in (np.ones((3, 3)), np.ones(40)):
        with pytest.raises(ValueError, match="rate: expected"):
            trace_brightness(traces, rate)


def test_select_fit_pixels_applies_every_cut():
    traces = straight_traces(n_fibers=3, n_columns=10, spacing=8.0, sigma=1.0)
    traces = Traces(traces.y_center, traces.sigma, excluded=[False, False, True])
    ny = 40
    pmap = pixel_fiber_map(traces, ny)
    snr = np.full((ny, 10), 100.0)
    snr[:, 0] = 5.0  # too faint
    bad = np.zeros((ny, 10), dtype=bool)
    bad[10, 3] = True  # saturated or cosmic ray on fiber 0's core
    sel = select_fit_pixels(traces, pmap, snr, bad, min_snr=30)
    assert sel.count.tolist() == [8, 9, 0]  # fiber 0 loses columns 0 and 3, fiber 2 is FPI
    assert np.all(sel.rows[sel.valid] % 8 == 2)  # the trace-center rows 10, 18
    assert 0 not in sel.cols[0][sel.valid[0]] and 3 not in sel.cols[0][sel.valid[0]]
    brightest = select_fit_pixels(traces, pmap, snr + np.arange(10), max_pixels=4)
    assert brightest.rows.shape == (3, 4)
    assert sorted(brightest.cols[1].tolist()) == [6, 7, 8, 9]


def _select_reference(traces, pixel_map, snr, bad, core_halfwidth, min_purity, min_snr,
                      max_pixels):  # fmt: skip
    """select_fit_pixels transcribed with NumPy's fancy indexes and a stable row sort."""
    ny, nc = pixel_map.fiber.shape
    base = np.rint(traces.y_center).astype(np.int64)
    cols = np.broadcast_to(np.arange(nc), base.shape)
    reach = int(np.ceil(core_halfwidth))
    cand_rows, cand_ok, cand_snr = [], [], []
    for offset in range(-reach, reach + 1):
        rows = np.clip(base + offset, 0, ny - 1)
        ok = (np.abs(base + offset - traces.y_center) <= core_halfwidth) & (base + offset == rows)
        ok &= pixel_map.fiber[rows, cols] == np.arange(traces.n_fibers)[:, None]
        ok &= pixel_map.purity[rows, cols] >= min_purity
        pix_snr = np.nan_to_num(snr[rows, cols], nan=0.0)
        ok &= pix_snr >= min_snr
        if bad is not None:
            ok &= ~bad[rows, cols]
        ok &= ~traces.excluded[:, None]
        cand_rows.append(rows)
        cand_ok.append(ok)
        cand_snr.append(np.where(ok, pix_snr, -np.inf))
    order = np.argsort(-np.concatenate(cand_snr, axis=1), axis=1, kind="stable")
    ok = np.concatenate(cand_ok, axis=1)
    n_keep = max(min(int(ok.sum(axis=1).max(initial=0)), max_pixels or ok.shape[1]), 1)
    order = order[:, :n_keep]
    pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    all_cols = np.concatenate([cols] * (2 * reach + 1), axis=1)
    return pick(np.concatenate(cand_rows, axis=1)), pick(all_cols), pick(ok)


@pytest.mark.parametrize("seed", range(6))
def test_select_fit_pixels_ranks_as_a_stable_sort_of_the_cuts(seed):
    """The selection kernel against a NumPy transcription: curved traces running off the chip,
    ties, NaN and infinite S/N, masks, excluded fibers, wider cores, a pixel cap."""
    rng = np.random.default_rng(seed)
    n_fibers, nc, ny = 6, 40, 48
    y = 2.0 + 8.3 * np.arange(n_fibers)[:, None] + 3.0 * np.sin(np.arange(nc) / 6.0 + seed)
    y[0] -= 3.5  # the first trace leaves the chip at the bottom
    traces = Traces(y_center=y, sigma=rng.uniform(0.8, 1.3),
                    excluded=rng.random(n_fibers) < 0.2)  # fmt: skip
    pmap = pixel_fiber_map(traces, ny, brightness=rng.uniform(1, 100, (n_fibers, nc)))
    snr = np.round(rng.uniform(0, 120, (ny, nc + 3)), 0)  # wider than traced; many ties
    snr[rng.random(snr.shape) < 0.05] = np.nan
    snr[rng.random(snr.shape) < 0.02] = np.inf
    bad = None if seed % 3 == 0 else (rng.random((ny, nc + 3)) < 0.1)[:, :nc]
    options = dict(core_halfwidth=[0.5, 1.3, 2.6][seed % 3], min_purity=[0.95, 0.5][seed % 2],
                   min_snr=[30.0, 0.0][seed % 2], max_pixels=[None, 7][seed % 2])  # fmt: skip
    sel = select_fit_pixels(traces, pmap, snr, bad, **options)
    rows, cols, valid = _select_reference(traces, pmap, snr, bad, **options)
    assert sel.rows.dtype == sel.cols.dtype == np.int64 and sel.valid.dtype == bool
    np.testing.assert_array_equal(sel.rows, rows)
    np.testing.assert_array_equal(sel.cols, cols)
    np.testing.assert_array_equal(sel.valid, valid)
    assert valid.any() and not valid.all()


def test_trace_brightness_recovers_total_light_per_column():
    traces = straight_traces(n_fibers=2, n_columns=4, spacing=10.0, sigma=1.0, first=10.2)
    rate = np.zeros((30, 4))
    for f, total in enumerate((100.0, 400.0)):
        for r in range(30):
            rate[r] += total * traces.profile(np.full((2, 4), r))[f]
    np.testing.assert_allclose(trace_brightness(traces, rate), [[100.0] * 4, [400.0] * 4])


def test_check_geometry_names_the_problem():
    traces = straight_traces(n_fibers=2, n_columns=16)
    traces.check_geometry(ny=40, nx=16)
    with pytest.raises(InputError, match="trace columns"):
        traces.check_geometry(ny=40, nx=8)
    with pytest.raises(InputError, match="y-centers") as error:
        traces.check_geometry(ny=12, nx=16)
    # Fiber index 1 (fiberId 299) at row 16.6 is the first outside, said 0-based in memory ...
    assert "rows, -0.5 to 11.5 (0-based)" in str(error.value)  # pixel edges: within half a row
    assert "16 outside, the first 16.6 (fiberId 299, column 0)" in str(error.value)


def test_check_geometry_says_a_trace_file_s_centers_1_based(tmp_path):
    """... and as the file holds them (1-based, ApogeeReduction.jl) for a trace file."""
    path = write_trace_file(tmp_path / "traceMain_apo_60781_R.h5", straight_traces(2, 16))
    with pytest.raises(InputError, match="y-centers") as error:
        read_trace_file(path).check_geometry(ny=12, nx=16, source=str(path))
    assert "rows, 0.5 to 12.5 (1-based, as in the file)" in str(error.value)
    assert "the first 17.6 (fiberId 299, column 0)" in str(error.value)


@pytest.mark.parametrize("nx", [2048, 2560])
def test_traces_short_of_an_apogee_chip_warn(nx):
    with pytest.warns(UserWarning, match="columns 2000-2047 get no fiber"):
        straight_traces(n_fibers=2, n_columns=2000).check_geometry(ny=40, nx=nx, source="t.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        straight_traces(n_fibers=2, n_columns=2048).check_geometry(ny=40, nx=nx)
        straight_traces(n_fibers=2, n_columns=96).check_geometry(ny=40, nx=112)  # a small sim


def test_trace_file_round_trip(tmp_path):
    n_fibers, n_columns = 300, 2048
    y = 20.0 + 6.6 * np.arange(n_fibers)[:, None] + 0.01 * np.arange(n_columns)[None, :]
    traces = Traces(y, 1.1)
    path = write_trace_file(tmp_path / "traceMain_lco_60781_G.h5", traces, height=2.0)
    assert parse_trace_file_name(path) == ("lco", 60781, "G")
    back = read_trace_file(path)
    np.testing.assert_allclose(back.y_center, y)
    np.testing.assert_allclose(back.sigma, 1.1)
    np.testing.assert_allclose(back.height, 2.0)
    assert back.metadata["trace_type"] == "simulated" and back.path == str(path)
    assert np.flatnonzero(back.excluded).tolist() == [87, 218]  # from the name: LCO
    with pytest.raises(FileExistsError):
        write_trace_file(path, traces)


def write_julia_trace_file(path, params, **metadata):
    """Write Julia ``trace_params[x, fiberIndx, p]`` as JLD2 does: h5py sees it reversed."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle["trace_params"] = np.ascontiguousarray(params.T)
        handle["regularized_trace_params"] = np.ascontiguousarray(params.T)
        handle["regularized_trace_params"][0] = 7.0  # tell the two datasets apart by height
        assert handle["trace_params"].shape == (3, params.shape[1], params.shape[0])
        group = handle.create_group("metadata")
        for key, value in metadata.items():
            group[key] = value
    return path


def test_read_trace_file_converts_julia_layout_to_0_based_fiber_by_x(tmp_path):
    n_fibers = 300
    x = np.arange(2048)
    fiber = np.arange(n_fibers)
    # Physical truth in 0-based pixel rows: fiber index f sits at 20 + 6.7 f, tilting with x.
    y0 = 20.0 + 6.7 * fiber[None, :] + 1e-3 * x[:, None]  # (x, fiber)
    params = np.empty((2048, n_fibers, 3))  # Julia [x, fiberIndx, p]
    params[:, :, 0] = 500.0 + fiber[None, :]
    params[:, :, 1] = y0 + 1.0  # ApogeeReduction.jl stores 1-based centers
    params[:, :, 2] = 1.1
    path = write_julia_trace_file(
        tmp_path / "quartzTrace_apo_60781_0012_R.h5", params, trace_type="quartz"
    )
    traces = read_trace_file(path)
    assert traces.y_center.shape == traces.height.shape == (n_fibers, 2048)
    np.testing.assert_allclose(traces.y_center, y0.T)
    assert traces.y_center[0, 0] == pytest.approx(20.0)
    assert np.all(traces.height[:, 0] == 500.0 + fiber)
    assert np.all(traces.sigma == 1.1)
    assert traces.metadata["trace_type"] == "quartz"
    assert np.flatnonzero(traces.excluded).tolist() == [75, 225]  # APO, from the name
    regularized = read_trace_file(path, dataset="regularized_trace_params", telescope="lco")
    assert np.all(regularized.height == 7.0)
    assert np.flatnonzero(regularized.excluded).tolist() == [87, 218]
    # Provenance (height, metadata, path) takes no part in equality.
    assert [f.name for f in fields(Traces) if not f.compare] == ["height", "metadata", "path"]


def test_traces_from_memory_have_no_provenance():
    traces = straight_traces()
    assert traces.height is None and traces.metadata == {} and traces.path is None
    with pytest.raises(ValueError, match="height"):
        Traces(traces.y_center, 1.0, height=np.ones((1, 1)))
    params = np.ones((4, 5, 3))  # Julia [x, fiberIndx, p]
    params[:, :, 0] = 3.0
    params[:, :, 1] = 10.0 + 7.0 * np.arange(5)  # rising with the fiber index
    assert Traces.from_trace_params(params, telescope=None).height.shape == (5, 4)


def assert_trace_error(path, field, *words):
    with pytest.raises(InputError) as caught:
        read_trace_file(path)
    message = str(caught.value)
    assert caught.value.field == field
    for word in (str(path), field, *words):
        assert word in message, message
    return message


def test_read_trace_file_error_messages_name_file_field_and_expectation(tmp_path):
    import h5py

    # A NumPy (2048, 300, 3) array written directly, not in Julia's layout.
    path = tmp_path / "traceMain_apo_60781_R.h5"
    with h5py.File(path, "w") as handle:
        handle["trace_params"] = np.ones((2048, 300, 3))
    assert_trace_error(path, "trace_params", "(3, 300, 2048)", "found (2048, 300, 3)")

    path = tmp_path / "traceMain_apo_60781_G.h5"
    with h5py.File(path, "w") as handle:
        handle["trace_param_covs"] = np.ones(3)
    assert_trace_error(path, "trace_params", "a dataset", "found nothing")

    path = tmp_path / "traceMain_apo_60781_B.h5"
    with h5py.File(path, "w") as handle:
        handle["trace_params"] = np.ones((3, 300, 2048), dtype=np.int64)
    assert_trace_error(path, "trace_params", "dtype")

    params = np.ones((2048, 300, 3))
    params[5, 7, 1] = np.nan
    params[:, 2, 2] = 0.0
    path = write_julia_trace_file(tmp_path / "domeTrace_lco_60781_0003_R.h5", params)
    assert_trace_error(
        path, "trace_params", "widths in [0.1, 20] px", "1 non-finite y-centers (first at "
        "fiberId 293, column 5)", "2048 widths not in [0.1, 20] px",
    )  # fmt: skip

    params = np.ones((48, 12, 3))
    params[:, 4, 2] = 1e6  # a width that would make the whole chip one fiber's wing
    path = write_julia_trace_file(tmp_path / "traceMain_apo_60781_G.h5", params)
    assert_trace_error(path, "trace_params", "48 widths not in [0.1, 20] px", "fiberId 296")

    path = write_julia_trace_file(tmp_path / "traceMain_apo_60781_R.h5", np.ones((48, 0, 3)))
    assert_trace_error(path, "trace_params", "1 to 300 fibers", "0 fibers x 48 columns")

    path = tmp_path / "traceMain_apo_60781_X.h5"
    path.write_bytes(b"not HDF5")
    assert_trace_error(path, "HDF5 structure", "a readable HDF5 file")


def _ordered_params(n_fibers, n_columns=16):
    """Julia ``trace_params[x, fiberIndx, p]``: 1-based centers 6.7 px apart, rising with the
    fiber index, widths of 1 px."""
    params = np.ones((n_columns, n_fibers, 3))
    params[:, :, 1] = 5.0 + 6.7 * np.arange(n_fibers)[None, :]
    return params


def test_trace_files_out_of_order_too_many_fibers_or_too_narrow_are_refused(tmp_path):
    import h5py

    write = write_julia_trace_file
    assert read_trace_file(write(tmp_path / "traceMain_apo_60781_R.h5", _ordered_params(300)))
    path = write(tmp_path / "traceMain_apo_60781_G.h5", _ordered_params(301))
    assert_trace_error(path, "trace_params", "1 to 300 fibers", "301 fibers")
    swapped = _ordered_params(40)
    swapped[:, [10, 11]] = swapped[:, [11, 10]]  # two fibers exchanged: fluxes to wrong fiberIds
    path = write(tmp_path / "traceMain_apo_60781_B.h5", swapped)
    assert_trace_error(path, "trace_params", "rising with the fiber index",
                       "16 y-centers not above the previous fiber's", "fiberId 289")  # fmt: skip
    path = write(tmp_path / "traceMain_apo_60782_R.h5", _ordered_params(40)[:, ::-1].copy())
    assert_trace_error(path, "trace_params", "624 y-centers not above")  # numbered by fiberId
    narrow = _ordered_params(40)
    narrow[3, 7, 2] = 5e-324  # spoiled the fit of a whole chip
    path = write(tmp_path / "traceMain_apo_60782_G.h5", narrow)
    assert_trace_error(path, "trace_params", "1 widths not in [0.1, 20] px", "fiberId 293")
    path = tmp_path / "traceMain_apo_60782_B.h5"
    with h5py.File(path, "w") as handle:
        handle["trace_params"] = h5py.SoftLink("/nowhere")
    assert_trace_error(path, "trace_params", "a readable dataset")


def test_a_trace_file_declaring_a_huge_shape_is_refused_before_reading(tmp_path):
    """A 32 kB file declaring (3, 300, 1.5e6) trace parameters was read whole: gigabytes, and
    at full size an out-of-memory kill instead of exit 2."""
    import h5py

    path = tmp_path / "traceMain_apo_60781_R.h5"
    with h5py.File(path, "w") as handle:  # chunked and empty: a few kB on disk
        handle.create_dataset("trace_params", shape=(3, 300, 1_500_000), dtype="f8",
                              chunks=(3, 300, 64))  # fmt: skip
    assert path.stat().st_size < 100_000
    assert_trace_error(path, "trace_params", "at most 4096 columns", "1500000 columns declared")
