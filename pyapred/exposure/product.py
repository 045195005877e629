"""Stage 4, build the product's parts: per fiber group the omega record, and the metadata.

:func:`product_parts` turns an :class:`~pyapred.exposure.ExposureResult` into what
:func:`pyapred.io.write_product` and :class:`pyapred.io.ProductWriter` take (the chip images come
from :meth:`pyapred.io.ChipImages.from_fit` of each chip). No file I/O: the driver writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fibers import MODEL_BORROWED, MODEL_NAMES
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
        The ``metadata`` group: decision statistics per group, ``fit_options``
        (:meth:`~pyapred.exposure.FitOptions.to_record`), the exposure's timing cards.
    inputs : list of str
        Input files then trace files, hashed into the product.
    backend : str
        The solver backend that ran.
    """

    fibers: dict
    metadata: dict
    inputs: list
    backend: str


def product_parts(result: ExposureResult) -> ProductParts:
    """The fiber groups, the metadata and the hashed inputs of ``result``'s product.

    Per fiber group, omega as fitted (``ref_index`` normalisation; ones with zero covariance
    for fibers not fitted, the bright-fiber mean for borrowed fibers), its covariance, the model
    and the flags; the decision statistics go to the metadata as ``{group}_delta_chi2``,
    ``{group}_p_value``, ``{group}_amplitude`` and ``{group}_n_fit_pixels`` arrays.
    """
    from ..io import FiberResults  # h5py and astropy: only when a product is made

    fibers, meta = {}, {}
    for key, fits in result.fibers.items():
        n, K = fits.omega.shape
        omega = np.where(np.isfinite(fits.omega_fit), fits.omega_fit, 1.0)
        cov = np.where(np.isfinite(fits.omega_fit)[:, :, None], fits.omega_cov, 0.0)
        borrowed = fits.model == MODEL_BORROWED
        omega[borrowed] = fits.borrowed_omega
        cov[borrowed] = fits.borrowed_cov
        fibers[key] = FiberResults(
            fiber_index=np.arange(n),
            omega=omega,
            omega_cov=cov,
            ref_index=np.full(n, fits.ref_index),
            model=tuple(MODEL_NAMES[m] for m in fits.model),
            flags=fits.flags,
        )
        for stat in ("delta_chi2", "p_value", "amplitude", "n_fit_pixels"):
            meta[f"{key}_{stat}"] = np.asarray(getattr(fits, stat))
    meta["model_option"] = result.options.model
    meta["joint_chips"] = bool(result.options.joint_chips)
    meta["fit_options"] = result.options.to_record()
    meta["flux_normalisation"] = "exposure mean (omega scaled to mean 1 for extraction)"
    meta.update(result.meta.get("timing") or {})
    inputs = [*result.meta.get("inputs", ()), *result.meta.get("traces", ())]
    return ProductParts(fibers, meta, inputs, result.options.backend)
