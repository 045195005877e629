"""Errors for bad input files (each names the file, the field and what was expected), and the
exit codes of the ``pyapred`` command line, defined here once for every subcommand."""

from __future__ import annotations

import os

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FLAGGED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "InputError",
    "InputWarning",
    "ReadRangeError",
    "expect_type",
]

#: Exit codes of every ``pyapred`` subcommand: 0 ok; 1 a fit problem was flagged, a check failed
#: or (``crossval``) the backends differ; 2 bad input (or, for ``crossval``, no Julia).
EXIT_OK, EXIT_FLAGGED, EXIT_BAD_INPUT = 0, 1, 2
#: Exit code of a command stopped by Ctrl-C (SIGINT): 128 + 2, as shells report it. The
#: ``pyapred`` executable ends the same way when it is asked to stop (SIGTERM, SIGHUP).
EXIT_INTERRUPTED = 130


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
        # A command-line flag at fault is both the path and the field: named once.
        where = self.path if self.path == field else f"{self.path}: {field}"
        message = f"{where}: expected {expected}"
        if found is not None:
            message += f", found {found}"
        super().__init__(message)


class ReadRangeError(InputError):
    """A read holds a value that the requested array type cannot hold exactly."""


class InputWarning(UserWarning):
    """A file is usable but disagrees with itself (e.g. ``NREAD`` versus the HDU count)."""


def expect_type(name: str, value, kind: type | tuple[type, ...], what: str | None = None) -> None:
    """Raise TypeError naming the argument ``name`` unless ``value`` is a ``kind``: a stage called
    with the wrong object fails at its door, not deep inside with an AttributeError."""
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = what or " or ".join(k.__name__ for k in kinds)
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}")
