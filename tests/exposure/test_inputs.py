"""Loading chips from files (``pyapred.exposure.inputs``): what ApogeeReduction.jl's files hold."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from pyapred import Flag, fit_constant
from pyapred.errors import InputError, InputWarning
from pyapred.exposure import load_chip, run_exposure


def ar3dcal(folder, gain: np.ndarray):
    """A 4-read ``ar3Dcal`` file (ApogeeReduction.jl's full frame) with ``gain`` as gainMat."""
    path = folder / "ar3Dcal_apo_60781_0001_R_object.h5"
    reads = np.arange(4, dtype=np.float32)[:, None, None] * np.full((1, *gain.shape), 100.0)
    with h5py.File(path, "w") as handle:
        for key, value in (("outdat", reads), ("gainMat", gain),
                           ("readVarMat", np.full(gain.shape, 64.0, np.float32))):  # fmt: skip
            handle.create_dataset(key, data=value, compression="gzip", chunks=True)
        handle["metadata/nread_total"], handle["metadata/mjd_mid_exposure"] = 4, 60781.25
    return path


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
    assert survey_chip(ar3dcal(tmp_path, gain)) is None
    gain[50, 30] = -1.0
    with pytest.raises(
        InputError, match=r"gainMat: expected .* -1.0 \(first at row, column \(50, 30\)"
    ):
        survey_chip(ar3dcal(tmp_path, gain))


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
