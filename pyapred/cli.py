"""The ``pyapred`` command line.

Exit codes (:mod:`pyapred.errors`): 0 ok, 1 a fit problem was flagged, 2 bad input.

Each subcommand is a ``(add_arguments, run)`` pair registered in ``COMMANDS``; ``run`` takes the
parsed arguments and returns the exit code. Heavy modules are imported inside ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import EXIT_BAD_INPUT, EXIT_OK, InputError


def _lazy(name: str) -> Callable:
    """A function of :mod:`pyapred.commands`, imported only when the subcommand runs."""

    def call(*args):
        from . import commands

        return getattr(commands, name)(*args)

    return call


def _delegate(module: str) -> tuple[Callable, Callable]:
    """``(add_arguments, run)`` of a module that defines both, imported only when called."""
    from importlib import import_module

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        import_module(f"pyapred.{module}").add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        return import_module(f"pyapred.{module}").run(args)

    return add_arguments, run


# --------------------------------------------------------------------------------------------
# pyapred noise (arguments and run live in pyapred/noise/cli.py)
# --------------------------------------------------------------------------------------------
def _noise_arguments(parser: argparse.ArgumentParser) -> None:
    from .noise.cli import add_arguments

    add_arguments(parser)


def _noise(args: argparse.Namespace) -> int:
    from .noise.cli import run

    return run(args)


# --------------------------------------------------------------------------------------------
# pyapred inspect
# --------------------------------------------------------------------------------------------
def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="raw .apz exposures or HDF5 files")


def _inspect(args: argparse.Namespace) -> int:
    """Print what each file holds; a bad file stops with exit code 2 (see main)."""
    from .io.summary import describe

    for name in args.files:
        print(describe(name))
    return EXIT_OK


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "demo": (
        "simulate a cloudy exposure, fit it, plot, and compare with the truth",
        _lazy("demo_arguments"),
        _lazy("demo_run"),
    ),
    "simulate": (
        "write a synthetic exposure (.apz, traces, truth)",
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
        *_delegate("validate"),
    ),
    "guider": (
        "compare fitted omega with the guider's flux in the fiber",
        *_delegate("guider.cli"),
    ),
    "noise": (
        "simulate H2RG read noise; the 1/f stress test of the omega fit",
        _noise_arguments,
        _noise,
    ),
    "crossval": ("compare the NumPy and Julia backends", *_delegate("crossval")),
    "night": (
        "fit many exposures on Dask (a runlist or a glob), resumable; see docs/scaling.md",
        *_delegate("night"),
    ),
    "inspect": ("describe raw .apz exposures and HDF5 products", _inspect_arguments, _inspect),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="pyapred", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pyapred {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except (InputError, FileNotFoundError, FileExistsError) as exc:
        print(f"pyapred {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
