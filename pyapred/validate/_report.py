"""Figures and Markdown of the ``pyapred validate`` report (see :mod:`pyapred.validate`).

Matplotlib is imported here only, through ``matplotlib.figure.Figure`` (no pyplot, no global
backend state), and only when a report is written.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..io.atomic import write_bytes_atomic

COLOURS = {"time_variable": "C0", "constant": "C1", "equal_weight": "C2"}
LABELS = {
    "time_variable": "time-variable (omega fixed)",
    "constant": "constant (omega = 1)",
    "equal_weight": "equal-weight",
}


def _save(fig, path: Path) -> None:
    """Render to memory, then write through a temporary file and rename (no half-written PNG)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())


#: The report's figures, ``figures/<name>.png``, in the report's order.
FIGURE_NAMES = ("omega_recovery", "chi2", "bias_test", "flux_levels", "sweep", "threshold",
                "bias_percentiles")  # fmt: skip


def make_figures(results: dict, fig_dir: Path) -> dict[str, str]:
    """Draw every figure of the report into ``fig_dir``.

    Returns
    -------
    dict
        Figure name to its path relative to the report (``figures/<name>.png``).
    """
    from matplotlib.figure import Figure

    drawers = {
        "omega_recovery": _omega_recovery,
        "chi2": _chi2,
        "bias_test": _bias_test,
        "flux_levels": _flux_levels,
        "sweep": _sweep,
        "threshold": _threshold,
        "bias_percentiles": _bias_percentiles,
    }
    size = {"bias_test": (7.5, 7.5), "flux_levels": (7.5, 7.5), "threshold": (10, 4.5)}
    assert tuple(drawers) == FIGURE_NAMES
    paths = {}
    for name, draw in drawers.items():
        fig = Figure(figsize=size.get(name, (7.5, 5)))
        draw(fig, results)
        _save(fig, fig_dir / f"{name}.png")
        paths[name] = f"figures/{name}.png"
    return paths


def _omega_recovery(fig, results) -> None:
    truth = results["single_realisation"]["_truth"]
    k = np.arange(truth["omega"].size)
    scale, err = truth["scale"], truth["omega_err"]
    free = err > 0
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    top.plot(k, truth["omega"], "k.-", lw=1, label="true omega")
    top.errorbar(
        k,
        scale * truth["omega_hat"],
        scale * err,
        fmt="o",
        ms=3,
        color="C0",
        label="fitted omega x scale",
    )
    top.set_ylabel("omega")
    top.legend()
    z = (scale * truth["omega_hat"] - truth["omega"]) / np.where(free, scale * err, np.nan)
    bottom.axhspan(-1, 1, color="0.9")
    bottom.plot(k, z, "o", ms=3, color="C0")
    bottom.axhline(0, color="k", lw=0.8)
    bottom.set_xlabel("read difference k")
    bottom.set_ylabel("z-score")
    fig.suptitle("III.1: omega recovered from one fiber (100 pixels, 33 reads)")


def _chi2(fig, results) -> None:
    from scipy.stats import chi2 as chi2_dist

    single = results["single_realisation"]
    nu = single["config"]["n_reads"] - 2
    ax = fig.subplots()
    chi2 = single["_truth"]["chi2"]
    bins = np.geomspace(5, max(200, float(np.max(chi2["constant"]) * 1.1)), 40)
    for name in ("time_variable", "constant"):
        factor = single["inflation"][name]
        ax.hist(
            chi2[name],
            bins=bins,
            density=True,
            histtype="step",
            lw=1.5,
            color=COLOURS[name],
            label=f"{LABELS[name]}: inflation {factor:.2f}",
        )
    x = np.geomspace(bins[0], bins[-1], 400)
    ax.plot(x, chi2_dist.pdf(x, nu), "k--", label=f"chi2, {nu} dof")
    ax.set_xscale("log")
    ax.set_xlabel("data-model chi2 per pixel (eq 24)")
    ax.set_ylabel("density")
    ax.legend()
    fig.suptitle("III.1: fit quality of each model on the same 100 ramps")


def _bias_test(fig, results) -> None:
    bias = results["single_realisation"]["bias_test"]
    ref = bias["reference"]
    flux = np.array(bias["flux"])
    sig_ax, med_ax, wid_ax = fig.subplots(3, 1, sharex=True)
    for name in COLOURS:
        sig_ax.plot(flux, bias[name]["sigma_median"], color=COLOURS[name], label=LABELS[name])
        med_ax.plot(flux, bias[name]["z_median"], color=COLOURS[name])
        wid_ax.plot(flux, bias[name]["z_width"], color=COLOURS[name])
    for ax, center, spread in (
        (med_ax, ref["median_mean"], ref["median_std"]),
        (wid_ax, ref["width_mean"], ref["width_std"]),
    ):
        ax.axhspan(center - spread, center + spread, color="0.85")
        ax.axhline(center, color="k", lw=0.8)
    sig_ax.set_yscale("log")
    sig_ax.set_ylabel("sigma_f (e-/read)")
    sig_ax.legend(fontsize=8)
    med_ax.set_ylabel("median z")
    wid_ax.set_ylabel("z width (16-84 %)")
    wid_ax.set_xscale("log")
    wid_ax.set_xlabel("true flux (e-/read)")
    fig.suptitle("III.1: extracted fluxes, omega fixed at the fit (paper Fig 4)")


def _flux_levels(fig, results) -> None:
    rows = results["flux_levels"]["levels"]
    flux = np.array([r["flux"] for r in rows])
    err_ax, omega_ax, flux_ax = fig.subplots(3, 1, sharex=True)
    err_ax.plot(flux, [r["omega_rel_err_median"] for r in rows], "o-")
    err_ax.axhline(0.1, color="0.5", ls=":", label="10 %")
    err_ax.set_yscale("log")
    err_ax.set_ylabel("median sigma(omega)/omega")
    err_ax.legend()
    for key, target in (("omega_z_p16", -1), ("omega_z_p50", 0), ("omega_z_p84", 1)):
        omega_ax.plot(flux, [r[key] for r in rows], "o-", color="C0")
        omega_ax.axhline(target, color="k", lw=0.8, ls="--")
    omega_ax.set_ylabel("omega z: 16/50/84 %")
    for key, colour, label in (
        ("flux_z", "C0", "time-variable data, omega fitted"),
        ("constant_data_z", "C1", "constant data, constant model"),
    ):
        flux_ax.plot(
            flux, [r[f"{key}_median"] for r in rows], "o-", color=colour, label=f"{label}: median"
        )
        flux_ax.plot(
            flux, [r[f"{key}_width"] for r in rows], "s--", color=colour, label=f"{label}: width"
        )
    flux_ax.axhline(0, color="k", lw=0.8)
    flux_ax.axhline(1, color="k", lw=0.8)
    flux_ax.set_ylabel("flux z")
    flux_ax.legend(fontsize=7)
    flux_ax.set_xscale("log")
    flux_ax.set_xlabel("flux level (e-/read)")
    fig.suptitle("III.2: omega and fluxes versus flux level (paper Figs 5-6)")


def _sweep(fig, results) -> None:
    sweep = results["amplitude_sweep"]
    flux = np.array(sweep["flux"])
    rows = sweep["amplitudes"]
    amps = np.array([r["amplitude"] for r in rows])
    ax = fig.subplots()
    cmap = _colormap()
    for row in rows:
        colour = cmap(row["amplitude"] / max(amps.max(), 1e-12))
        ax.plot(flux, row["excess_constant"], "-", color=colour)
        ax.plot(flux, row["excess_time_variable"], ":", color=colour)
    spread = sweep["expected_scatter_std"]
    ax.axhspan(-spread, spread, color="r", alpha=0.15, label="unit-Gaussian scatter")
    ax.axhline(0, color="r", lw=0.8)
    ax.plot([], [], "k-", label="constant model")
    ax.plot([], [], "k:", label="time-variable model")
    ax.set_xscale("log")
    ax.set_xlabel("true flux (e-/read)")
    ax.set_ylabel("excess scatter of median z (bias magnitude)")
    ax.legend(fontsize=8, title=f"A = {amps.min():g} (dark) .. {amps.max():g} (light)")
    fig.suptitle("III.3: bias magnitude versus flux and amplitude A (paper Fig 7, bottom)")


def _colormap():
    from matplotlib import colormaps

    return colormaps["viridis"]


def _threshold(fig, results) -> None:
    sweep = results["amplitude_sweep"]
    amps = np.array([r["amplitude"] for r in sweep["amplitudes"]])
    zoom = min(0.3, amps.max())  # the paper's Fig 8 zooms on small A
    grid = np.linspace(0, zoom, 400)
    small = amps <= zoom + 1e-9
    panels = fig.subplots(1, 2)
    for ax, prefix, title in (
        (panels[0], "", "Monte Carlo (paper's construction)"),
        (panels[1], "noiseless_", "noise-free biases"),
    ):
        band = sweep[f"{prefix}time_variable_band"]
        threshold = sweep["threshold" if not prefix else "threshold_noiseless"]
        ax.axhspan(band["p05"], band["p95"], color="C0", alpha=0.25, label="time-variable 5-95 %")
        ax.axhline(band["p50"], color="C0")
        points = np.array(sweep[f"{prefix}constant_points"])
        ax.plot(amps[small], points[small], "o", color="C1", label="constant")
        ax.plot(
            grid,
            np.polyval(sweep[f"{prefix}polynomial"], grid),
            "-",
            color="C1",
            label="4th-order fit",
        )
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.1%}")
        ax.axvline(0.035, color="0.5", ls=":", label="paper 3.5 %")
        ax.set_xlabel("amplitude A")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    panels[0].set_ylabel("bias magnitude (median over flux)")
    fig.suptitle(
        "III.3: where the constant model's bias exceeds the time-variable band (Fig 8; "
        f"A <= {zoom:g} shown, the polynomial is fitted to all A)"
    )


def _bias_percentiles(fig, results) -> None:
    sweep = results["amplitude_sweep"]
    rows = sweep["amplitudes"]
    amps = np.array([r["amplitude"] for r in rows])
    ax = fig.subplots()
    for key, label, style in (
        ("noiseless_bias_constant_q95", "constant, 95th percentile", "o-"),
        ("noiseless_bias_constant_q99", "constant, 99th percentile", "s--"),
        ("noiseless_bias_time_variable_q95", "time-variable, 95th percentile", "^:"),
    ):
        ax.plot(amps, [max(r[key]) for r in rows], style, label=label)
    ax.axhline(0.05, color="k", lw=0.8, label="5 % of sigma_f")
    second = sweep["second_threshold"]
    if second is not None:
        ax.axvline(second, color="k", ls="--", label=f"second threshold {second:.1%}")
    ax.set_xlabel("amplitude A")
    ax.set_ylabel("|bias| / sigma_f, worst flux level")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.suptitle("III.3: percentiles of the bias over omega draws (paper Fig 9)")


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
VARIANTS = {
    "monte_carlo_steps_of_0.1": "amplitudes in steps of 0.1 only",
    "monte_carlo_band_of_per_amplitude_medians": "band over the per-A medians over flux",
    "monte_carlo_quadrature_excess": "bias as the excess in quadrature, sqrt(std^2 - s0^2)",
}


def _fmt(value, spec: str = ".3f") -> str:
    if value is None:
        return "not reached"
    if isinstance(value, str):
        return value
    return format(value, spec)


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(results: dict, figures: dict[str, str]) -> str:
    """The report text; every number comes from ``results`` (the ``results.json`` content)."""
    run = results["run"]
    single = results["single_realisation"]
    fit = single["omega_fit"]
    inflation = single["inflation"]
    bias = single["bias_test"]
    levels = results["flux_levels"]
    sweep = results["amplitude_sweep"]
    paper = results["paper"]
    sizes = run["sizes"]
    command = "pyapred validate" + (" --quick" if run["mode"] == "quick" else "")
    out = [
        f"# pyapred validation report ({run['mode']})",
        "",
        "Reproduction of the synthetic-data tests of the time-variable ramp paper (sections "
        "III.1 to III.3). Rerun with:",
        "",
        f"    {command} --seed {run['seed']} --backend {run['backend']}",
        "",
        f"Runtime {run['runtime_s']['total']:.1f} s on {run['cpus']} CPUs ({run['machine']}, "
        f"Python {run['python']}, NumPy {run['numpy']}). Every number below is in "
        "`results.json`; `docs/validation.md` explains the definitions and the differences "
        "from the paper.",
        "",
        "## Checks",
        "",
        *_table(
            ["check", "result"],
            [
                [c["description"], "pass" if c["passed"] else "**FAIL**"]
                for c in results["checks"].values()
            ],
        ),
        "## Comparison with the paper",
        "",
        *_table(
            ["quantity", "pyapred", "paper"],
            [
                [
                    "III.1 inflation factor, constant model",
                    _fmt(inflation["constant"]),
                    f"{paper['constant_inflation']} (text); {paper['constant_inflation_notebook']} "
                    "(notebook, legacy RNG seed 104)",
                ],
                [
                    "III.1 inflation factor, time-variable model",
                    _fmt(inflation["time_variable"]),
                    f"{paper['time_variable_inflation_notebook']} (notebook)",
                ],
                ["III.1 Gauss-Newton iterations", fit["n_iter"], paper["omega_iterations"]],
                [
                    "III.1 equal-weight S/N loss at 1000 e-/read",
                    _fmt(bias["equal_weight_snr_loss"], ".1%"),
                    "value lost in extraction",
                ],
                [
                    "III.1 largest constant-model bias (median z)",
                    f"{_fmt(bias['constant_max_abs_bias'], '.2f')} sigma at "
                    f"{bias['constant_max_abs_bias_flux']:.0f} e-/read",
                    "value lost",
                ],
                [
                    "III.2 flux for 10 % omega uncertainty",
                    f"{_fmt(levels['omega_10pct_flux'], '.0f')} e-/read",
                    "value lost",
                ],
                [
                    "III.2 omega trusted from",
                    f"{_fmt(levels['omega_trusted_from'], 'g')} e-/read",
                    "value lost",
                ],
                [
                    "III.2 fluxes trusted from",
                    f"{_fmt(levels['flux_trusted_from'], 'g')} e-/read",
                    "value lost",
                ],
                [
                    "III.3 threshold (Monte Carlo, Fig 8 construction)",
                    _fmt(sweep["threshold"], ".1%"),
                    f"{paper['threshold']:.1%}",
                ],
                [
                    "III.3 threshold (noise-free biases, same construction)",
                    _fmt(sweep["threshold_noiseless"], ".1%"),
                    f"{paper['threshold']:.1%}",
                ],
                [
                    "III.3 second threshold (bias < 5 % sigma, 95 % of draws)",
                    _fmt(sweep["second_threshold"], ".1%"),
                    "value lost",
                ],
                [
                    "III.3 largest bias (95th / 99th percentile over draws, any A and flux)",
                    f"{_fmt(sweep['max_noiseless_bias_q95'], '.0%')} / "
                    f"{_fmt(sweep['max_noiseless_bias_q99'], '.0%')} of sigma",
                    f"{paper['max_bias']:.0%} of sigma (percentile lost)",
                ],
            ],
        ),
        "## III.1 A single realisation",
        "",
        f"33 reads, 100 pixels, omega ~ U(0.5, 1), flux ~ U(800, 1200) e-/read, read noise ~ "
        f"U(14, 24) e-. The joint fit took {fit['n_iter']} Gauss-Newton iterations "
        f"(converged: {fit['converged']}). After the one scale factor ({fit['scale']:.4f}) "
        f"the largest omega error is {fit['omega_max_abs_error']:.4f}; omega chi2/dof = "
        f"{fit['omega_chi2_per_dof']:.3f} over {fit['omega_dof']} free elements (notebook "
        f"1.160); flux chi2/dof = {fit['flux_chi2_per_dof']:.3f} (notebook 0.750).",
        "",
        f"![omega recovery]({figures['omega_recovery']})",
        "",
        *_table(
            ["model", "inflation factor", "chi2 16/50/84 %"],
            [
                [
                    name.replace("_", "-"),
                    _fmt(inflation[name]),
                    " / ".join(f"{v:.1f}" for v in single["chi2_percentiles"][name]),
                ]
                for name in ("time_variable", "constant", "equal_weight")
            ]
            + [
                [
                    "expected (chi2, 31 dof)",
                    "1",
                    " / ".join(f"{v:.1f}" for v in single["chi2_percentiles"]["expected"]),
                ]
            ],
        ),
        f"The joint fit's own inflation factor is {inflation['joint_fit']:.3f}. The equal-weight "
        "slope is scored with the constant model's covariance, hence its factor.",
        "",
        f"![chi2]({figures['chi2']})",
        "",
        f"Flux extraction at {len(bias['flux'])} levels, {run['sizes']['single_repeats']} "
        "repeats each; per repeat each method's scale factor comes from 100 separate pixels at "
        f"1000 e-/read. Unit-Gaussian reference: median {bias['reference']['median_mean']:+.3f} "
        f"+- {bias['reference']['median_std']:.3f}, width {bias['reference']['width_mean']:.3f} "
        f"+- {bias['reference']['width_std']:.3f}.",
        "",
        f"![bias test]({figures['bias_test']})",
        "",
        *_table(
            [
                "flux",
                *(f"{m} median z" for m in ("TV", "const", "EW")),
                *(f"{m} width" for m in ("TV", "const", "EW")),
                "sigma TV",
                "sigma EW",
            ],
            [
                [
                    f"{f:.1f}",
                    *(f"{bias[m]['z_median'][i]:+.3f}" for m in COLOURS),
                    *(f"{bias[m]['z_width'][i]:.3f}" for m in COLOURS),
                    f"{bias['time_variable']['sigma_median'][i]:.3f}",
                    f"{bias['equal_weight']['sigma_median'][i]:.3f}",
                ]
                for i, f in enumerate(bias["flux"])
            ],
        ),
        f"Equal-weight signal-to-noise loss at 1000 e-/read: {bias['equal_weight_snr_loss']:.1%}."
        f" The constant and time-variable sigmas differ by at most "
        f"{bias['constant_vs_time_variable_sigma_max_diff']:.1%}.",
        "",
        "## III.2 Many realisations at several flux levels",
        "",
        f"{levels['realisations']} realisations per level of the III.1 omega, read noise and "
        "fluxes (scaled to each level). omega is compared with the truth with the true omega's "
        "largest element as reference; fluxes after the paper's omega-based scale factor. "
        f"Criteria: omega: {levels['criteria']['omega']}; fluxes: {levels['criteria']['flux']}.",
        "",
        f"![flux levels]({figures['flux_levels']})",
        "",
        *_table(
            [
                "flux",
                "converged",
                "iterations",
                "sigma(omega)/omega",
                "omega z 16/50/84",
                "flux z median",
                "flux z width",
                "constant data: median",
                "width",
            ],
            [
                [
                    f"{r['flux']:g}",
                    f"{r['converged_fraction']:.1%}",
                    f"{r['median_iterations']:g}",
                    f"{r['omega_rel_err_median']:.4f}",
                    f"{r['omega_z_p16']:+.2f} / {r['omega_z_p50']:+.2f} / {r['omega_z_p84']:+.2f}",
                    f"{r['flux_z_median']:+.3f}",
                    f"{r['flux_z_width']:.3f}",
                    f"{r['constant_data_z_median']:+.3f}",
                    f"{r['constant_data_z_width']:.3f}",
                ]
                for r in levels["levels"]
            ],
        ),
        f"omega reaches a 10 % uncertainty at {_fmt(levels['omega_10pct_flux'], '.0f')} "
        f"e-/read; omega is trustworthy from {_fmt(levels['omega_trusted_from'], 'g')} e-/read "
        f"and the extracted fluxes from {_fmt(levels['flux_trusted_from'], 'g')} e-/read up.",
        "",
        "## III.3 The amplitude sweep and the threshold",
        "",
        f"{len(sweep['amplitudes'])} amplitudes, {sweep['realisations']} omega draws each, "
        f"{sweep['examples']} pixels at each of {len(sweep['flux'])} fluxes from 10 to 1000 "
        f"e-/read. Expected scatter of a median of {sweep['examples']} unit Gaussians: "
        f"{sweep['expected_scatter']:.4f} (+- {sweep['expected_scatter_std']:.4f} over "
        f"{sweep['realisations']} draws).",
        "",
        f"![sweep]({figures['sweep']})",
        "",
        *_table(
            [
                "A",
                "constant: median excess",
                "max excess",
                "time-variable: median excess",
                "max excess",
                "constant noise-free 95 % |bias| (max over flux)",
                "seconds",
            ],
            [
                [
                    f"{r['amplitude']:g}",
                    f"{np.median(r['excess_constant']):+.4f}",
                    f"{max(r['excess_constant']):+.4f}",
                    f"{np.median(r['excess_time_variable']):+.4f}",
                    f"{max(r['excess_time_variable']):+.4f}",
                    f"{max(r['noiseless_bias_constant_q95']):.4f}",
                    f"{r['seconds']:.1f}",
                ]
                for r in sweep["amplitudes"]
            ],
        ),
        f"Time-variable band (5/50/95 %): {sweep['time_variable_band']['p05']:+.4f} / "
        f"{sweep['time_variable_band']['p50']:+.4f} / {sweep['time_variable_band']['p95']:+.4f}."
        f" Threshold: **{_fmt(sweep['threshold'], '.2%')}** (paper 3.5 %). On the noise-free "
        f"biases the band is {sweep['noiseless_time_variable_band']['p50']:.4f} / "
        f"{sweep['noiseless_time_variable_band']['p95']:.4f} (50/95 %) and the threshold "
        f"**{_fmt(sweep['threshold_noiseless'], '.2%')}**.",
        "",
        f"![threshold]({figures['threshold']})",
        "",
        "The threshold under other readings of the paper's Fig 8 text (docs/validation.md):",
        "",
        *_table(
            ["reading", "band top", "threshold"],
            [
                [VARIANTS[name], f"{v['band']['p95']:+.4f}", _fmt(v["threshold"], ".1%")]
                for name, v in sweep["variants"].items()
            ],
        ),
        f"Second threshold, where the constant model's bias stays below 5 % of sigma_f in 95 % "
        f"of omega draws at every flux: **{_fmt(sweep['second_threshold'], '.2%')}**.",
        "",
        f"![bias percentiles]({figures['bias_percentiles']})",
        "",
        "## Run sizes",
        "",
        *_table(["parameter", "value"], [[k, v] for k, v in sizes.items()]),
    ]
    return "\n".join(out)
