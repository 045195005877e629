"""The settings of an exposure fit, declared once.

:class:`FitOptions` is the single source of every fit setting. From its fields come:

- the flags of ``pyapred fit`` and ``pyapred night`` (:func:`add_option_arguments`, the same
  names and help in both commands; a boolean field ``x_y`` gives ``--x-y`` and ``--no-x-y``);
- the TOML config files of ``--config`` (:func:`read_config`, :meth:`FitOptions.to_toml`): one
  table per group of settings, in the spirit of ``strun`` config files;
- the record a product keeps of its settings (:meth:`FitOptions.to_record`,
  :meth:`FitOptions.from_record`), from which a run can be repeated (``--config PRODUCT.h5``)
  and by which ``pyapred night`` recognises finished products on resume. A record written
  before a field existed reads as that field's default.

Precedence: the defaults, then the config file, then the flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InputError
from ..solver.api import MAX_COUNT

__all__ = [
    "CONFIG_GROUPS",
    "FitOptions",
    "add_option_arguments",
    "options_from_arguments",
    "read_config",
]

#: Largest half-width of the pixel map (trace sigmas) and of the fit pixels (rows): beyond it
#: the map's neighbouring fibers overlap entirely, and memory grows with it.
MAX_HALFWIDTH = 10.0

#: The tables of a config file, in order, with the title of each group in ``--help``.
CONFIG_GROUPS = {
    "model": "model choice per fiber",
    "pixels": "omega-fit pixel selection",
    "solver": "solver",
    "calibration": "calibration overrides (default: the file's own header cards or maps)",
    "noise": "correlated (1/f) read noise",
    "memory": "what the in-memory result keeps (not recorded in the product)",
}


def _option(default: Any, group: str, help: str, *, record: bool = True, valid=None) -> Any:
    """A :class:`FitOptions` field: its default, config group, help text, whether products
    record it (settings that change only what is kept in memory are not recorded), and an extra
    check ``valid = (predicate, what is expected)`` beyond the field's type."""
    meta = {"group": group, "help": help, "record": record, "valid": valid}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FitOptions:
    """Settings of an exposure fit (:func:`pyapred.exposure.run_exposure`).

    The defaults are those of ``pyapred fit``, but for ``keep_fit_reads`` (on in Python; the
    command keeps the fit reads only for ``--plots`` or its flag). Every field is a flag of
    ``pyapred fit`` and ``pyapred night`` (underscores become dashes) and a key of a config
    file's table ``[group]``; ``pyapred fit --help`` lists them by group.

    Attributes
    ----------
    model : {"auto", "constant", "time-variable"}
        ``"auto"`` chooses per fiber; ``"constant"`` gives every fiber the constant model;
        ``"time-variable"`` skips the significance tests: bright fibers get their own omega,
        faint ones the bright fibers' mean, and FPI fibers and failed fits stay constant.
    p_value : float
        The time-variable model is chosen when the chi-squared improvement has a probability
        below this under the constant model ...
    amplitude_threshold : float
        ... and the equivalent amplitude of omega is at least this (the paper's 3.5 %).
    chromatic : bool
        Also fit the chromatic model ``omega_k (1 + gamma_k c)`` (``c`` the pixel's wavelength
        coordinate, -1 to 1 over the fitted chips) to the fibers given the time-variable model,
        and give it to those where it is significant (:func:`pyapred.exposure.choose_chromatic`);
        extraction then evaluates each pixel's own omega. Not with the nuisance term.
    chromatic_p_value : float
        The chromatic model is chosen when the likelihood-ratio test against the achromatic
        fit has a p-value below this.
    min_fit_pixels : int
        Fibers with fewer fit pixels borrow omega.
    max_omega_error : float
        Fibers whose median omega error exceeds this borrow omega.
    min_snr, core_halfwidth, min_purity, max_fit_pixels
        Omega-fit pixel selection (:func:`pyapred.traces.select_fit_pixels`); ``core_halfwidth``
        is in rows (0.5: the row nearest the trace center in each column).
    map_halfwidth : float
        Pixels further than this many sigmas from every trace are background.
    backend : {"numpy", "julia", "auto"}
        The solver kernels of every omega fit and extraction (``"auto"``: Julia where it
        loads). The first pass over each chip runs on NumPy whatever the backend.
    joint_chips : bool
        Fit one omega per fiber from the pixels of all chips together.
    max_iter : int
        Gauss-Newton iteration limit.
    jump_search : bool
        Alternate the omega fit with the time-variable jump search
        (``fit_omega(jump_search=True)``), so that cosmic rays the first pass missed in the fit
        pixels do not bias omega.
    jump_threshold : float
        Cosmic-ray detection threshold of the first pass, in sigmas.
    gain, read_noise, saturation : float or None
        e-/DN, single-read DN and DN overriding the file's ``GAIN``, ``RDNOISE`` and
        ``SATURATE`` cards (raw files) or maps (``ar3Dcal`` files); None reads them from the file.
    correct_1f : str
        How correlated (1/f) read noise is handled: "none", "refpix", "rowmedian", "nuisance",
        "refpix+nuisance" or "rowmedian+nuisance". ``refpix`` and ``rowmedian`` correct the
        reads with the reference pixels before anything else
        (:func:`pyapred.exposure.correct_1f`; raw reads with the reference output only).
        ``nuisance`` fits one additive offset per (row, output) segment and read difference
        jointly with omega (``fit_omega(segments=...)``, labels from
        :func:`pyapred.noise.segments.readout_segments`); it needs no reference pixels.
        ``refpix+nuisance`` and ``rowmedian+nuisance`` do both (``docs/noise.md``, "Which route
        when").
    segment_columns : int
        With the nuisance term: a segment is one row of this many consecutive columns within one
        output (a divisor of 512 other than 1: one column gives each pixel offsets of its own,
        which take its differences); finer segments also absorb the faster part of the 1/f
        noise.
    keep_constant : bool
        Also extract every pixel with the constant model (for comparisons and plots).
    keep_fit_reads : bool
        Keep the fit pixels' reads, read noise and gain in the result (``PreparedChip.fit_reads``
        ..., for the ramp plots); without them the result is smaller by about a quarter of a
        cube per chip.
    """

    # model choice
    model: Literal["auto", "constant", "time-variable"] = _option(
        "auto",
        "model",
        "model per fiber: chosen automatically, constant for all, or "
        "time-variable without the significance tests (faint fibers borrow; FPI fibers and "
        "failed fits stay constant)",
    )
    p_value: float = _option(
        1e-3, "model", "time-variable model when the chi2 improvement's p-value is below this",
        valid=(lambda value: 0 < value < 1, "a probability between 0 and 1"),
    )  # fmt: skip
    amplitude_threshold: float = _option(
        0.035, "model", "... and omega's equivalent amplitude reaches this (paper: 3.5 %)",
        valid=(lambda value: 0 <= value < math.inf, "a finite number >= 0"),
    )  # fmt: skip
    chromatic: bool = _option(
        False, "model", "also fit omega (1 + gamma c) across wavelength to time-variable fibers "
        "and use it where significant (a seeing change; best with --joint-chips)",
    )  # fmt: skip
    chromatic_p_value: float = _option(
        1e-4, "model", "chromatic model when its chi2 improvement's p-value is below this",
        valid=(lambda value: 0 < value < 1, "a probability between 0 and 1"),
    )  # fmt: skip
    min_fit_pixels: int = _option(
        20, "model", "fibers with fewer fit pixels borrow omega",
        valid=(lambda value: value >= 0, "an integer >= 0"),
    )  # fmt: skip
    max_omega_error: float = _option(
        0.05, "model", "fibers whose median omega error exceeds this borrow omega",
        valid=(lambda value: 0 < value < math.inf, "a finite number > 0"),
    )  # fmt: skip
    # pixel selection
    min_snr: float = _option(
        30.0, "pixels", "fit pixels need at least this S/N over the ramp",
        valid=(lambda value: 0 <= value < math.inf, "a finite number >= 0"),
    )  # fmt: skip
    core_halfwidth: float = _option(
        0.5, "pixels", "fit pixels lie within this many rows of the trace center",
        valid=(lambda value: 0 < value <= MAX_HALFWIDTH, f"a number in (0, {MAX_HALFWIDTH}]"),
    )  # fmt: skip
    min_purity: float = _option(
        0.95, "pixels", "fit pixels get at least this fraction of their light from one fiber",
        valid=(lambda value: 0 < value <= 1, "a fraction in (0, 1]"),
    )  # fmt: skip
    max_fit_pixels: int | None = _option(
        None, "pixels", "at most this many fit pixels per fiber, the brightest (default: all)",
        valid=(lambda value: value >= 1, "an integer >= 1"),
    )  # fmt: skip
    map_halfwidth: float = _option(
        2.5, "pixels", "pixels further than this many sigmas from every trace are background",
        valid=(lambda value: 0 < value <= MAX_HALFWIDTH, f"a number in (0, {MAX_HALFWIDTH}]"),
    )  # fmt: skip
    # solver
    backend: Literal["numpy", "julia", "auto"] = _option(
        "numpy", "solver", "solver kernels: numpy (Numba), julia (APRampFit), or auto"
    )
    joint_chips: bool = _option(False, "solver", "one omega per fiber from all chips together")
    max_iter: int = _option(
        50, "solver", "Gauss-Newton iteration limit",
        valid=(lambda value: value >= 1, "an integer >= 1"),
    )  # fmt: skip
    jump_search: bool = _option(
        True, "solver", "alternate the omega fit with the jump search (--no-jump-search: faster)"
    )
    jump_threshold: float = _option(
        8.0, "solver", "cosmic-ray threshold of the first pass, in sigmas",
        valid=(lambda value: 0 < value < math.inf, "a finite number > 0"),
    )  # fmt: skip
    # calibration overrides
    gain: float | None = _option(None, "calibration", "e-/DN (default: GAIN card, gainMat)")
    read_noise: float | None = _option(
        None, "calibration", "single-read DN (default: RDNOISE card, readVarMat)"
    )
    saturation: float | None = _option(
        None, "calibration", "DN (default: SATURATE card or 55000; none for ar3Dcal)"
    )
    # 1/f noise
    correct_1f: Literal[
        "none", "refpix", "rowmedian", "nuisance", "refpix+nuisance", "rowmedian+nuisance"
    ] = _option(
        "none", "noise", "1/f read noise: correct the reads with the reference pixels (refpix; "
        "rowmedian adds each row's inter-fiber median; raw .apz frames with their reference "
        "output, 2560 columns), and/or fit one offset per row, output and read difference with "
        "omega (nuisance)",
    )  # fmt: skip
    segment_columns: int = _option(
        32, "noise", "nuisance segments: one row of this many columns within one output (a "
        "divisor of 512 other than 1; 512 = the whole row of an output)",
        # The rule of noise.segments.check_segment_columns (not imported here: options load
        # with pyapred).
        valid=(lambda value: value >= 2 and 512 % value == 0, "a divisor of 512 other than 1"),
    )  # fmt: skip
    # what the in-memory result keeps
    keep_constant: bool = _option(
        False, "memory", "also extract every pixel with the constant model", record=False
    )
    keep_fit_reads: bool = _option(
        True,
        "memory",
        "keep the fit pixels' reads, for ramp plots (default: True in Python; "
        "pyapred fit keeps them with --plots or this flag only, pyapred night never)",
        record=False,
    )

    def __post_init__(self):
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, np.generic):  # a NumPy number or bool: as Python's own
                value = value.item()
                object.__setattr__(self, item.name, value)
            problem = _check_value(item, value)
            if problem is not None:
                raise ValueError(f"{item.name}: expected {problem}, got {_shown(value)}")
        conflict = _conflict(self.__dict__)
        if conflict is not None:
            name, expected = conflict
            raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")

    @property
    def reference_correction(self) -> str:
        """The read correction part of ``correct_1f``: ``"none"``, ``"refpix"`` or
        ``"rowmedian"``."""
        method = self.correct_1f.removesuffix("nuisance").rstrip("+")
        return method or "none"

    @property
    def nuisance(self) -> bool:
        """Whether the omega fit carries the 1/f nuisance offsets (``correct_1f`` ends in
        ``nuisance``)."""
        return self.correct_1f.endswith("nuisance")

    # -- records and config files -------------------------------------------------------------
    def to_record(self) -> str:
        """The settings a product records, as canonical JSON (``fit_options`` in its metadata).

        ``keep_constant`` and ``keep_fit_reads`` are left out: they change what is kept in
        memory, not the product.
        """
        settings = {f.name: getattr(self, f.name) for f in _fields() if f.metadata["record"]}
        return json.dumps(settings, sort_keys=True)

    @classmethod
    def from_record(cls, record: str | dict, *, source: str = "fit_options") -> FitOptions:
        """The options of a product's ``fit_options`` record; a missing key takes its default.

        Raises
        ------
        InputError
            Not a JSON object of known settings with valid values.
        """
        try:
            values = json.loads(record) if isinstance(record, str) else dict(record)
        except (TypeError, ValueError) as exc:
            raise InputError(
                source, "fit_options", "a JSON object of fit settings", str(exc)
            ) from None
        except RecursionError:  # arrays nested thousands deep
            raise InputError(
                source, "fit_options", "a JSON object of fit settings", "nesting too deep"
            ) from None
        if not isinstance(values, dict):
            raise InputError(source, "fit_options", "a JSON object", type(values).__name__)
        # Recorded before settings that did nothing in that run were refused (a resume of it,
        # or --config PRODUCT.h5, runs the same without them): a nuisance route with the
        # constant model, a chromatic p-value without chromatic, a segment width without a
        # nuisance route.
        route = str(values.get("correct_1f", "none"))
        if values.get("model") == "constant" and route.endswith("nuisance"):
            values["correct_1f"] = route.removesuffix("nuisance").removesuffix("+") or "none"
        if not values.get("chromatic"):
            values.pop("chromatic_p_value", None)
        if not str(values.get("correct_1f", "none")).endswith("nuisance"):
            values.pop("segment_columns", None)
        return _build(values, source, {key: f"fit_options: {key}" for key in values})

    def matches_record(self, record: str) -> bool:
        """Whether a product's ``fit_options`` record holds these settings (resume)."""
        try:
            return FitOptions.from_record(record).to_record() == self.to_record()
        except InputError:
            return False

    def to_toml(self) -> str:
        """These settings as a config file for ``--config`` (every field, grouped in tables)."""
        lines = ["# pyapred fit settings (pyapred fit --config FILE.toml)"]
        for group, title in CONFIG_GROUPS.items():
            lines += ["", f"[{group}]  # {title}"]
            for item in _fields():
                if item.metadata["group"] != group:
                    continue
                value = getattr(self, item.name)
                if value is None:
                    lines.append(f"# {item.name} =  # {item.metadata['help']}")
                else:
                    lines.append(f"{item.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(FitOptions)


def _choices(item: dataclasses.Field) -> tuple | None:
    """The allowed values of a ``Literal`` field, else None."""
    kind = _types()[item.name]
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def _base_type(item: dataclasses.Field) -> type:
    """``bool``, ``int``, ``float`` or ``str`` of a field (``int | None`` gives ``int``)."""
    kind = _types()[item.name]
    if typing.get_origin(kind) is Literal:
        return str
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


@functools.cache
def _types() -> dict:
    return typing.get_type_hints(FitOptions)


def _shown(value: Any) -> str:
    """``value`` for an error message: an integer of hundreds of digits by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _optional(item: dataclasses.Field) -> bool:
    return type(None) in typing.get_args(_types()[item.name])


def _check_value(item: dataclasses.Field, value: Any) -> str | None:
    """What ``value`` should have been for ``item``, or None when it is fine."""
    choices = _choices(item)
    if choices is not None:
        return None if value in choices else " or ".join(repr(c) for c in choices)
    if value is None:
        return None if _optional(item) else f"a {_base_type(item).__name__}"
    kind = _base_type(item)
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if ok and value > MAX_COUNT:  # the solver's counts are int64: refused there, late
            return f"an integer at most 2**62 ({MAX_COUNT:.3g})"
        valid = item.metadata.get("valid")
        if ok and valid is not None:
            return None if valid[0](value) else valid[1]
        # Not an integer (1e3 from a TOML file): the field's own range ("an integer >= 1").
        return None if ok else "an integer >= 0" if valid is None else valid[1]
    # Ranges are checked where the values are used (load_chip names the file and the flag),
    # unless the field declares one.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and isinstance(value, int) and abs(value) > sys.float_info.max:
        return "a number a float holds"  # 10**400 passed `< inf`, then overflowed in the run
    if ok and item.metadata.get("valid") is not None:
        predicate, expected = item.metadata["valid"]
        return None if predicate(value) else expected
    return None if ok else "a number"


def _build(values: dict, source: str, labels: dict) -> FitOptions:
    """``FitOptions(**values)``, with errors naming ``source`` and the key at fault (as
    ``labels[key]``, e.g. ``[pixels] min_snr``)."""
    values = _checked(values, source, labels)
    conflict = _conflict({**FitOptions().__dict__, **values})
    if conflict is not None:
        name, expected = conflict
        raise InputError(source, labels.get(name, name), expected, repr(values[name]))
    return FitOptions(**values)


def _checked(values: dict, source: str, labels: dict) -> dict:
    """``values`` each checked on its own (known, of its kind, in range), integers made floats
    where floats are meant; errors name ``source`` and ``labels[key]``."""
    values = dict(values)
    known = {f.name: f for f in _fields()}
    for key, value in values.items():
        label = labels.get(key, key)
        if key not in known:
            raise InputError(source, label, f"a setting among {', '.join(known)}")
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and _base_type(known[key]) is float
        ):
            if abs(value) > sys.float_info.max:  # a 400-digit integer: no float holds it
                raise InputError(source, label, "a number a float holds",
                                 f"an integer of {value.bit_length()} bits")  # fmt: skip
            values[key] = value = float(value)
        problem = _check_value(known[key], value)
        if problem is not None:
            raise InputError(source, label, problem, repr(value))
    _check_calibration(values, source, labels)
    return values


def _check_calibration(values: dict, source: str, labels: dict) -> None:
    """The calibration overrides of a config in their plausible range, naming the file and
    the key (checked later, ``gain = inf`` was blamed on the first raw file and a ``--gain``
    flag that was never given)."""
    from .inputs import CALIBRATION_BOUNDS, _expected

    for name in ("gain", "read_noise", "saturation"):
        value = values.get(name)
        low, high = CALIBRATION_BOUNDS[name]
        if value is not None and not low <= value <= high:
            raise InputError(source, labels.get(name, name), _expected(name), repr(value))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def read_config(path: str | os.PathLike) -> FitOptions:
    """Options from a config file: TOML (``[group]`` tables, or flat keys), or a product.

    A pyapred product (``.h5``) gives the settings it recorded, so a run can be repeated from
    its product.

    Raises
    ------
    InputError
        An unreadable file, an unknown table or key, or a value of the wrong kind.
    """
    values, labels, source = _config_values(path)
    return _build(values, source, labels)


def _config_values(path: str | os.PathLike) -> tuple[dict, dict, str]:
    """A config file's settings, each checked on its own (not yet against each other: flags
    may change the others), with their labels (``[pixels] min_snr``) and the file's name."""
    from ..io import is_fits_path
    from ..io.paths import check_input_file

    path = check_input_file(path, "--config")  # not a folder, FIFO or device
    if path.suffix in (".h5", ".hdf5") or is_fits_path(path):
        from ..io import read_metadata, read_product

        # A FITS product keeps its record in its METADATA table (it was read as TOML).
        metadata = (read_product(path, images=False).metadata if is_fits_path(path)
                    else read_metadata(path))  # fmt: skip
        if "fit_options" not in metadata:
            raise InputError(path, "metadata/fit_options", "a pyapred product's fit settings")
        recorded = FitOptions.from_record(str(metadata["fit_options"]), source=str(path))
        labels = {name: f"metadata/fit_options {name}" for name in recorded.__dict__}
        return dict(recorded.__dict__), labels, str(path)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise InputError(path, "--config", "a readable TOML file", exc.strerror) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, "TOML", "a valid TOML file", str(exc)) from None
    except RecursionError:  # arrays nested thousands deep
        raise InputError(path, "TOML", "a valid TOML file", "nesting too deep") from None
    values: dict = {}
    labels: dict = {}
    groups = {f.name: f.metadata["group"] for f in _fields()}
    for key, value in document.items():
        if isinstance(value, dict):
            if key not in CONFIG_GROUPS:
                raise InputError(path, f"[{key}]", f"a table among {', '.join(CONFIG_GROUPS)}")
            for name, item in value.items():
                if groups.get(name, key) != key:
                    raise InputError(path, f"[{key}] {name}", f"{name} in table [{groups[name]}]")
                _set_once(values, labels, name, item, f"[{key}] {name}", path)
        else:
            _set_once(values, labels, key, value, key, path)
    return _checked(values, str(path), labels), labels, str(path)


def _set_once(values: dict, labels: dict, name: str, value: Any, label: str, path) -> None:
    """``values[name] = value``, unless the file gave ``name`` already (flat and in its table:
    the later one won, silently)."""
    if name in values:
        raise InputError(path, label, f"{name} given once", f"it at {labels.get(name, name)} too")
    values[name], labels[name] = value, label


# --------------------------------------------------------------------------------------------
# Command-line flags
# --------------------------------------------------------------------------------------------
class _GivenOnce(argparse.Action):
    """A flag that takes one value: given twice, it is refused (two ``--config`` files are not
    merged; the second replaced the first, silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string}: expected one, got a second: {values}")
        setattr(namespace, self.dest, values)


def add_option_arguments(parser: argparse.ArgumentParser, *, leave_out: tuple = ()) -> None:
    """Add ``--config`` and one flag per :class:`FitOptions` field, grouped as in config files;
    the fields of the groups ``leave_out`` get none (a command whose result is not kept in
    memory has no use for the ``"memory"`` ones).

    Every flag defaults to "not given" (``argparse.SUPPRESS``), so that
    :func:`options_from_arguments` can lay the flags given over the config file's values.
    """
    defaults = FitOptions()
    parser.add_argument(
        "--config", type=Path, metavar="FILE", action=_GivenOnce,
        help="fit settings from a TOML file ([model], [pixels], ... tables; see docs/pipeline.md) "
        "or from a pyapred product (.h5 or .fits: the settings it was made with); flags given "
        "override it",
    )  # fmt: skip
    groups = {
        name: parser.add_argument_group(title)
        for name, title in CONFIG_GROUPS.items()
        if name not in leave_out
    }
    for item in _fields():
        if item.metadata["group"] in leave_out:
            continue
        flag = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        shown = "from the file" if default is None else default
        valid = item.metadata["valid"]
        text = item.metadata["help"]
        # The declared range and the default, each said once: some help texts say them already.
        said = [] if valid is None or valid[1] in text else [valid[1]]
        said += [] if "(default:" in text else [f"default: {shown}"]
        text = f"{text} ({'; '.join(said)})" if said else text
        group = groups[item.metadata["group"]]
        kind = _base_type(item)
        if kind is bool:
            group.add_argument(
                flag, dest=item.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=text,
            )  # fmt: skip
        else:
            group.add_argument(
                flag, dest=item.name, type=kind, choices=_choices(item),
                default=argparse.SUPPRESS, help=text,
            )  # fmt: skip


def config_source(args: argparse.Namespace, name: str) -> str | None:
    """The ``--config`` file that set the option ``name`` of parsed arguments, for an error to
    name; None where its flag was given, or no config file (the flag, or the default)."""
    config = getattr(args, "config", None)
    return None if hasattr(args, name) or config is None else str(config)


def options_from_arguments(args: argparse.Namespace, **fixed: Any) -> FitOptions:
    """The :class:`FitOptions` of parsed arguments: defaults < ``--config`` < flags < ``fixed``.

    Raises
    ------
    InputError
        A bad config file, or a flag value out of range (naming the flag).
    """
    config = getattr(args, "config", None)
    # The file's settings alone, then the flags over them, then the whole checked together:
    # a file's setting that a flag makes valid (segment_columns with --correct-1f nuisance)
    # was refused on its own, and a conflict was blamed on a flag never typed.
    file_values, labels, source = _config_values(config) if config is not None else ({}, {}, "")
    given = {f.name: getattr(args, f.name) for f in _fields() if hasattr(args, f.name)}
    for name, value in given.items():
        problem = _check_value(_field(name), value)
        if problem is not None:
            flag = "--" + name.replace("_", "-")
            raise InputError(flag, flag, problem, repr(value))
    values = {**FitOptions().__dict__, **file_values, **given, **fixed}
    conflict = _conflict(values)
    if conflict is not None:
        name, expected = conflict
        if name in file_values and name not in given and name not in fixed:
            raise InputError(source, labels.get(name, name), expected, repr(values[name]))
        flag = "--" + name.replace("_", "-")
        raise InputError(flag, flag, expected, repr(values[name]))
    return FitOptions(**{**file_values, **given, **fixed})


def _conflict(values: dict) -> tuple[str, str] | None:
    """``(setting, what it should be)`` where settings cannot go together, else None."""
    if values.get("chromatic") and str(values.get("correct_1f", "none")).endswith("nuisance"):
        return "correct_1f", "no nuisance term with chromatic (the chromatic fit has no offsets)"
    if values.get("chromatic") and values.get("model") == "constant":
        return "chromatic", "no chromatic fit with the constant model forced on every fiber"
    nuisance = str(values.get("correct_1f", "none")).endswith("nuisance")
    if nuisance and values.get("model") == "constant":  # it did nothing, yet was recorded
        return "correct_1f", (
            "no nuisance term with the constant model forced on every fiber (no omega is "
            "fitted): 'none', 'refpix' or 'rowmedian'"
        )
    p_default = _field("chromatic_p_value").default
    if not values.get("chromatic") and values.get("chromatic_p_value", p_default) != p_default:
        return "chromatic_p_value", (
            f"the default {p_default:g} without chromatic (it chooses the chromatic model)"
        )
    default = _field("segment_columns").default
    if values.get("segment_columns", default) != default and not nuisance:  # it did nothing
        return "segment_columns", (
            f"the default {default} without a nuisance route (correct_1f ...nuisance): the "
            "segments are the nuisance offsets' columns"
        )
    most, least = values.get("max_fit_pixels"), values.get("min_fit_pixels", 20)
    if most is not None and isinstance(least, int) and most < least:  # no fiber would be fitted
        return "max_fit_pixels", f"at least min_fit_pixels ({least}): with fewer no fiber is fitted"
    return None


def _field(name: str) -> dataclasses.Field:
    return next(f for f in _fields() if f.name == name)
