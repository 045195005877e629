"""Every entry point answers every malformed input clearly (the corpus of make_corpus.py).

Each case states the exit code (CLI) or exception type (Python API) and the strings the message
must name: the file and the field. Every case also checks that no traceback reaches stderr and
that nothing is left half-written: no new file in the corpus and no output but the expected.
An all-saturated fiber and a zero-flux fiber are not errors: the fit succeeds, and the product
says what happened (flagged pixels, a borrowed omega).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("astropy")
pytest.importorskip("h5py")

import pyapred  # noqa: E402
import pyapred.exposure  # noqa: E402
from pyapred.cli import main  # noqa: E402
from pyapred.errors import InputError  # noqa: E402

from .make_corpus import make_corpus  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "guider-plate-era"


@dataclass(frozen=True)
class Case:
    """One malformed input.

    ``run(files, out)`` returns CLI arguments (a list) or calls the Python API; ``expect`` is
    the exit code or the exception type; ``names(files, out)`` the strings the message must hold;
    ``outputs`` the files the case may leave in ``out``.
    """

    id: str
    entry: str
    run: Callable
    expect: int | type
    names: Callable
    outputs: tuple[str, ...] = ()
    needs_fixtures: bool = False
    subprocess: bool = False


def fit(apz: str, trace: str = "trace", *extra: str) -> Callable:
    return lambda f, out: ["fit", f[apz], "--traces", f[trace], "--out", out / "p.h5", *extra]


def guider(product: str, frames: Callable, *extra: str) -> Callable:
    def argv(f, out):
        return ["guider", "--product", f[product], "--guider", frames(f), "--out", out / "g.png"]

    return lambda f, out: [*argv(f, out), *extra]


def night(runlist: Callable, *extra: str) -> Callable:
    return lambda f, out: ["night", runlist(f), "--traces", f["trace"], "--out", out, *extra]


def fit_after_a_killed_fit(f, out) -> list:
    """A fit onto the output of a killed one, whose temporary file is still there."""
    (out / ".p.h5.k1ll3d.tmp").write_bytes(b"half a product")
    return [*fit("apz")(f, out), "--quiet"]


def named(key: str, *fields: str) -> Callable:
    """The message names corpus file ``key`` and each of ``fields``."""
    return lambda f, out: (str(f[key]), *fields)


CASES = [
    # pyapred fit: raw files
    Case("fit-empty-apz", "fit", fit("empty_apz"), 2, named("empty_apz", "FITS structure"),
         subprocess=True),
    Case("fit-truncated-apz", "fit", fit("truncated_apz"), 2,
         named("truncated_apz", "file size", "truncated")),
    Case("fit-truncated-apz-whole-blocks", "fit", fit("truncated_blocks_apz"), 2,
         named("truncated_blocks_apz", "FITS structure", "truncated")),
    Case("fit-primary-hdu-only", "fit", fit("primary_only_apz"), 2,
         named("primary_only_apz", "HDU count")),
    Case("fit-float-average-hdu", "fit", fit("float_apz"), 2,
         named("float_apz", "HDU 1", "integer")),
    Case("fit-read-of-other-shape-and-dtype", "fit", fit("shape_apz"), 2,
         named("shape_apz", "HDU 3", "shape (8, 8) like HDU 1")),
    Case("fit-zero-read-noise-card", "fit", fit("zero_rdnoise_apz"), 2,
         named("zero_rdnoise_apz", "RDNOISE", "> 0")),
    Case("fit-negative-read-noise-option", "fit", fit("apz", "trace", "--read-noise", "-1"), 2,
         named("apz", "--read-noise", "> 0")),
    Case("fit-zero-gain-option", "fit", fit("apz", "trace", "--gain", "0"), 2,
         named("apz", "--gain", "> 0")),
    Case("fit-chip-card-against-name", "fit", fit("chip_b_named"), 2,
         named("chip_b_named", "traces", "chip G")),
    Case("fit-chips-of-two-exposures", "fit",
         lambda f, out: ["fit", f["apz"], f["other_exposure_b"], "--traces", f["trace"],
                         "--out", out / "p.h5"], 2,
         named("other_exposure_b", "file name", "one exposure per call")),
    # pyapred fit: trace files and output
    Case("fit-trace-of-wrong-shape", "fit", fit("apz", "trace_shape"), 2,
         named("trace_shape", "trace_params", "(3, n, n)")),
    Case("fit-trace-wider-than-chip", "fit", fit("apz", "trace_wide"), 2,
         named("trace_wide", "trace columns")),
    Case("fit-empty-trace", "fit", fit("apz", "empty_trace"), 2,
         named("empty_trace", "HDF5 structure")),
    Case("fit-truncated-trace", "fit", fit("apz", "truncated_trace"), 2,
         named("truncated_trace", "HDF5 structure")),
    Case("fit-unwritable-output", "fit",
         lambda f, out: ["fit", f["apz"], "--traces", f["trace"], "--out", f["unwritable_out"]],
         2, named("unwritable_out", "--out")),
    Case("fit-all-saturated-fiber", "fit", fit("saturated_apz", "trace", "--quiet"), 0,
         lambda f, out: (), outputs=("p.h5",)),
    Case("fit-zero-flux-fiber", "fit", fit("zero_flux_apz", "trace", "--quiet"), 0,
         lambda f, out: (), outputs=("p.h5",)),
    # pyapred guider
    Case("guider-truncated-product", "guider",
         guider("truncated_product", lambda f: f["truncated_frame"].parent), 2,
         named("truncated_product", "HDF5 structure")),
    Case("guider-not-a-product", "guider",
         guider("not_a_product", lambda f: f["truncated_frame"].parent), 2,
         named("not_a_product", "pyapred_product_format")),
    Case("guider-no-frames-match", "guider",
         guider("product", lambda f: f["a_file"].parent / "none-*.fits"), 2,
         lambda f, out: (str(f["a_file"].parent / "none-*.fits"), "guider frames")),
    Case("guider-truncated-frame", "guider",
         guider("product", lambda f: f["truncated_frame"].parent), 2,
         named("truncated_frame", "complete FITS file")),
    Case("guider-fiber-not-in-product", "guider",
         guider("product", lambda f: f["truncated_frame"].parent, "--fibers", "99"), 2,
         named("product", "omega", "fiberIds [99]")),
    Case("guider-frames-without-overlap", "guider", guider("product", lambda f: FIXTURES), 2,
         lambda f, out: (str(FIXTURES), "DATE-OBS", "none in that span"), needs_fixtures=True,
         subprocess=True),
    Case("guider-unwritable-figure", "guider",
         lambda f, out: ["guider", "--product", f["product"], "--guider", f["truncated_frame"],
                         "--out", f["unwritable_out"] / "g.png"],
         2, named("unwritable_out", "--out")),
    # pyapred night
    Case("night-runlist-naming-missing-files", "night",
         night(lambda f: f["runlist_missing"], "--chips", "R"), 1,
         lambda f, out: (str(f["good"] / "apR-a-52190042.apz"), "chip R"),
         outputs=("failures.json",), subprocess=True),
    Case("night-empty-runlist", "night", night(lambda f: f["runlist_empty"]), 2,
         named("runlist_empty", "runlist", "at least one exposure")),
    Case("night-binary-runlist", "night", night(lambda f: f["runlist_binary"]), 2,
         named("runlist_binary", "runlist", "text")),
    Case("night-runlist-h5-without-expid", "night", night(lambda f: f["runlist_no_expid"]), 2,
         named("runlist_no_expid", "expid")),
    Case("night-runlist-h5-expid-of-another-mjd", "night",
         night(lambda f: f["runlist_wrong_mjd"]), 2,
         named("runlist_wrong_mjd", "expid (row 0)", "52180001")),
    Case("night-glob-matching-nothing", "night", night(lambda f: f["good"] / "none-*.apz"), 2,
         lambda f, out: (str(f["good"] / "none-*.apz"), "RUNLIST_OR_GLOB")),
    Case("night-traces-matching-nothing", "night",
         lambda f, out: ["night", f["apz"], "--traces", f["good"] / "no-trace", "--out", out],
         2, lambda f, out: (str(f["good"] / "no-trace"), "--traces")),
    Case("night-unwritable-output", "night",
         lambda f, out: ["night", f["apz"], "--traces", f["trace"], "--out", f["unwritable_out"]],
         2, named("unwritable_out", "--out")),
    Case("night-unknown-chip", "night", night(lambda f: f["apz"], "--chips", "RX"), 2,
         lambda f, out: ("--chips", "'RX'")),
    # pyapred validate and crossval
    Case("validate-unwritable-output", "validate",
         lambda f, out: ["validate", "--quick", "--out", f["unwritable_out"]], 2,
         named("unwritable_out", "--out")),
    Case("crossval-truncated-apz", "crossval",
         lambda f, out: ["crossval", "--apz", f["truncated_apz"]], 2,
         named("truncated_apz", "file size"), subprocess=True),
    Case("crossval-bad-rows", "crossval",
         lambda f, out: ["crossval", "--apz", f["apz"], "--rows", "5"], 2,
         named("apz", "--rows")),
    Case("crossval-no-vectors", "crossval",
         lambda f, out: ["crossval", "--vectors", f["vectors_none"]], 2,
         named("vectors_none", "*.toml")),
    Case("crossval-malformed-vector", "crossval",
         lambda f, out: ["crossval", "--vectors", f["bad_vector"].parent], 2,
         named("bad_vector", "TOML", "line 2")),
    # Hostile inputs (issue 18): refused up front, exit 2, naming the file and the field.
    Case("fit-symlink-loop-input", "fit", fit("symlink_loop"), 2,
         named("symlink_loop", "inputs", "symbolic links"), subprocess=True),
    Case("fit-fifo-input", "fit", fit("fifo"), 2, named("fifo", "inputs", "FIFO")),
    Case("fit-symlink-to-a-device", "fit", fit("dev_zero"), 2,
         named("dev_zero", "inputs", "character device")),
    Case("fit-fifo-as-trace", "fit", fit("apz", "fifo"), 2, named("fifo", "--traces", "FIFO")),
    Case("fit-trace-without-fibers", "fit", fit("apz", "trace_no_fibers"), 2,
         named("trace_no_fibers", "trace_params", "1 to 300 fibers")),
    Case("fit-trace-of-absurd-width", "fit", fit("apz", "trace_wide_sigma"), 2,
         named("trace_wide_sigma", "trace_params", "widths not in [0.1, 20] px", "fiberId 296")),
    Case("fit-trace-of-another-night", "fit", fit("apz", "trace_other_night"), 2,
         named("trace_other_night", "file name", "night 60781", "--traces-any-night")),
    Case("fit-trace-of-another-night-allowed", "fit",
         fit("apz", "trace_other_night", "--traces-any-night", "--quiet"), 0,
         lambda f, out: (), outputs=("p.h5",)),
    Case("fit-trace-of-another-telescope", "fit", fit("apz", "trace_other_telescope"), 2,
         named("trace_other_telescope", "file name", "telescope apo")),
    Case("fit-huge-read-noise-option", "fit", fit("apz", "trace", "--read-noise", "1e200"), 2,
         named("apz", "--read-noise", "plausible")),
    Case("fit-nan-gain-option", "fit", fit("apz", "trace", "--gain", "nan"), 2,
         lambda f, out: ("--gain", "a number", "nan")),
    Case("fit-huge-read-noise-card", "fit", fit("huge_rdnoise_apz"), 2,
         named("huge_rdnoise_apz", "RDNOISE", "plausible")),
    Case("fit-negative-saturation-card", "fit", fit("negative_saturation_apz"), 2,
         named("negative_saturation_apz", "SATURATE", "> 0")),
    Case("fit-huge-intoff-without-read-dates", "fit", fit("huge_intoff_apz"), 2,
         named("huge_intoff_apz", "INTOFF", "10647")),
    Case("fit-read-missing-in-the-middle", "fit", fit("missing_read_apz"), 2,
         named("missing_read_apz", "DATE-OBS", "read(s) missing after read 3")),
    Case("fit-ar3dcal-negative-gain", "fit", fit("ar3dcal_negative_gain"), 2,
         named("ar3dcal_negative_gain", "gainMat", "(30, 7)")),
    Case("fit-ar3dcal-zero-read-variance", "fit", fit("ar3dcal_zero_read_variance"), 2,
         named("ar3dcal_zero_read_variance", "readVarMat", "(30, 7)")),
    Case("fit-out-is-an-existing-folder", "fit",
         lambda f, out: ["fit", f["apz"], "--traces", f["trace"], "--out", f["a_folder"],
                         "--overwrite"], 2, named("a_folder", "--out", "an existing folder")),
    Case("fit-out-is-the-input", "fit",
         lambda f, out: ["fit", f["apz"], "--traces", f["trace"], "--out", f["apz"],
                         "--overwrite"], 2, named("apz", "--out", "none of the inputs")),
    Case("fit-out-is-the-trace-file", "fit",
         lambda f, out: ["fit", f["apz"], "--traces", f["trace"], "--out", f["trace"],
                         "--overwrite"], 2, named("trace", "--out", "none of the inputs")),
    Case("fit-plots-is-an-existing-file", "fit",
         lambda f, out: [*fit("apz")(f, out), "--plots", f["a_file"]], 2,
         named("a_file", "--plots", "a folder")),
    Case("fit-leftover-temporaries-are-removed", "fit", fit_after_a_killed_fit, 0,
         lambda f, out: (), outputs=("p.h5",)),
    Case("guider-out-is-a-folder", "guider",
         lambda f, out: ["guider", "--product", f["product"], "--guider", f["truncated_frame"],
                         "--out", f["a_folder"]], 2, named("a_folder", "--out", "folder")),
    Case("guider-fifo-product", "guider",
         lambda f, out: ["guider", "--product", f["fifo"], "--guider", f["truncated_frame"],
                         "--out", out / "g.png"], 2, named("fifo", "--product", "FIFO")),
    Case("night-fifo-runlist", "night", night(lambda f: f["fifo"]), 2,
         named("fifo", "RUNLIST_OR_GLOB", "FIFO")),
    Case("api-run-exposure-symlink-loop", "api",
         lambda f, out: pyapred.exposure.run_exposure([f["symlink_loop"]], [f["trace"]]),
         InputError, named("symlink_loop", "inputs")),
    # Python API
    Case("api-read-apz-empty", "api", lambda f, out: pyapred.io.read_apz(f["empty_apz"]),
         InputError, named("empty_apz", "FITS structure")),
    Case("api-read-product-truncated", "api",
         lambda f, out: pyapred.io.read_product(f["truncated_product"]), InputError,
         named("truncated_product", "HDF5 structure")),
    Case("api-read-trace-of-wrong-shape", "api",
         lambda f, out: pyapred.traces.read_trace_file(f["trace_shape"]), InputError,
         named("trace_shape", "trace_params")),
    Case("api-fit-files-two-exposures", "api",
         lambda f, out: pyapred.exposure.run_exposure([f["apz"], f["other_exposure_b"]],
                                                      [f["trace"]]),
         InputError, named("other_exposure_b", "file name")),
    Case("api-write-product-unwritable", "api",
         lambda f, out: pyapred.io.write_product(f["unwritable_out"] / "p.h5"), OSError,
         lambda f, out: (str(f["unwritable_out"] / "p.h5"), "Not a directory")),
    Case("api-fit-constant-zero-read-noise", "api",
         lambda f, out: pyapred.fit_constant(np.zeros((5, 3)), 0.0), ValueError,
         lambda f, out: ("read_noise", "> 0")),
    Case("api-fit-constant-one-read", "api",
         lambda f, out: pyapred.fit_constant(np.zeros((1, 5)), 10.0), ValueError,
         lambda f, out: ("reads", "n_reads >= 3", "(1, 5)")),
    Case("api-fit-omega-complex-reads", "api",
         lambda f, out: pyapred.fit_omega(np.zeros((5, 3), complex), 10.0), ValueError,
         lambda f, out: ("reads", "complex128")),
    Case("api-read-noise-of-wrong-shape", "api",
         lambda f, out: pyapred.fit_constant(np.zeros((5, 3)), np.ones(4)), ValueError,
         lambda f, out: ("read_noise", "(4,)", "(3,)")),
    Case("api-extract-omega-of-wrong-length", "api",
         lambda f, out: pyapred.extract_fluxes(np.zeros((5, 3)), 10.0, omega=np.ones(7)),
         ValueError, lambda f, out: ("omega", "(7,)")),
]  # fmt: skip


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    files = make_corpus(tmp_path_factory.mktemp("bad-inputs"))
    files["good"] = files["apz"].parent
    return files


def snapshot(folder: Path) -> dict[Path, str]:
    """Every path under ``folder``, with the SHA-256 of each regular file: inputs must come out
    of every case present and unchanged."""
    import hashlib

    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"
        for path in folder.rglob("*")
    }


def test_corpus_has_fifty_cases_over_every_entry_point():
    assert len(CASES) >= 50 and len({case.id for case in CASES}) == len(CASES)
    assert {case.entry for case in CASES} == {
        "fit",
        "guider",
        "night",
        "validate",
        "crossval",
        "api",
    }


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_answered_clearly(case: Case, corpus, tmp_path, capsys):
    if case.needs_fixtures and not FIXTURES.is_dir():
        pytest.skip("../shared/fixtures (real plate-era guider frames) absent")
    root = corpus["apz"].parents[1]
    before = snapshot(root)
    out = tmp_path / "out"
    out.mkdir()
    if isinstance(case.expect, type):
        with pytest.raises(case.expect) as error:
            case.run(corpus, out)
        message = str(error.value)
    else:
        argv = [str(arg) for arg in case.run(corpus, out)]
        if case.subprocess:  # the real command: stderr as the user sees it
            done = subprocess.run(
                [sys.executable, "-m", "pyapred.cli", *argv], capture_output=True, text=True
            )
            code, message = done.returncode, done.stderr
        else:
            code = main(argv)
            message = capsys.readouterr().err
        assert code == case.expect, message
        assert "Traceback" not in message
    for expected in case.names(corpus, out):
        assert expected in message
    assert snapshot(root) == before  # nothing written next to the inputs
    assert sorted(p.name for p in out.iterdir()) == sorted(case.outputs)


def test_saturated_fiber_is_flagged_and_zero_flux_fiber_borrows_omega(corpus, tmp_path):
    from pyapred.io import read_product
    from pyapred.solver import Flag

    argv = ["--traces", str(corpus["trace"]), "--quiet"]
    assert main(["fit", str(corpus["saturated_apz"]), *argv, "--out", str(tmp_path / "s.h5")]) == 0
    assert main(["fit", str(corpus["zero_flux_apz"]), *argv, "--out", str(tmp_path / "z.h5")]) == 0
    saturated, dark = read_product(tmp_path / "s.h5"), read_product(tmp_path / "z.h5")
    rows = np.rint(pyapred.traces.read_trace_file(corpus["trace"]).y_center).astype(int)
    columns = np.arange(rows.shape[1])
    assert np.all(saturated.chips["R"].flags[rows[5], columns] & Flag.SATURATED)
    assert saturated.fibers["R"].model[5] == "borrowed"
    assert dark.fibers["R"].model[7] == "borrowed"
    assert np.all(np.isfinite(dark.chips["R"].rate[rows[7], columns]))


def test_nan_filled_reads_are_flagged_not_silent(corpus):
    from pyapred.exposure import ChipExposure, FitOptions, run_exposure
    from pyapred.solver import Flag

    fit = pyapred.fit_constant(np.full((10, 4, 4), np.nan), 10.0)
    assert np.all(fit.flags & Flag.NONFINITE_READ) and np.all(np.isnan(fit.flux))
    raw = pyapred.io.read_apz(corpus["apz"], dtype=np.float32)
    chip = ChipExposure(
        name="R", reads=np.full_like(raw.reads, np.nan), read_noise=8.0, gain=1.9,
        saturation=55000.0, source="nan reads",
    )  # fmt: skip
    traces = pyapred.traces.read_trace_file(corpus["trace"])
    result = run_exposure({"R": chip}, {"R": traces}, FitOptions(jump_search=False))
    assert np.all(result.chips["R"].flags & Flag.NONFINITE_READ)
