"""``pyapred night``: fit many exposures on Dask, resumable, one failure never stopping the rest.

One Dask task per exposure (:func:`process_exposure`): it hashes the exposure's inputs, skips it
when its product already holds the same hashes, pyapred version and fit settings and reads back
whole, and otherwise fits it (:func:`pyapred.exposure.run_exposure`) and writes the product
atomically. Locally the tasks run on a ``distributed.LocalCluster`` whose worker processes are
started by ``spawn`` (juliacall does not survive ``fork``); ``--scheduler tcp://HOST:PORT`` joins
an existing cluster. Failures go to ``OUT/failures.json``. See ``docs/scaling.md``.

Which exposures (:func:`find_exposures`):

- a glob of raw ``apR-``/``asR-`` ``.apz`` (or ``ar3Dcal``) files;
- a text runlist, one exposure per line, each named by one of its files (or a glob), relative
  to the runlist's folder; ``#`` starts a comment;
- ApogeeReduction.jl's ``runlist_*.h5`` with the datasets ``tele``, ``mjd`` and ``expid``.
  ``expid`` is almanac's ``exposure_string``, the 8-digit ``(mjd - 55562) * 10000 + n``; a value
  below 10000 is read as ``n``, the number within the night. Row ``i`` names the raw files
  ``{apR|asR}-{a|b|c}-{expid:08d}.apz``, looked for in ``RAW/{tele}/{mjd}/`` (the SDSS
  layout) and then in ``RAW/``, where ``RAW`` is ``--raw-dir`` (default: the runlist's folder).

Every exposure gets the chips of ``--chips`` (default ``RGB``) from the files next to the one
named; the trace files come from ``--traces`` by telescope, MJD and chip
(``traceMain_{tele}_{mjd}_{chip}.h5``). The product is ``OUT/pyapred_{tele}_{mjd}_{EXP4}.h5``.
An exposure named again by the same files (a repeated line, its three chips matched by a glob)
is fitted once; named by two different files of one chip (``raw1/`` and ``raw2/``) it is
refused.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import json_line, path_argument
from .errors import EXIT_BAD_INPUT, EXIT_FLAGGED, EXIT_OK, InputError

if TYPE_CHECKING:
    from .exposure import FitOptions

__all__ = [
    "ExposureTask",
    "NightResult",
    "TaskResult",
    "add_arguments",
    "find_exposures",
    "process_exposure",
    "run",
    "run_night",
]

CHIP_LETTERS = {"R": "a", "G": "b", "B": "c"}
FAILURES_FILE = "failures.json"
#: The error ``failures.json`` gives an exposure not fitted yet while the night runs, so that a
#: run killed outright (SIGKILL, a node lost) never leaves an old ``[]`` saying "complete".
NOT_FINISHED = "not finished: the night was stopped or is still running"
#: The error it gives the exposures left unfinished by Ctrl-C or SIGTERM.
INTERRUPTED = "interrupted"
#: The lock file of a night's output folder: one ``pyapred night`` writes there at a time.
LOCK_FILE = ".pyapred-night.lock"
#: The most rows a ``runlist_*.h5`` may have (a night has a few hundred exposures): a small
#: damaged file declaring 3e7 rows kept the run busy for most of an hour.
MAX_RUNLIST_ROWS = 100_000
#: A temporary product a killed writer left (``.pyapred_{name}.h5.XXXXXXXX.tmp``): group 1 is
#: the product's name.
_TEMPORARY_PRODUCT = re.compile(r"\.(pyapred_.+\.h5)\.[a-z0-9_]+\.tmp")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExposureTask:
    """One exposure to fit.

    Attributes
    ----------
    name : str
        ``{tele}_{mjd}_{EXP4}``, or the runlist entry when it names no exposure.
    inputs : tuple of str
        Raw ``.apz`` (or ``ar3Dcal``) files, one per chip, in R, G, B order.
    traces : tuple of str
        The matching trace files, same order.
    product : str
        The product to write.
    problem : str or None
        Why the exposure cannot be fitted (a missing file, no trace file); it is then reported
        as failed without running.
    """

    name: str
    inputs: tuple[str, ...]
    traces: tuple[str, ...]
    product: str
    problem: str | None = None


@dataclass(frozen=True)
class TaskResult:
    """What one exposure's task returns.

    Attributes
    ----------
    name : str
    status : {"done", "skipped", "failed"}
    product : str
    error : str or None
        One line: the error of a failed exposure.
    details : str or None
        The traceback of an unexpected error (not :class:`~pyapred.errors.InputError`).
    problems : list of str
        Fit problems flagged in a done exposure (fibers fallen back to the constant model).
    seconds : float
    """

    name: str
    status: str
    product: str
    error: str | None = None
    details: str | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class NightResult:
    """The outcome of :func:`run_night`: one :class:`TaskResult` per exposure, in task order."""

    results: list[TaskResult]
    seconds: float

    def count(self, status: str) -> int:
        """How many exposures ended with ``status`` ("done", "skipped" or "failed")."""
        return sum(r.status == status for r in self.results)

    def summary(self) -> dict:
        """A JSON-ready summary: counts, failures with reasons, flagged problems."""
        return {
            "exposures": len(self.results),
            "done": self.count("done"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "seconds": round(self.seconds, 2),
            "failures": {r.name: r.error for r in self.results if r.status == "failed"},
            "problems": {r.name: r.problems for r in self.results if r.problems},
        }


# --------------------------------------------------------------------------------------------
# Which exposures
# --------------------------------------------------------------------------------------------
def find_exposures(
    source: str | os.PathLike,
    traces: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    raw_dir: str | os.PathLike | None = None,
    chips: str = "RGB",
    traces_any_night: bool = False,
) -> list[ExposureTask]:
    """The exposures named by a glob or a runlist (text or ``runlist_*.h5``), with their traces.

    Parameters
    ----------
    source : str or os.PathLike
        A runlist file, or a glob of raw files (see the module docstring).
    traces : sequence of paths
        Trace files, globs or folders (``*Trace*_{tele}_{mjd}[_{EXP4}]_{chip}.h5``).
    out : str or os.PathLike
        The products' folder.
    raw_dir : str or os.PathLike, optional
        Where a ``runlist_*.h5`` runlist's raw files lie (default: the runlist's folder).
    chips : str
        The chips every exposure must have, e.g. ``"RGB"``.
    traces_any_night : bool
        An exposure without a trace file of its own night gets the one of its telescope and
        chip nearest in MJD (``--traces-any-night``).

    Returns
    -------
    list of ExposureTask
        In runlist order; a missing input or trace file gives a task with ``problem`` set. Its
        paths are absolute: a worker of another machine (``--scheduler``) runs in a folder of
        its own, where relative ones named missing inputs and put products out of ``out``.

    Raises
    ------
    InputError
        An unreadable runlist, a glob matching nothing or matching a file that is no raw file,
        trace files that match nothing or name one chip twice, an exposure named by two
        different files of one chip (the same file named twice is one exposure), or ``chips``
        not made of R, G and B.
    """
    from .io.paths import check_input_file

    if not chips or set(chips) - set(CHIP_LETTERS) or len(set(chips)) != len(chips):
        raise InputError("--chips", "--chips", "letters among R, G, B, each once", repr(chips))
    path = Path(source)  # as typed, for the errors: the paths made of it are absolute
    if os.path.lexists(path) and not path.is_dir():  # a FIFO would hang, a link loop crash
        check_input_file(path, "RUNLIST_OR_GLOB")
    if raw_dir is not None and not Path(raw_dir).is_dir():
        found = "a file" if os.path.lexists(raw_dir) else "nothing"
        raise InputError(raw_dir, "--raw-dir", "the folder of the runlist's raw files", found)
    by_glob = False  # or a runlist, whose entries (``night.txt:3``) errors name
    if path.is_file() and path.suffix == ".h5":
        named = _read_h5_runlist(path, Path(raw_dir or path.parent).absolute())
    elif path.is_file() and not _names_exposure(path):
        named = _read_text_runlist(path)
    elif path.is_dir():
        raise InputError(
            path, "RUNLIST_OR_GLOB", "a runlist file or a glob of .apz files", "a folder"
        )
    else:  # one raw file (its name may hold glob characters), or a glob
        named, by_glob = [(os.fspath(m), m) for m in _glob_raw_files(source, path)], True
    trace_files = _trace_index(traces)
    # By name, with the runlist entry that named it (None for a glob): an exposure named again
    # must be named by the same files.
    tasks: dict[str, tuple[ExposureTask, str | None]] = {}
    for entry, file in named:
        task = _exposure_task(
            entry, file, trace_files, Path(out).absolute(), chips, traces_any_night
        )
        listed = None if by_glob else entry
        if task.name not in tasks:
            tasks[task.name] = (task, listed)
        elif task.product:  # (a file that names no exposure has no files to compare)
            _check_same_files(tasks[task.name], (task, listed), chips)
    return [task for task, _ in tasks.values()]


def _glob_raw_files(source: str | os.PathLike, path: Path) -> list[Path]:
    """The raw files ``source`` (``path``) names, made absolute: itself where it is a file (its
    name may hold glob characters), else its glob's matches.

    The glob is matched as typed, relative to the working folder: made absolute first, glob
    characters in the working folder's own name (``/data/run[1]``) would be read as a pattern.

    Raises
    ------
    InputError
        The glob matches nothing, or matches a file that is no raw file (``'raw/*'`` matching
        the trace files): each was counted as a failed exposure, where a runlist line naming
        one is refused.
    """
    if path.is_file():
        return [path.absolute()]
    matches = sorted(glob.glob(os.fspath(source)))
    if not matches:
        raise InputError(
            source, "RUNLIST_OR_GLOB", "a runlist file or a glob matching raw files", "nothing"
        )
    stranger = next((m for m in matches if not _names_exposure(Path(m))), None)
    if stranger is not None:
        raise InputError(
            source, "RUNLIST_OR_GLOB", "a glob matching only raw files (apR-[abc]-NNNNNNNN.apz, "
            "asR-..., ar3Dcal_{tele}_{mjd}_{EXP4}_{chip}_*.h5)", f"a match {stranger!r}",
        )  # fmt: skip
    return [Path(m).absolute() for m in matches]


def _check_same_files(
    first: tuple[ExposureTask, str | None], again: tuple[ExposureTask, str | None], chips: str
) -> None:
    """Refuse an exposure named a second time through other files than the first time.

    ``first`` and ``again`` are ``(task, runlist entry or None)``. The same file named twice (a
    runlist line repeated, ``apR-a-`` and ``apR-b-`` of one exposure matched by one glob, a
    folder reached through a link as well) is one exposure. Two different files of one
    exposure and chip (``raw1/apR-a-52190001.apz`` and ``raw2/apR-a-52190001.apz``) are
    refused, even when their bytes are the same: which one is meant cannot be told, and
    comparing their contents would read every such raw file (hundreds of MB each) before the
    night starts. Keeping the first silently fitted an exposure the user may not have meant
    and ignored the other.

    Raises
    ------
    InputError
        Naming the second file, the runlist entry that named it, and the first file.
    """
    (task, first_entry), (other, entry) = first, again
    pairs = list(zip(task.inputs, other.inputs, strict=True))  # one per chip, in chips' order
    differ = [i for i, (a, b) in enumerate(pairs) if not _same_file(a, b)]
    if not differ:
        return
    # A chip with a file in both places is the clearest to name (a chip missing in one of
    # them differs too, by its path alone).
    both = [i for i in differ if all(_exists(Path(p)) for p in pairs[i])]
    i = (both or differ)[0]
    found = f"another file of exposure {task.name}, chip {chips[i]}: {pairs[i][0]}"
    if first_entry is not None:
        found += f" ({first_entry})"
    expected = "one file per exposure and chip (name each exposure's files in one place)"
    raise InputError(pairs[i][1], entry or "RUNLIST_OR_GLOB", expected, found)


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same path once links are resolved, or a hard link
    (a missing file is only the same as its own path)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # missing, or not to be told (no permission): not shown to be the same
        return False


def _names_exposure(path: Path) -> bool:
    """Whether the file name is a raw ``.apz`` or ``ar3Dcal`` one (not a runlist)."""
    from .exposure import identify_exposure

    try:
        identify_exposure(path)
    except InputError:
        return False
    return True


def _read_text_runlist(path: Path) -> list[tuple[str, Path]]:
    """``(entry, file)`` per line; a glob expands to its files.

    A line that names no raw or ar3Dcal file (a confSummary given as the runlist, a line of
    two words) or a glob that matches nothing is refused, naming the line: they were counted
    as failed exposures (1572 of them for a confSummary), with a name error for the glob. A
    well-named file that is missing stays one exposure's failure, the night going on.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is no path
    except UnicodeDecodeError:
        raise InputError(
            path, "runlist", "a text file, one exposure per line", "binary data"
        ) from None
    named, folder = [], path.absolute().parent
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        full = os.path.join(folder, entry)  # (the entry itself where it is absolute)
        # A name that exists is that file, glob characters or not.
        literal = os.path.lexists(full) or not glob.has_magic(entry)
        matches = [full] if literal else _glob_in(folder, entry)
        if not matches:
            raise InputError(path, f"line {number}", "a raw file or a glob matching raw files",
                             f"{entry!r}, a glob matching nothing")  # fmt: skip
        for match in matches:
            if not _names_exposure(Path(match)):
                raise InputError(
                    path, f"line {number}", "one raw file name per line (apR-[abc]-NNNNNNNN.apz, "
                    "asR-..., ar3Dcal_{tele}_{mjd}_{EXP4}_{chip}_*.h5) or a glob of them",
                    repr(entry) if literal else f"{entry!r} matching {os.path.basename(match)!r}",
                )  # fmt: skip
        named += [(f"{path.name}:{number}", Path(m)) for m in matches]
    if not named:
        raise InputError(path, "runlist", "at least one exposure", "no entries")
    return named


def _glob_in(folder: Path, pattern: str) -> list[str]:
    """The matches of ``pattern`` (relative to ``folder``, or absolute), as paths: glob
    characters in ``folder``'s own name (``/data/run[1]``) are not read as a pattern."""
    return [os.path.join(folder, m) for m in sorted(glob.glob(pattern, root_dir=folder))]


def _read_h5_runlist(path: Path, raw_dir: Path) -> list[tuple[str, Path]]:
    """``(entry, file of chip a)`` per row of ApogeeReduction.jl's ``runlist_*.h5``."""
    import numpy as np

    from .io.apz import EXPNUM_MJD_ZERO, apz_filename
    from .io.hdf5 import open_h5, read_dataset

    with open_h5(path) as handle:
        columns = {}
        for name in ("tele", "mjd", "expid"):
            expected = "a dataset (runlist_*.h5 has tele, mjd, expid)"
            try:
                item = handle[name] if handle.get(name, getlink=True) is not None else None
            except (KeyError, OSError, RuntimeError) as exc:  # a dangling external link
                raise InputError(path, name, expected, str(exc)) from None
            if not hasattr(item, "shape"):
                raise InputError(path, name, expected,
                                 "nothing" if item is None else type(item).__name__)  # fmt: skip
            shape = item.shape
            if shape is not None and len(shape) > 1:
                raise InputError(path, name, "a 1-D dataset, one value per exposure",
                                 f"shape {shape}")  # fmt: skip
            if shape is not None and math.prod(shape) > MAX_RUNLIST_ROWS:
                raise InputError(path, name, f"at most {MAX_RUNLIST_ROWS} exposures",
                                 f"{math.prod(shape)} rows")  # fmt: skip
            columns[name] = np.atleast_1d(read_dataset(path, handle, name, kinds="fiuSO"))
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1 or not lengths["tele"]:
        raise InputError(path, "tele, mjd, expid", "datasets of one non-zero length", str(lengths))
    named, seen = [], set()
    for row, (tele, mjd, expid) in enumerate(zip(*columns.values(), strict=True)):
        tele = tele.decode("utf-8", "replace") if isinstance(tele, bytes) else str(tele)
        entry = f"{path.name}[{row}]"
        try:
            values = [float(v.decode() if isinstance(v, bytes) else v) for v in (mjd, expid)]
        except (TypeError, ValueError):
            values = [math.nan]
        if not all(math.isfinite(v) and v == int(v) for v in values):  # 60781.7 was truncated
            raise InputError(
                path, f"mjd, expid (row {row})", "integers", f"{mjd!r}, {expid!r}"
            ) from None
        mjd, expid = (int(v) for v in values)
        if not (EXPNUM_MJD_ZERO <= mjd <= 99999 and expid >= 1):  # as --mjd; 1e300 made a name
            raise InputError(path, f"mjd, expid (row {row})",
                             f"an SDSS MJD ({EXPNUM_MJD_ZERO}..99999) and an expid >= 1",
                             f"{values[0]:g}, {values[1]:g}")  # fmt: skip
        expnum = expid if expid >= 10000 else (mjd - EXPNUM_MJD_ZERO) * 10000 + expid
        if tele not in ("apo", "lco") or expnum // 10000 + EXPNUM_MJD_ZERO != mjd:
            raise InputError(
                path, f"tele, mjd, expid (row {row})",
                "apo or lco and an expid of that MJD, (mjd - 55562) * 10000 + n",
                f"{tele!r}, {mjd}, {expid}",
            )  # fmt: skip
        if (tele, expnum) in seen:  # a row again: its files are not looked for twice
            continue
        seen.add((tele, expnum))
        # The folder of chip a's file, else of another chip's (with --chips GB chip a's may be
        # absent; it was the only one looked for), else the night's; a folder where it cannot
        # be told (no permission) is taken, and its task names the file it cannot read.
        folders = [raw_dir / tele / str(mjd), raw_dir]
        held = (f for chip in "abc" for f in folders
                if _exists(f / apz_filename(tele, chip, expnum)) is not False)  # fmt: skip
        named.append((entry, next(held, folders[0]) / apz_filename(tele, "a", expnum)))
    return named


def _exists(path: Path) -> bool | None:
    """Whether ``path`` exists; None (false) where it cannot be told (a folder without
    permission): the exposure's task then names the file it cannot read, and the others run."""
    try:
        return path.exists()
    except OSError:
        return None


def _trace_index(traces: Sequence[str | os.PathLike]) -> dict[tuple[str, int, str], Path]:
    """Trace files by ``(telescope, mjd, chip)`` from files, globs and folders."""
    from .io.paths import check_input_file
    from .traces import parse_trace_file_name

    index: dict[tuple[str, int, str], Path] = {}
    for item in traces:
        item_path = Path(item).absolute()  # (a glob is matched as typed, below)
        if item_path.is_dir():
            files = sorted(item_path.glob("*[Tt]race*.h5"))
        elif item_path.exists():
            files = [item_path]
        else:
            files = [Path(m).absolute() for m in sorted(glob.glob(os.fspath(item)))]
        if not files:
            raise InputError(
                item, "--traces", "trace files (traceMain_{tele}_{mjd}_{chip}.h5)", "nothing"
            )
        for file in files:
            check_input_file(file, "--traces")
            key = parse_trace_file_name(file)
            if key is None:
                raise InputError(file, "--traces", "a name like traceMain_{tele}_{mjd}_{R|G|B}.h5")
            if key in index and index[key] != file:
                raise InputError(
                    file, "--traces", f"one trace file per chip; {index[key]} is also {key}"
                )
            index[key] = file
    return index


def _exposure_task(
    entry: str, file: Path, trace_files: dict, out: Path, chips: str, any_night: bool = False
) -> ExposureTask:
    """The task of the exposure that ``file`` belongs to (its chips are found next to it)."""
    from .exposure import identify_exposure
    from .io.apz import apz_filename, parse_apz_name

    try:
        chip, tele, mjd, number = identify_exposure(file)
    except InputError as exc:
        return ExposureTask(entry, (str(file),), (), "", problem=str(exc))
    name = f"{tele}_{mjd}_{number:04d}"
    product = str(out / f"pyapred_{name}.h5")
    inputs, traces, missing = [], [], []
    for color in chips:
        if file.suffix == ".apz":
            expnum = parse_apz_name(file).expnum
            candidate = file.with_name(apz_filename(tele, CHIP_LETTERS[color], expnum))
        else:  # ar3Dcal_{tele}_{mjd}_{EXP4}_{chip}_{type}.h5
            parts = file.name.split("_")
            parts[4] = color
            candidate = file.with_name("_".join(parts))
        try:
            if not candidate.is_file():
                found = ("a folder" if candidate.is_dir() else
                         "a broken link" if candidate.is_symlink() and not candidate.exists() else
                         "a FIFO or other special file" if os.path.lexists(candidate) else
                         "nothing")  # fmt: skip
                missing.append(f"{candidate}: chip {color}: expected a file, found {found}")
        except OSError as exc:  # a folder without permission: this exposure's failure alone
            missing.append(f"{candidate}: chip {color}: expected a readable file, found "
                           f"{exc.strerror or exc}")  # fmt: skip
        inputs.append(str(candidate))
        trace = trace_files.get((tele, mjd, color))
        if trace is None and any_night:
            nights = [key[1] for key in trace_files if key[0] == tele and key[2] == color]
            if nights:
                trace = trace_files[(tele, min(nights, key=lambda m: abs(m - mjd)), color)]
        if trace is None:
            missing.append(
                f"--traces: chip {color}: expected traceMain_{tele}_{mjd}_{color}.h5, found none"
            )
        traces.append(str(trace))
    return ExposureTask(name, tuple(inputs), tuple(traces), product, "; ".join(missing) or None)


# --------------------------------------------------------------------------------------------
# One exposure (runs on a worker)
# --------------------------------------------------------------------------------------------
def process_exposure(
    task: ExposureTask, options: FitOptions | None = None, *, resume: bool = True
) -> TaskResult:
    """Fit one exposure and write its product, unless it is up to date; never raises.

    The numerics run on one thread, so that a worker's threads are its tasks.

    Parameters
    ----------
    task : ExposureTask
    options : pyapred.exposure.FitOptions, optional
        ``keep_fit_reads`` and ``keep_constant`` are turned off (the product holds neither).
    resume : bool
        Skip the exposure when its product exists with the same input hashes, pyapred version
        and fit settings, and reads back whole (a damaged product is fitted again).

    Returns
    -------
    TaskResult
    """
    import dataclasses

    from .exposure import FitOptions, resolve_backend, run_exposure

    start = time.perf_counter()
    if task.problem is not None:
        return TaskResult(task.name, "failed", task.product, error=_one_line(task.problem))
    options = dataclasses.replace(
        options or FitOptions(), keep_fit_reads=False, keep_constant=False
    )
    try:
        # The record holds the backend that ran: "auto" is resolved before it is compared.
        options = dataclasses.replace(options, backend=resolve_backend(options.backend))
        kept = _up_to_date(task, options) if resume else None
        if kept is not None:  # its problems, as the run that made it reported them
            return TaskResult(task.name, "skipped", task.product, problems=_problems(kept))
        with _single_threaded():
            result = run_exposure(
                task.inputs,
                task.traces,
                options,
                product=task.product,
                overwrite=True,
                traces_any_night=True,  # find_exposures matched each trace to its exposure
            )
    except InputError as exc:
        return TaskResult(task.name, "failed", task.product, error=_one_line(str(exc)))
    except Exception as exc:  # one exposure's failure must not stop the night
        error = _one_line(f"{type(exc).__name__}: {exc}")
        return TaskResult(
            task.name, "failed", task.product, error=error, details=traceback.format_exc()
        )
    seconds = time.perf_counter() - start
    return TaskResult(task.name, "done", task.product, problems=result.problems(), seconds=seconds)


def _one_line(text: str) -> str:
    """``text`` on one line: an error of several lines (HDF5's) broke the ``failed:`` line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _problems(product) -> list[str]:
    """The fit problems a product records: its chips' images
    (:func:`pyapred.exposure.extract.chip_problems`) and fiber tables
    (:func:`pyapred.exposure.result.fit_problems`)."""
    import numpy as np

    from .exposure.extract import chip_problems
    from .exposure.result import fit_problems

    out = []
    order = ("R", "G", "B")  # the chips' order, as the run reported them (HDF5 sorts groups)

    def in_order(keys):
        return sorted(keys, key=lambda k: (order.index(k) if k in order else 3, k))

    for name in in_order(product.chips):
        images = product.chips[name]
        out += chip_problems(name, images.rate, images.flags)
    for key in in_order(product.fibers):
        group = product.fibers[key]
        borrowed = np.asarray(group.model, dtype=object) == "borrowed"
        out += fit_problems(key, group.flags, group.n_iter, group.n_fit_pixels, borrowed,
                            group.fiber_id)  # fmt: skip
    return out


def _up_to_date(task: ExposureTask, options: FitOptions):
    """The product (:class:`pyapred.io.Product`, images not kept) where it exists, records
    these inputs' hashes, this version and settings (a record made before a setting existed
    holds that setting's default), and reads back whole; else None.

    The record alone said "up to date" of a product whose images could no longer be read (a
    damaged compressed chunk, a chip's group deleted), and the night kept it. So a product
    whose record matches is then read as its users read it (:func:`~pyapred.io.read_product`,
    every image decompressed and checked), and must hold an image group for each chip and
    the fiber groups of these settings. That costs about 0.6 s of one core for a full-size
    product (3 chips of 2048 x 2560; 160 MB on disk), against about 15 s for a fit and the
    hashing of the raw files just done; a check of the datasets' names and shapes alone is
    nearly free but misses a damaged chunk. It runs last, only for a product otherwise kept.
    """
    from . import __version__
    from .exposure import identify_exposure
    from .io import read_metadata, read_product, sha256_file

    if not Path(task.product).is_file():
        return None
    try:
        meta = read_metadata(task.product)
    except (InputError, OSError):
        return None  # unreadable: recompute and replace it
    files = [Path(p) for p in (*task.inputs, *task.traces)]

    def listed(key: str) -> list | None:  # a damaged record (a number, an array) is no list
        value = meta.get(key)
        return list(value) if isinstance(value, (list, tuple)) else None

    version = meta.get("pyapred_version")
    recorded = (
        isinstance(version, str)
        and version == __version__
        and options.matches_record(str(meta.get("fit_options", "")))
        and listed("input_files") == [p.name for p in files]
        and listed("input_sha256") == [sha256_file(p) for p in files]
    )
    if not recorded:
        return None
    try:
        product = read_product(task.product)
    except (InputError, OSError):
        return None  # damaged: refitted and replaced, as an outdated product is
    chips = {identify_exposure(p)[0] for p in task.inputs}
    groups = {"joint"} if options.joint_chips else chips
    return product if set(product.chips) == chips and set(product.fibers) == groups else None


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run numba's kernels on one thread (a thread-local setting) inside the block.

    BLAS is single-threaded already: Dask starts workers with ``OMP_NUM_THREADS=1`` and its kin.
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# The night (runs on the client)
# --------------------------------------------------------------------------------------------
def run_night(
    tasks: Sequence[ExposureTask],
    out: str | os.PathLike,
    options: FitOptions | None = None,
    *,
    scheduler: str = "local",
    workers: int = 2,
    threads_per_worker: int = 1,
    resume: bool = True,
    progress: bool = True,
    wait: bool = False,
) -> NightResult:
    """Run :func:`process_exposure` for every task on Dask and write ``out/failures.json``.

    Parameters
    ----------
    tasks : sequence of ExposureTask
        From :func:`find_exposures`; their paths are made absolute (the workers run in folders
        of their own), and the products must lie in ``out``.
    out : str or os.PathLike
        The products' folder (created if missing). Temporary files left there by a killed run
        (``.pyapred_*.h5.*.tmp``, and ``failures.json``'s) are removed first.
    options : pyapred.exposure.FitOptions, optional
    scheduler : str
        ``"local"`` for a ``LocalCluster`` of ``workers`` spawned processes, or the address of
        a running scheduler (``tcp://host:8786``).
    workers, threads_per_worker : int
        Size of the local cluster; ignored with a scheduler address.
    resume : bool
        Skip exposures whose products are up to date.
    progress : bool
        Show a progress bar (tqdm) over the exposures.
    wait : bool
        If another run holds ``out``'s lock (:data:`LOCK_FILE`), wait for it to end instead of
        refusing.

    Returns
    -------
    NightResult

    Raises
    ------
    InputError
        ``out`` cannot be written, its ``failures.json`` is no regular file, a product lies
        elsewhere, another run holds its lock (without ``wait``), or the scheduler cannot be
        reached.
    """
    from .exposure import check_calibration_options
    from .io.atomic import kept_as, writable_folder

    # Before the output folder is made and locked: what no exposure can run with.
    most = max_local_tasks()
    for flag, value in (("--workers", workers), ("--threads-per-worker", threads_per_worker)):
        if scheduler == "local" and not 1 <= value <= most:
            raise InputError(flag, flag, f"1 to {most} (4 x this machine's CPUs)", str(value))
    if scheduler == "local" and workers * threads_per_worker > most:
        raise InputError(
            "--workers", "--workers x --threads-per-worker",
            f"at most {most} tasks at once (4 x this machine's CPUs; each holds a chip's reads)",
            f"{workers} x {threads_per_worker}",
        )  # fmt: skip
    out = Path(out).absolute()
    tasks = [_absolute(task) for task in tasks]
    _check_products_in(out, tasks)
    _check_failures_file(out)
    if options is not None:  # (None: the defaults, which are plausible)
        check_calibration_options(options)
    if scheduler != "local" and any(t.problem is None for t in tasks):
        with _client(scheduler, workers, threads_per_worker):  # unreachable: refused here, with
            pass  # no folder made (it is joined again for the run)
    # The workers' processes do not know --log's file: its name is refused here.
    products = [t.product for t in tasks if t.product]
    for output in (out / FAILURES_FILE, out / LOCK_FILE, *products):
        kept = kept_as(output)
        if kept is not None:
            raise InputError(output, "--out", "an output path of its own", kept)
    out = writable_folder(out)
    with _locked(out, wait):
        return _run_night(tasks, out, options, scheduler, workers, threads_per_worker, resume,
                          progress)  # fmt: skip


def _absolute(task: ExposureTask) -> ExposureTask:
    """``task`` with absolute paths, as :func:`find_exposures` makes them (one made by hand may
    hold relative ones): a worker of another machine runs in a folder of its own. A task that
    cannot run is kept as it is (its paths are only reported)."""
    import dataclasses

    if task.problem is not None:
        return task

    def absolute(paths: Sequence[str]) -> tuple[str, ...]:
        return tuple(str(Path(p).absolute()) for p in paths)

    return dataclasses.replace(
        task, inputs=absolute(task.inputs), traces=absolute(task.traces),
        product=str(Path(task.product).absolute()),
    )  # fmt: skip


def _check_products_in(out: Path, tasks: Sequence[ExposureTask]) -> None:
    """Refuse a task whose product lies outside ``out`` (tasks made for another folder): the
    lock, the cleanup of temporaries and ``failures.json`` are ``out``'s alone."""
    for task in tasks:
        folder = Path(task.product).parent
        if task.problem is None and folder != out and not _same_file(str(folder), str(out)):
            raise InputError(
                task.product, "--out", f"a product in {out} (find_exposures' out)",
                f"one in {folder}",
            )  # fmt: skip


def _check_failures_file(out: Path) -> None:
    """Refuse a ``failures.json`` that is no regular file (a folder): it was found by the last
    write, after every exposure was fitted, in an error naming a temporary file. A link is
    replaced as a file is."""
    path = out / FAILURES_FILE
    if os.path.lexists(path) and not path.is_symlink() and not path.is_file():
        found = "a folder" if path.is_dir() else "a special file"
        raise InputError(path, "--out", "a regular file (the night's list of failures)", found)


def max_local_tasks() -> int:
    """The most exposures a local cluster may fit at once (``--workers`` times
    ``--threads-per-worker``): 4 x the CPUs. Each holds a chip's reads (about 1 GB at full
    size); ``--workers 100000`` spawned processes until memory ran out."""
    return 4 * (os.cpu_count() or 1)


def _run_night(tasks, out, options, scheduler, workers, threads_per_worker, resume, progress):
    """:func:`run_night` once ``out`` is locked."""
    start = time.perf_counter()
    _remove_stale_temporaries(out, tasks)
    # Exposures with a missing file fail here: no cluster is started for them alone.
    results = {t.name: process_exposure(t) for t in tasks if t.problem is not None}
    runnable = [t for t in tasks if t.problem is None]
    # Before any fit, the exposures to run are listed as not finished: the previous run's list
    # (``[]``, "complete") stood while this one ran, and after it was stopped.
    _write_failures(out, tasks, results)
    if runnable:
        try:
            with _client(scheduler, workers, threads_per_worker) as client:
                _run_tasks(client, runnable, options, resume, progress, out, tasks, results,
                           cancel=scheduler != "local")  # fmt: skip
        except BaseException as exc:  # Ctrl-C, SIGTERM (cli's _Stopped), a lost scheduler
            why = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else NOT_FINISHED
            _rewrite_failures(out, tasks, results, unfinished=why)
            _remove_stale_temporaries(out, tasks)  # the workers' (their writers are gone)
            raise
    night = NightResult([results[t.name] for t in tasks], time.perf_counter() - start)
    _write_failures(out, tasks, results)
    # Again at the end: the workers of a run killed just before this one may still have held
    # their temporaries' locks as it started (a process group killed takes a moment to exit).
    _remove_stale_temporaries(out, tasks)
    return night


def _remove_stale_temporaries(out: Path, tasks: Sequence[ExposureTask]) -> None:
    """The temporaries killed runs left in ``out``: of these tasks' products, of the other
    products there (of a runlist since changed) and of ``failures.json`` (the lock says no
    other run writes there now; a live writer's temporary is locked and kept)."""
    from .io.paths import remove_stale_temporaries

    keep = [path for task in tasks for path in (*task.inputs, *task.traces)]
    written = {Path(task.product) for task in tasks if task.product}
    for temporary in out.glob(".pyapred_*.h5.*.tmp"):
        product = _TEMPORARY_PRODUCT.fullmatch(temporary.name)
        if product:
            written.add(out / product[1])
    for path in sorted(written | {out / FAILURES_FILE}):
        remove_stale_temporaries(path, keep=keep)


def _open_lock_file(path: Path):
    """The lock file, opened for reading and writing: a regular file of its own, never through
    a link (a link to an input had that input replaced by the holder's PID)."""
    import stat

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    expected = "a regular file of pyapred night's own (no link, FIFO or folder)"
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:  # a link (ELOOP), a folder (EISDIR), ...
        raise InputError(path, "--out", expected, exc.strerror or str(exc)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        found = "a file with other names (a hard link)" if stat.S_ISREG(info.st_mode) else (
            "a special file")  # fmt: skip
        raise InputError(path, "--out", expected, found)
    return os.fdopen(fd, "a+")


@contextlib.contextmanager
def _locked(out: Path, wait: bool) -> Iterator[None]:
    """Hold ``out/LOCK_FILE`` for the block: an ``fcntl`` lock (released by the kernel however
    the process ends) on a file that records the holder's PID and host, removed at the end.

    A run that waited on a lock file its holder then removed locks a file no longer in the
    folder: it checks that the file it locked is still the one there, and tries again if not.
    """
    import fcntl
    import socket

    path = out / LOCK_FILE
    while True:
        handle = _open_lock_file(path)  # held open for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InputError(
                out, "--out", "a folder no other pyapred night is writing to (or pass --wait)",
                f"locked by {holder}",
            ) from None  # fmt: skip
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder removed the file we waited on: lock the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiter then sees a new file
        handle.close()


def _run_tasks(
    client, runnable, options, resume, progress, out, tasks, results, *, cancel: bool = True
) -> None:
    """Submit one task per exposure; collect results into ``results`` as they complete, and
    rewrite ``failures.json`` as each one does. Stopped (Ctrl-C), the unfinished tasks are
    cancelled where ``cancel``: on a cluster of its own (``--scheduler``) they went on after
    the run ended. (A local cluster ends with the run, its workers with it: a call to cancel
    there only delayed that end, while the workers printed their tracebacks of Ctrl-C.)"""
    from dask.distributed import as_completed

    futures = {}
    bar = _progress_bar(len(runnable), progress)
    try:
        for task in runnable:  # (inside: Ctrl-C while submitting cancels those submitted)
            submitted = client.submit(process_exposure, task, options, resume=resume, pure=False)
            futures[submitted] = task
        for future in as_completed(futures):
            task = futures[future]
            results[task.name] = _future_result(future, task)
            _rewrite_failures(out, tasks, results)
            bar.update()
    except BaseException:
        if cancel:
            _cancel_unfinished(client, futures)
        raise
    finally:
        bar.close()


def _future_result(future, task: ExposureTask) -> TaskResult:
    """The task's result, or its failure where it could not run (a worker died)."""
    try:
        return future.result()
    except Exception as exc:  # KilledWorker, or the task could not be sent
        error = _one_line(f"{type(exc).__name__}: {exc}")
        return TaskResult(task.name, "failed", task.product, error=error)


def _cancel_unfinished(client, futures) -> None:
    """Cancel the submitted tasks not finished and say how many.

    A task already running on a worker cannot be stopped there (Dask runs it in a thread): it
    goes on to write its product, atomically, and a rerun keeps it. The queued ones, most of a
    night, no longer start once the run has ended and its lock is released.
    """
    unfinished = [future for future in futures if not future.done()]
    if not unfinished:
        return
    try:
        client.cancel(unfinished)
    except Exception as exc:  # the scheduler is gone: nothing of them is left to run there
        log.warning("pyapred night: could not cancel the unfinished exposures: %s", exc)
        return
    log.error(
        "pyapred night: %d unfinished exposure%s cancelled on the cluster (an exposure "
        "already running on a worker still finishes and writes its product)",
        len(unfinished), "" if len(unfinished) == 1 else "s",
    )  # fmt: skip


@contextlib.contextmanager
def _client(scheduler: str, workers: int, threads_per_worker: int):
    """A ``dask.distributed.Client`` on a spawned local cluster or an existing scheduler."""
    import logging

    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler != "local":
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                scheduler, "--scheduler", "a reachable dask scheduler (tcp://HOST:PORT)", str(exc)
            ) from None
        with client:
            yield client
        return
    # (workers and threads_per_worker were checked by run_night, before --out was made.)
    # juliacall cannot survive fork: workers are fresh interpreters.
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}), _sigint_ignored():
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        )  # fmt: skip
    with cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the local workers start, which keeps it ignored in them (an ignored
    signal stays ignored across exec): a terminal's Ctrl-C reaches the whole process group, and
    each worker printed its own tracebacks before the night's one line. The night's process
    alone stops them, as it closes the cluster. A Ctrl-C during those seconds is lost."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # (signals: main thread only)
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="pyapred night", unit="exposure", disable=not enabled)


def _write_failures(
    out: Path, tasks: Sequence[ExposureTask], results: dict, unfinished: str = NOT_FINISHED
) -> None:
    """``out/failures.json``: the failed exposures with their inputs and error text, and those
    without a result yet with the error ``unfinished``; ``[]`` once every exposure is done."""
    from .io.atomic import atomic_path

    failures = []
    for task in tasks:
        result = results.get(task.name)
        if result is not None and result.status != "failed":
            continue
        error, details = (unfinished, None) if result is None else (result.error, result.details)
        failures.append({"exposure": task.name, "inputs": list(task.inputs),
                         "product": task.product, "error": error, "details": details})  # fmt: skip
    with atomic_path(out / FAILURES_FILE, overwrite=True) as tmp:
        tmp.write_text(json.dumps(failures, indent=1) + "\n")


def _rewrite_failures(
    out: Path, tasks: Sequence[ExposureTask], results: dict, unfinished: str = NOT_FINISHED
) -> None:
    """:func:`_write_failures` while the night runs or stops: a write that fails (a full disk)
    is logged and the night goes on; its last write, at the end, is an error if it fails."""
    try:
        _write_failures(out, tasks, results, unfinished)
    except OSError as exc:
        log.warning("pyapred night: could not update %s: %s", out / FAILURES_FILE,
                    exc.strerror or exc)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pyapred night``."""
    parser.add_argument(
        "runlist", metavar="RUNLIST_OR_GLOB",
        help="a text runlist, an ApogeeReduction.jl runlist_*.h5, or a quoted glob of .apz files",
    )  # fmt: skip
    parser.add_argument(
        "--traces", nargs="+", required=True,
        help="trace files, globs or folders (traceMain_{tele}_{mjd}_{chip}.h5)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=path_argument, help="folder for the products")
    parser.add_argument(
        "--raw-dir", type=Path,
        help="raw files of a runlist_*.h5: RAW/{tele}/{mjd}/ or RAW/ (default: its folder)",
    )  # fmt: skip
    parser.add_argument("--chips", default="RGB", help="chips of every exposure (default RGB)")
    parser.add_argument(
        "--scheduler", default="local",
        help="'local' (default: a LocalCluster of spawned workers) or tcp://HOST:PORT",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (2)")
    parser.add_argument(
        "--threads-per-worker", type=int, default=1, help="tasks per local worker (1)"
    )
    parser.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True,
        help="skip exposures whose products are up to date (default: --resume)",
    )  # fmt: skip
    parser.add_argument(
        "--traces-any-night", action="store_true",
        help="an exposure without a trace file of its night gets its telescope's nearest night's",
    )  # fmt: skip
    parser.add_argument(
        "--wait", action="store_true",
        help="wait for another pyapred night writing to the same --out (default: refuse, exit 2)",
    )  # fmt: skip
    from .exposure import add_option_arguments

    # A night keeps no result in memory: --keep-constant ran a second extraction of every chip
    # that no product stores.
    add_option_arguments(parser, leave_out=("memory",))


def _flagged_summary(problems: Sequence[str]) -> str:
    """One exposure's fit problems in one line: its fibers fallen back, counted by what they
    used instead, and its chips' problems as they are (a line listing every fiber was tens of
    kB at 300 fibers x 3 chips; ``--verbose`` lists them), e.g. ``23 fibers fell back to the
    constant model (see its product; --verbose lists them)``."""
    fibers = [p for p in problems if ": fiberId " in p]  # (see exposure.result.fit_problems)
    constant = sum("; constant model used" in p for p in fibers)
    parts = [
        f"{count} fiber{'' if count == 1 else 's'} fell back to {model}"
        for count, model in ((constant, "the constant model"),
                             (len(fibers) - constant, "the bright fibers' omega"))
        if count
    ]  # fmt: skip
    parts += [p for p in problems if ": fiberId " not in p]
    return "; ".join(parts) + " (see its product; --verbose lists them)"


def run(args: argparse.Namespace) -> int:
    """``pyapred night``: 0 all done or skipped, 1 a failure or fit problem, 2 bad input."""
    from .exposure import config_source, options_from_arguments, resolve_backend

    try:
        import distributed  # noqa: F401
    except ImportError:
        print("pyapred night: needs Dask: pip install 'pyapred[night]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = options_from_arguments(args)  # (process_exposure turns the memory options off)
    # "julia" without Julia is refused before any work, naming the config file that asked.
    resolve_backend(options.backend, source=config_source(args, "backend"))
    tasks = find_exposures(
        args.runlist, args.traces, args.out, raw_dir=args.raw_dir, chips=args.chips,
        traces_any_night=args.traces_any_night,
    )  # fmt: skip
    night = run_night(
        tasks, args.out, options, scheduler=args.scheduler, workers=args.workers,
        threads_per_worker=args.threads_per_worker, resume=args.resume,
        progress=getattr(args, "progress", True), wait=args.wait,
    )  # fmt: skip
    summary = night.summary()
    if getattr(args, "json", False):
        print(json_line(summary, indent=1))
    else:
        print(
            f"pyapred night: {summary['exposures']} exposures in {summary['seconds']} s: "
            f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed"
        )
        if getattr(args, "verbose", False):  # every fiber: 900 lines at 300 fibers x 3 chips
            for name, problems in summary["problems"].items():
                for problem in problems:
                    print(f"  flagged {name}: {problem}")
        print(f"  products: {args.out}")
    # On stderr, as failures are: with --quiet a flagged night exited 1 saying nothing.
    for name, problems in summary["problems"].items():
        print(f"pyapred night: warning: {name}: {_flagged_summary(problems)}", file=sys.stderr)
    for name, error in summary["failures"].items():
        print(f"pyapred night: {name} failed: {error}", file=sys.stderr)
    if summary["failed"]:
        print(f"pyapred night: failures listed in {args.out / FAILURES_FILE}", file=sys.stderr)
    return EXIT_FLAGGED if summary["failed"] or summary["problems"] else EXIT_OK
