"""The ``pyapred`` command line.

Exit codes (:mod:`pyapred.errors`): 0 ok, 1 a fit problem was flagged, 2 bad input, 130
interrupted.

Each subcommand is a ``(add_arguments, run)`` pair registered in ``COMMANDS``; ``run`` takes the
parsed arguments and returns the exit code. ``cli.py`` itself imports no subcommand at import
time; building the parser imports each subcommand's module for its flags (``FitOptions``
declares ``fit``'s and ``night``'s, so ``pyapred --help`` loads the exposure stages), and the
work is imported inside ``run``.

The output flags (``--json``, ``--quiet``, ``--verbose``, ``--log FILE``) are declared here once
(:func:`add_output_arguments`) and given to every subcommand that runs more than a moment (to
each sub-subcommand of ``noise``); :func:`main` gives them their one meaning: it sets up the
``pyapred`` logger (progress lines and warnings on stderr, the log file) and silences stdout
under ``--quiet``. A subcommand prints its summary on stdout (as JSON with ``--json``), logs its
progress with :mod:`logging`, and shows progress bars only when ``args.progress`` is true.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, InputError, InputWarning

DESCRIPTION = (
    "pyapred: optimal up-the-ramp flux extraction for APOGEE under a changing sky. "
    "Exit codes: 0 ok, 1 a fit problem was flagged or a check failed, 2 bad input, "
    "130 interrupted."
)
LOGGER = "pyapred"


def _lazy(name: str) -> Callable:
    """A function of :mod:`pyapred.commands`, imported when it is first called (building the
    parser calls the ``add_arguments`` ones)."""

    def call(*args):
        from . import commands

        return getattr(commands, name)(*args)

    return call


def _delegate(module: str) -> tuple[Callable, Callable]:
    """``(add_arguments, run)`` of a module that defines both, imported only when called.

    ``module`` is the module's whole name as a literal (``"pyapred.night"``): the import rules'
    test (``tests/test_architecture.py``) counts it as this module's import.
    """
    from importlib import import_module

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        import_module(module).add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        return import_module(module).run(args)

    return add_arguments, run


# --------------------------------------------------------------------------------------------
# pyapred inspect
# --------------------------------------------------------------------------------------------
def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        help="raw .apz exposures, HDF5 files (products, traces, ar*), FITS products, .npz",
    )
    parser.add_argument(
        "--full", action="store_true",
        help="every dataset and metadata key (default: a summary by chip and fiber group)",
    )  # fmt: skip


def _inspect(args: argparse.Namespace) -> int:
    """Print what each file holds; a bad file is named on stderr and the others are still
    described (the first one stopped the rest), exit code 2 if any was bad."""
    from .io.summary import describe

    code = EXIT_OK
    for name in args.files:
        try:
            print(describe(name, full=args.full))
        except InputError as exc:
            logging.getLogger(LOGGER).error("pyapred inspect: error: %s", exc)
            code = EXIT_BAD_INPUT
    return code


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "demo": (
        "simulate a cloudy exposure, fit it, plot, and compare with the truth",
        _lazy("demo_arguments"),
        _lazy("demo_run"),
    ),
    "simulate": (
        "write a synthetic exposure (.apz, traces, truth), one chip at a time",
        _lazy("simulate_arguments"),
        _lazy("simulate_run"),
    ),
    "fit": (
        "fit omega per fiber and extract every pixel of an exposure",
        _lazy("fit_arguments"),
        _lazy("fit_run"),
    ),
    "validate": (
        "reproduce the paper's synthetic-data tests (III.1-III.3) as a report",
        *_delegate("pyapred.validate"),
    ),
    "guider": (
        "compare fitted omega with the guider's flux in the fiber",
        *_delegate("pyapred.guider.cli"),
    ),
    "noise": (
        "simulate H2RG read noise; the 1/f stress test of the omega fit",
        *_delegate("pyapred.noise.cli"),
    ),
    "crossval": ("compare the NumPy and Julia backends", *_delegate("pyapred.crossval")),
    "night": (
        "fit many exposures on Dask (a runlist or a glob), resumable; see docs/scaling.md",
        *_delegate("pyapred.night"),
    ),
    "inspect": (
        "describe raw .apz exposures, products (HDF5, FITS) and trace files",
        _inspect_arguments,
        _inspect,
    ),
}

#: Subcommands that finish in a moment: they take no output flags.
INSTANT_COMMANDS = frozenset({"inspect"})

#: Subcommands that run Numba kernels: the first run in an environment compiles them.
KERNEL_COMMANDS = frozenset({"demo", "fit", "night", "validate", "crossval", "noise stress"})


# --------------------------------------------------------------------------------------------
# The output flags: declared once, one meaning everywhere
# --------------------------------------------------------------------------------------------
def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``, ``--quiet``, ``--verbose`` and ``--log FILE`` to a subcommand's parser."""
    from .arguments import file_argument

    group = parser.add_argument_group("output")
    group.add_argument(
        "--json", action="store_true",
        help="print the summary as JSON on stdout, and nothing else there; no progress",
    )  # fmt: skip
    group.add_argument(
        "-q", "--quiet", action="store_true",
        help="print nothing but errors (and the JSON summary with --json); no progress",
    )  # fmt: skip
    group.add_argument(
        "-v", "--verbose", action="store_true",
        help="more detail: log at DEBUG level (on stderr, and in --log's file)",
    )  # fmt: skip
    group.add_argument(
        "--log", type=file_argument, metavar="FILE",
        help="also write the log (INFO; DEBUG with --verbose) to FILE, appended; its folder is "
        "created, and it is checked writable before any work",
    )  # fmt: skip


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every parser below it (``pyapred noise`` and ``pyapred noise stress``)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _all_parsers(child)


def _runs_something(parser: argparse.ArgumentParser) -> bool:
    """Whether ``parser`` has no sub-subcommands of its own (``pyapred noise`` has)."""
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _plain_percent(text: str) -> str:
    """A help text for argparse, which formats it with ``%``: a lone ``%`` (``3.5 %``) doubled."""
    return re.sub(r"%([%(])?", lambda m: m.group(0) if m.group(1) else "%%", text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="pyapred", description=DESCRIPTION)
    parser.add_argument(
        "--version", action="version", version=f"pyapred {__version__}",
        help="print pyapred's version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        if name not in INSTANT_COMMANDS:
            for leaf in filter(_runs_something, _all_parsers(command)):
                add_output_arguments(leaf)
    for each in _all_parsers(parser):  # help texts are plain text ("paper: 3.5 %")
        for action in each._actions:
            if action.help and action.help != argparse.SUPPRESS:
                action.help = _plain_percent(action.help)
    return parser


def command_name(args: argparse.Namespace) -> str:
    """``"fit"``, or ``"noise stress"`` for a sub-subcommand."""
    sub = getattr(args, "noise_command", None) if args.command == "noise" else None
    return f"{args.command} {sub}" if sub else args.command


# --------------------------------------------------------------------------------------------
# Logging, stdout and the log file
# --------------------------------------------------------------------------------------------
class _LogLines(io.TextIOBase):
    """A stdout that also sends each complete line to the log file (logger ``pyapred.stdout``)."""

    def __init__(self, stream, logger: logging.Logger):
        self.stream, self.logger, self.pending = stream, logger, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.logger.info("%s", line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


#: The first bytes of a log file that ``--log`` appends to (what it writes itself).
_LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
#: Loggers that write to the log file only: the run's start and end, and what goes to stdout.
_FILE_ONLY = (f"{LOGGER}.run", f"{LOGGER}.stdout")


#: Suffixes of the files commands read from a folder or a glob (raw exposures, traces, guider
#: frames): a log of such a name there would be read as one of them.
_READ_SUFFIXES = (".apz", ".h5", ".fits", ".gz", ".fz")


def _check_log_path(args: argparse.Namespace) -> Path:
    """``--log``, checked before any work: a new file (its folder made) or an earlier log of
    pyapred's, never one of the command's paths, nor a file its globs or input folders would
    find, nor any other existing file (it is appended to)."""
    import fnmatch

    from .io.paths import check_output_path

    log = Path(args.log)
    for key, value in vars(args).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            # Paths only: a word such as the command's name or `--model auto` is no path
            # unless a file of that name exists.
            if key == "log" or not isinstance(item, (str, os.PathLike)):
                continue
            text = os.fspath(item)
            if not isinstance(item, os.PathLike) and not os.path.lexists(text):
                if any(c in text for c in "*?[") and fnmatch.fnmatch(str(log), text):
                    raise InputError(log, "--log", "a file that no input glob matches", text)
                continue
            other = Path(text)
            same = other.absolute() == log.absolute()
            with contextlib.suppress(OSError):
                same = same or (other.exists() and log.exists() and os.path.samefile(other, log))
            if same:
                raise InputError(log, "--log", "a file of its own, none of the other paths", text)
            if (key not in ("out", "plots") and other.is_dir() and log.suffix in _READ_SUFFIXES
                    and other.absolute() in log.absolute().parents):  # fmt: skip
                raise InputError(log, "--log", f"a name no input is read under (not {log.suffix})",
                                 f"a file in the input folder {text}")  # fmt: skip
    path = check_output_path(log, "--log", overwrite=True)
    # What this run makes, to be removed again if the run refuses the log's name itself.
    missing = [p for p in (path.absolute(), *path.absolute().parents) if not p.exists()]
    args.log_made = tuple(missing)  # the file, then the folders made for it, innermost first
    path.parent.mkdir(parents=True, exist_ok=True)  # the log records the run from its start
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            if not _LOG_LINE.match(handle.read(64)):
                raise InputError(path, "--log", "a new file or an earlier pyapred log (appended)",
                                 "another file")  # fmt: skip
    return path


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as the command's users read it: pyapred's own about their input as its
    message alone (``warning: ...``), others as Python writes them (where they come from)."""
    if issubclass(category, InputWarning):
        return f"warning: {message}"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


@contextlib.contextmanager
def _output(args: argparse.Namespace) -> Iterator[logging.Logger]:
    """The one meaning of the output flags, for the run of a subcommand.

    The ``pyapred`` logger prints its records on stderr (INFO; DEBUG with ``--verbose``;
    WARNING with ``--json``; ERROR with ``--quiet``), and writes them to ``--log``'s file (INFO,
    or DEBUG with ``--verbose``, whatever the console shows), with the run's command line, exit
    code and what it prints on stdout. Python warnings go through it. ``--quiet`` without
    ``--json`` sends stdout nowhere. ``args.progress`` is set: progress bars only without
    ``--quiet`` and ``--json``.
    """
    quiet, as_json = getattr(args, "quiet", False), getattr(args, "json", False)
    verbose, log_path = getattr(args, "verbose", False), getattr(args, "log", None)
    args.progress = not (quiet or as_json)
    if log_path is not None:
        log_path = _check_log_path(args)
    detail = logging.DEBUG if verbose else logging.INFO
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.ERROR if quiet else logging.WARNING if as_json else detail)
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_path is not None:
        try:
            # A path or argument that is not UTF-8 (a file name's raw bytes) is escaped, not
            # a logging error on stderr and a line lost.
            log_file = logging.FileHandler(
                log_path, mode="a", encoding="utf-8", errors="backslashreplace"
            )
        except OSError as exc:
            raise InputError(log_path, "--log", "a file pyapred can write to",
                             exc.strerror or str(exc)) from None  # fmt: skip
        log_file.setLevel(detail)
        log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(log_file)
    setup = {LOGGER: handlers, "py.warnings": handlers}
    setup.update(dict.fromkeys(_FILE_ONLY, handlers[1:]))
    saved = []
    for name, own in setup.items():
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate, list(logger.handlers)))
        logger.handlers, logger.propagate = list(own), False
        logger.setLevel(detail)
    logging.captureWarnings(True)
    saved_format = warnings.formatwarning
    warnings.formatwarning = _warning_line
    stdout = sys.stdout
    with contextlib.ExitStack() as stack:
        # A file name that is not UTF-8 (its bytes held as surrogates) is printed as its own
        # bytes: with strict errors, the summary that names it failed after the work was done.
        stack.enter_context(_printable_file_names(stdout))
        if quiet and not as_json:
            stdout = stack.enter_context(open(os.devnull, "w", errors="surrogateescape"))
        if log_path is not None:
            from .io.atomic import kept_file

            stdout = _LogLines(stdout, logging.getLogger(_FILE_ONLY[1]))
            stack.enter_context(kept_file(log_path, "--log's file"))
        stack.enter_context(contextlib.redirect_stdout(stdout))
        try:
            yield logging.getLogger(LOGGER)
        finally:
            try:
                sys.stdout.flush()  # may raise (a closed pipe): the state is restored anyway
            finally:
                logging.captureWarnings(False)
                warnings.formatwarning = saved_format
                for logger, level, propagate, old in saved:
                    logger.setLevel(level)
                    logger.propagate = propagate
                    logger.handlers = old
                for handler in handlers:
                    handler.close()


@contextlib.contextmanager
def _printable_file_names(stream) -> Iterator[None]:
    """``stream`` (a text stream) writes the surrogates of undecodable file-name bytes as those
    bytes (``surrogateescape``) while the block runs; its own setting is restored after. A
    stream that cannot be reconfigured (a notebook's, a test's capture) is left as it is."""
    errors = getattr(stream, "errors", None)
    if errors in (None, "surrogateescape") or not hasattr(stream, "reconfigure"):
        yield
        return
    try:
        stream.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, io.UnsupportedOperation):
        yield
        return
    try:
        yield
    finally:
        try:
            stream.reconfigure(errors=errors)
        except (ValueError, OSError):  # closed by now (a broken pipe): nothing to restore
            pass


def _announce_compilation(command: str, log: logging.Logger) -> None:
    """One line when the Numba kernels are not in the disk cache for this machine: never
    compiled in this environment, compiled from sources that have changed since (an update),
    or only for another CPU (a cache shared between machines)."""
    if command not in KERNEL_COMMANDS:
        return
    try:  # numba's on-disk cache index of two kernels every fit runs: empty if missing or stale
        from .solver import first_pass
        from .solver.api import backend_kernels

        kernels = (first_pass.first_pass_kernel, backend_kernels("numpy").extract_kernel)
        missing = [not _cached_for_this_cpu(k) for k in kernels]
    except Exception:  # another numba, or no cache: say nothing
        return
    if any(missing):
        log.info("pyapred: compiling the numerical kernels (once, a few minutes)...")


def _cached_for_this_cpu(kernel) -> bool:
    """Whether Numba's cache index of ``kernel`` holds an entry for this CPU: its keys are
    ``(signature, the target's (triple, CPU, features), hashes)``."""
    here = kernel.targetctx.codegen().magic_tuple()
    index = kernel._cache._cache_file._load_index()
    return any(isinstance(key, tuple) and len(key) > 1 and key[1] == here for key in index)


# glibc's M_TRIM_THRESHOLD and M_MMAP_MAX (malloc.h), and the heap it may keep unreturned.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEPT_HEAP_BYTES = 2**31 - 1

#: The environment a command runs in where the user has not chosen (:func:`console`); NumPy
#: and glibc read it at start-up, so the processes a command starts run the same way.
COMMAND_MEMORY_ENVIRONMENT = {
    "NUMPY_MADVISE_HUGEPAGE": "0",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(_KEPT_HEAP_BYTES),
}


def _without_huge_page_advice() -> None:
    """Stop NumPy asking the kernel for huge pages for its large arrays, unless the user chose
    (``NUMPY_MADVISE_HUGEPAGE`` set, NumPy's own switch).

    NumPy advises huge pages (``madvise``) for every array of 4 MB or more. A huge page takes a
    whole free 2 MB block, and a virtual machine that reports free memory to its host (virtio
    free page reporting, as on Firecracker and most clouds) has handed exactly those blocks
    back: each first touch then waits for the host to back the block again. On the project's
    machine a fresh 0.8 GB cube took 0.2 to 2.1 s to fill with the advice and a steady 0.3 s
    without, and a whole exposure ran 10 % faster without (``docs/model.md``, "Speed"). On bare
    metal the advice saves about 0.1 s per fresh 0.8 GB instead. Turned off here and, through
    NumPy's variable, in the processes a command starts.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = COMMAND_MEMORY_ENVIRONMENT["NUMPY_MADVISE_HUGEPAGE"]
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:  # a NumPy without the switch: nothing to turn off
            return
    _set_madvise_hugepage(False)


def _large_arrays_from_the_heap() -> None:
    """Have glibc serve large arrays from its heap and keep the heap, unless the user chose
    (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` tunable set).

    glibc maps each large allocation (a chip's cube, the fit's arrays) on its own and unmaps it
    when it is freed, so every new array is touched afresh, one page fault per page: two
    million in a whole exposure. From a heap that is kept, the next array reuses pages already
    there: half a million faults, a whole exposure 10 % faster for 2 % more peak memory
    (``docs/model.md``, "Speed"). Set here through ``mallopt`` and, for the processes a command
    starts, through glibc's variables; the driver, seeing ``MALLOC_MMAP_MAX_=0``, keeps the
    heap between chips rather than trimming it. Not glibc: nothing to do.
    """
    user_chose = any(name in os.environ for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"))
    if user_chose or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    if mallopt(_M_TRIM_THRESHOLD, _KEPT_HEAP_BYTES) and mallopt(_M_MMAP_MAX, 0):
        for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
            os.environ[name] = COMMAND_MEMORY_ENVIRONMENT[name]


def console(argv: Sequence[str] | None = None) -> int:
    """The ``pyapred`` executable: :func:`main` in a process set up for a whole command.

    A command owns its process, and the processes it starts (``night``'s local Dask workers),
    so it chooses how their memory is handled where the user has not: no huge-page advice from
    NumPy (:func:`_without_huge_page_advice`), large arrays from a kept heap
    (:func:`_large_arrays_from_the_heap`). :func:`main`, which notebooks and tests call, leaves
    the process as it is.
    """
    _without_huge_page_advice()
    _large_arrays_from_the_heap()
    _stop_as_interrupted()
    code = main(argv)
    _no_collections_at_exit()
    return code


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is, so that it stops as at Ctrl-C."""


def _stop_as_interrupted() -> None:
    """SIGTERM (a batch system's time limit, ``timeout``, systemd) and SIGHUP (a closed
    terminal) stop the command as Ctrl-C does: its open outputs' temporaries are removed and
    it says so in one line, with :data:`~pyapred.errors.EXIT_INTERRUPTED`. Their default
    action ended the process at once, leaving a half-written product's temporary."""
    import signal

    def stop(signum: int, frame) -> None:
        raise _Stopped(signal.Signals(signum).name)

    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)  # not on Windows
        # Only where the signal would end the process: one ignored (``nohup``) stays ignored.
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:
            signal.signal(number, stop)


def _no_collections_at_exit() -> None:
    """Exempt every object left from the cyclic garbage collector (``gc.freeze``) as a command
    ends: the interpreter's teardown, which runs the collector several times over the objects
    the imports made (NumPy, Numba, astropy: 170 000 of them after a whole exposure), took
    0.43-0.45 s after a whole exposure, almost all of it collecting (0.12 s with the freeze).

    Frozen objects are still freed as nothing refers to them any more; only those in reference
    cycles are neither collected nor finalised, and the process is ending: a command has closed
    what it wrote before :func:`main` returns.
    """
    import gc

    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    command = command_name(args)
    start = time.perf_counter()
    refused_log = False
    try:
        with _output(args) as log:
            run_log = logging.getLogger(_FILE_ONLY[0])
            words = sys.argv[1:] if argv is None else list(argv)
            run_log.info("pyapred %s", " ".join(map(str, words)))
            log.debug("pyapred %s: arguments %s", command, vars(args))
            for notice in getattr(args, "notices", []):  # e.g. a deprecated flag was used
                log.warning("%s", notice)
            try:
                _announce_compilation(command, log)
                code = COMMANDS[args.command][2](args)
            except InputError as exc:
                log.error("pyapred %s: error: %s", command, exc)
                code = EXIT_BAD_INPUT
                refused_log = _names_the_log(exc, args)
            except OSError as exc:  # the last resort: a path that could not be read or written
                where = exc.filename if exc.filename is not None else "a file"
                reason = exc.strerror or str(exc)
                log.error("pyapred %s: error: %s: %s", command, where, reason)
                code = EXIT_BAD_INPUT
            except KeyboardInterrupt as exc:  # Ctrl-C: one line, not a traceback of whatever ran
                kept = " (finished exposures are kept: run it again to resume)"
                kept = kept if command == "night" else ""
                by = f" by {exc}" if isinstance(exc, _Stopped) else ""  # SIGTERM, SIGHUP
                log.error("pyapred %s: interrupted%s%s", command, by, kept)
                code = EXIT_INTERRUPTED
            run_log.info("exit code %d after %.1f s", code, time.perf_counter() - start)
    except InputError as exc:  # --log itself is bad: nothing has run
        print(f"pyapred {command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if refused_log:
        _remove_made(getattr(args, "log_made", ()))
    return code


def _names_the_log(exc: InputError, args: argparse.Namespace) -> bool:
    """Whether a refusal is of ``--log``'s own name (a plot's, a product's, ``--out``'s): the
    log this run started there is then removed, so that the refused name holds nothing (a text
    log named ``omega_R.png``, or like a product, was left)."""
    made = getattr(args, "log_made", ())
    if not made:
        return False
    with contextlib.suppress(OSError):
        return Path(exc.path).absolute() == made[0] or os.path.samefile(exc.path, made[0])
    return False


def _remove_made(made: Sequence[Path]) -> None:
    """Remove the log file and the folders made for it (each only if it is still empty)."""
    with contextlib.suppress(OSError):
        made[0].unlink()
    for folder in made[1:]:
        try:
            folder.rmdir()
        except OSError:  # something else was written there: kept
            break


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
