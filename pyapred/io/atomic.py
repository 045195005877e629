"""Atomic writes: write to a temporary file in the destination's directory, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Files no output may replace while they are kept (``--log``'s file during a command's run):
#: ``(st_dev, st_ino)`` -> what the file is and how many blocks keep it. By identity, so that
#: links, relative spellings and a change of the working folder all find it.
_KEPT: dict[tuple[int, int], tuple[str, int]] = {}


@contextlib.contextmanager
def kept_file(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Within the block, no output may replace the existing file ``path``.

    :func:`~pyapred.io.paths.check_output_path` refuses it as an output before any work and
    :func:`atomic_path` before writing: with ``--overwrite``, an output named like the log
    would otherwise replace it, and the run's record would be lost.

    Parameters
    ----------
    path : str or os.PathLike
        An existing file.
    what : str
        What it is, for the error (``"--log's file"``).
    """
    info = os.stat(path)
    key = (info.st_dev, info.st_ino)
    _KEPT[key] = (what, _KEPT.get(key, (what, 0))[1] + 1)
    try:
        yield
    finally:
        what, count = _KEPT.pop(key)
        if count > 1:  # a nested block on the same file: the outer one still keeps it
            _KEPT[key] = (what, count - 1)


def kept_as(path: str | os.PathLike) -> str | None:
    """What keeps ``path`` from being replaced (see :func:`kept_file`), or None."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # missing, a broken link, a name the system refuses
        return None
    kept = _KEPT.get((info.st_dev, info.st_ino))
    return None if kept is None else kept[0]


def writable_folder(
    folder: str | os.PathLike,
    *,
    path: str | os.PathLike | None = None,
    field: str = "--out",
    create: bool = True,
) -> Path:
    """Check that a file can be written in ``folder``; create it if needed and ``create``.

    Commands call this before their work, so that an unwritable output fails at once.

    Parameters
    ----------
    folder : str or os.PathLike
    path : str or os.PathLike, optional
        The output named in the error (default ``folder``).
    field : str
        The option named in the error.
    create : bool
        Make ``folder`` (and its missing parents) now. Without, a missing ``folder`` is checked
        where it would be made, in its nearest existing parent, and is left to the writer
        (:func:`atomic_path` makes it, and removes it again if the write fails): a run that stops
        early leaves no empty folder behind.

    Raises
    ------
    pyapred.errors.InputError
        The folder cannot be made or written.
    """
    from ..errors import InputError

    folder = Path(folder)
    found = None
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        existing = folder if create else _nearest_existing(folder)
        to_make = (folder, *folder.parents)[: (folder, *folder.parents).index(existing)]
        if any(part.name == ".." for part in to_make):  # its mkdir fails, "File exists"
            found = "'..' after a folder that does not exist yet"
        elif existing.is_dir():
            fd, probe = tempfile.mkstemp(prefix=".pyapred-probe-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        else:
            found = f"{existing} is not a folder"
    except OSError as exc:
        found = exc.strerror or str(exc)
    if found is not None:
        raise InputError(path or folder, field, "a folder pyapred can write to", found)
    return folder


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest parent that exists (``.`` for a relative path's start)."""
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _make_parents(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; return the folders made, outermost first (none
    stays behind if one cannot be made)."""
    missing = []
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    made: list[Path] = []
    try:
        for candidate in reversed(missing):
            candidate.mkdir()
            made.append(candidate)
    except OSError:
        _remove_empty(made)
        raise
    return made


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, overwrite: bool = False, keep_suffix: bool = False
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary file lives in the same directory, so the final ``os.replace`` is atomic on
    POSIX file systems: readers see either the old file, no file, or the complete new one. If
    the block raises, the temporary file is removed and ``path`` is left untouched. Missing
    parent folders are made, and removed again if the block raises.

    While the block runs, the temporary file is held under an exclusive ``flock``, which the
    kernel releases however the process ends: so :func:`~pyapred.io.paths.remove_stale_temporaries`
    (a later run on the same ``path``) removes a killed writer's temporary file but never a live
    one's. A writer that locks files itself opens it without (h5py: ``locking=False``).

    Parameters
    ----------
    path : str or os.PathLike
        Destination.
    overwrite : bool, optional
        Replace an existing ``path``; otherwise ``FileExistsError`` is raised before writing.
    keep_suffix : bool, optional
        End the temporary name with the destination's extension, for writers that pick the
        format from the name (astropy compresses ``.gz``, matplotlib reads ``.png``).

    Yields
    ------
    pathlib.Path
        The temporary file, created empty: ``.{name}.XXXXXXXX.tmp`` beside ``path``, or
        ``.{name}.XXXXXXXX.tmp{suffix}`` with ``keep_suffix`` (``.f.fits.gz.XXXXXXXX.tmp.gz``).
        Both match the glob ``.{name}.*.tmp*`` that finds stale temporaries.
    """
    path = Path(path)
    kept = kept_as(path)
    if kept is not None:
        raise FileExistsError(errno.EEXIST, f"is {kept}, which no output may replace", str(path))
    if path.exists() and not overwrite:
        raise FileExistsError(
            errno.EEXIST,
            "exists; to replace it pass --overwrite (overwrite=True in Python)",
            str(path),
        )
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    made = []
    try:
        made = _make_parents(path.parent)
        fd, tmp = _locked_temporary(path, suffix)
    except OSError as exc:  # name the destination, not the temporary file
        _remove_empty(made)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    done = False
    try:
        usual_permissions(tmp)
        yield tmp
        os.replace(tmp, path)
        done = True
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)  # after the rename: the lock is held until the file is in place
        if not done:
            _remove_empty(made)


def _locked_temporary(path: Path, suffix: str) -> tuple[int, Path]:
    """A new temporary file beside ``path`` and a descriptor holding its ``flock``.

    A stale-temporary cleanup may find the file between its creation and the lock, take it for
    a killed writer's and remove it: then the name no longer leads to the locked file, and a
    new one is made.
    """
    while True:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        try:
            if not try_lock(fd):
                return fd, Path(name)  # a file system without locks: unlocked, as before
        except BlockingIOError:  # a cleanup holds it, and is removing it
            os.close(fd)
            continue
        try:
            same = os.stat(name).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, Path(name)
        os.close(fd)


def try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting: True if taken.

    Raises
    ------
    BlockingIOError
        Another open file (in any process) holds a lock on the file.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # (an OSError too) held elsewhere: the caller's to handle
        raise
    except OSError:  # a file system without locks (ENOLCK)
        return False
    return True


def _remove_empty(folders: list[Path]) -> None:
    """Remove the ``folders`` a failed write made (innermost first), where still empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def usual_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions of a newly created file (0666 less the umask).

    ``tempfile.mkstemp`` creates files readable by their owner only (0600); outputs renamed
    from such a file would keep that mode.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (replacing ``path``)."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(data)
