"""The one registry of flag bits.

Every flag that pyapred writes into a ``flags`` array is defined here, and only here.
``docs/flags.md`` lists them for users; a test checks that the two agree.

Pixel flags (``FluxFit.flags``, ``OmegaFit.flags``) describe one pixel's ramp. Group flags
(``OmegaFit.group_flags``) describe one omega fit.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Flag", "describe_flags"]


class Flag(enum.IntFlag):
    """Bit flags for pixels and omega groups. Combine with ``|``; test with ``&``."""

    #: Pixel: one or more reads were masked by the caller's ``mask``.
    MASKED_READ = 1 << 0
    #: Pixel: one or more reads were not finite (NaN or inf); they were masked.
    NONFINITE_READ = 1 << 1
    #: Pixel: the ramp reached ``saturation``; that read and all later ones were masked.
    SATURATED = 1 << 2
    #: Pixel: fewer than 2 usable read differences; flux, variance and chi2 are NaN.
    TOO_FEW_DIFFS = 1 << 3
    #: Pixel: left out of the omega fit (padding, or too few usable differences).
    NOT_IN_OMEGA_FIT = 1 << 4
    #: Pixel: the jump search flagged one or more read differences (cosmic rays); they were masked.
    JUMP_DETECTED = 1 << 5
    #: Pixel: 3 or fewer clean differences were left, too few to search for (more) jumps.
    FEW_CLEAN_DIFFS = 1 << 6
    #: Pixel (pipeline): background or between traces; extracted with the constant model.
    BACKGROUND = 1 << 7
    #: Group: the Gauss-Newton iteration reached ``max_iter`` without converging, or broke down
    #: (a singular system); omega is the last finite iterate.
    NOT_CONVERGED = 1 << 8
    #: Group: at least one omega element had no usable difference in any pixel; it is NaN.
    OMEGA_ELEMENT_NO_DATA = 1 << 9
    #: Group: no pixel of the group could be fitted; omega is NaN.
    EMPTY_GROUP = 1 << 10
    #: Fiber (pipeline): too faint to constrain omega; omega borrowed from the bright fibers.
    BORROWED_OMEGA = 1 << 11
    #: Fiber (pipeline): the omega fit failed (not converged or no data); constant model used.
    FALLBACK_CONSTANT = 1 << 12
    #: Fiber (pipeline): an FPI fiber, excluded from the omega fits; constant model used.
    FPI_FIBER = 1 << 13
    #: Fiber (pipeline): no omega fit was asked for (``model="constant"``); constant model used,
    #: and the fit's statistics (amplitude, delta_chi2, p_value, chi2 per dof) are NaN.
    NO_OMEGA_FIT = 1 << 14
    #: Fiber (pipeline, 1/f nuisance term): too little flux contrast between the pixels of its
    #: readout segments to tell omega from the offsets (``segment_contrast`` below
    #: ``MIN_SEGMENT_CONTRAST``); not fitted, handled as a faint fiber.
    LOW_SEGMENT_CONTRAST = 1 << 15


def describe_flags(value: int) -> list[str]:
    """Return the names of the bits set in ``value``, lowest bit first.

    Parameters
    ----------
    value : int
        A flag value, e.g. one element of ``FluxFit.flags`` (for a whole array, call it on
        each element, or test a bit with ``flags & Flag.SATURATED``).

    Returns
    -------
    list of str
        Names of the set bits, e.g. ``["SATURATED", "TOO_FEW_DIFFS"]``; a bit that no
        :class:`Flag` names (a product of a newer version) as ``"bit 16"``.

    Raises
    ------
    ValueError
        ``value`` is not one integer >= 0.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(
            f"value: expected one flag value, an integer >= 0, got {value!r}"
            + (" (an array: describe each element)" if np.ndim(value) else "")
        )
    value = int(value)
    names = []
    for bit in range(value.bit_length()):
        if value >> bit & 1:
            names.append(Flag(1 << bit).name if (1 << bit) in _KNOWN_BITS else f"bit {bit}")
    return names


_KNOWN_BITS = frozenset(flag.value for flag in Flag)
