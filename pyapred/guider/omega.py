"""Omega to compare with the guider: from a fit, arrays, a mapping, or a pyapred product.

:func:`select_omega` turns any accepted input into per-fiber ``(F, K)`` omega and ``(F, K, K)``
covariance arrays with their fiber labels and, when the input carries them, the exposure's read
times or header. :func:`read_product_omega` reads one fiber group of a product written by
``pyapred fit`` or ``pyapred night``, with the read times kept in its metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy.time import Time

from ..errors import InputError

__all__ = ["TIME_CARDS", "OmegaSelection", "read_product_omega", "select_omega"]


@dataclass(frozen=True)
class OmegaSelection:
    """Fitted omega of the selected fibers, and what the input says about the read times.

    Attributes
    ----------
    omega : ndarray, ``(F, K)``
    cov : ndarray, ``(F, K, K)``
    fibers : ndarray of int, ``(F,)``
        Labels: the product's 0-based fiber indices, else rows of the input.
    read_times : astropy.time.Time or None
        The exposure's read start times (TAI), when the input carries them.
    header : Mapping or None
        Exposure header cards (:data:`TIME_CARDS`), when the input carries them.
    gamma, gamma_cov : ndarray, ``(F, K)`` and ``(F, K, K)``, or None
        The chromatic fit's slope and its covariance, when the input carries them (a product of
        ``pyapred fit --chromatic``, a mapping with ``gamma`` and ``gamma_cov``, or a
        ChromaticFit).
    span : (float, float) or None
        Bluest and reddest wavelength (micron) of the chromatic fit's coordinate.
    telescope : str or None
        ``"apo"`` or ``"lco"``, where the input says (a product's ``metadata/telescope``).
    """

    omega: np.ndarray
    cov: np.ndarray
    fibers: np.ndarray
    read_times: Time | None
    header: Mapping | None
    gamma: np.ndarray | None = None
    gamma_cov: np.ndarray | None = None
    span: tuple | None = None
    telescope: str | None = None

    def __repr__(self) -> str:
        """Each field in a few words (:func:`~pyapred.solver.reprs.summary_repr`), never whole
        arrays."""
        from ..solver.reprs import summary_repr

        return summary_repr(self)


#: Exposure header cards that give the read times, looked for in a product's metadata.
TIME_CARDS = ("DATE-OBS", "TIMESYS", "INTOFF", "INTDELAY", "NREAD", "NFRAMES", "CONFIGID")


def select_omega(source, fibers=None, group: str | None = None) -> OmegaSelection:
    """Normalise the accepted omega inputs to ``(F, K)`` and ``(F, K, K)`` arrays.

    Parameters
    ----------
    source : OmegaFit, (omega, omega_cov), Mapping, or product path
        ``omega`` ``(K,)`` or ``(F, K)`` with covariance ``(K, K)`` or ``(F, K, K)``. A mapping
        has keys ``omega``, ``omega_cov`` and optionally ``fiber_index``, ``read_times``,
        ``header`` (what :func:`read_product_omega` returns); an object has attributes
        ``omega``, ``omega_cov`` and optionally ``read_times``, ``header``.
    fibers : sequence of int, optional
        Selects by label (the product's fiber index, else the row); by default every fiber with
        at least three fitted elements (positive variance) is kept.
    group : str, optional
        For a product path: the fiber group (see :func:`read_product_omega`).

    Returns
    -------
    OmegaSelection

    Raises
    ------
    ValueError
        Unknown input type, wrong shapes, no fitted fiber, or fibers not in the input.
    pyapred.errors.InputError
        A product that cannot be read, or lacks the group.
    """
    if isinstance(source, (str, os.PathLike)):
        return select_omega(read_product_omega(os.fspath(source), group), fibers)
    labels, read_times, header = None, None, None
    gamma = gamma_cov = span = telescope = None
    if isinstance(source, Mapping):
        missing = [key for key in ("omega", "omega_cov") if key not in source]
        if missing:
            raise ValueError(f"omega: expected a mapping with 'omega' and 'omega_cov', "
                             f"missing {missing}")  # fmt: skip
        omega, cov = source["omega"], source["omega_cov"]
        labels = source.get("fiber_index")
        read_times, header = source.get("read_times"), source.get("header")
        gamma, gamma_cov, span = source.get("gamma"), source.get("gamma_cov"), source.get("span")
        telescope = source.get("telescope")
    elif isinstance(source, tuple):
        omega, cov = source
    elif hasattr(source, "gamma") and callable(getattr(source, "omega_cov", None)):
        # A ChromaticFit: omega at the middle of the span, and its slope.
        omega, cov = source.omega, source.omega_cov()
        gamma, gamma_cov = source.gamma, source.gamma_cov()
    elif hasattr(source, "omega") and hasattr(source, "omega_cov"):
        omega, cov = source.omega, source.omega_cov
        read_times, header = getattr(source, "read_times", None), getattr(source, "header", None)
    else:
        raise ValueError(
            "omega: expected an OmegaFit, (omega, omega_cov), a mapping or a product path"
        )
    omega, cov = _numbers("omega", omega), _numbers("omega_cov", cov)
    if (gamma is None) != (gamma_cov is None):
        raise ValueError("gamma, gamma_cov: expected both or neither (a chromatic fit)")
    if omega.ndim == 1:
        omega, cov = omega[None], cov[None]
    if omega.ndim != 2 or cov.shape != omega.shape + omega.shape[-1:]:
        raise ValueError(
            "omega, omega_cov: expected shapes (F, K) and (F, K, K), "
            f"got {omega.shape}, {cov.shape}"
        )
    labels = np.arange(omega.shape[0]) if labels is None else np.asarray(labels, np.int64)
    fitted = has_fitted_omega(omega, cov)
    if fibers is None:
        rows = np.flatnonzero(fitted)
        if rows.size == 0:
            raise ValueError("omega: no fiber has a fitted omega (all variances are 0 or NaN)")
    else:
        wanted = np.atleast_1d(_numbers("fibers", fibers))
        if not np.array_equal(wanted, np.round(wanted)):
            raise ValueError(f"fibers: expected whole fiber indices, got {fibers!r}")
        wanted = wanted.astype(np.int64)
        missing = sorted(set(wanted.tolist()) - set(labels.tolist()))
        if missing:
            raise ValueError(f"fibers: {missing} not among the {labels.size} fibers given")
        rows = np.array([np.flatnonzero(labels == f)[0] for f in wanted])
        unfitted = labels[rows[~fitted[rows]]].tolist()
        if unfitted:  # a constant-model or fallback fiber: every statistic would be NaN
            raise ValueError(f"fibers: {unfitted} have no fitted omega (variances 0 or NaN)")
    if gamma is not None:
        gamma = np.broadcast_to(np.asarray(gamma, np.float64), omega.shape)[rows]
        gamma_cov = np.broadcast_to(np.asarray(gamma_cov, np.float64), cov.shape)[rows]
    span = None if span is None else tuple(float(v) for v in np.ravel(span))
    return OmegaSelection(omega[rows], cov[rows], labels[rows], read_times, header, gamma,
                          gamma_cov, span, telescope)  # fmt: skip


def has_fitted_omega(omega: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Which fibers have a fitted omega to compare: three elements or more with a finite value
    and a positive variance (a constant-model or fallback fiber has none); ``(F,)`` bool from
    ``omega`` ``(F, K)`` and ``cov`` ``(F, K, K)``."""
    usable = np.isfinite(omega) & (np.diagonal(cov, axis1=1, axis2=2) > 0)
    return usable.sum(axis=1) >= 3


def _numbers(name: str, value) -> np.ndarray:
    """``value`` as float64, a ValueError naming ``name`` when it holds no numbers."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers, got {value!r:.80}") from None


def read_product_omega(path: str | os.PathLike, group: str | None = None) -> dict:
    """Omega, covariance, fiber indices and read times of one fiber group of a product.

    Reads with :func:`pyapred.io.product.read_product` (product formats 1 and 2, without the
    chip images). The group is ``group``, else ``"joint"`` when present, else the first of R,
    G, B. Read times come from the metadata:
    ``read_times_tai_mjd``, or the exposure header cards ``DATE-OBS``, ``TIMESYS``, ``INTOFF``
    (and ``INTDELAY``, ``CONFIGID``).

    Parameters
    ----------
    path : str or os.PathLike
        A pyapred product (HDF5, or FITS by the ``.fits`` suffix).
    group : str, optional
        The fiber group: a chip name (``R``, ``G``, ``B``) or ``"joint"``.

    Returns
    -------
    dict
        ``omega`` ``(F, K)``, ``omega_cov`` ``(F, K, K)``, ``fiber_index`` ``(F,)`` (0-based),
        ``read_times`` (TAI ``Time`` or None), ``header`` (the :data:`TIME_CARDS` found, or
        None), ``telescope`` (``"apo"``, ``"lco"`` or None), and with the chromatic fit
        ``gamma`` ``(F, K)``, ``gamma_cov`` ``(F, K, K)`` and ``span`` (the group's
        ``coordinate_span_um``); :func:`select_omega` accepts it.

    Raises
    ------
    pyapred.errors.InputError
        Not a readable product, no fiber group, or no group named ``group``.
    """
    from ..io.product import read_product  # h5py: imported when a product is read

    product = read_product(path, images=False)  # formats 1 and 2; the images are not needed
    groups, metadata = product.fibers, product.metadata
    if not groups:
        raise InputError(path, "fibers", "per-fiber omega in a /fibers/{group} group")
    preferred = [g for g in ("joint", "R", "G", "B") if g in groups] + sorted(groups)
    name = group or preferred[0]
    if name not in groups:
        raise InputError(path, f"fibers/{name}", f"one of the groups {sorted(groups)}")
    fits_ = groups[name]
    header = {key.upper(): _scalar(v) for key, v in metadata.items() if key.upper() in TIME_CARDS}
    read_times = metadata.get("read_times_tai_mjd")
    if read_times is not None:
        try:
            mjd = np.asarray(read_times, np.float64)
        except (TypeError, ValueError):
            mjd = np.full(1, np.nan)
        if mjd.ndim != 1 or not np.all(np.isfinite(mjd)):
            found = (f"shape {mjd.shape}" if mjd.ndim != 1 else
                     f"{np.count_nonzero(~np.isfinite(mjd))} of {mjd.size} not finite")  # fmt: skip
            raise InputError(path, "metadata/read_times_tai_mjd", "finite MJDs, one per read",
                             found)  # fmt: skip
        read_times = Time(mjd, format="mjd", scale="tai")
    chromatic = {}
    if fits_.gamma is not None:  # pyapred fit --chromatic
        # The group's own span; a product of one chromatic group has only the plain key.
        span = metadata.get(f"coordinate_span_um_{name}", metadata.get("coordinate_span_um"))
        chromatic = {"gamma": fits_.gamma, "gamma_cov": fits_.gamma_cov,
                     "span": None if span is None else np.asarray(span, np.float64)}  # fmt: skip
    telescope = metadata.get("telescope")
    return {
        "omega": fits_.omega,
        "omega_cov": fits_.omega_cov,
        "fiber_index": fits_.fiber_index,
        "read_times": read_times,
        "header": header or None,
        "telescope": telescope if telescope in ("apo", "lco") else None,
        **chromatic,
    }


def _scalar(value):
    value = value.decode() if isinstance(value, bytes) else value
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
