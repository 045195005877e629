"""Numba's ``njit`` and ``prange`` for pyapred's kernels, with a disk cache that cannot go stale.

Every kernel module takes ``njit`` and ``prange`` from here, not from Numba (a test checks it).
Importing this module gives their ``cache=True`` one more rule: a cached kernel is used only
while every source file it is compiled from is unchanged, not its own file alone.

Why: Numba keys a cached kernel on the contents of the file that defines it. A kernel compiles
into itself the helpers it calls from other modules (``_jumps.find_jumps_kernel`` inlines
``_numpy``'s extraction helpers), so after ``_numpy.py`` changed (``git pull`` in an editable
install; a ``pip`` upgrade, which leaves Numba's cache files in ``__pycache__``), the old
``find_jumps_kernel`` was loaded from the cache and ran the old helpers: the wrong numbers,
silently. Here each kernel's key also holds the contents of every pyapred module its file
imports, directly or through others (found by reading the imports, :func:`kernel_sources`).
Where a file has changed, the kernel is compiled again and its cache entry replaced.

Only the key changes: where the cache lives (beside the sources, or ``NUMBA_CACHE_DIR``, or the
user's cache folder where the package's is read-only) is still Numba's choice. It relies on
Numba's table of cache locators (``numba.core.caching``); a Numba without it, or a
``NUMBA_CACHE_LOCATOR_CLASSES`` set by the user, leaves the cache to Numba's own rule, with a
warning.

Not imported by ``import pyapred`` (it imports Numba): only by the kernel modules.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from pathlib import Path

from numba import njit, prange

__all__ = ["kernel_sources", "njit", "prange", "watch"]

#: The package whose kernels are keyed on all their sources (more roots: :func:`watch`).
PACKAGE_ROOT = Path(__file__).resolve().parent


def kernel_sources(path: str | os.PathLike, root: str | os.PathLike = PACKAGE_ROOT) -> list[Path]:
    """The source files a kernel defined in ``path`` may be compiled from: ``path`` and every
    module of the package at ``root`` that it imports, directly or through those modules,
    sorted.

    Imports are read from the files' lines, function-level ones included; an import of the
    package's own modules may be relative (``from ._numpy import x``) or absolute
    (``import pyapred.io``). A module of the package is ``name.py`` or ``name/__init__.py``.
    """
    return list(_closure(Path(path).resolve(), Path(root).resolve()))


def _closure(file: Path, root: Path) -> tuple[Path, ...]:
    """:func:`kernel_sources` of a resolved ``file`` and ``root``, sorted."""
    seen: set[Path] = set()
    pending = [file]
    while pending:
        file = pending.pop()
        if file in seen:
            continue
        seen.add(file)
        try:
            stat = file.stat()
        except OSError:
            continue  # gone since its importer was read: in the key as unreadable
        pending.extend(_imported_files(file, root, stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(seen))


#: ``from .x import a, b`` (relative or absolute; ``from .import a`` too), the names possibly in
#: parentheses over lines.
_FROM_IMPORT = re.compile(
    r"^[ \t]*from(?=[ \t.])[ \t]*(\.*)[ \t]*([\w.]*)[ \t]*import(?=[ \t(])[ \t]*(\([^)]*\)|[^\n]*)",
    re.M,
)
#: ``import x.y, z``.
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n]*)", re.M)
#: A comment (a ``#`` in a string cuts the line there too: that line's import, if any, is lost
#: only where the string comes before it, which no import statement has).
_COMMENT = re.compile(r"#[^\n]*")


@functools.cache
def _imported_files(file: Path, root: Path, mtime_ns: int, size: int) -> tuple[Path, ...]:
    """The files of the package at ``root`` that ``file`` imports, read once per version of
    the file (its time and size; a module defines tens of kernels, and each asks).

    The import statements are found by their lines, not by parsing the module (``ast`` took
    0.1 s of each process's first kernel import): a line in a docstring that reads as an import
    adds a file at most, which only makes a key hold more.
    """
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()  # Numba reads it next, and says what is wrong
    # One statement a line: no comment (one in a parenthesised list hid the names after it),
    # no continuation, no ``;``.
    text = _COMMENT.sub("", text).replace("\\\n", " ").replace(";", "\n")
    modules = []
    for dots, name, names in _FROM_IMPORT.findall(text):
        if dots:  # relative: from the file's package, one folder up per dot after the first
            base = file.parent
            for _ in range(len(dots) - 1):
                base = base.parent
        elif name.split(".")[0] == root.name:
            base = root.parent
        else:
            continue
        module = base.joinpath(*name.split(".")) if name else base
        modules.append(module)
        # ``from . import _numpy``, or ``from .x import y`` where y is a module.
        for alias in names.strip("()").split(","):
            word = alias.split()[0] if alias.split() else ""
            if word.isidentifier():
                modules.append(module / word)
    for names in _IMPORT.findall(text):
        for alias in names.split(","):
            words = alias.split()
            if words and words[0].split(".")[0] == root.name:
                modules.append(root.parent.joinpath(*words[0].split(".")))
    files = []
    for module in modules:
        for candidate in (module.with_suffix(".py"), module / "__init__.py"):
            if candidate.is_file() and candidate.resolve().is_relative_to(root):
                files.append(candidate.resolve())
    return tuple(files)


@functools.cache
def _digest(path: Path, mtime_ns: int, size: int) -> bytes:
    """The SHA-256 of one file's contents, memoised on its time and size as Numba's own hash
    is: a module reloaded after an edit (a notebook's autoreload) is hashed again."""
    return hashlib.sha256(path.read_bytes()).digest()


def _sources_digest(files: tuple[Path, ...], root: Path) -> str:
    """One SHA-256 over the contents of ``files`` and their names in the package at ``root``
    (a package moved elsewhere keeps its cache)."""
    total = hashlib.sha256()
    for file in files:
        total.update(file.relative_to(root).as_posix().encode("utf-8", "surrogateescape"))
        try:
            stat = file.stat()
            total.update(_digest(file, stat.st_mtime_ns, stat.st_size))
        except OSError:  # gone or unreadable since its importer was read: a key of its own,
            total.update(b"<unreadable>")  # never an error while a kernel is decorated
    return total.hexdigest()


#: The package roots whose kernels are keyed on all their sources.
_ROOTS: list[Path] = []


def watch(root: str | os.PathLike) -> None:
    """Key the cached kernels of the package at ``root`` (a folder) on all their sources, as
    pyapred's are: for a package of one's own, or a test's. Idempotent."""
    root = Path(root).resolve()
    if root not in _ROOTS:
        _ROOTS.append(root)
        _watched_file.cache_clear()  # a file it holds may have been seen as unwatched
    _install()


def _watched_sources(py_file: str) -> tuple[tuple[Path, ...], Path] | None:
    """:func:`kernel_sources` of a watched package's file, and the package's root; None for
    any other file."""
    found = _watched_file(py_file)
    if found is None:
        return None
    file, root = found
    return _closure(file, root), root


@functools.cache
def _watched_file(py_file: str) -> tuple[Path, Path] | None:
    """``py_file`` resolved, and the watched root it is in (None if none), once per file."""
    try:
        file = Path(py_file).resolve()
        root = next((r for r in _ROOTS if file.is_relative_to(r)), None)
        if root is None or not file.is_file():
            return None
    except (OSError, RuntimeError, TypeError, ValueError):
        return None
    return file, root


@functools.cache
def _install() -> None:
    """Put :class:`_AllSourcesLocator` first in Numba's table of cache locators (once)."""
    try:
        from numba.core import caching, config

        # CacheImpl in the Numbas this package supports (_CacheImpl in older ones).
        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
        table = impl._locator_classes
        base = caching._CacheLocator
    except (ImportError, AttributeError):  # another Numba: its own rule, and say so
        warnings.warn(
            "pyapred.jit: this Numba has no table of cache locators; a cached kernel is "
            "checked against its own file only (after an update, clear the package's "
            "__pycache__/*.nbi files)",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    if getattr(config, "CACHE_LOCATOR_CLASSES", None):
        warnings.warn(
            "pyapred.jit: NUMBA_CACHE_LOCATOR_CLASSES is set; a cached kernel is checked "
            "against its own file only",
            RuntimeWarning,
            stacklevel=2,
        )
    table.insert(0, _locator_class(base, tuple(table)))


def _locator_class(base: type, others: tuple[type, ...]) -> type:
    """A Numba cache locator for the kernels of the watched packages: where Numba's own
    locators (``others``, in their order) put the cache, keyed on all the kernel's sources."""

    class _AllSourcesLocator(base):
        def __init__(self, inner, sources: tuple[tuple[Path, ...], Path]):
            self._inner = inner
            self._sources = sources

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_source_stamp(self):
            return _sources_digest(*self._sources)

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func, py_file):
            sources = _watched_sources(py_file)
            if sources is None:  # not a watched package's file: Numba's locators decide
                return None
            for other in others:
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner, sources)
            return None

    return _AllSourcesLocator


watch(PACKAGE_ROOT)
