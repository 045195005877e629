"""Write the bad-input corpus: malformed files for every pyapred entry point.

    python tests/bad_inputs/make_corpus.py DIR

Everything derives from one small valid exposure (chip R of night 60781: 12 fibers x 48 columns
x 10 reads, the ``good`` files), so that each bad file differs from a good one in one way.
``test_bad_inputs.py`` builds the corpus in a temporary folder and says what each entry point
must answer. Nothing here is committed as a binary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

MJD, TELE = 60781, "apo"
N_FIBERS, N_COLUMNS, N_READS = 12, 48, 10
DATE_OBS = "2025-04-20T04:00:00.000"  # the simulated exposure's start, UTC


def make_corpus(directory: str | Path) -> dict[str, Path]:
    """Write every corpus file under ``directory``; returns them by name."""
    import h5py
    from astropy.io import fits

    from pyapred.io import FiberResults, write_product
    from pyapred.io.apz import make_headers
    from pyapred.simulate import simulate_exposure, write_simulated_apz, write_simulated_exposure

    root = Path(directory)
    good = root / "good"
    sim = simulate_exposure(
        "clouds", seed=3, n_fibers=N_FIBERS, n_columns=N_COLUMNS, ref_columns=0,
        n_reads=N_READS, chips=("R",),
    )  # fmt: skip
    written = write_simulated_exposure(sim, good, exposure=1)
    files: dict[str, Path] = {"apz": written["apz"][0], "trace": written["traces"][0]}
    chip = sim.chips["R"]
    counts = np.asarray(chip.reads, dtype=np.float64)
    cards = {"GAIN": chip.gain, "RDNOISE": chip.read_noise, "SATURATE": chip.saturation}

    def folder(name: str) -> Path:
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def raw(name: str, reads, *, exposure: int, chip_letter: str = "a", **extra) -> Path:
        """A raw file of the good exposure's layout and cards, with ``extra`` cards changed."""
        return write_simulated_apz(
            folder(name), reads, chip=chip_letter, mjd=MJD, exposure=exposure, bias=0.0,
            header={**cards, **extra},
        )  # fmt: skip

    def hdus(name: str, hdu_list: list, exposure: int) -> Path:
        path = folder(name) / f"apR-a-{(MJD - 55562) * 10000 + exposure:08d}.apz"
        fits.HDUList(hdu_list).writeto(path)
        return path

    apz_bytes = files["apz"].read_bytes()
    # Raw files: empty, truncated, wrong HDU count, wrong dtype, wrong shape.
    files["empty_apz"] = folder("empty") / "apR-a-52190011.apz"
    files["empty_apz"].write_bytes(b"")
    files["truncated_apz"] = folder("truncated") / "apR-a-52190012.apz"
    files["truncated_apz"].write_bytes(apz_bytes[: len(apz_bytes) // 2 + 17])
    blocks = 2880 * (len(apz_bytes) // 2880 // 2)
    files["truncated_blocks_apz"] = folder("truncated-blocks") / "apR-a-52190013.apz"
    files["truncated_blocks_apz"].write_bytes(apz_bytes[:blocks])  # whole FITS blocks
    files["primary_only_apz"] = hdus("primary-only", [fits.PrimaryHDU()], 14)
    header, read_headers = make_headers(3, date_obs=DATE_OBS, chip="a", extra=cards)
    image = np.zeros((8, 8), np.int32)
    files["float_apz"] = hdus(
        "float-average",
        [fits.PrimaryHDU(), fits.ImageHDU(image.astype(np.float32), header),
         *(fits.ImageHDU(image, h) for h in read_headers)],
        15,
    )  # fmt: skip
    files["shape_apz"] = hdus(
        "read-shape",
        [fits.PrimaryHDU(), fits.ImageHDU(image, header), fits.ImageHDU(image, read_headers[0]),
         fits.ImageHDU(np.zeros((8, 9), np.int32), read_headers[1])],
        16,
    )  # fmt: skip
    # Read noise: zero in the header card.
    files["zero_rdnoise_apz"] = raw("zero-rdnoise", counts, exposure=17, RDNOISE=0.0)
    # Mismatched chips: chip a's data named chip b; chip G of another exposure.
    files["chip_b_named"] = folder("chip-card") / "apR-b-52190001.apz"
    files["chip_b_named"].write_bytes(apz_bytes)
    files["other_exposure_b"] = raw("other-exposure", counts, exposure=2, chip_letter="b")
    # One fiber saturated in every read; one fiber with no light at all.
    traces = chip.traces
    rows = np.rint(traces.y_center).astype(int)
    saturated = counts.copy()
    for offset in (-1, 0, 1):
        saturated[:, rows[5] + offset, np.arange(N_COLUMNS)] = chip.saturation
    files["saturated_apz"] = raw("saturated-fiber", saturated, exposure=18)
    dark = counts.copy()
    for offset in range(-3, 4):  # rows 0-9 see no fiber (the 25-row margin)
        dark[:, rows[7] + offset, np.arange(N_COLUMNS)] = counts[:, 4 + offset, :N_COLUMNS]
    files["zero_flux_apz"] = raw("zero-flux-fiber", dark, exposure=19)
    # Trace files: wrong shape, too few columns, empty, truncated.
    trace_bytes = files["trace"].read_bytes()
    with h5py.File(files["trace"]) as handle:
        params = handle["trace_params"][()]
    wide = np.concatenate([params, params[:, :, :20]], axis=2)  # 68 columns on a 48-column chip
    for name, data in (("trace-shape", params[:2]), ("trace-wide", wide)):
        files[name.replace("-", "_")] = folder(name) / files["trace"].name
        with h5py.File(files[name.replace("-", "_")], "w") as handle:
            handle["trace_params"] = data
    files["empty_trace"] = folder("trace-empty") / files["trace"].name
    files["empty_trace"].write_bytes(b"")
    files["truncated_trace"] = folder("trace-truncated") / files["trace"].name
    files["truncated_trace"].write_bytes(trace_bytes[: len(trace_bytes) // 3])
    # Products (guider input): a good one with read times, truncated, and not a product.
    k = N_READS - 1
    fibers = FiberResults(
        fiber_index=np.arange(3), omega=np.ones((3, k)), omega_cov=np.tile(np.eye(k), (3, 1, 1)),
        ref_index=np.zeros(3, np.int64), model=("time_variable",) * 3, flags=np.zeros(3, np.int64),
    )  # fmt: skip
    meta = {"DATE-OBS": DATE_OBS, "TIMESYS": "UTC", "INTOFF": 10647, "NREAD": N_READS}
    files["product"] = write_product(good / "product.h5", fibers={"R": fibers}, metadata=meta)
    product_bytes = files["product"].read_bytes()
    files["truncated_product"] = folder("product-truncated") / "product.h5"
    files["truncated_product"].write_bytes(product_bytes[: len(product_bytes) // 2])
    files["not_a_product"] = files["trace"]
    # Guider frames: one truncated frame.
    files["truncated_frame"] = folder("guider-truncated") / "proc-gimg-gfa1n-0001.fits"
    frame = fits.HDUList([fits.PrimaryHDU(np.zeros((16, 16), np.float32))])
    frame.writeto(files["truncated_frame"])
    files["truncated_frame"].write_bytes(files["truncated_frame"].read_bytes()[:1000])
    # Runlists: missing files, empty, binary, runlist_*.h5 missing a dataset or of another MJD.
    files["runlist_missing"] = folder("runlists") / "missing.txt"
    files["runlist_missing"].write_text(f"{good / 'apR-a-52190042.apz'}\n")
    files["runlist_empty"] = root / "runlists" / "empty.txt"
    files["runlist_empty"].write_text("# nothing tonight\n\n")
    files["runlist_binary"] = root / "runlists" / "runlist.dat"
    files["runlist_binary"].write_bytes(bytes(range(256)))
    files["runlist_no_expid"] = root / "runlists" / "runlist_noexpid.h5"
    with h5py.File(files["runlist_no_expid"], "w") as handle:
        handle["tele"], handle["mjd"] = [b"apo"], [MJD]
    files["runlist_wrong_mjd"] = root / "runlists" / "runlist_wrongmjd.h5"
    with h5py.File(files["runlist_wrong_mjd"], "w") as handle:
        handle["tele"], handle["mjd"], handle["expid"] = [b"apo"], [MJD], [b"52180001"]
    # Conformance vectors: a folder without any, and a malformed one.
    folder("vectors-none")
    files["vectors_none"] = root / "vectors-none"
    files["bad_vector"] = folder("vectors-bad") / "broken.toml"
    files["bad_vector"].write_text('function = "fit_constant"\n[inputs\nreads = [1, 2\n')
    # Special inputs: a loop of symbolic links, a FIFO, a link to a device.
    specials = folder("special")
    files["symlink_loop"] = specials / "apR-a-52190020.apz"
    files["symlink_loop"].symlink_to(files["symlink_loop"])
    files["fifo"] = specials / "apR-a-52190021.apz"
    os.mkfifo(files["fifo"])
    files["dev_zero"] = specials / "apR-a-52190022.apz"
    files["dev_zero"].symlink_to("/dev/zero")
    # Implausible calibration and timing cards, and a read missing in the middle.
    files["huge_rdnoise_apz"] = raw("huge-rdnoise", counts, exposure=23, RDNOISE=1e200)
    files["negative_saturation_apz"] = raw("negative-saturation", counts, exposure=24,
                                           SATURATE=-5.0)  # fmt: skip
    files["huge_intoff_apz"] = _without_read_dates(
        raw("huge-intoff", counts, exposure=25, INTOFF=1e300)
    )
    files["missing_read_apz"] = _without_hdu(raw("missing-read", counts, exposure=26), 5)
    # Traces: no fibers, absurd widths, another night, another telescope.
    for name, data in (("trace-no-fibers", params[:, :0]),
                       ("trace-wide-sigma", _with_sigma(params, 1e6))):  # fmt: skip
        files[name.replace("-", "_")] = folder(name) / files["trace"].name
        with h5py.File(files[name.replace("-", "_")], "w") as handle:
            handle["trace_params"] = data
    files["trace_other_night"] = folder("trace-night") / f"traceMain_{TELE}_{MJD - 1}_R.h5"
    files["trace_other_night"].write_bytes(trace_bytes)
    files["trace_other_telescope"] = folder("trace-tele") / f"traceMain_lco_{MJD}_R.h5"
    files["trace_other_telescope"].write_bytes(trace_bytes)
    # ar3Dcal files (ApogeeReduction.jl's full 2048 x 2560 frame, compressed to a few kB) with a
    # negative gain and a zero read variance in one pixel.
    for name, key, value in (("ar3dcal_negative_gain", "gainMat", -1.9),
                             ("ar3dcal_zero_read_variance", "readVarMat", 0.0)):  # fmt: skip
        files[name] = _ar3dcal(folder(name.replace("_", "-")), key, value)
    # A folder where a file is expected.
    files["a_folder"] = folder("a-folder")
    # An output path below a regular file: no folder can be made there.
    files["a_file"] = root / "a-file"
    files["a_file"].write_text("not a folder\n")
    files["unwritable_out"] = files["a_file"] / "out"
    return files


def _without_read_dates(path: Path) -> Path:
    """The file with its reads' own DATE-OBS removed: times then come from INTOFF."""
    from astropy.io import fits

    with fits.open(path, mode="update") as hdul:
        for hdu in hdul[2:]:
            del hdu.header["DATE-OBS"]
    return path


def _without_hdu(path: Path, index: int) -> Path:
    """The file without HDU ``index`` (a read's difference), its cards left as they were."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        kept = fits.HDUList([hdu.copy() for k, hdu in enumerate(hdul) if k != index])
        kept.writeto(path.with_suffix(".tmp"), overwrite=True)
    path.with_suffix(".tmp").replace(path)
    return path


def _with_sigma(params: np.ndarray, sigma: float) -> np.ndarray:
    """Trace parameters (h5py order, (3, n_fibers, n_x)) with fiber index 4's width changed."""
    out = params.copy()
    out[2, 4] = sigma
    return out


def _ar3dcal(directory: Path, key: str, value: float) -> Path:
    """A small ``ar3Dcal`` file of night MJD whose dataset ``key`` holds ``value`` at one pixel."""
    import h5py

    path = directory / f"ar3Dcal_{TELE}_{MJD}_0001_R_object.h5"
    ny, nx, n = 2048, 2560, 4
    gain = np.full((ny, nx), 1.9, np.float32)
    read_var = np.full((ny, nx), 64.0, np.float32)
    {"gainMat": gain, "readVarMat": read_var}[key][30, 7] = value
    options = {"compression": "gzip", "chunks": True}
    with h5py.File(path, "w") as handle:
        reads = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, ny, nx), np.float32)
        handle.create_dataset("outdat", data=100 * reads, **options)
        handle.create_dataset("gainMat", data=gain, **options)
        handle.create_dataset("readVarMat", data=read_var, **options)
        group = handle.create_group("metadata")
        group["nread_total"], group["mjd_mid_exposure"] = n, MJD + 0.25
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bad-inputs")
    for name, path in make_corpus(target).items():
        print(f"{name:22} {path}")
