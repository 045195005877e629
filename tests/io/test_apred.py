"""ApogeeReduction.jl HDF5 products, written here the way Julia lays them out on disk.

JLD2 writes a Julia array's column-major memory with the dimensions listed in Julia's order;
h5py lists them in reverse. A Julia array ``A`` of size ``(2560, 2048)`` (x, y) therefore
appears to h5py as the C-ordered ``A.T``: the ``julia`` fixture (conftest) does exactly that.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from astropy.time import Time

from pyapred.io import read_ar1d, read_ar2d, read_ar3dcal, read_metadata

NX, NY, N_FIBERS = 2560, 2048, 300


def write_metadata(handle: h5py.File, **values) -> None:
    group = handle.create_group("metadata")
    for key, value in {"git_commit": "9c035ee", "git_branch": "main", "git_clean": True,
                       **values}.items():  # fmt: skip
        group[key] = value


def julia_image(seed: int) -> np.ndarray:
    """A Julia ``(2560, 2048)`` image indexed [x, y] whose values encode x and y."""
    x = np.arange(NX)[:, None]
    y = np.arange(NY)[None, :]
    return seed + x * 1e-4 + y * 10.0


def test_ar2d_images_come_back_as_ny_nx(tmp_path, julia):
    path = tmp_path / "ar2D_apo_60781_0065_R_object.h5"
    images = {key: julia_image(i) for i, key in enumerate(["dimage", "ivarimage", "chisqimage"])}
    with h5py.File(path, "w") as handle:
        for key, image in images.items():
            handle[key] = julia(image)
        handle["CRimage"] = julia(np.zeros((NX, NY), np.int64))
        write_metadata(handle, ndiff_used=44, extraction_method="sutr_wood")
    ar2d = read_ar2d(path)
    assert ar2d.dimage.shape == (NY, NX)
    # pyapred order [y, x]: the value at y=7, x=2100 (reference output) is Julia's [2101, 8].
    assert ar2d.dimage[7, 2100] == images["dimage"][2100, 7] == pytest.approx(70.21)
    assert np.array_equal(ar2d.chisqimage, images["chisqimage"].T)
    assert ar2d.pix_bitmask is None and ar2d.cr_image.dtype == np.int64
    assert ar2d.metadata["ndiff_used"] == 44
    assert ar2d.metadata["extraction_method"] == "sutr_wood"
    assert ar2d.metadata["git_clean"] is True
    assert (ar2d.name.stage, ar2d.name.chip, ar2d.name.exposure) == ("ar2D", "R", 65)


def test_ar2dcal_bitmask_and_big_endian_data(tmp_path, julia):
    path = tmp_path / "ar2Dcal_lco_60786_0041_B_quartzflat.h5"
    bitmask = np.zeros((NX, NY), np.int64)
    bitmask[2048:, :] = 1  # reference array pixels, bit 0
    with h5py.File(path, "w") as handle:
        handle.create_dataset("dimage", data=julia(julia_image(0)).astype(">f8"))
        handle["ivarimage"] = julia(julia_image(1))
        handle["pix_bitmask"] = julia(bitmask)
        write_metadata(handle)
    ar2d = read_ar2d(path)
    assert ar2d.dimage.dtype.isnative and ar2d.dimage[3, 5] == julia_image(0)[5, 3]
    assert np.all(ar2d.pix_bitmask[:, 2048:] == 1) and np.all(ar2d.pix_bitmask[:, :2048] == 0)
    assert ar2d.chisqimage is None


def test_ar3dcal_reads_gain_read_variance_and_times(tmp_path, julia):
    path = tmp_path / "ar3Dcal_apo_60781_0065_G_object.h5"
    n_used, n_total = 3, 5
    x = np.arange(NX)[:, None, None]
    y = np.arange(NY)[None, :, None]
    k = np.arange(n_used)[None, None, :]
    outdat = 100.0 * k + y + x * 1e-4  # Julia (2560, 2048, n_used), [x, y, read]
    mid = 60781.25
    with h5py.File(path, "w") as handle:
        handle["outdat"] = julia(outdat)
        handle["gainMat"] = julia(np.full((NX, NY), 1.9))
        handle["readVarMat"] = julia(julia_image(25))
        handle["dimage"] = julia(julia_image(0))
        write_metadata(handle, nread_total=n_total, mjd_mid_exposure=mid)
    cal = read_ar3dcal(path)
    exposure = cal.exposure
    assert exposure.reads.shape == (n_used, NY, NX)
    assert exposure.reads[2, 10, 3] == outdat[3, 10, 2]
    assert np.array_equal(exposure.reads[1], outdat[:, :, 1].T)
    assert cal.gain.shape == (NY, NX) and cal.read_var[4, 6] == julia_image(25)[6, 4]
    assert exposure.read_indices.tolist() == [2, 3, 4]  # firstind = 3 drops reads 1 and 2
    assert (exposure.telescope, exposure.chip, exposure.expnum) == ("apo", "b", 52190065)
    # The reads' mean start + half a read period is ApogeeReduction.jl's mid-exposure (TAI).
    times = exposure.read_times
    assert times.scale == "tai"
    mean_start = times[0] + (times[-1] - times[0]) / 2
    assert (mean_start - Time(mid, format="mjd", scale="tai")).sec == pytest.approx(-10.647 / 2)
    part = read_ar3dcal(path, reads=slice(1, 3), rows=slice(100, 104))
    assert np.array_equal(part.exposure.reads, exposure.reads[1:3, 100:104])
    assert part.gain.shape == (4, NX) and part.exposure.read_indices.tolist() == [3, 4]
    assert cal.unsaturated_diffs is None  # a file without last_unsaturated


@pytest.mark.parametrize("method, offset", [("sutr_wood", 0), ("sutr_omega", 0), ("dcs", 1)])
def test_ar3dcal_last_unsaturated_counts_the_unsaturated_differences(tmp_path, julia, method,
                                                                      offset):  # fmt: skip
    """ApogeeReduction.jl's last_unsaturated indexes differences after sutr_wood's
    diffify_datacube! (which decrements it) and reads for dcs (which does not): both become
    the number of unsaturated differences; a read index 0 (nothing unsaturated) counts 0."""
    path = tmp_path / "ar3Dcal_apo_60781_0065_G_object.h5"
    n_used = 4
    last = np.full((NX, NY), n_used - 1 + offset)  # Julia [x, y]
    last[3, 10], last[5, 0] = 1 + offset, 0
    with h5py.File(path, "w") as handle:
        handle["outdat"] = julia(np.zeros((NX, NY, n_used)))
        handle["gainMat"] = julia(np.full((NX, NY), 1.9))
        handle["readVarMat"] = julia(julia_image(25))
        handle["last_unsaturated"] = julia(last)
        write_metadata(handle, nread_total=n_used, mjd_mid_exposure=60781.25,
                       extraction_method=method)  # fmt: skip
    diffs = read_ar3dcal(path).unsaturated_diffs
    assert diffs.shape == (NY, NX) and diffs[10, 3] == 1 and diffs[0, 5] == 0
    assert np.count_nonzero(diffs != n_used - 1) == 2
    assert np.array_equal(read_ar3dcal(path, rows=slice(8, 12)).unsaturated_diffs, diffs[8:12])


def test_ar1dcal_trace_centers_and_fiber_types(tmp_path, julia):
    path = tmp_path / "ar1Dcal_apo_60781_0065_R_object.h5"
    centers_0based = 20.0 + 6.7 * np.arange(N_FIBERS)[None, :] + np.zeros((2048, 1))
    types = ["sci"] * 298 + ["fpiguide", "sky"]
    with h5py.File(path, "w") as handle:
        handle["extract_trace_centers"] = julia(centers_0based + 1.0)
        handle["fiberTypeList"] = np.array(types, dtype=h5py.string_dtype())
        write_metadata(handle)
    ar1d = read_ar1d(path)
    assert ar1d.trace_centers.shape == (N_FIBERS, 2048)
    assert np.allclose(ar1d.trace_centers, centers_0based.T)
    assert ar1d.fiber_types[-1] == "sky" and len(ar1d.fiber_types) == N_FIBERS
    assert read_metadata(path)["git_commit"] == "9c035ee"
