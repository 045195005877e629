"""Paths checked before any long work: inputs that can be read, outputs that can be written.

Every command checks its paths with these first, so that a bad one is an
:class:`~pyapred.errors.InputError` (exit 2, naming the path and the option) before minutes of
fitting, never a traceback, a hang on a FIFO or device, or an input overwritten by an output.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from .atomic import kept_as, try_lock, writable_folder

__all__ = [
    "check_input_file",
    "check_memory",
    "check_output_path",
    "physical_memory",
    "remove_stale_temporaries",
]

_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def physical_memory() -> float:
    """This machine's memory in bytes (inf where the system does not say: ``sysconf`` is
    POSIX only), against which a declared size is refused before it is read or made."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def check_memory(needed: float, source: str, field: str, what: str) -> None:
    """InputError where ``needed`` bytes (an estimate of the work's peak) exceed this machine's
    memory: refused before the work, not a MemoryError traceback minutes into it.

    Parameters
    ----------
    needed : float
        Bytes.
    source, field : str
        What the error names (the options that set the size).
    what : str
        The size in words (``"33 reads x 300 fibers"``).
    """
    memory = physical_memory()
    if needed > memory:
        raise InputError(source, field, f"work that fits in memory ({memory / 2**30:.0f} GiB)",
                         f"{what}: about {needed / 2**30:.3g} GiB")  # fmt: skip


def check_input_file(path: str | os.PathLike, field: str) -> Path:
    """``path`` if it is an existing regular file (symbolic links followed).

    Refused: a missing path, a folder, a loop of symbolic links, and special files (FIFOs,
    devices, sockets: reading them would hang or never end).

    Parameters
    ----------
    path : str or os.PathLike
    field : str
        The option or field named in the error (``"inputs"``, ``"--traces"``, ...).

    Raises
    ------
    InputError
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(path, field, "an existing file", "nothing") from None
    except OSError as exc:  # a loop of symbolic links, a permission problem, a name too long
        raise InputError(path, field, "a readable file", exc.strerror or str(exc)) from None
    if stat.S_ISDIR(mode):
        raise InputError(path, field, "a file", "a folder")
    if not stat.S_ISREG(mode):
        raise InputError(path, field, "a regular file", _SPECIAL.get(stat.S_IFMT(mode), "other"))
    return path


def check_output_path(
    path: str | os.PathLike,
    field: str,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    folder: bool = False,
) -> Path:
    """``path`` if an output can be written there without harm.

    A missing parent folder is not made here (a run that fails before writing leaves none): it
    is checked where it would be made, and the writer makes it.

    Parameters
    ----------
    path : str or os.PathLike
        The output file (or folder, with ``folder=True``).
    field : str
        The option named in the error (``"--out"``, ``"--plots"``).
    inputs : iterable of paths
        The command's inputs: the output may be none of them (nor a link to one).
    overwrite : bool
        An existing output file may be replaced.
    folder : bool
        The output is a folder (of plots): an existing file there is refused.

    Raises
    ------
    InputError
        The path is one of the inputs or a file kept from outputs (``--log``'s, see
        :func:`~pyapred.io.atomic.kept_file`), a folder where a file is expected (or the
        reverse), an existing file without ``overwrite``, a special file, or in a folder that
        cannot be written.
    """
    path = Path(path)
    for item in inputs:
        if _same_file(path, Path(item)):
            raise InputError(path, field, "an output path that is none of the inputs", str(item))
    kept = kept_as(path)
    if kept is not None:
        raise InputError(path, field, "an output path of its own", kept)
    if folder:  # checked, not made: a failed run leaves no empty folder behind
        if path.exists() and not path.is_dir():
            found = "an existing file" if path.is_file() else _special_kind(path)
            raise InputError(path, field, "a folder", found)
        writable_folder(path, path=path, field=field, create=False)
        return path
    if path.is_dir():
        raise InputError(path, field, "a file name", "an existing folder")
    if path.exists() or path.is_symlink():
        if not path.is_file():  # replacing it would not help: say what it is
            kind = "a link to nothing" if not path.exists() else _special_kind(path)
            raise InputError(path, field, "a new or regular file", kind)
        if not overwrite:
            raise InputError(path, field, "a new file (or pass --overwrite)", "an existing file")
    writable_folder(path.parent, path=path, field=field, create=False)
    return path


def _special_kind(path: Path) -> str:
    """What a path that is no regular file is (a FIFO, a device, ...)."""
    try:
        return _SPECIAL.get(stat.S_IFMT(path.stat().st_mode), "a special file")
    except OSError:
        return "a special file"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def remove_stale_temporaries(
    path: str | os.PathLike, *, keep: Iterable[str | os.PathLike] = ()
) -> list[Path]:
    """Remove the temporary files that a killed writer of ``path`` left beside it.

    :func:`~pyapred.io.atomic.atomic_path` writes ``.{name}.XXXXXXXX.tmp`` (or ``.tmp{suffix}``)
    next to ``path``; a process killed mid-write leaves it. Commands call this before they write
    ``path`` again. Only regular files of that form are removed (``tempfile``'s characters
    between the dots), and never one of ``keep`` (the command's inputs) nor a kept file
    (``--log``'s), nor one a live writer holds (its ``flock``: another run writing ``path``
    now), nor one whose lock cannot be tested.

    Returns
    -------
    list of pathlib.Path
        What was removed.
    """
    path = Path(path)
    suffix = re.escape(path.suffix)
    temporary = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]+\.tmp(?:{suffix})?")
    removed = []
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        if not (temporary.fullmatch(stale.name) and stale.is_file() and not stale.is_symlink()):
            continue
        if kept_as(stale) is not None or any(_same_file(stale, Path(k)) for k in keep):
            continue
        if _unlink_unless_locked(stale):
            removed.append(stale)
    return removed


def _unlink_unless_locked(path: Path) -> bool:
    """Remove ``path`` unless a writer holds its lock (or locks cannot be tested there)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # gone, or not ours to open
        return False
    try:
        if not try_lock(fd):
            return False
        path.unlink(missing_ok=True)  # while locked: a writer that locks it next makes anew
        return True
    except BlockingIOError:  # a live writer's
        return False
    finally:
        os.close(fd)
