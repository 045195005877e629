"""The result of an exposure fit: every chip's extraction and every fiber group's fits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..solver import Flag
from ..traces import fiber_id
from .extract import ChipResult
from .fibers import MODEL_BORROWED, MODEL_CHROMATIC, MODEL_NAMES, FiberFits, _free
from .options import FitOptions

__all__ = ["ExposureResult"]


@dataclass(frozen=True)
class ExposureResult:
    """Everything :func:`run_exposure` produced, by chip name.

    Attributes
    ----------
    chips : dict of str to ChipResult
        By chip name, in R, G, B order. Once written to a product as the chips were extracted
        (:func:`~pyapred.exposure.run_exposure` with ``product=``), each chip's images are None.
    fibers : dict of str to FiberFits
        By chip name, or the single key ``"joint"`` with ``joint_chips``.
    options : FitOptions
        The effective options (``backend`` resolved: never ``"auto"``).
    read_times : ndarray, ``(n_reads,)``
        Seconds from the first read.
    meta : dict
        ``timings_s`` (seconds per stage), ``timing`` (what a product records of the
        exposure's timing), ``inputs`` and ``traces`` (file paths, when run on files),
        ``exposure`` (its telescope, night and number, read from the file names: what the
        product's identity keys come from), ``product`` (the product's path, when one was
        written).
    """

    chips: dict[str, ChipResult]
    fibers: dict[str, FiberFits]
    options: FitOptions
    read_times: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def read_times_known(self) -> bool:
        """False when no chip carried read times: ``read_times`` is then the read index
        ``0, 1, 2, ...`` that :func:`~pyapred.exposure.run_exposure` puts in their place."""
        times = np.asarray(self.read_times, dtype=np.float64)
        return not np.array_equal(times, np.arange(times.size))

    def _time_span(self) -> str:
        n = len(self.read_times)
        if not self.read_times_known:
            return f"{n} reads (read times unknown)"
        return f"{n} reads over {self.read_times[-1] - self.read_times[0]:.1f} s"

    def _chip_rows(self) -> list[list[str]]:
        from ..solver.reprs import count_flags

        rows = []
        for name, chip in self.chips.items():
            if chip.flags is None:
                flagged, images = "in the product", "in the product"
            else:
                flagged = count_flags(chip.flags, ignore=Flag.BACKGROUND)
                images = "in memory"
            shape = tuple(chip.prepared.shape)
            rows.append([name, str(shape), str(len(chip.prepared.jumps)), flagged, images])
        return rows

    def __repr__(self) -> str:
        """Chips, fiber groups and their key figures (a few lines, never whole arrays)."""
        from ..solver.reprs import fmt

        lines = [
            f"ExposureResult: chips {', '.join(self.chips)}; {self._time_span()}; backend "
            f"{self.options.backend}"
        ]
        for key, fits in self.fibers.items():
            s = fits._summary()
            lines.append(
                f"  fibers {key}: {s['fibers']} fibers, {s['time-variable']} time-variable / "
                f"{s['constant']} constant / {s['borrowed']} borrowed"
                + (f" / {s['chromatic']} chromatic" if fits.chromatic is not None else "")
                + f"; {s['bright']} bright; "
                f"converged {s['converged']}; fit failed {s['fit failed']}; median chi2/dof "
                f"{fmt(s['median chi2/dof time-variable'])} (constant "
                f"{fmt(s['median chi2/dof constant'])}); median omega error "
                f"{fmt(s['median omega error'])}"
            )
        for name, shape, cosmic, flagged, images in self._chip_rows():
            lines.append(
                f"  chip {name}: reads {shape}; {cosmic} cosmic-ray reads masked; pixels "
                f"{flagged}; images {images}"
            )
        problems = self.problems()
        lines.append(f"  problems: {len(problems) or 'none'}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Tables per fiber group and per chip, for Jupyter."""
        import html

        from ..solver.reprs import fmt, html_table

        header, rows = ["group"], []
        for key, fits in self.fibers.items():
            s = fits._summary()
            header = ["group", *s]
            rows.append([key, *(v if isinstance(v, int | str) else fmt(v) for v in s.values())])
        chips = html_table(
            ["chip", "reads (n_reads, ny, nx)", "cosmic-ray reads masked", "flagged pixels",
             "images"],
            self._chip_rows(),
            caption="Chips (flagged: any bit but BACKGROUND)",
        )  # fmt: skip
        listed = self.problems()
        problems = "".join(f"<li>{html.escape(p)}</li>" for p in listed[:20])
        problems += f"<li>... {len(listed) - 20} more</li>" if len(listed) > 20 else ""
        return (
            f"<div><b>ExposureResult</b>: chips {html.escape(', '.join(self.chips))}; "
            f"{html.escape(self._time_span())}; backend {html.escape(self.options.backend)}"
            + html_table(header, rows, caption="Fiber groups (chi2/dof, omega error: bright "
                         "fibers; omega error at reference read = 1)")
            + chips
            + (f"<b>Problems</b><ul>{problems}</ul>" if problems else "")
            + "</div>"
        )  # fmt: skip

    def problems(self) -> list[str]:
        """The flagged fit problems: a line per chip where most traced pixels have no flux
        (:func:`~pyapred.exposure.extract.chip_problems`), and one per fiber: group, fiberId,
        why its omega fit failed and what the fiber used instead: the constant model, or, for a
        fit with the 1/f nuisance term that did not converge, the bright fibers' omega (or the
        constant model where that is not significant; ``docs/noise.md``, "Faint fibers")."""
        out = []
        for chip in self.chips.values():
            out += chip.problems
        for key, fits in self.fibers.items():
            out += fit_problems(
                key, fits.flags, None if fits.fit is None else fits.fit.n_iter,
                fits.n_fit_pixels, fits.model == MODEL_BORROWED,
                fiber_id(np.arange(len(fits.flags))),
            )  # fmt: skip
        return out

    def summary(self) -> dict:
        """A JSON-ready summary: model counts, borrowed fibers, chi2/dof, problems."""
        fibers = {}
        for key, fits in self.fibers.items():
            counts = {
                name: int(np.sum(fits.model == code))
                for code, name in enumerate(MODEL_NAMES)
                if code != MODEL_CHROMATIC or fits.chromatic is not None
            }
            bright = fits.bright
            fibers[key] = {
                "models": counts,
                "bright_fibers": int(bright.sum()),
                "median_fit_pixels": float(np.median(fits.n_fit_pixels[bright]))
                if bright.any()
                else 0.0,
                "median_chi2_dof_constant": _nanmedian(fits.chi2_dof_constant[bright]),
                "median_chi2_dof_variable": _nanmedian(fits.chi2_dof_variable[bright]),
                "median_omega_error": _nanmedian(
                    np.nanmedian(_free(fits.omega_error(), fits.ref_index), axis=1)[bright]
                )
                if bright.any()
                else None,
            }
            if fits.chromatic is not None:  # the chromatic fit of the time-variable fibers
                tried = ~(fits.chromatic.group_flags & Flag.EMPTY_GROUP).astype(bool)
                chosen = fits.model == MODEL_CHROMATIC
                fibers[key]["chromatic"] = {
                    "tried": int(tried.sum()),
                    "chosen": int(chosen.sum()),
                    "median_amplitude": _nanmedian(fits.chromatic.amplitude[chosen]),
                    "coordinate_span_um": list(fits.coordinate_span),
                }
            rms = fits.offset_rms()
            if rms is not None:  # the 1/f nuisance term: RMS of its offsets per chip, DN
                fibers[key]["offset_rms_dn"] = [None if np.isnan(v) else float(v) for v in rms]
            if self.options.nuisance:  # the fibers it could not fit (no contrast in segments)
                low = fits.flags & Flag.LOW_SEGMENT_CONTRAST
                fibers[key]["low_segment_contrast"] = int(np.count_nonzero(low))
        return {
            "options": {k: v for k, v in self.options.__dict__.items()},
            # R, G, B as the products and docs order them (sorted() gave B, G, R).
            "chips": sorted(self.chips, key=lambda name: ("RGB".find(name) % 4, name)),
            "fibers": fibers,
            "cosmic_rays": {k: int(c.prepared.jumps.shape[0]) for k, c in self.chips.items()},
            "timings_s": self.meta.get("timings_s", {}),
            "problems": self.problems(),
        }


def _nanmedian(values) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def fit_problems(key: str, flags, n_iter, n_fit_pixels, borrowed, fiber_ids) -> list[str]:
    """:meth:`ExposureResult.problems`' lines for one fiber group, from its per-fiber arrays
    ``(n_fibers,)``: the fiber flags, ``n_iter`` (or None), ``n_fit_pixels``, whether each
    fiber borrowed omega, and the fiberIds; a product's fiber table gives them too
    (``pyapred night`` reports a product kept on resuming as the run that made it)."""
    out = []
    for index in np.flatnonzero(np.asarray(flags) & (Flag.FALLBACK_CONSTANT | Flag.NOT_CONVERGED)):
        value = int(flags[index])
        reasons = []
        if value & Flag.NOT_CONVERGED:
            iterations = None if n_iter is None else int(n_iter[index])
            reasons.append(f"not converged after {iterations} iterations")
        if value & Flag.OMEGA_ELEMENT_NO_DATA:
            reasons.append("a read difference without usable data in any fit pixel")
        reasons.append(f"{int(n_fit_pixels[index])} fit pixels")
        if value & Flag.FALLBACK_CONSTANT:
            used = "constant model used"
        else:  # the nuisance term's rule: such a fiber is treated as a faint one
            reasons.insert(0, "with the 1/f nuisance term")
            used = (
                "the bright fibers' omega used"
                if borrowed[index]
                else "constant model used (no significant omega of bright fibers to borrow)"
            )
        out.append(
            f"{key}: fiberId {int(fiber_ids[index])}: omega fit failed "
            f"({'; '.join(reasons)}); {used}"
        )
    return out
