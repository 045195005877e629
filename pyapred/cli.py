"""The ``pyapred`` command line.

Exit codes: 0 ok, 1 a fit problem was flagged, 2 bad input.

Each subcommand is a ``(add_arguments, run)`` pair registered in ``COMMANDS``; ``run`` takes the
parsed arguments and returns the exit code. Heavy modules are imported inside ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_OK, EXIT_FLAGGED, EXIT_BAD_INPUT = 0, 1, 2


def _lazy(name: str) -> Callable:
    """A function of :mod:`pyapred.commands`, imported only when the subcommand runs."""

    def call(*args):
        from . import commands

        return getattr(commands, name)(*args)

    return call


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
        "fit omega per fibre and extract every pixel of an exposure",
        _lazy("fit_arguments"),
        _lazy("fit_run"),
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
    from .errors import InputError

    try:
        return COMMANDS[args.command][2](args)
    except (InputError, FileNotFoundError, FileExistsError) as exc:
        print(f"pyapred {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
