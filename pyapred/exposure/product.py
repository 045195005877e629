"""Stage 4, build the product's parts: per fiber group the omega record, and the metadata.

:func:`product_parts` turns an :class:`~pyapred.exposure.ExposureResult` into what
:func:`pyapred.io.write_product` and :class:`pyapred.io.ProductWriter` take (the chip images come
from :meth:`pyapred.io.ChipImages.from_fit` of each chip). No file I/O: the driver writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..solver import Flag
from .fibers import MODEL_BORROWED, MODEL_CHROMATIC, MODEL_NAMES
from .result import ExposureResult

__all__ = ["ProductParts", "product_parts"]


@dataclass(frozen=True)
class ProductParts:
    """What a product holds besides the chip images.

    Attributes
    ----------
    fibers : dict of str to pyapred.io.FiberResults
        By fiber group (chip name, or ``"joint"``).
    metadata : dict
        The ``metadata`` group: ``fit_options``
        (:meth:`~pyapred.exposure.FitOptions.to_record`), ``model_option``, ``joint_chips``,
        ``flux_normalisation``, the chromatic fit's ``coordinate_span_um[_{group}]``, the
        nuisance term's ``nuisance_chips`` and ``nuisance_offset_rms_dn``, the exposure's
        identity (``telescope``, ``mjd``, ``expnum``, from the input file names and the identity
        overrides; no ``expnum`` where the names number no exposure) and timing cards (the
        keys and their units: ``pyapred.io.product``'s metadata table).
    inputs : list of str
        Input files then trace files, hashed into the product.
    backend : str
        The solver backend that ran.
    """

    fibers: dict
    metadata: dict
    inputs: list
    backend: str

    def __repr__(self) -> str:
        """Fiber groups, metadata keys and inputs (a line, never whole arrays)."""
        groups = ", ".join(f"{key} ({len(fibers.model)} fibers)" for key, fibers in
                           self.fibers.items())  # fmt: skip
        names = [os.path.basename(path) for path in self.inputs]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return (
            f"ProductParts: fiber groups {groups or '-'}; {len(self.metadata)} metadata keys; "
            f"backend {self.backend}; inputs {shown or '-'}"
        )


def product_parts(result: ExposureResult) -> ProductParts:
    """The fiber groups, the metadata and the hashed inputs of ``result``'s product.

    Per fiber group, omega as fitted (``ref_index`` normalisation; ones with zero covariance
    for fibers not fitted, the bright-fiber mean for borrowed fibers), its covariance, the model,
    the flags and the decision statistics (``delta_chi2``, ``p_value``, ``amplitude``,
    ``n_fit_pixels``, and ``n_iter`` where omega was fitted).
    """
    from ..io import FiberResults  # h5py and astropy: only when a product is made

    fibers, meta, spans = {}, {}, {}
    for key, fits in result.fibers.items():
        n, K = fits.omega.shape
        omega = np.where(np.isfinite(fits.omega_fit), fits.omega_fit, 1.0)
        cov = np.where(np.isfinite(fits.omega_fit)[:, :, None], fits.omega_cov, 0.0)
        borrowed = fits.model == MODEL_BORROWED
        omega[borrowed] = fits.borrowed_omega
        cov[borrowed] = fits.borrowed_cov
        n_iter = getattr(fits.fit, "n_iter", None)
        chromatic = {}
        if fits.chromatic is not None:
            chosen = fits.model == MODEL_CHROMATIC
            omega[chosen] = fits.chromatic.omega[chosen]
            cov[chosen] = fits.chromatic.omega_cov()[chosen]
            tried = ~(fits.chromatic.group_flags & Flag.EMPTY_GROUP).astype(bool)
            chromatic = {
                "gamma": np.where(tried[:, None], fits.chromatic.gamma, np.nan),
                "gamma_cov": np.where(tried[:, None, None], fits.chromatic.gamma_cov(), 0.0),
                "chromatic_delta_chi2": np.asarray(fits.chromatic.delta_chi2, np.float64),
                "chromatic_p_value": np.asarray(fits.chromatic.p_value, np.float64),
                "chromatic_amplitude": np.asarray(fits.chromatic.amplitude, np.float64),
            }
            spans[key] = np.asarray(fits.coordinate_span, np.float64)
        fibers[key] = FiberResults(
            fiber_index=np.arange(n),
            omega=omega,
            omega_cov=cov,
            ref_index=np.full(n, fits.ref_index),
            model=tuple(MODEL_NAMES[m] for m in fits.model),
            flags=fits.flags,
            amplitude=np.asarray(fits.amplitude, np.float64),
            delta_chi2=np.asarray(fits.delta_chi2, np.float64),
            p_value=np.asarray(fits.p_value, np.float64),
            n_fit_pixels=np.asarray(fits.n_fit_pixels, np.int64),
            n_iter=None if np.shape(n_iter) != (n,) else np.asarray(n_iter, np.int64),
            **chromatic,
        )
    # Each group's own span: chips fitted one by one each have theirs (the last group's was the
    # product's only one). One group's is also the product's, as products have always had it.
    meta.update({f"coordinate_span_um_{key}": span for key, span in spans.items()})
    if len(spans) == 1:
        meta["coordinate_span_um"] = next(iter(spans.values()))
    meta.update(_identity(result.meta.get("exposure")))
    meta["model_option"] = result.options.model
    meta["joint_chips"] = bool(result.options.joint_chips)
    meta["fit_options"] = result.options.to_record()
    meta["flux_normalisation"] = "exposure mean (omega scaled to mean 1 for extraction)"
    meta.update(_offset_summary(result))
    meta.update(result.meta.get("timing") or {})
    inputs = [*result.meta.get("inputs", ()), *result.meta.get("traces", ())]
    return ProductParts(fibers, meta, inputs, result.options.backend)


def _offset_summary(result: ExposureResult) -> dict:
    """``nuisance_chips`` and ``nuisance_offset_rms_dn``: the RMS of the fitted 1/f offsets per
    chip, DN (empty without the nuisance term)."""
    chips, rms = [], []
    for key, fits in result.fibers.items():
        values = fits.offset_rms()
        if values is None:
            continue
        names = list(result.chips) if key == "joint" else [key]
        for index, name in enumerate(names):
            chips.append(name)
            rms.append(float(values[index]) if index < values.size else float("nan"))
    if not chips:
        return {}
    return {"nuisance_chips": chips, "nuisance_offset_rms_dn": np.asarray(rms, np.float64)}


def _identity(exposure: dict | None) -> dict:
    """``telescope``, ``mjd`` (SJD) and ``expnum`` of the exposure the driver read, from its file
    names and the ``--chip``, ``--telescope`` and ``--mjd`` overrides: empty for chips given in
    memory, and no ``expnum`` for a file whose name numbers no exposure (the overrides name its
    telescope and night, not its number)."""
    from ..io.apz import EXPNUM_MJD_ZERO

    if not exposure:
        return {}
    mjd = int(exposure["mjd"])
    identity = {"telescope": exposure["telescope"], "mjd": mjd}
    if exposure.get("number"):
        identity["expnum"] = (mjd - EXPNUM_MJD_ZERO) * 10000 + int(exposure["number"])
    return identity
