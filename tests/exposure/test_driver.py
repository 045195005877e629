"""The exposure driver and its stages on small simulated exposures (40 fibers, 96 columns)."""

import dataclasses
import json

import numpy as np
import pytest

from pyapred import Flag, fit_constant, omega_uniform
from pyapred.errors import InputError
from pyapred.exposure import (
    MODEL_BORROWED,
    MODEL_CONSTANT,
    MODEL_TIME_VARIABLE,
    ChipExposure,
    FitOptions,
    load_chip,
    match_inputs,
    run_exposure,
    truth_metrics,
    write_exposure,
)
from pyapred.simulate import simulate_exposure, write_simulated_exposure
from pyapred.traces import read_trace_file

SMALL = dict(n_fibers=40, n_columns=96, ref_columns=16, n_reads=20)


def chips_of(sim, **overrides):
    return {
        name: ChipExposure(
            name, c.reads, c.read_noise, gain=c.gain, saturation=c.saturation, **overrides
        )
        for name, c in sim.chips.items()
    }


def traces_of(sim):
    return {name: c.traces for name, c in sim.chips.items()}


def truth_dn(sim):
    return {name: c.flux / c.gain for name, c in sim.chips.items()}


def bright_dn(sim):
    return {name: 100.0 / c.gain for name, c in sim.chips.items()}


@pytest.fixture(scope="module")
def cloudy():
    sim = simulate_exposure("clouds", seed=11, chips=("R", "G"), **SMALL)
    result = run_exposure(chips_of(sim), traces_of(sim), FitOptions(keep_constant=True))
    return sim, result


def test_no_nan_without_a_flag_in_an_exposure_or_its_product(cloudy, tmp_path):
    """Every non-finite flux or variance, in memory and in the product, carries a flag; the
    exposure has saturated pixels, cosmic rays, background and borrowed fibers."""
    from pyapred.io import read_product

    sim, result = cloudy
    for chip in result.chips.values():
        for values in (chip.flux, chip.flux_var, chip.constant.flux, chip.constant.flux_var):
            assert np.all(chip.flags[~np.isfinite(values)] != 0)
    product = read_product(write_exposure(result, tmp_path / "p.h5"))
    for images in product.chips.values():
        for values in (images.rate, images.ivar, images.chi2):
            assert np.all(images.flags[~np.isfinite(values)] != 0)
        assert np.all(images.flags[images.ivar == 0] != 0)  # no variance: flagged, not silent
    for fibers in product.fibers.values():
        for values in (fibers.amplitude, fibers.delta_chi2, fibers.p_value):
            assert np.all(fibers.flags[np.isnan(values)] != 0)


def test_truth_metrics_with_no_bright_pixel_say_none_not_nan(cloudy):
    """``pyapred demo --fibers 1 --json`` printed NaN (no JSON) for the flux biases of a chip
    without bright pixels; the omega metrics already said None."""
    import json

    sim, result = cloudy
    metrics = truth_metrics(result, sim.omega, truth_dn(sim), min_flux=1e30)
    for entry in metrics["flux"].values():
        assert entry["n_pixels"] == 0 and entry["variable_bias"] is None
        assert entry["variable_z_std"] is None and entry.get("constant_bias") is None
    json.dumps(metrics, allow_nan=False)


def test_truth_metrics_of_a_chip_without_a_usable_pixel(cloudy):
    """Every pixel saturated (``FitOptions(saturation=1)``): the 90th percentile of no traced
    pixel was an IndexError."""
    import dataclasses
    import json

    sim, result = cloudy
    from pyapred import Flag

    chips = {name: dataclasses.replace(chip, flags=chip.flags | int(Flag.SATURATED))
             for name, chip in result.chips.items()}  # fmt: skip
    metrics = truth_metrics(dataclasses.replace(result, chips=chips), sim.omega, truth_dn(sim))
    for entry in metrics["flux"].values():
        assert entry["n_pixels"] == 0 and entry["min_flux"] is None
    json.dumps(metrics, allow_nan=False)


def test_a_chip_with_most_traced_pixels_without_flux_is_a_problem(tmp_path):
    """Every pixel saturated (a saturation of 1 DN) gave exit 0 and no problem: only "0 bright
    fibers" said anything. The line is kept once the images are written (the command line's
    run), and `night` reads it back from a product it keeps."""
    from pyapred.io import read_product
    from pyapred.night import _problems

    sim = simulate_exposure("clouds", seed=3, n_fibers=12, n_columns=48, ref_columns=0,
                            n_reads=6, chips=("R",))  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    options = FitOptions(saturation=1.0)
    result = run_exposure(paths["apz"], paths["traces"], options, product=tmp_path / "p.h5")
    assert result.chips["R"].flux is None  # written, not kept
    line = "chip R: 100 % of the traced pixels have no flux (of those: saturated 100 %"
    assert result.problems()[0].startswith(line)
    assert _problems(read_product(tmp_path / "p.h5"))[0] == result.problems()[0]
    fine = run_exposure(paths["apz"], paths["traces"])
    assert not any(p.startswith("chip") for p in fine.problems())


def test_truth_metrics_names_a_wrong_true_omega(cloudy):
    sim, result = cloudy
    with pytest.raises(ValueError, match=r"omega: expected the true omega of every fiber"):
        truth_metrics(result, sim.omega[:3, :3], truth_dn(sim))  # a NumPy broadcast error before


def test_cloud_omega_recovered_with_calibrated_errors(cloudy):
    sim, result = cloudy
    metrics = truth_metrics(result, sim.omega, truth_dn(sim), min_flux=bright_dn(sim))
    for key in ("R", "G"):
        assert metrics["omega"][key]["n_fibers"] >= 20
        assert 0.8 <= metrics["omega"][key]["z_std"] <= 1.25
        fits = result.fibers[key]
        assert np.all(fits.model[fits.bright] == MODEL_TIME_VARIABLE)
        assert np.all(fits.omega_fit[fits.bright, fits.ref_index] == 1.0)
        np.testing.assert_allclose(fits.omega[fits.bright].mean(axis=1), 1.0)


def test_cloud_constant_model_biased_time_variable_not(cloudy):
    sim, result = cloudy
    metrics = truth_metrics(result, sim.omega, truth_dn(sim), min_flux=bright_dn(sim))
    for key in ("R", "G"):
        flux = metrics["flux"][key]
        assert flux["n_pixels"] > 2000
        assert flux["constant_bias"] <= -1.0
        assert abs(flux["variable_bias"]) < 0.1
        assert 0.9 < flux["variable_z_std"] < 1.1


def test_faint_fibers_borrow_the_bright_fibers_mean_omega(cloudy):
    sim, result = cloudy
    metrics = truth_metrics(result, sim.omega, truth_dn(sim), min_flux=bright_dn(sim))
    for key in ("R", "G"):
        fits = result.fibers[key]
        sky = sim.fiber_type == "sky"
        assert sky.any()
        assert np.all(fits.model[sky] == MODEL_BORROWED)
        assert np.all(fits.flags[sky] & Flag.BORROWED_OMEGA)
        assert not np.any(fits.bright[sky])
        # The borrowed omega matches the truth within its (small) errors ...
        assert 0.5 < metrics["borrowed"][key]["z_std"] < 1.5
        assert 0.3 < metrics["borrowed"][key]["chi2_dof"] < 2.5  # K - 1 = 18 dof
        ref = fits.ref_index
        truth = sim.omega[sky][0] / sim.omega[sky][0, ref]
        np.testing.assert_allclose(fits.borrowed_omega, truth, atol=0.01)
        # ... so the sky fibers' fluxes are unbiased too.
        assert abs(metrics["flux"][key]["borrowed_bias"]) < 0.1


def test_fpi_fibers_are_excluded_and_constant():
    """APO's FPI fibers (fiberId 75 and 225; the 40-fiber exposures above have none) get no
    fit pixels and no omega fit: the constant model, omega 1, FPI_FIBER. fit_fibers leaves an
    excluded fiber unfitted even where it has fit pixels (here from traces without the
    exclusion)."""
    from pyapred.exposure import fit_fibers, prepare_chip

    sim = simulate_exposure("clouds", seed=9, chips=("R",), n_fibers=300, n_columns=48,
                            ref_columns=0, n_reads=6)  # fmt: skip
    chip, traces = chips_of(sim)["R"], traces_of(sim)["R"]
    fpi = np.flatnonzero(sim.fiber_type == "fpi")
    assert fpi.tolist() == [75, 225] and np.flatnonzero(traces.excluded).tolist() == [75, 225]
    options = FitOptions(min_fit_pixels=5)  # the FPI comb lights a few pixels in 48 columns
    result = run_exposure({"R": chip}, {"R": traces}, options)
    included = dataclasses.replace(traces, excluded=np.zeros(300, bool))
    prepared = prepare_chip(chip, included, options)
    assert np.all(prepared.fit_pixels.valid[fpi].sum(axis=1) >= options.min_fit_pixels)
    given = fit_fibers([dataclasses.replace(prepared, traces=traces)], options)
    for fits in (result.fibers["R"], given):
        assert np.flatnonzero(fits.flags & Flag.FPI_FIBER).tolist() == [75, 225]
        assert np.all(fits.fit.n_iter[fpi] == 0)
        assert np.all(fits.fit.group_flags[fpi] & Flag.EMPTY_GROUP)
        assert np.isnan(fits.omega_fit[fpi]).all() and not fits.bright[fpi].any()
        assert np.all(fits.model[fpi] == MODEL_CONSTANT)
        np.testing.assert_array_equal(fits.omega[fpi], 1.0)
        assert (fits.model == MODEL_TIME_VARIABLE).sum() > 100  # the science fibers are fitted
    assert np.all(result.fibers["R"].n_fit_pixels[fpi] == 0)  # no fit pixels from the traces


def test_cosmic_rays_found_and_flagged(cloudy):
    sim, result = cloudy
    chip, truth = result.chips["R"], sim.chips["R"]
    hits = truth.cosmic_rays
    assert hits.shape[0] > 5
    found = {tuple(j) for j in chip.prepared.jumps.tolist()}
    # A hit in difference k masks read k + 1.
    recovered = sum((k + 1, r, c) in found for k, r, c in hits.tolist())
    assert recovered >= 0.9 * hits.shape[0]
    assert len(found) <= 1.1 * hits.shape[0] + 2
    assert np.all(chip.flags[hits[:, 1], hits[:, 2]] & Flag.JUMP_DETECTED)


def test_pixel_flags_and_shapes(cloudy):
    sim, result = cloudy
    chip = result.chips["R"]
    ny, nx = sim.chips["R"].reads.shape[1:]
    assert chip.flux.shape == (ny, nx) and chip.fiber.shape == (ny, nx)
    assert np.all(chip.fiber[:, SMALL["n_columns"] :] == -1)  # reference output: background
    assert np.all((chip.flags & Flag.BACKGROUND).astype(bool) == (chip.fiber < 0))
    saturated = sim.chips["R"].reads.max(axis=0) >= sim.chips["R"].saturation
    assert np.all(chip.flags[saturated] & Flag.SATURATED)
    assert np.all(np.isfinite(chip.flux[chip.n_diff >= 2]))


def test_model_choice_stable_exposure_is_constant():
    sim = simulate_exposure("stable", seed=5, chips=("R",), **SMALL)
    result = run_exposure(chips_of(sim), traces_of(sim))
    fits = result.fibers["R"]
    assert fits.bright.sum() >= 20
    assert np.mean(fits.model[fits.bright] == MODEL_CONSTANT) >= 0.95
    assert np.all(fits.model[~fits.bright] == MODEL_CONSTANT)  # nothing worth borrowing
    # Constant fibers are extracted with the ones-vector: exactly the constant model.
    chip = sim.chips["R"]
    direct = fit_constant(chip.reads, chip.read_noise, gain=chip.gain, saturation=chip.saturation)
    constant_pixels = result.chips["R"].flags & Flag.JUMP_DETECTED == 0
    np.testing.assert_allclose(
        result.chips["R"].flux[constant_pixels], direct.flux[constant_pixels], rtol=1e-10
    )


def test_model_choice_amplitude_0_2_is_time_variable():
    rng = np.random.default_rng(3)
    omega = omega_uniform(SMALL["n_reads"] - 1, 0.2, rng)
    sim = simulate_exposure(omega=omega, seed=6, chips=("R",), **SMALL)
    fits = run_exposure(chips_of(sim), traces_of(sim)).fibers["R"]
    assert fits.bright.sum() >= 20
    assert np.mean(fits.model[fits.bright] == MODEL_TIME_VARIABLE) >= 0.95
    assert 0.15 < np.median(fits.amplitude[fits.bright]) < 0.25  # the paper's A, about
    assert np.all(fits.p_value[fits.bright] < 1e-3)


def test_joint_chips_tighten_omega(cloudy):
    sim, per_chip = cloudy
    joint = run_exposure(chips_of(sim), traces_of(sim), FitOptions(joint_chips=True))
    assert list(joint.fibers) == ["joint"]
    fits = joint.fibers["joint"]
    both = fits.bright & per_chip.fibers["R"].bright & per_chip.fibers["G"].bright
    assert both.sum() >= 12

    def median_error(f):
        return np.median(np.delete(f.omega_error(), f.ref_index, axis=1)[both], axis=1)

    gain = median_error(per_chip.fibers["R"]) / median_error(fits)
    assert np.median(gain) > 1.2  # two chips: about sqrt(2) when equally bright
    metrics = truth_metrics(joint, sim.omega, truth_dn(sim), min_flux=bright_dn(sim))
    assert 0.8 <= metrics["omega"]["joint"]["z_std"] <= 1.25
    assert joint.chips["R"].fibers is joint.chips["G"].fibers


def test_forced_models():
    sim = simulate_exposure("clouds", seed=8, chips=("R",), **SMALL)
    constant = run_exposure(chips_of(sim), traces_of(sim), FitOptions(model="constant"))
    fits = constant.fibers["R"]
    assert fits.fit is None and np.all(fits.model == MODEL_CONSTANT)
    np.testing.assert_array_equal(fits.omega, 1.0)
    # No omega fit, no statistics of one: NaN, each with the flag that says why.
    assert np.all(np.isnan(fits.amplitude)) and np.all(fits.flags & Flag.NO_OMEGA_FIT)
    variable = run_exposure(chips_of(sim), traces_of(sim), FitOptions(model="time-variable"))
    fits = variable.fibers["R"]
    expected = np.where(fits.bright, MODEL_TIME_VARIABLE, MODEL_BORROWED)
    expected[sim.fiber_type == "fpi"] = MODEL_CONSTANT
    np.testing.assert_array_equal(fits.model, expected)
    with pytest.raises(ValueError, match="model"):
        FitOptions(model="guess")


def test_unconverged_fibers_fall_back_to_constant_and_are_reported():
    sim = simulate_exposure("clouds", seed=9, chips=("R",), **SMALL)
    result = run_exposure(chips_of(sim), traces_of(sim), FitOptions(max_iter=1))
    fits = result.fibers["R"]
    failed = (fits.flags & Flag.FALLBACK_CONSTANT).astype(bool)
    assert failed.sum() >= 20
    assert np.all(fits.flags[failed] & Flag.NOT_CONVERGED)
    assert np.all(fits.model[failed] == MODEL_CONSTANT)
    assert result.problems() and "constant model used" in result.problems()[0]
    assert np.all(np.isfinite(result.chips["R"].flux[result.chips["R"].n_diff >= 2]))


def test_unconverged_nuisance_fibers_are_problems_naming_what_they_used():
    """With the 1/f nuisance term a fit that does not converge is treated as a faint fiber's
    (it borrows, or keeps the constant model): not a fallback, but a problem all the same, listed
    with its fiberId, so that ``pyapred fit`` exits 1. They went unlisted, the exit code 0."""

    sim = simulate_exposure("clouds", seed=9, chips=("R",), **SMALL)
    result = run_exposure(chips_of(sim), traces_of(sim))
    assert result.problems() == []
    fits = result.fibers["R"]
    flags, model = fits.flags.copy(), fits.model.copy()
    flags[[0, 1]] |= Flag.NOT_CONVERGED  # as choose_models leaves them with offsets
    model[[0, 1]] = MODEL_BORROWED, MODEL_CONSTANT
    stuck = dataclasses.replace(fits, flags=flags, model=model)
    lines = dataclasses.replace(result, fibers={"R": stuck}).problems()
    n_iter, n_pix = fits.fit.n_iter, fits.n_fit_pixels
    assert lines == [
        f"R: fiberId 300: omega fit failed (with the 1/f nuisance term; not converged after "
        f"{n_iter[0]} iterations; {n_pix[0]} fit pixels); the bright fibers' omega used",
        f"R: fiberId 299: omega fit failed (with the 1/f nuisance term; not converged after "
        f"{n_iter[1]} iterations; {n_pix[1]} fit pixels); constant model used (no "
        f"significant omega of bright fibers to borrow)",
    ]


def test_bad_input_geometry_and_mixed_exposures():
    sim = simulate_exposure("stable", seed=1, chips=("R", "G"), **SMALL)
    chips = chips_of(sim)
    short = {name: c.traces for name, c in sim.chips.items()}
    too_wide = {k: type(t)(np.pad(t.y_center, ((0, 0), (0, 200)), mode="edge"), 1.0)
                for k, t in short.items()}  # fmt: skip
    with pytest.raises(InputError, match="trace columns"):
        run_exposure(chips, too_wide)
    mixed = dict(chips)
    mixed["G"] = ChipExposure("G", chips["G"].reads, 8.0, telescope="lco", source="b.apz")
    mixed["R"] = ChipExposure("R", chips["R"].reads, 8.0, telescope="apo", source="a.apz")
    with pytest.raises(InputError, match="telescope"):
        run_exposure(mixed, short)


def test_match_inputs_rejects_mixed_nights(tmp_path):
    with pytest.raises(InputError, match="one exposure per call"):
        match_inputs(["apR-a-52190001.apz", "apR-b-52200001.apz"], ["traceMain_apo_60781_R.h5"])
    with pytest.raises(InputError, match="trace file for chip G"):
        match_inputs(["apR-a-52190001.apz", "apR-b-52190001.apz"], ["traceMain_apo_60781_R.h5"])
    pairs = match_inputs(["apR-b-52190001.apz", "apR-a-52190001.apz"],
                         ["traceMain_apo_60781_G.h5", "traceMain_apo_60781_R.h5"])  # fmt: skip
    assert list(pairs) == ["R", "G"]
    with pytest.raises(InputError, match="one trace file per chip; chip R is also"):
        match_inputs(["apR-a-52190001.apz"],
                     ["traceMain_apo_60781_R.h5", "domeTrace_apo_60781_R.h5"])  # fmt: skip


def test_files_to_product_and_command_line(tmp_path, capsys, monkeypatch):
    from pyapred.cli import main
    from pyapred.io import read_product

    sim = simulate_exposure("clouds", seed=12, chips=("R", "B"), **SMALL)
    paths = write_simulated_exposure(sim, tmp_path / "data")
    result = run_exposure(paths["apz"], paths["traces"])
    in_memory = run_exposure(chips_of(sim), traces_of(sim))
    np.testing.assert_allclose(result.chips["R"].flux, in_memory.chips["R"].flux, rtol=1e-6)
    # Files are read into writable cubes (NaN after jumps instead of a mask): same flags.
    np.testing.assert_array_equal(result.chips["R"].flags, in_memory.chips["R"].flags)
    product = read_product(write_exposure(result, tmp_path / "p.h5"))
    assert set(product.chips) == {"R", "B"} and set(product.fibers) == {"R", "B"}
    # Written chip by chip: the same images, and only their summary kept in memory. The inputs
    # are hashed in the background from the start.
    import pyapred.io
    from pyapred.io import sha256_file

    made = []

    class Recorded(pyapred.io.BackgroundHashes):
        def __init__(self, files):
            made.append([str(f) for f in files])
            super().__init__(files)

    monkeypatch.setattr(pyapred.io, "BackgroundHashes", Recorded)
    streamed = run_exposure(paths["apz"], paths["traces"], product=tmp_path / "s.h5")
    path = streamed.meta["product"]
    files = [*paths["apz"], *paths["traces"]]
    assert made == [[str(f) for f in files]]
    meta = read_product(path).metadata
    hashed = dict(zip(meta["input_files"], meta["input_sha256"], strict=True))
    assert hashed == {f.name: sha256_file(f) for f in files}
    assert streamed.chips["R"].flux is None and streamed.chips["R"].prepared.jumps is not None
    np.testing.assert_array_equal(read_product(path).chips["R"].rate, product.chips["R"].rate)
    np.testing.assert_array_equal(read_product(path).chips["B"].flags, product.chips["B"].flags)
    # The exposure's timing travels with the product, so `pyapred guider` needs no --exposure.
    from pyapred.guider.omega import read_product_omega
    from pyapred.io import read_apz

    raw = read_apz(paths["apz"][0])
    meta = read_product(path).metadata
    times = raw.read_times.tai.mjd
    np.testing.assert_allclose(meta["read_times_tai_mjd"], times, rtol=0, atol=1e-9)
    assert meta["DATE-OBS"] == raw.header["DATE-OBS"] and meta["INTOFF"] == raw.header["INTOFF"]
    assert read_product_omega(str(path), "R")["read_times"].size == raw.reads.shape[0]
    fibers = product.fibers["R"]
    assert fibers.model[int(np.flatnonzero(result.fibers["R"].bright)[0])] == "time_variable"
    assert np.all(np.isfinite(fibers.omega))
    assert product.fibers["R"].delta_chi2.shape == (SMALL["n_fibers"],)

    args = [str(p) for p in paths["apz"]] + ["--traces", *map(str, paths["traces"])]
    out = tmp_path / "cli.h5"
    plots = tmp_path / "plots"
    assert main(["fit", *args, "--out", str(out), "--json", "--plots", str(plots)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chips"] == ["R", "B"] and summary["problems"] == []
    assert len(list(plots.glob("*.png"))) == 12  # 6 per chip (tests/test_plots.py)
    assert main(["fit", *args, "--out", str(out)]) == 2  # exists, no --overwrite
    assert main(["fit", args[0], "--traces", args[-1], "--out", str(tmp_path / "x.h5")]) == 2
    assert "trace file for chip R" in capsys.readouterr().err
    assert main(["fit", *args, "--out", str(tmp_path / "j.h5"), "--backend", "julia"]) == 2


def test_each_chip_is_let_go_before_the_next_is_loaded(cloudy, tmp_path, monkeypatch):
    """Written to a product chip by chip, a chip's prepared maps are freed before the next chip
    is loaded (the driver's loop kept the last one alive through the next chip's work), and the
    result keeps no jump masks of the omega fit (``keep_images`` keeps them) and, without
    ``keep_fit_reads``, no fit reads, read noise or gain, nor the maps no later stage reads; the
    fits are otherwise those of the run in memory."""
    import gc
    import weakref

    from pyapred.exposure import driver

    sim, in_memory = cloudy
    prepare_chip, prepared = driver.prepare_chip, []

    def prepare(*args, **kwargs):
        chip = prepare_chip(*args, **kwargs)
        prepared.append(weakref.ref(chip))
        return chip

    monkeypatch.setattr(driver, "prepare_chip", prepare)
    fit_fibers, maps_at_fit = driver.fit_fibers, []

    def fit(prepared, options):
        maps_at_fit.extend((p.rate, p.saturated, p.pixel_map.purity) for p in prepared)
        return fit_fibers(prepared, options)

    monkeypatch.setattr(driver, "fit_fibers", fit)
    alive_at_load = []

    def loader(chip):
        def load():
            gc.collect()
            alive_at_load.append([ref() is not None for ref in prepared])
            return chip

        return load

    chips = {name: loader(chip) for name, chip in chips_of(sim).items()}
    options = FitOptions(keep_constant=True, keep_fit_reads=False)
    streamed = run_exposure(chips, traces_of(sim), options, product=tmp_path / "s.h5")
    assert alive_at_load == [[], [False]]
    # The maps no later stage reads went as each chip was prepared; a caller's on_chip sees them.
    assert len(maps_at_fit) == 2 and all(m is None for maps in maps_at_fit for m in maps)
    seen = []
    maps_at_fit.clear()
    run_exposure(chips, traces_of(sim), options, product=tmp_path / "c.h5",
                 on_chip=lambda name, chip: seen.append(chip.prepared.rate) or chip)  # fmt: skip
    assert all(m is not None for maps in maps_at_fit for m in maps)
    assert len(seen) == 2 and all(rate is not None for rate in seen)
    kept = run_exposure(chips, traces_of(sim), options, product=tmp_path / "k.h5",
                        keep_images=True)  # fmt: skip
    for name in ("R", "G"):
        fits = streamed.fibers[name]
        assert fits.fit.jump_mask is None and streamed.chips[name].fibers is fits
        assert kept.fibers[name].fit.jump_mask is not None
        np.testing.assert_array_equal(fits.omega, in_memory.fibers[name].omega)
        np.testing.assert_array_equal(fits.fit.flux, in_memory.fibers[name].fit.flux)
        released = streamed.chips[name].prepared
        assert released.fit_reads is None and released.fit_read_noise is None
        assert released.fit_gain is None and in_memory.chips[name].prepared.fit_gain is not None


def _assert_same_arrays(a, b, where: str) -> None:
    """Every array field of two frozen results (and of the results they hold) is equal."""
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f"{where}.{field.name}")
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            _assert_same_arrays(x, y, f"{where}.{field.name}")


@pytest.mark.parametrize("joint_chips", [False, True])
def test_each_file_is_read_into_the_cube_of_the_chip_before_it(tmp_path, monkeypatch, joint_chips):
    """A chip loaded from its file is read into the raw cube of the chip done with before it
    (one cube allocated for the exposure: glibc gave a freed cube's memory to the next only
    while nothing had been carved from it), and the results are those of new cubes: no stage's
    result holds a view of the reads. A caller's arrays and the corrected cubes of
    ``--correct-1f`` are never filled."""
    from pyapred.exposure import driver
    from pyapred.io import read_product

    sim = simulate_exposure("clouds", seed=13, chips=("R", "G", "B"), **SMALL)
    paths = write_simulated_exposure(sim, tmp_path / "data")
    options = FitOptions(joint_chips=joint_chips, keep_constant=True)
    load_chip, loads = driver.load_chip, []

    def recorded(*args, out=None, **kwargs):
        chip = load_chip(*args, out=out, **kwargs)
        loads.append((out, chip.reads))
        return chip

    monkeypatch.setattr(driver, "load_chip", recorded)
    reused = run_exposure(paths["apz"], paths["traces"], options)
    # The command line's way too: each chip written as it is extracted.
    streamed = run_exposure(paths["apz"], paths["traces"], options, product=tmp_path / "s.h5")
    # Joint chips are each loaded to be prepared, then again to be extracted.
    n_loads = 6 if joint_chips else 3
    assert len(loads) == 2 * n_loads
    for run in (loads[:n_loads], loads[n_loads:]):
        assert run[0][0] is None
        for (_, before), (out, reads) in zip(run[:-1], run[1:], strict=True):
            assert out is before and reads is before
    loads.clear()
    # The correction needs whole chips: here it makes its float32 copy (what it returns for a
    # raw cube), so the loaders are wrapped as they are for --correct-1f.
    monkeypatch.setattr(driver, "correct_1f", lambda chip, *args, **kwargs: dataclasses.replace(
        chip, reads=chip.reads.astype(np.float32), writable=True))  # fmt: skip
    # (and the check of the raw frame's shape with it: these files are small)
    monkeypatch.setattr(driver, "check_reference_input", lambda *args, **kwargs: None)
    corrected = FitOptions(joint_chips=joint_chips, correct_1f="refpix")
    run_exposure(paths["apz"], paths["traces"], corrected)
    assert len(loads) == n_loads and all(out is None for out, _ in loads)
    in_memory = chips_of(sim)
    before = {name: chip.reads.copy() for name, chip in in_memory.items()}
    run_exposure(in_memory, traces_of(sim), options)
    for name, chip in in_memory.items():
        np.testing.assert_array_equal(chip.reads, before[name])
    monkeypatch.setattr(driver, "_offer_reads", lambda spare, source, chip: None)
    loads.clear()
    fresh = run_exposure(paths["apz"], paths["traces"], options, product=tmp_path / "f.h5",
                         keep_images=True)  # fmt: skip
    assert all(out is None for out, _ in loads)
    assert len({id(reads) for _, reads in loads}) == len(loads)
    for name in ("R", "G", "B"):
        _assert_same_arrays(reused.chips[name], fresh.chips[name], name)
    a, b = read_product(streamed.meta["product"]), read_product(tmp_path / "f.h5")
    for name in ("R", "G", "B"):
        _assert_same_arrays(a.chips[name], b.chips[name], f"product {name}")
    assert a.fibers.keys() == b.fibers.keys()
    for key in a.fibers:  # per chip, or "joint"
        _assert_same_arrays(a.fibers[key], b.fibers[key], f"product fibers {key}")


def test_simulate_command_writes_an_exposure(tmp_path, capsys):
    from pyapred.cli import main

    argv = ["simulate", "--out", str(tmp_path), "--seeing", "--seed", "2", "--fibers", "12"]
    assert main([*argv, "--columns", "16", "--ref-columns", "0", "--reads", "5"]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == 7 and all(tmp_path.joinpath(p).exists() for p in written)
    truth = np.load(next(tmp_path.glob("truth_*.npz")))
    assert truth["omega"].shape == (12, 4) and str(truth["scenario"]) == "seeing"


# --------------------------------------------------------------------------------------------
# Renamed inputs: pyapred fit --chip --telescope --mjd (identity=)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_chip(tmp_path_factory):
    """One chip R of a small cloudy exposure, its trace file, and its product from the file."""
    folder = tmp_path_factory.mktemp("one_chip")
    sim = simulate_exposure("clouds", seed=5, chips=("R",), **SMALL)
    paths = write_simulated_exposure(sim, folder)
    product = run_exposure(paths["apz"], paths["traces"], product=folder / "named.h5")
    return paths["apz"][0], paths["traces"][0], folder / "named.h5", product


def test_identify_exposure_overrides_and_unnamed_files(tmp_path):
    from pyapred.exposure import identify_exposure

    named = tmp_path / "apR-a-52190001.apz"
    assert identify_exposure(named) == ("R", "apo", 60781, 1)
    assert identify_exposure(named, {"telescope": "lco", "mjd": 60790}) == ("R", "lco", 60790, 1)
    unnamed = tmp_path / "exposure.apz"
    assert identify_exposure(unnamed, {"chip": "B", "telescope": "apo", "mjd": 60781}) == (
        "B", "apo", 60781, 0,
    )  # fmt: skip
    with pytest.raises(InputError, match="file name"):
        identify_exposure(unnamed, {"chip": "B"})
    with pytest.raises(InputError, match="--chip"):
        identify_exposure(named, {"chip": "X"})
    with pytest.raises(InputError, match="--mjd"):
        identify_exposure(named, {"mjd": 123})


def test_renamed_input_fits_with_the_identity_flags(one_chip, tmp_path, capsys):
    from pyapred.cli import main
    from pyapred.io import read_product

    apz, trace, named_product, _ = one_chip
    renamed = tmp_path / "my-exposure.apz"
    renamed.write_bytes(apz.read_bytes())
    argv = ["fit", str(renamed), "--traces", str(trace), "--json"]
    # The name says nothing: the error names the file and the flags that would say it.
    assert main([*argv, "--out", str(tmp_path / "p.h5")]) == 2
    err = capsys.readouterr().err
    assert str(renamed) in err and "--chip, --telescope, --mjd" in err
    assert main([*argv, "--out", str(tmp_path / "p.h5"), "--chip", "R"]) == 2
    assert "--telescope, --mjd" in capsys.readouterr().err
    identity = ["--chip", "R", "--telescope", "apo", "--mjd", "60781"]
    assert main([*argv, "--out", str(tmp_path / "p.h5"), *identity]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chips"] == ["R"]
    fitted, reference = read_product(tmp_path / "p.h5"), read_product(named_product)
    np.testing.assert_array_equal(fitted.chips["R"].rate, reference.chips["R"].rate)
    np.testing.assert_array_equal(fitted.fibers["R"].omega, reference.fibers["R"].omega)
    assert list(fitted.metadata["input_files"]) == [renamed.name, trace.name]
    # The overrides name the exposure's telescope and night in the product; no number is known.
    assert fitted.metadata["telescope"] == "apo" and int(fitted.metadata["mjd"]) == 60781
    assert "expnum" not in fitted.metadata


def test_identity_flags_override_the_name(one_chip, tmp_path, capsys):
    from pyapred.cli import main
    from pyapred.io import read_product

    apz, trace, _, _ = one_chip
    other_night = tmp_path / "traceMain_apo_60790_R.h5"
    other_night.write_bytes(trace.read_bytes())
    argv = ["fit", str(apz), "--traces", str(other_night), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a.h5")]) == 2  # night 60781 vs 60790
    assert "--traces-any-night" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b.h5"), "--mjd", "60790"]) == 0
    assert capsys.readouterr() == ("", "")  # --quiet: nothing at all
    metadata = read_product(tmp_path / "b.h5").metadata  # the product says what was fitted
    assert (metadata["telescope"], metadata["mjd"]) == ("apo", 60790)
    assert metadata["expnum"] == (60790 - 55562) * 10000 + 1
    # Another chip than the file's header says: refused, naming --chip.
    assert main([*argv, "--out", str(tmp_path / "c.h5"), "--mjd", "60790", "--chip", "G"]) == 2
    assert "a trace file for chip G" in capsys.readouterr().err
    single = tmp_path / "trace.h5"  # a name without a chip: paired with the one input
    single.write_bytes(trace.read_bytes())
    argv = ["fit", str(apz), "--traces", str(single), "--chip", "G", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "d.h5")]) == 2
    err = capsys.readouterr().err
    assert str(apz) in err and "CHIP" in err and "--chip" in err and "Traceback" not in err


def test_identity_flags_need_exactly_one_input(one_chip, tmp_path, capsys):
    from pyapred.cli import main

    apz, trace, _, _ = one_chip
    argv = ["fit", str(apz), str(apz), "--traces", str(trace), "--out", str(tmp_path / "x.h5")]
    assert main([*argv, "--telescope", "apo"]) == 2
    assert "--telescope: expected exactly one input file, found 2 inputs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="identity"):
        run_exposure({"R": None}, {"R": None}, identity={"chip": "R"})


@pytest.mark.julia
def test_fit_and_night_run_the_whole_exposure_on_the_julia_kernels(tmp_path, capsys):
    """``--backend julia`` from ``fit`` and ``night``: the product says so, and agrees with
    NumPy's to the float32 rounding of the images (the kernels agree to 1e-10)."""
    from pyapred.cli import main
    from pyapred.io import read_product

    sim = simulate_exposure("clouds", seed=5, chips=("R",), **SMALL)
    paths = write_simulated_exposure(sim, tmp_path / "raw")
    args = [str(paths["apz"][0]), "--traces", str(paths["traces"][0]), "--json"]
    products = {}
    for backend in ("numpy", "julia"):
        products[backend] = tmp_path / f"{backend}.h5"
        assert main(["fit", *args, "--backend", backend, "--out", str(products[backend])]) in (0, 1)
    capsys.readouterr()
    numpy_product, julia_product = (read_product(products[b]) for b in ("numpy", "julia"))
    assert julia_product.metadata["backend"] == "julia"
    assert numpy_product.fibers["R"].model == julia_product.fibers["R"].model
    np.testing.assert_allclose(
        julia_product.chips["R"].rate, numpy_product.chips["R"].rate, rtol=1e-6, atol=1e-6
    )
    night = ["night", str(paths["apz"][0]), "--traces", str(paths["traces"][0]), "--chips", "R"]
    assert main([*night, "--out", str(tmp_path / "night"), "--backend", "julia", "--json"]) == 0
    (product,) = (tmp_path / "night").glob("pyapred_*.h5")
    assert read_product(product).metadata["backend"] == "julia"


def test_every_file_is_checked_before_the_first_chip_is_prepared(tmp_path, monkeypatch):
    """A bad last chip (an unreadable card, another number of reads, another size) is refused
    before any chip is loaded or prepared, not after the others are fitted."""
    from astropy.io import fits

    from pyapred.exposure import driver

    sim = simulate_exposure("clouds", seed=7, chips=("R", "G", "B"), **SMALL)
    paths = write_simulated_exposure(sim, tmp_path / "good")
    other = simulate_exposure("clouds", seed=7, chips=("B",), **{**SMALL, "n_reads": 9})
    narrow = simulate_exposure("clouds", seed=7, chips=("B",), **{**SMALL, "n_columns": 48})
    prepared = []
    monkeypatch.setattr(driver, "prepare_chip", lambda *args: prepared.append(args))

    def with_last(apz, match):
        inputs = [*paths["apz"][:2], apz]
        with pytest.raises(InputError, match=match):
            run_exposure(inputs, paths["traces"])
        assert prepared == []

    data = bytearray(paths["apz"][2].read_bytes())
    at = data.index(b"GAIN    =", 2880)
    data[at : at + 80] = f"GAIN    = {'NAN':>20}".ljust(80).encode()
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / paths["apz"][2].name).write_bytes(bytes(data))
    with_last(tmp_path / "card" / paths["apz"][2].name, "HDU 1 GAIN")
    with fits.open(paths["apz"][2]) as hdul:
        assert hdul[1].header["GAIN"] > 0  # the damage is in the copy only
    # The timing cards a product keeps: the writer refused these after every chip was fitted.
    for keyword, card in [("NREAD", "NREAD   =                      / no value"),
                          ("INTOFF", "INTOFF  = (10647.0, 1.0)"),
                          ("EXPTYPE", "CONFIGID= 123456789012345678901234567890")]:  # fmt: skip
        damaged = bytearray(paths["apz"][2].read_bytes())
        at = damaged.index(f"{keyword:<8}=".encode(), 2880)
        damaged[at : at + 80] = card.ljust(80).encode()
        folder = tmp_path / keyword
        folder.mkdir()
        (folder / paths["apz"][2].name).write_bytes(bytes(damaged))
        named = card.split("=")[0].strip()
        with_last(folder / paths["apz"][2].name, f"header keyword {named}: expected a finite")
    longer = write_simulated_exposure(other, tmp_path / "longer")["apz"][0]
    with_last(longer, "reads: expected 20 reads like")
    smaller = write_simulated_exposure(narrow, tmp_path / "narrow")["apz"][0]
    with_last(smaller, "image shape: expected")


def test_a_product_never_replaces_an_input(tmp_path):
    sim = simulate_exposure("clouds", seed=6, chips=("R",), **SMALL)
    paths = write_simulated_exposure(sim, tmp_path)
    before = paths["apz"][0].read_bytes()
    with pytest.raises(InputError, match="none of the inputs"):
        run_exposure(paths["apz"], paths["traces"], product=paths["apz"][0], overwrite=True)
    assert paths["apz"][0].read_bytes() == before
    # Chips and traces in memory name the files they came from: those were replaced.
    chips = {"R": load_chip(paths["apz"][0])}
    traces = {"R": read_trace_file(paths["traces"][0])}
    trace_bytes = paths["traces"][0].read_bytes()
    for target in (paths["apz"][0], paths["traces"][0]):
        with pytest.raises(InputError, match="none of the inputs"):
            run_exposure(chips, traces, product=target, overwrite=True)
    assert paths["apz"][0].read_bytes() == before
    assert paths["traces"][0].read_bytes() == trace_bytes


@pytest.mark.parametrize("from_the_heap", [False, True])
def test_freed_memory_goes_back_between_chips_unless_large_arrays_use_the_heap(
    monkeypatch, from_the_heap
):
    """Between chips the driver trims glibc's heap, except where large arrays come from the
    heap too (``MALLOC_MMAP_MAX_=0``, how ``pyapred`` commands run): the next chip reuses it."""
    import ctypes

    from pyapred.exposure import driver

    trims = []

    class FakeLibc:
        def malloc_trim(self, pad):
            trims.append(pad)

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0" if from_the_heap else "65536")
    driver._return_freed_memory()
    assert trims == ([] if from_the_heap else [0])


def test_run_exposure_names_the_argument_it_was_given_wrong():
    sim = simulate_exposure("clouds", seed=8, chips=("R",), **SMALL)
    chips, traces = chips_of(sim), traces_of(sim)
    with pytest.raises(ValueError, match="chips: expected"):
        run_exposure({}, traces)
    with pytest.raises(TypeError, match="chips: expected ChipExposure"):
        run_exposure({"R": chips["R"].reads}, traces)
    with pytest.raises(TypeError, match="traces: expected Traces for chip R"):
        run_exposure(chips, {"R": "traceMain_apo_60781_R.h5"})
    with pytest.raises(TypeError, match="options: expected FitOptions"):
        run_exposure(chips, traces, {"max_iter": 5})


def test_fpi_fibers_follow_the_exposure_not_the_trace_file_name(tmp_path):
    """A renamed trace file (``t.h5``) says no telescope: the FPI fibers come from the
    exposure's (they were fitted as science fibers, silently)."""
    sim = simulate_exposure("clouds", seed=9, chips=("R",), n_fibers=300, n_columns=24,
                            ref_columns=0, n_reads=6)  # fmt: skip
    paths = write_simulated_exposure(sim, tmp_path)
    renamed = tmp_path / "t.h5"
    renamed.write_bytes(paths["traces"][0].read_bytes())
    fits = run_exposure(paths["apz"], [renamed]).fibers["R"]
    fpi = 300 - np.array([75, 225])  # APO's FPI fiberIds, as fiber indices
    assert np.all(fits.flags[fpi] & Flag.FPI_FIBER) and np.all(fits.model[fpi] == MODEL_CONSTANT)


def test_run_exposure_names_another_chip_s_parts_and_a_wrong_on_chip(small_chip):
    """Chips of the wrong form or name, another chip's read times, an ``on_chip`` that returns
    nothing: a message naming the argument (each stage's own door is tested with the stage)."""
    chip, traces = small_chip
    with pytest.raises(TypeError, match="chips: expected chips in memory by name"):
        run_exposure([chip], [traces])
    with pytest.raises(ValueError, match=r"chips\['G'\]: expected the chip named 'G', got 'R'"):
        run_exposure({"G": chip}, {"G": traces})
    times = np.arange(chip.reads.shape[0]) * 10.647
    timed = dataclasses.replace(chip, read_times=times)
    later = dataclasses.replace(chip, name="G", read_times=times * 3.0)
    with pytest.raises(InputError, match="chip G: read_times: expected the read times of chip R"):
        run_exposure({"R": timed, "G": later}, {"R": traces, "G": traces})
    with pytest.raises(TypeError, match=r"on_chip\('R', ...\): expected the ChipResult"):
        run_exposure({"R": chip}, {"R": traces}, on_chip=lambda name, result: None)


def test_run_exposure_arguments_of_the_wrong_form_are_told_before_the_work(tmp_path):
    """One trace path was taken as paths of one letter ("/: traces: expected a file, found a
    folder"); files with traces by name failed on the first chip; a generator of files had no
    len(); chromatic with a chip not named R, G or B, and an on_chip that returns nothing with a
    product, failed after the work."""
    sim = simulate_exposure("clouds", seed=6, chips=("R",), **SMALL)
    paths = write_simulated_exposure(sim, tmp_path)
    raw, trace = paths["apz"][0], paths["traces"][0]
    with pytest.raises(ValueError, match="traces: expected a list of trace files, got one path"):
        run_exposure([raw], str(trace))
    with pytest.raises(TypeError, match="traces: expected files, as the chips, got dict"):
        run_exposure([raw], {"R": read_trace_file(trace)})
    with pytest.raises(TypeError, match="traces: expected Traces by chip name"):
        run_exposure({"R": load_chip(raw)}, [trace])
    fits = run_exposure((p for p in [raw]), [trace])
    assert list(fits.chips) == ["R"]
    chip = dataclasses.replace(load_chip(raw), name="X")
    with pytest.raises(ValueError, match="chips: expected chips named R, G or B with chromatic"):
        run_exposure({"X": chip}, {"X": read_trace_file(trace)}, FitOptions(chromatic=True))
    product = tmp_path / "p.h5"
    with pytest.raises(TypeError, match=r"on_chip\('R', ...\): expected the ChipResult to keep"):
        run_exposure([raw], [trace], product=product, on_chip=lambda name, chip: None)
    assert not product.exists()


def test_a_streamed_result_is_not_written_again(tmp_path):
    sim = simulate_exposure("clouds", seed=8, chips=("R",), **SMALL)
    result = run_exposure(chips_of(sim), traces_of(sim), product=tmp_path / "p.h5")
    with pytest.raises(ValueError, match=r"result: expected the chips' images, .*/p\.h5 as"):
        write_exposure(result, tmp_path / "again.h5")  # a KeyError 'rate' before
    assert not (tmp_path / "again.h5").exists()
