"""Loading chips from files (``pyapred.exposure.inputs``): what ApogeeReduction.jl's files hold."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from pyapred import Flag, fit_constant
from pyapred.errors import InputError, InputWarning
from pyapred.exposure import FitOptions, load_chip, run_exposure


def ar3dcal(folder, gain: np.ndarray, last_unsaturated: np.ndarray | None = None,
            reads: np.ndarray | None = None, read_var: np.ndarray | None = None):  # fmt: skip
    """A 4-read ``ar3Dcal`` file (ApogeeReduction.jl's full frame) with ``gain`` as gainMat,
    ``read_var`` as readVarMat (64 DN^2 everywhere unless given), and ``last_unsaturated``
    (h5py order, a difference index: sutr_wood's) where given. Every map is written as h5py
    shows a JLD2 array: Julia's dimensions reversed, ``(2048, 2560)`` for ``(2560, 2048)``."""
    path = folder / "ar3Dcal_apo_60781_0001_R_object.h5"
    if reads is None:
        reads = np.arange(4, dtype=np.float32)[:, None, None] * np.full((1, *gain.shape), 100.0)
    if read_var is None:
        read_var = np.full(gain.shape, 64.0, np.float32)
    datasets = [("outdat", reads), ("gainMat", gain), ("readVarMat", read_var)]
    if last_unsaturated is not None:
        datasets.append(("last_unsaturated", last_unsaturated))
    with h5py.File(path, "w") as handle:
        for key, value in datasets:
            handle.create_dataset(key, data=value, compression="gzip", chunks=True)
        handle["metadata/nread_total"], handle["metadata/mjd_mid_exposure"] = 4, 60781.25
        handle["metadata/extraction_method"] = "sutr_wood"
    return path


def test_ar3dcal_ramps_end_at_their_last_unsaturated_difference(tmp_path):
    """ApogeeReduction.jl's last_unsaturated (the saturation it found on the raw reads): the
    later reads are not fitted, and the pixel is flagged SATURATED, not NONFINITE_READ, as
    APRampFit's sutr_omega does. A pixel without a gain, or with a non-finite read before its
    saturation, keeps NONFINITE_READ (sutr_omega's rule too)."""
    gain = np.full((2048, 2560), 1.9, np.float32)
    gain[5, 5] = np.nan
    last = np.full((2048, 2560), 3, np.int64)  # all three differences
    last[0, 0], last[0, 1], last[0, 2], last[5, 5], last[6, 6] = 2, 0, -1, 1, 2
    reads = np.arange(4, dtype=np.float64)[:, None, None] * np.full((1, 2048, 2560), 100.0)
    reads[3, 0, 0] = reads[3, 0, 1] = 60000.0  # the plateau
    reads[1, 6, 6] = np.nan
    with pytest.warns(InputWarning, match="gainMat: 1 pixel"):
        chip = load_chip(ar3dcal(tmp_path, gain, last, reads))
    assert np.isnan(chip.reads[3, 0, 0]) and np.isfinite(chip.reads[:3, 0, 0]).all()
    assert np.isnan(chip.reads[1:, 0, 1]).all() and np.isnan(chip.reads[1:, 0, 2]).all()
    assert np.isnan(chip.reads[2:, 6, 6]).all()  # a sum of differences is NaN after a NaN one
    assert np.isnan(chip.reads).sum() == 1 + 3 + 3 + 4 + 3
    assert np.argwhere(chip.saturation_cut).tolist() == [[0, 0], [0, 1], [0, 2]]
    rows, cols = [0, 0, 0, 5, 6, 1], [0, 1, 2, 5, 6, 1]
    fit = fit_constant(chip.reads[:, rows, cols], chip.read_noise[rows, cols],
                       gain=chip.gain[rows, cols])  # fmt: skip
    assert fit.flux[0] == pytest.approx(100.0) and fit.n_diff.tolist() == [2, 0, 0, 0, 0, 3]
    unsaturated = load_chip(ar3dcal(tmp_path, np.full((2048, 2560), 1.9, np.float32), reads=reads))
    assert unsaturated.saturation_cut is None and unsaturated.reads[3, 0, 0] == 60000.0


def test_ar3dcal_read_noise_is_the_root_of_readvarmat_pixel_by_pixel(tmp_path):
    """readVarMat is the single-read variance (DN^2): the chip's read noise is its square root,
    at the same (row, column) as h5py shows the map (JLD2's dimensions reversed, docs/formats.md),
    neither the variance itself nor the map transposed."""
    rows, cols = np.arange(2048)[:, None], np.arange(2560)[None, :]
    read_var = (16.0 + 0.5 * (rows % 37) + 2.0 * (cols % 53)).astype(np.float32)  # 16-128 DN^2
    gain = np.full((2048, 2560), 1.9, np.float32)
    chip = load_chip(ar3dcal(tmp_path, gain, read_var=read_var))
    assert chip.read_noise.shape == (2048, 2560)
    for y, x in [(0, 0), (0, 52), (36, 0), (7, 2000), (2047, 2559), (1000, 31)]:
        assert chip.read_noise[y, x] == pytest.approx(np.sqrt(float(read_var[y, x])), rel=1e-6)
    np.testing.assert_allclose(chip.read_noise, np.sqrt(read_var), rtol=1e-6)
    # The noise reaches the fit as the root: a ramp's flux variance is that of sigma, not sigma^2.
    y, x = 36, 52
    fit = fit_constant(chip.reads[:, y, x], chip.read_noise[y, x], gain=chip.gain[y, x])
    expected = fit_constant(chip.reads[:, y, x], np.sqrt(float(read_var[y, x])), gain=1.9)
    assert fit.flux_var == pytest.approx(expected.flux_var, rel=1e-6)


def test_a_raw_file_without_a_saturate_card_saturates_at_apogee_drp_s_level(tmp_path):
    """No SATURATE card (only GAIN and RDNOISE): the saturation is apogee_drp's ``satval``,
    55000 DN, and a read at it starts the saturation of its pixel."""
    from pyapred.simulate import write_simulated_apz

    reads = 100.0 * np.arange(3)[:, None, None] + np.zeros((1, 4, 6))
    reads[2, 1, 1], reads[2, 2, 2] = 54999.0, 55000.0
    path = write_simulated_apz(tmp_path, reads, bias=0.0, header={"GAIN": 1.9, "RDNOISE": 8.0})
    chip = load_chip(path)
    assert chip.saturation == 55000.0 and chip.gain == 1.9 and chip.read_noise == 8.0
    assert chip.reads[2, 1, 1] == 54999 and chip.reads[2, 2, 2] == 55000
    fit = fit_constant(chip.reads[:, [1, 2], [1, 2]], chip.read_noise, gain=chip.gain,
                       saturation=chip.saturation)  # fmt: skip
    assert not fit.flags[0] & Flag.SATURATED and fit.flags[1] & Flag.SATURATED


def test_a_chip_s_saturation_cut_flags_its_pixels_saturated(small_chip):
    """extract_chip rewrites NONFINITE_READ to SATURATED on the cut pixels, in the fit and in
    the constant fit kept beside it, and nowhere else."""
    chip, traces = small_chip
    reads = np.array(chip.reads, dtype=np.float32)
    reads[12:, 40, 30] = np.nan  # a ramp the file ended at saturation
    reads[12, 41, 30] = np.nan  # a detector read that is not finite
    cut = np.zeros(reads.shape[1:], dtype=bool)
    cut[40, 30] = True
    with pytest.raises(InputError, match="saturation_cut: expected None or a"):
        dataclasses.replace(chip, reads=reads, saturation_cut=cut[:, :5])
    ended = dataclasses.replace(chip, reads=reads, saturation_cut=cut)
    result = run_exposure({"R": ended}, {"R": traces}, FitOptions(keep_constant=True)).chips["R"]
    for flags in (result.flags, result.constant.flags):
        assert flags[40, 30] & Flag.SATURATED and not flags[40, 30] & Flag.NONFINITE_READ
        assert flags[41, 30] & Flag.NONFINITE_READ and not flags[41, 30] & Flag.SATURATED
    assert result.n_diff[40, 30] == 11 and np.isfinite(result.flux[40, 30])


def test_ar3dcal_pixels_without_a_gain_are_not_used_and_flagged(tmp_path):
    """ApogeeReduction.jl copies the gain file's NaN and 0 pixels into gainMat (its median skips
    them): those pixels are not fitted (NaN reads, flagged), the rest of the chip is."""
    gain = np.full((2048, 2560), 1.9, np.float32)
    gain[30, 7], gain[100, 200] = np.nan, 0.0
    path = ar3dcal(tmp_path, gain)
    with pytest.warns(InputWarning, match=r"gainMat: 2 pixel\(s\) without a gain .*\(30, 7\)"):
        chip = load_chip(path)
    assert np.isnan(chip.reads[:, 30, 7]).all() and np.isnan(chip.reads[:, 100, 200]).all()
    assert np.isnan(chip.reads).sum() == 2 * 4 and chip.gain[30, 7] == 1.9
    fit = fit_constant(chip.reads[:, 30, 5:9], chip.read_noise[30, 5:9], gain=chip.gain[30, 5:9])
    assert np.isnan(fit.flux[2]) and fit.flags[2] & Flag.NONFINITE_READ
    assert np.all(np.isfinite(fit.flux[[0, 1, 3]]))
    gain[:] = np.nan
    with pytest.raises(InputError, match="gainMat: expected a gain"):
        load_chip(ar3dcal(tmp_path, gain))


def test_an_ar3dcal_file_is_not_read_into_a_given_cube(tmp_path):
    """``out`` (an earlier chip's raw cube) is for raw files: ar3Dcal reads are float32. Refused
    before the file is read (its small maps here would be refused after)."""
    path = ar3dcal(tmp_path, np.full((4, 6), 1.9, np.float32))
    with pytest.raises(ValueError, match="out: only for raw .apz files, not the ar3Dcal file"):
        load_chip(path, out=np.zeros((4, 4, 6), np.uint16))
    with pytest.raises(InputError, match="outdat: expected shape"):
        load_chip(path)


def test_the_survey_checks_an_ar3dcal_file_s_maps_before_any_chip_is_fitted(tmp_path):
    """It skipped ar3Dcal files: a bad gainMat of chip B was found after R and G were fitted."""
    from pyapred.exposure.inputs import survey_chip

    gain = np.full((2048, 2560), 1.9, np.float32)
    assert survey_chip(ar3dcal(tmp_path, gain)) == (4, 2048, 2560)
    gain[50, 30] = -1.0
    with pytest.raises(
        InputError, match=r"gainMat: expected .* -1.0 \(first at row, column \(50, 30\)"
    ):
        survey_chip(ar3dcal(tmp_path, gain))


def test_ar3dcal_chips_of_other_read_counts_are_refused_unloaded(tmp_path, monkeypatch):
    """The survey returned nothing for ar3Dcal files: chip G with 3 reads to R's 4 (or a chip of
    fewer than 3) was refused after chip R was loaded, prepared and fitted."""
    from pyapred.exposure import driver
    from pyapred.traces import Traces, write_trace_file

    gain = np.full((2048, 2560), 1.9, np.float32)
    folders, traces = {}, []
    for chip, n_reads in (("R", 4), ("G", 3), ("B", 2)):
        folders[chip] = tmp_path / chip
        folders[chip].mkdir()
        path = ar3dcal(folders[chip], gain, reads=np.zeros((n_reads, 2048, 2560), np.float32))
        folders[chip] = path.rename(path.with_name(path.name.replace("_R_", f"_{chip}_")))
        y = 100.0 + 10.0 * np.arange(3)[:, None] + np.zeros((1, 2048))
        traces.append(write_trace_file(tmp_path / f"traceMain_apo_60781_{chip}.h5",
                                       Traces(y, 1.2)))  # fmt: skip
    loaded = []
    monkeypatch.setattr(driver, "load_chip", lambda path, **kwargs: loaded.append(path))
    with pytest.raises(InputError, match=r"_G_object.h5: reads: expected 4 reads like .*, found 3"):
        run_exposure([folders["R"], folders["G"]], traces[:2])
    with pytest.raises(InputError, match=r"_B_object.h5: reads: expected at least 3 reads .* 2"):
        run_exposure([folders["B"]], traces[2:])
    assert loaded == []  # no chip was loaded


def test_an_ar3dcal_file_is_refused_for_the_reference_correction(tmp_path):
    """--correct-1f refpix ran on ar3Dcal reads (already zero-pointed on the reference output
    by ApogeeReduction.jl), and one NaN reference-row pixel made a quarter of the chip NaN;
    docs/noise.md says such input stops with exit 2 naming the file."""
    from pyapred.exposure import correct_1f
    from pyapred.traces import Traces, write_trace_file

    path = ar3dcal(tmp_path, np.full((2048, 2560), 1.9, np.float32))
    y = 100.0 + 10.0 * np.arange(3)[:, None] + np.zeros((1, 64))
    trace = write_trace_file(tmp_path / "traceMain_apo_60781_R.h5", Traces(y, 1.2))
    for method in ("refpix", "rowmedian+nuisance"):
        with pytest.raises(InputError, match=r"ar3Dcal_.*\.h5: reads: expected the raw reads of"):
            run_exposure([path], [trace], FitOptions(correct_1f=method))
    with pytest.raises(InputError, match="reads: expected the raw reads of an .apz file"):
        correct_1f(load_chip(path), None, "refpix")


def test_raw_files_without_the_reference_output_are_refused_unloaded(tmp_path, monkeypatch):
    """--correct-1f refpix on raw files 96 columns wide was refused once the chip had been
    decoded (inside the progress bar): the width is in the headers."""
    from pyapred.exposure import driver
    from pyapred.simulate import simulate_exposure, write_simulated_exposure

    sim = simulate_exposure("clouds", seed=1, n_fibers=6, n_columns=96, ref_columns=0,
                            n_reads=4, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    loaded = []
    monkeypatch.setattr(driver, "load_chip", lambda path, **kwargs: loaded.append(path))
    with pytest.raises(InputError, match=r"apR-a-.*\.apz: reads: expected raw reads \(n_reads, "
                       r"ny <= 2048, 2560\) with the reference output, for 1/f correction "
                       r"'refpix', found \(4, \d+, 96\)"):  # fmt: skip
        run_exposure(paths["apz"], paths["traces"], FitOptions(correct_1f="refpix"))
    assert loaded == []


def test_traces_short_of_the_chip_are_one_input_warning_naming_the_file(tmp_path):
    """A Python UserWarning (its source line printed) came twice per chip: from the loader and
    from prepare_chip."""
    import warnings

    from pyapred.traces import Traces, write_trace_file

    reads = np.arange(4, dtype=np.float32)[:, None, None] * np.full((1, 2048, 2560), 100.0)
    path = ar3dcal(tmp_path, np.full((2048, 2560), 1.9, np.float32), reads=reads)
    y = 100.0 + 10.0 * np.arange(3)[:, None] + np.zeros((1, 64))
    trace = write_trace_file(tmp_path / "traceMain_apo_60781_R.h5", Traces(y, 1.2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_exposure([path], [trace])
    short = [w for w in caught if "get no fiber" in str(w.message)]
    assert len(short) == 1 and issubclass(short[0].category, InputWarning)
    assert str(short[0].message).startswith(str(trace))


def test_chips_in_memory_are_checked_and_big_endian_reads_fit_as_native(small_chip):
    """A notebook's chip: FITS data arrive big-endian (the first pass's kernel refused them
    with a Numba typing error); other types, read times and map shapes are checked on the
    spot, naming the field."""
    chip, traces = small_chip
    swapped = dataclasses.replace(chip, reads=chip.reads.astype(chip.reads.dtype.newbyteorder(">")))
    assert swapped.reads.dtype.isnative and np.array_equal(swapped.reads, chip.reads)
    same = run_exposure({"R": swapped}, {"R": traces})
    np.testing.assert_array_equal(same.chips["R"].flux, run_exposure(
        {"R": chip}, {"R": traces}).chips["R"].flux)  # fmt: skip
    half = dataclasses.replace(chip, reads=chip.reads.astype(np.float16))
    assert half.reads.dtype == np.float32
    n_reads, ny, nx = chip.reads.shape
    for change, field in [
        ({"reads": chip.reads.astype(complex)}, "reads"), ({"reads": chip.reads[0]}, "reads"),
        ({"reads": chip.reads.tolist()}, "reads"),
        ({"read_times": np.zeros(n_reads)}, "read_times"),
        ({"read_times": np.arange(3.0)}, "read_times"),
        ({"read_times": [*range(n_reads - 1), np.inf]}, "read_times"),
        ({"read_times": np.arange(n_reads) * 1e300}, "read_times"),  # overflows the variances
        ({"gain": np.ones(7)}, "gain"), ({"read_noise": "x"}, "read_noise"),
        ({"saturation": np.ones((ny, nx + 1))}, "saturation"),
    ]:  # fmt: skip
        with pytest.raises(InputError, match=rf"<memory>: {field}: expected"):
            dataclasses.replace(chip, **change)


@pytest.mark.parametrize("keyword, option", [("GAIN", "gain"), ("RDNOISE", "read_noise"),
                                             ("SATURATE", "saturation")])  # fmt: skip
def test_a_logical_calibration_card_is_no_number(tmp_path, keyword, option):
    """astropy reads a FITS ``T`` as True and ``float(True)`` is 1.0, inside every range:
    ``GAIN = T`` was a gain of 1 e-/DN, ``SATURATE = T`` flagged every pixel saturated (exit 0),
    where ``INTOFF = T`` was refused. An option given as a bool (NumPy's too) is no number either.
    """
    from pyapred.exposure.inputs import survey_chip
    from pyapred.simulate import write_simulated_apz

    reads = 100.0 * np.arange(3)[:, None, None] + np.zeros((1, 4, 6))
    cards = {"GAIN": 1.9, "RDNOISE": 8.0, "SATURATE": 55000.0}
    path = write_simulated_apz(tmp_path, reads, header=cards)
    assert load_chip(path).gain == 1.9
    path = write_simulated_apz(tmp_path, reads, header={**cards, keyword: True}, overwrite=True)
    expected = rf"{path.name}: header keyword {keyword}: expected a finite number > 0, within "
    for read in (load_chip, survey_chip):  # the survey: refused before any chip is fitted
        with pytest.raises(InputError, match=expected + r".*, found True$"):
            read(path)
    flag = "--" + option.replace("_", "-")
    for given in (True, np.True_):
        with pytest.raises(InputError, match=rf"{path.name}: {flag}: expected a finite number"):
            load_chip(path, **{option: given})
