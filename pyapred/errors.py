"""Errors for bad input files: each names the file, the field and what was expected."""

from __future__ import annotations

import os

__all__ = ["InputError", "InputWarning", "ReadRangeError"]


class InputError(ValueError):
    """A file (or one of its fields) is not what pyapred expects.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    field : str
        The HDU, dataset, keyword or column at fault.
    expected : str
        What was expected there.
    found : str, optional
        What was found instead.
    """

    def __init__(
        self, path: str | os.PathLike, field: str, expected: str, found: str | None = None
    ):
        self.path = os.fspath(path)
        self.field = field
        self.expected = expected
        self.found = found
        message = f"{self.path}: {field}: expected {expected}"
        if found is not None:
            message += f", found {found}"
        super().__init__(message)


class ReadRangeError(InputError):
    """A read holds a value that the requested array type cannot hold exactly."""


class InputWarning(UserWarning):
    """A file is usable but disagrees with itself (e.g. ``NREAD`` versus the HDU count)."""
