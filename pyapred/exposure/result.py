"""The result of an exposure fit: every chip's extraction and every fiber group's fits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..solver import Flag
from .extract import ChipResult
from .fibers import MODEL_NAMES, FiberFits, _free
from .options import FitOptions

__all__ = ["ExposureResult"]


@dataclass(frozen=True)
class ExposureResult:
    """Everything :func:`fit_exposure` produced, by chip name.

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
        ``product`` (the product's path, when one was written).
    """

    chips: dict[str, ChipResult]
    fibers: dict[str, FiberFits]
    options: FitOptions
    read_times: np.ndarray
    meta: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Human-readable list of flagged fit problems (fallbacks to the constant model)."""
        out = []
        for key, fits in self.fibers.items():
            bad = np.flatnonzero(fits.flags & Flag.FALLBACK_CONSTANT)
            if bad.size:
                out.append(
                    f"{key}: omega fit failed for fibers {bad.tolist()}; constant model used"
                )
        return out

    def summary(self) -> dict:
        """A JSON-ready summary: model counts, borrowed fibers, chi2/dof, problems."""
        fibers = {}
        for key, fits in self.fibers.items():
            counts = {
                name: int(np.sum(fits.model == code)) for code, name in enumerate(MODEL_NAMES)
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
        return {
            "options": {k: v for k, v in self.options.__dict__.items()},
            "chips": sorted(self.chips),
            "fibers": fibers,
            "cosmic_rays": {k: int(c.prepared.jumps.shape[0]) for k, c in self.chips.items()},
            "timings_s": self.meta.get("timings_s", {}),
            "problems": self.problems(),
        }


def _nanmedian(values) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None
