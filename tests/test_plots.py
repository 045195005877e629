"""The exposure plots (``pyapred.plots``) and the short results for notebooks (``repr``, HTML).

Every figure is drawn on one small simulated exposure (40 fibers x 96 columns x 20 reads): it
renders, names the chip and a fiberId in its titles, and leaves no figure open.
"""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

import pyapred  # noqa: E402
from pyapred import plots  # noqa: E402
from pyapred.exposure import ChipExposure, FitOptions, run_exposure, write_exposure  # noqa: E402
from pyapred.simulate import simulate_exposure  # noqa: E402
from pyapred.solver import Flag  # noqa: E402
from pyapred.traces import fiber_id  # noqa: E402

SMALL = dict(seed=1, n_fibers=40, n_columns=96, ref_columns=0, n_reads=20, chips=("R",))


def _chips(sim, read_times=True):
    return {
        name: ChipExposure(name, c.reads, c.read_noise, gain=c.gain, saturation=c.saturation,
                           read_times=sim.read_times if read_times else None)
        for name, c in sim.chips.items()
    }  # fmt: skip


@pytest.fixture(scope="module")
def sim():
    return simulate_exposure("clouds", **SMALL)


@pytest.fixture(scope="module")
def result(sim):
    traces = {name: chip.traces for name, chip in sim.chips.items()}
    return run_exposure(_chips(sim), traces, FitOptions(keep_constant=True))


@pytest.fixture(autouse=True)
def no_open_figures():
    yield
    assert plt.get_fignums() == [], "a plot function left a pyplot figure open"


def _titles(fig) -> str:
    texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    texts += [ax.get_title() for ax in fig.axes]
    return " | ".join(texts)


def _labels(fig) -> str:
    texts = []
    for ax in fig.axes:
        texts += [ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend is not None:
            texts += [t.get_text() for t in legend.get_texts()]
    for legend in fig.legends:
        texts += [t.get_text() for t in legend.get_texts()]
    return " | ".join(texts)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def test_every_figure_names_the_chip_and_fiber_ids(result, sim):
    fits, chip = result.fibers["R"], result.chips["R"]
    times = result.read_times
    truth_flux = sim.chips["R"].flux / sim.chips["R"].gain
    figures = {
        "omega": plots.plot_omega(fits, times, truth=sim.omega, chip="R"),
        "omega_image": plots.plot_omega_image(fits, times, chip="R"),
        "chi2": plots.plot_chi2(fits, chip="R"),
        "fibers": plots.plot_fiber_summary(fits, chip="R", options=result.options),
        "ramps": plots.plot_ramps(chip, read_times=times),
        "flux": plots.plot_flux_comparison(chip, true_flux=truth_flux),
    }
    for name, fig in figures.items():
        titles = _titles(fig)
        assert "chip R" in titles, name
        assert "fiberId" in titles, name
        assert "index" not in titles, name  # fibers by fiberId only
        fig.canvas.draw()  # renders (Agg)
    # One normalisation: omega at mean 1 wherever it is drawn.
    assert "mean 1" in _labels(figures["omega"])
    assert "mean 1" in figures["omega_image"].axes[1].get_ylabel()  # the colour bar
    # True time axes, with their zero point.
    for name in ("omega", "omega_image", "ramps"):
        assert "seconds since the first read" in _labels(figures[name]), name
    # The ramp plot has legends (the pixels and both models) and residual panels.
    ramps = _labels(figures["ramps"])
    assert "row" in ramps and "time-variable model" in ramps and "constant-flux model" in ramps
    assert "data - model (DN)" in ramps and "(data - model) / sigma" in ramps
    # Its fiber: the bright fiber of largest delta chi2, titled by its fiberId.
    score = np.where(fits.bright, fits.delta_chi2, -np.inf)
    assert f"fiberId {fiber_id(int(np.argmax(score)))} " in _titles(figures["ramps"])
    # chi2: the expected curve and an overflow bin.
    chi2 = figures["chi2"].axes[0]
    assert "expected for a correct model" in _labels(figures["chi2"])
    assert chi2.get_xticklabels()[-1].get_text().startswith(">")
    # The flux comparison against the truth: the constant model's bias, not the extraction's.
    legend = _labels(figures["flux"])
    assert "against the truth" in _titles(figures["flux"]) and "median z" in legend
    # Every test of the model choice is drawn: a fiber above max_omega_error borrows whatever
    # the other panels say (a review could not tell why five fibers had borrowed).
    summary = _labels(figures["fibers"])
    assert "median omega\nerror" in summary and "max_omega_error 0.05" in summary
    # The ramps' statistic is the fiber's over its fit pixels, counted as the fit counted them.
    assert f"over {fits.n_fit_pixels[int(np.argmax(score))]} fit pixels" in _titles(
        figures["ramps"]
    )


def test_the_flux_plot_counts_the_pixels_its_log_axis_cannot_show(result):
    chip = result.chips["R"]
    usable = (chip.fiber >= 0) & np.isfinite(chip.flux)
    hidden = int(np.count_nonzero(usable & (chip.flux <= 0)))
    assert hidden > 0  # faint traced pixels scatter below 0
    titles = _titles(plots.plot_flux_comparison(chip))
    assert "pixels with extracted flux <= 0 not shown" in titles


def test_read_index_axis_when_read_times_are_unknown(sim):
    traces = {name: chip.traces for name, chip in sim.chips.items()}
    result = run_exposure(_chips(sim, read_times=False), traces, FitOptions())
    assert not result.read_times_known
    fits = result.fibers["R"]
    for fig in (
        plots.plot_omega(fits, result.read_times, chip="R"),
        plots.plot_omega_image(fits, result.read_times, chip="R"),
        plots.plot_ramps(result.chips["R"], read_times=result.read_times),
    ):
        labels = _labels(fig)
        assert "read index (read times unknown; 0 = first read)" in labels
        assert "seconds" not in labels


def test_fpi_and_failed_fibers_are_marked(result):
    fits = result.fibers["R"]
    flags = fits.flags.copy()
    flags[3] |= Flag.FPI_FIBER
    flags[7] |= Flag.FALLBACK_CONSTANT
    marked = dataclasses.replace(fits, flags=flags)
    image = _labels(plots.plot_omega_image(marked, result.read_times, chip="R"))
    assert f"FPI: not fitted, constant (1): fiberId {fiber_id(3)}" in image
    assert f"fit failed: constant (1): fiberId {fiber_id(7)}" in image
    summary = _labels(plots.plot_fiber_summary(marked, chip="R"))
    assert "FPI: not fitted, constant (1)" in summary and "fit failed: constant (1)" in summary
    # A fiber the nuisance term left unfitted (no flux contrast in its segments) is marked too:
    # it has no statistic to show, and looked like a fiber the tests refused.
    flags[11] |= Flag.LOW_SEGMENT_CONTRAST
    summary = _labels(plots.plot_fiber_summary(dataclasses.replace(fits, flags=flags)))
    assert "not fitted: LOW_SEGMENT_CONTRAST (1)" in summary


def test_fiber_ids_select_the_fibers(result):
    fits = result.fibers["R"]
    wanted = fiber_id(np.flatnonzero(fits.bright)[:2])
    labels = _labels(plots.plot_omega(fits, result.read_times, fiber_ids=wanted, chip="R"))
    for fid in wanted:
        assert f"fiberId {fid} (" in labels
    title = _titles(plots.plot_ramps(result.chips["R"], fiber_id=int(wanted[0])))
    assert f"fiberId {wanted[0]} (" in title


def test_a_fiber_id_off_the_chip_is_refused_not_drawn_as_another(result, tmp_path):
    """fiberId 301 was index -1: the last fiber's ramps under the title fiberId 301; 300.7 was
    fiberId 300; 0 or a fiberId beyond the chip's 40 fibers an IndexError."""
    fits = result.fibers["R"]
    for wrong in ([301], [0], [260], [300.7], ["300"], []):
        with pytest.raises(ValueError, match="fiber_ids: expected fiberIds of the chip's fibers, "
                                             "whole numbers 261 to 300"):  # fmt: skip
            plots.plot_omega(fits, result.read_times, fiber_ids=wrong)
    for wrong in (301, 260, np.int8(100), [300, 299]):
        with pytest.raises(ValueError, match="fiber_id: expected the fiberId of one"):
            plots.plot_ramps(result.chips["R"], fiber_id=wrong)
    assert "fiberId 261 (" in _titles(plots.plot_ramps(result.chips["R"], fiber_id=261.0))
    (tmp_path / "f").write_text("")
    with pytest.raises(pyapred.errors.InputError, match="directory: expected a folder"):
        plots.save_plots(result, tmp_path / "f")


def test_plot_arguments_of_another_shape_or_range_are_refused(result):
    """A truth of two fibers (IndexError), upper=0 (ZeroDivisionError), a true flux of another
    shape (IndexError) or with nothing positive (matplotlib failed while saving), NaN read times
    (a blank figure) or five of eight (drawn as the read index, silently)."""
    fits, chip = result.fibers["R"], result.chips["R"]
    times = result.read_times
    with pytest.raises(ValueError, match="truth: expected omega's shape"):
        plots.plot_omega(fits, times, truth=np.ones((2, fits.omega.shape[1])))
    with pytest.raises(ValueError, match="upper: expected a finite chi2/dof > 0"):
        plots.plot_chi2(fits, upper=0)
    with pytest.raises(ValueError, match="true_flux: expected the chip's image shape"):
        plots.plot_flux_comparison(chip, true_flux=np.ones((3, 4)))
    with pytest.raises(ValueError, match="true_flux: expected a positive true flux"):
        plots.plot_flux_comparison(chip, true_flux=np.full(chip.flux.shape, np.nan))
    with pytest.raises(ValueError, match="read_times: expected 20 finite, increasing times"):
        plots.plot_omega(fits, np.where(np.arange(20) == 3, np.nan, times))
    with pytest.raises(ValueError, match="got 5 values"):
        plots.plot_omega(fits, times[:5])


def test_save_plots_writes_the_standard_set(sim, tmp_path):
    # As `pyapred fit --plots`: the images go to the product as each chip is extracted, and
    # save_plots reads them back for the flux comparison.
    traces = {name: chip.traces for name, chip in sim.chips.items()}
    result = run_exposure(
        _chips(sim), traces, FitOptions(keep_constant=True), product=tmp_path / "p.h5"
    )
    assert result.chips["R"].flux is None
    with pytest.raises(ValueError, match="images"):
        plots.plot_flux_comparison(result.chips["R"])
    truth_flux = {"R": sim.chips["R"].flux / sim.chips["R"].gain}
    folder = tmp_path / "plots"
    written = plots.save_plots(result, folder, truth=sim.omega, true_flux=truth_flux)
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{kind}_R.png" for kind in ("omega", "omega_image", "chi2", "fibers", "ramps", "flux")
    )
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob(".*.tmp*"))  # written atomically


# --------------------------------------------------------------------------------------------
# Results for notebooks: short reprs, HTML tables
# --------------------------------------------------------------------------------------------
def test_every_result_has_a_short_repr(result, sim, tmp_path):
    from pyapred.exposure import ChipExposure, FitOptions, product_parts

    rng = np.random.default_rng(0)
    omega = pyapred.omega_uniform(32, 0.3, rng)
    ramps = pyapred.simulate_ramps(rng.uniform(800, 1200, 300), 15.0, omega=omega, rng=rng)
    chip = result.chips["R"]
    objects = {
        "ExposureResult": result,
        "ChipResult": chip,
        "FiberFits": result.fibers["R"],
        "PreparedChip": chip.prepared,
        "OmegaFit (batched)": result.fibers["R"].fit,
        "OmegaFit (one group)": pyapred.fit_omega(ramps.reads, 15.0),
        "FluxFit": chip.constant,
        "JumpResult": pyapred.find_jumps(ramps.reads, 15.0),
        "OmegaSamples": pyapred.sample_omega(ramps.reads[:, :40], 15.0, 20, burn_in=2, rng=rng),
        "SimulatedRamps": ramps,
        "SimulatedChip": sim.chips["R"],
        "SimulatedExposure": sim,
        "ChipExposure": ChipExposure(
            "R", sim.chips["R"].reads, 8.0, gain=np.ones(sim.chips["R"].reads.shape[1:])
        ),
        "ProductParts": product_parts(result),
        "FitOptions": FitOptions(),
        "Traces": chip.prepared.traces,
        "PixelMap": chip.prepared.pixel_map,
        "FitPixels": chip.prepared.fit_pixels,
    }
    from pyapred.io import read_product

    product = read_product(write_exposure(result, tmp_path / "p.h5"))
    objects |= {"Product": product, "ChipImages": product.chips["R"],
                "FiberResults": product.fibers["R"]}  # fmt: skip
    for name, obj in objects.items():
        text = repr(obj)
        assert len(text) < 2000, (name, len(text))
        assert "array(" not in text, name  # never whole arrays
        assert text.startswith(type(obj).__name__), name
    text = repr(result)
    for part in ("time-variable", "bright", "converged", "median chi2/dof", "cosmic-ray reads"):
        assert part in text


def test_html_tables(result):
    for obj in (result, result.fibers["R"], result.fibers["R"].fit):
        page = obj._repr_html_()
        assert "<table" in page and "</table>" in page
    page = result._repr_html_()
    for column in ("bright", "converged", "median chi2/dof time-variable", "median omega error",
                   "cosmic-ray reads masked", "flagged pixels"):  # fmt: skip
        assert column in page


def test_omega_normalized_to_mean_one():
    rng = np.random.default_rng(2)
    omega = pyapred.omega_uniform(16, 0.4, rng)
    sim = pyapred.simulate_ramps(rng.uniform(500, 900, 200), 12.0, omega=omega, rng=rng)
    fit = pyapred.fit_omega(sim.reads, 12.0)
    scaled, cov = fit.normalized()
    assert scaled.shape == (16,) and cov.shape == (16, 16)
    assert np.isclose(scaled.mean(), 1.0) and np.allclose(cov.sum(axis=0), 0.0, atol=1e-15)
    # First-order propagation: the numerical Jacobian of omega -> omega / mean(omega).
    step = 1e-7
    jac = np.empty((16, 16))
    for j in range(16):
        moved = fit.omega.copy()
        moved[j] += step
        jac[:, j] = (moved / moved.mean() - scaled) / step
    np.testing.assert_allclose(cov, jac @ fit.omega_cov @ jac.T, rtol=1e-4, atol=1e-12)
    # Fluxes extracted with it are exposure-averaged; with fit.omega, at the reference read.
    mean_1 = pyapred.extract_fluxes(sim.reads, 12.0, scaled).flux
    at_ref = pyapred.extract_fluxes(sim.reads, 12.0, fit.omega).flux
    assert abs(np.median(mean_1 / (sim.flux * omega.mean())) - 1) < 0.01
    assert abs(np.median(at_ref / (sim.flux * omega[fit.ref_index])) - 1) < 0.01
    # Many groups at once, and groups without data stay empty.
    both = pyapred.fit_omega(np.stack([sim.reads, sim.reads], axis=1), 12.0)
    many, many_cov = both.normalized()
    assert many.shape == (2, 16) and many_cov.shape == (2, 16, 16)
    assert np.allclose(many.mean(axis=1), 1.0)


def test_omega_plot_without_a_fiber_to_show_says_so(result, sim):
    """No bright or fitted fiber to draw: an empty legend was a matplotlib UserWarning on
    ``pyapred demo --fibers 4``'s output."""
    import dataclasses
    import warnings

    fits = result.fibers["R"]
    dark = dataclasses.replace(fits, bright=np.zeros_like(fits.bright),
                               omega_fit=np.full_like(fits.omega_fit, np.nan))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.plot_omega(dark, result.read_times, chip="R")
    assert "no fiber to show" in " ".join(t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)
