"""The one driver of an exposure fit: every entry point (``pyapred fit``, ``night``, ``demo``,
notebooks) calls :func:`run_exposure`.

It runs the stages in their one direction, per chip (or over all chips with ``joint_chips``)::

    file -> ChipExposure -> prepare_chip -> fit_fibers -> extract_chip -> product_parts -> product

loading each chip when it is needed (so that at most one cube is in memory), timing each stage,
and writing the product, each chip's images as soon as the chip is extracted. The stages
themselves (:mod:`.prepare`, :mod:`.fibers`, :mod:`.extract`, :mod:`.product`) take arrays and
options and return frozen results; file I/O happens here and in :mod:`.inputs` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, InputWarning, expect_type
from ..traces import Traces
from .extract import ChipResult, extract_chip
from .fibers import FiberFits, fit_fibers
from .inputs import (
    ChipExposure,
    check_calibration,
    identify_exposure,
    load_chip,
    match_inputs,
    survey_chip,
)
from .options import FitOptions
from .prepare import PreparedChip, check_reference_input, correct_1f, prepare_chip
from .product import product_parts
from .result import ExposureResult

__all__ = ["ChipSource", "resolve_backend", "run_exposure", "write_exposure"]

#: A chip in memory, or a zero-argument loader called when the chip is needed.
ChipSource = ChipExposure | Callable[[], ChipExposure]


def run_exposure(
    chips: Mapping[str, ChipSource] | Sequence[str | os.PathLike],
    traces: Mapping[str, Traces] | Sequence[str | os.PathLike],
    options: FitOptions | None = None,
    *,
    product: str | os.PathLike | None = None,
    overwrite: bool = False,
    keep_images: bool = False,
    traces_any_night: bool = False,
    progress: bool = False,
    on_chip: Callable[[str, ChipResult], ChipResult] | None = None,
    identity: Mapping | None = None,
) -> ExposureResult:
    """Fit omega for every fiber, choose models, extract every pixel of every chip.

    Parameters
    ----------
    chips : mapping of str to ChipExposure or callable, or sequence of paths
        By chip name, in memory or as zero-argument loaders (called when the chip is needed;
        with ``joint_chips`` each chip is loaded twice: for the fit pixels, for extraction).
        Or the files of one exposure: one raw ``.apz`` or ``ar3Dcal`` file per chip
        (:func:`~pyapred.exposure.load_chip`, with the options' calibration overrides).
    traces : mapping of str to Traces, or sequence of paths
        The same keys as ``chips``; with files, one trace file per chip
        (:func:`~pyapred.exposure.match_inputs` pairs them).
    options : FitOptions, optional
        ``backend="auto"`` is resolved here (:func:`resolve_backend`); the result holds the
        resolved options. ``gain``, ``read_noise`` and ``saturation``, where set, replace every
        chip's own.
    product : str or os.PathLike, optional
        Write the product there (HDF5, or FITS for a ``.fits`` name). An HDF5 product gets each
        chip's images as soon as the chip is extracted, and the result then keeps no images
        (``ChipResult.flux`` ... are None) nor the omega fit's jump masks
        (``FiberFits.fit.jump_mask`` is None) unless ``keep_images``; the file appears only
        when the whole exposure is done.
    overwrite : bool
        Replace an existing product.
    keep_images : bool
        Keep every chip's images and jump masks in the result even when a product is written.
    traces_any_night : bool
        With files: accept trace files of another night of the exposure's telescope.
    progress : bool
        Show a progress bar (tqdm) over the steps.
    on_chip : callable, optional
        ``on_chip(name, chip_result)`` is called as soon as a chip is extracted; what it returns
        is kept in the result in place of ``chip_result``.
    identity : mapping, optional
        With one file: its ``chip``, ``telescope`` and ``mjd`` where its name does not say them
        or says them wrong (``pyapred fit --chip --telescope --mjd``;
        :func:`~pyapred.exposure.identify_exposure`).

    Returns
    -------
    ExposureResult

    Raises
    ------
    InputError
        Bad input files or traces, or an unusable backend.
    """
    options = FitOptions() if options is None else options
    expect_type("options", options, FitOptions)
    if not isinstance(chips, (Mapping, str, os.PathLike)):
        chips = list(chips)  # a generator of paths had no len()
    if isinstance(chips, (str, os.PathLike)) or not len(chips):
        raise ValueError(f"chips: expected chips by name or a sequence of files, got {chips!r}")
    if not isinstance(chips, Mapping) and any(isinstance(c, ChipExposure) for c in chips):
        raise TypeError("chips: expected chips in memory by name ({'R': chip, ...}), got a list")
    # Traces as chips are: by name with chips by name, files with files (one path was taken
    # as a sequence of one-letter paths: "/: traces: expected a file, found a folder").
    if isinstance(traces, (str, os.PathLike)):
        raise ValueError(f"traces: expected a list of trace files, got one path, {traces!r}")
    if isinstance(chips, Mapping) != isinstance(traces, Mapping):
        want = (
            "Traces by chip name, as the chips"
            if isinstance(chips, Mapping)
            else "files, as the chips"
        )
        raise TypeError(f"traces: expected {want}, got {type(traces).__name__}")
    if not isinstance(traces, Mapping):
        traces = list(traces)
    if options.chromatic and isinstance(chips, Mapping):  # was refused after the chips' work
        from ..chromatic import CHIP_WAVELENGTH_UM

        unknown = [name for name in chips if name not in CHIP_WAVELENGTH_UM]
        if unknown:
            raise ValueError(f"chips: expected chips named R, G or B with chromatic (their "
                             f"wavelengths give the coordinate), got {unknown}")  # fmt: skip
    options = dataclasses.replace(options, backend=resolve_backend(options.backend))
    from ..io import BackgroundHashes, is_fits_path

    streamed = product is not None and not (keep_images or is_fits_path(product))
    # A streamed product's input_sha256, hashed by a thread of its own from now: beside the
    # headers' check and the kernels' loading, which run on one core.
    hashing = (
        BackgroundHashes([*chips, *traces])
        if streamed and not isinstance(chips, Mapping)
        else contextlib.nullcontext()
    )
    with hashing as hashes:
        return _exposure(
            chips, traces, options, product=product, overwrite=overwrite,
            keep_images=keep_images, traces_any_night=traces_any_night, progress=progress,
            on_chip=on_chip, identity=identity, hashes=hashes,
        )  # fmt: skip


def _exposure(chips, traces, options, *, product, overwrite, keep_images, traces_any_night,
              progress, on_chip, identity, hashes) -> ExposureResult:  # fmt: skip
    """:func:`run_exposure` after its options are resolved; ``hashes`` (a
    :class:`~pyapred.io.BackgroundHashes` of the files, or None) gives a streamed product's
    digests."""
    from ..io import ChipImages, ProductWriter, is_fits_path
    from ..io.paths import check_output_path

    meta: dict = {}
    if not isinstance(chips, Mapping):
        chips, traces, meta = _file_sources(chips, traces, options, traces_any_night, identity)
    else:
        if identity:
            raise ValueError("identity: only for files (chips in memory carry their own)")
        chips = {name: _with_calibration(source, options) for name, source in chips.items()}
    if product is None:
        return _run(chips, traces, options, meta, progress, on_chip)
    # Before any work: a product may never replace one of the inputs, files or the files that
    # chips and traces in memory came from (a loader's is not known before it is called).
    inputs = [*meta.get("inputs", ()), *meta.get("traces", ())]
    inputs += [c.source for c in chips.values() if isinstance(c, ChipExposure)]
    in_memory = traces.values() if isinstance(traces, Mapping) else ()
    inputs += [t.path for t in in_memory if isinstance(t, Traces) and t.path is not None]
    path = check_output_path(product, "product", inputs=inputs, overwrite=overwrite)
    if keep_images or is_fits_path(path):
        result = _run(chips, traces, options, meta, progress, on_chip)
        write_exposure(result, path, overwrite=overwrite)
        return dataclasses.replace(result, meta={**result.meta, "product": str(path)})
    with ProductWriter(path, overwrite=overwrite) as writer:

        def write_chip(name: str, chip: ChipResult) -> ChipResult:
            if on_chip is not None:  # checked before its images are written, not after
                chip = on_chip(name, chip)
                expect_type(f"on_chip({name!r}, ...)", chip, ChipResult, "the ChipResult to keep")
            writer.add_chip(name, ChipImages.from_fit(chip))
            return _without_images(chip)

        # The maps no later stage reads go early, unless the caller's own on_chip sees them.
        result = _run(chips, traces, options, meta, progress, write_chip, streamed=True,
                      drop_unread_maps=on_chip is None)  # fmt: skip
        parts = product_parts(result)
        writer.finish(
            fibers=parts.fibers, inputs=parts.inputs, backend=parts.backend,
            metadata=parts.metadata,
            input_sha256=None if hashes is None else hashes.digests(parts.inputs),
        )  # fmt: skip
    return dataclasses.replace(result, meta={**result.meta, "product": str(path)})


def write_exposure(
    result: ExposureResult, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write a whole :class:`ExposureResult` (with its images) as a pyapred product.

    Per chip the flux, inverse variance, chi2 and flag images; per fiber group what
    :func:`~pyapred.exposure.product_parts` gives; the inputs and trace files hashed
    (``input_files``, ``input_sha256``).

    Returns
    -------
    pathlib.Path
    """
    from ..io import ChipImages, write_product

    expect_type("result", result, ExposureResult)
    streamed = [name for name, chip in result.chips.items() if chip.flux is None]
    if streamed:
        raise ValueError(
            f"result: expected the chips' images, but chips {streamed} kept none (they went to "
            f"{result.meta.get('product', 'a product')} as they were made): read that product, "
            "or run with keep_images=True"
        )
    images = {name: ChipImages.from_fit(chip) for name, chip in result.chips.items()}
    parts = product_parts(result)
    return write_product(
        path, chips=images, fibers=parts.fibers, inputs=parts.inputs, backend=parts.backend,
        metadata=parts.metadata, overwrite=overwrite,
    )  # fmt: skip


def resolve_backend(backend: str, *, source: str | None = None) -> str:
    """``"numpy"`` or ``"julia"``: ``"auto"`` is Julia where it loads; ``"julia"`` must load.

    Parameters
    ----------
    backend : str
    source : str, optional
        The config file the setting came from (``--config``), named in the error; default the
        ``--backend`` flag.

    Raises
    ------
    InputError
        ``"julia"`` where no Julia runtime can be loaded; the message names what is missing,
        and the flag or the config file and key that asked for Julia.
    """
    from ..solver import JuliaBackendError, julia_available, load_julia

    if backend == "numpy":
        return backend
    if backend == "auto":
        return "julia" if julia_available() else "numpy"
    try:
        load_julia()
    except JuliaBackendError as exc:
        where, field = ("--backend", "--backend") if source is None else (source, "backend")
        raise InputError(
            where, field, "a Julia runtime with juliacall for the julia backend (pip "
            "install 'pyapred[julia]'; docs/julia.md), or the numpy backend", exc.reason,
        ) from None  # fmt: skip
    return backend


# --------------------------------------------------------------------------------------------
# The stages, chip by chip
# --------------------------------------------------------------------------------------------
def _run(chips, traces, options, meta, progress, on_chip, streamed=False,
         drop_unread_maps=False) -> ExposureResult:  # fmt: skip
    """The stages over every chip: per chip, or with ``joint_chips`` over all chips at once.

    ``streamed``: the chips go to a product as they are extracted; the result then keeps no
    jump masks of the omega fit either (:func:`_without_jump_mask`). ``drop_unread_maps``: a
    chip's maps that no later stage reads go as soon as it is prepared
    (:func:`_without_unread_maps`).
    """

    def keep(name: str, chip_result: ChipResult) -> ChipResult:
        kept = chip_result if on_chip is None else on_chip(name, chip_result)
        expect_type(f"on_chip({name!r}, ...)", kept, ChipResult, "the ChipResult to keep")
        return kept

    names = list(chips)
    missing = [n for n in names if n not in traces]
    if missing:
        raise ValueError(f"traces: no traces for chips {missing}")
    for name in names:
        expect_type("traces", traces[name], Traces, f"Traces for chip {name}")
    if options.reference_correction != "none":  # each chip corrected as it is loaded
        chips = {name: _corrected_1f(chips[name], traces[name], options) for name in names}
    groups = [names] if options.joint_chips else [[name] for name in names]
    bar = _progress(len(names) * (2 if options.joint_chips else 1), progress)
    seen: dict = {}
    timings: dict = {}
    results, fibers, read_times, timing = {}, {}, None, None
    spare: list = []  # the raw cube of a chip done with, for the next file to fill
    for group in groups:
        prepared, loaded = [], None
        for name in group:
            with _timed(timings, "load"):
                chip = _load(chips[name], spare)
            expect_type(f"chips[{name!r}]", chip, ChipExposure, "a ChipExposure (or its loader)")
            if chip.name != name:  # the result's key and the chip's wavelengths must agree
                raise ValueError(f"chips[{name!r}]: expected the chip named {name!r}, got "
                                 f"{chip.name!r}")  # fmt: skip
            _check_consistent(chip, seen)
            check_calibration(chip)
            read_times = chip.read_times if read_times is None else read_times
            timing = chip.timing if timing is None else timing
            with _timed(timings, "prepare"):
                prep = prepare_chip(chip, traces[name], options)
            prepared.append(_without_unread_maps(prep) if drop_unread_maps else prep)
            del prep
            # One chip is kept for its extraction; joint chips are loaded again (one cube).
            loaded = chip if len(group) == 1 else None
            if loaded is None:
                _offer_reads(spare, chips[name], chip)
            del chip
            if options.joint_chips:
                bar.update()
        key = "joint" if options.joint_chips else group[0]
        with _timed(timings, "fit_omega"):
            fibers[key] = fit_fibers(prepared, options)
        for name, prep in zip(group, prepared, strict=True):
            with _timed(timings, "load"):
                chip = loaded if loaded is not None else _load(chips[name], spare)
            loaded = None
            with _timed(timings, "extract"):
                extracted = extract_chip(chip, prep, fibers[key], options)
            if name != names[-1]:
                _offer_reads(spare, chips[name], chip)
            del chip
            with _timed(timings, "write"):
                results[name] = keep(name, extracted)
            del extracted, prep  # the chip's maps too, before the next chip is loaded
            if name != names[-1]:  # after the last chip no cube comes (a collection: 0.08 s)
                _return_freed_memory()
            bar.update()
        if streamed:
            fibers[key] = _without_jump_mask(fibers[key])
            for name in group:
                results[name] = dataclasses.replace(results[name], fibers=fibers[key])
    bar.close()
    if read_times is None:
        read_times = np.arange(seen["n_reads"][0], dtype=np.float64)
    meta = {
        **meta,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "timing": timing,
    }
    return ExposureResult(
        chips=results, fibers=fibers, options=options, read_times=read_times, meta=meta
    )


def _file_sources(inputs, trace_paths, options: FitOptions, any_night: bool, identity) -> tuple:
    """Loaders and traces of one exposure's files, by chip, and the paths for the product."""
    from ..io.paths import check_input_file
    from ..traces import read_trace_file

    for path in inputs:
        check_input_file(path, "inputs")
        check_reference_input(path, options.reference_correction)
    for path in trace_paths:
        check_input_file(path, "traces")
    pairs = match_inputs(
        list(inputs), list(trace_paths), traces_any_night=any_night, identity=identity
    )
    first_input = next(iter(pairs.values()))[0]
    _, telescope, mjd, number = identify_exposure(first_input, identity)
    # The exposure's telescope decides the FPI fibers, whatever the trace files are named.
    traces = {
        chip: read_trace_file(trace, telescope=telescope) for chip, (_, trace) in pairs.items()
    }
    # Every file's headers, before any chip is loaded: a bad last chip is not found after the
    # others are fitted.
    seen: dict = {}
    shapes = {}
    with warnings.catch_warnings():  # what loading warns of, it warns once, as it loads
        warnings.simplefilter("ignore")
        for chip, (path, trace_path) in pairs.items():
            shapes[chip] = shape = survey_chip(
                path, gain=options.gain, read_noise=options.read_noise,
                saturation=options.saturation, identity=identity,
            )  # fmt: skip
            if shape[0] < 3:  # (prepare_chip's check, after the chip was loaded)
                raise InputError(path, "reads", "at least 3 reads (2 differences) a chip",
                                 str(shape[0]))  # fmt: skip
            _check_same_shape(str(path), shape, seen)
            check_reference_input(path, options.reference_correction, shape)
            traces[chip].check_geometry(*shape[1:], source=str(trace_path))

    # A raw file may be read into an earlier chip's raw cube of its shape; an ar3Dcal file
    # (float64 reads) never is.
    raw_shape = {chip: None if Path(path).suffix == ".h5" else shapes[chip]
                 for chip, (path, _) in pairs.items()}  # fmt: skip
    chips = {
        chip: _FileChip(Path(path), Path(trace), traces[chip], options, identity, raw_shape[chip])
        for chip, (path, trace) in pairs.items()
    }
    meta = {
        "inputs": [str(path) for path, _ in pairs.values()],
        "traces": [str(trace) for _, trace in pairs.values()],
        # The exposure's identity, for the product (SDSS MJD; number within the night).
        "exposure": {"telescope": telescope, "mjd": int(mjd), "number": int(number)},
    }
    return chips, traces, meta


@dataclasses.dataclass(frozen=True, eq=False)
class _FileChip:
    """Loads one chip's file; given a raw cube of a chip done with (:func:`_offer_reads`), it
    reads the file into that cube rather than allocate a new one.

    Why: a full chip's freed cube (0.49 GB of uint16) leaves a hole in the heap of exactly its
    size, and the next cube fits there only if no small allocation has been carved from it in
    between. In some batches of runs nearly half had one carved, in others none; the next cube
    then went on top of the heap: peaks of 1.57-1.61 GB (1.59-1.63x the float32 cube) instead of
    1.34-1.41 GB.
    """

    path: Path
    trace_path: Path
    traces: Traces
    options: FitOptions
    identity: Mapping | None
    shape: tuple[int, int, int] | None  # a raw file's, from its survey; None: an ar3Dcal file

    def __call__(self, spare: list | None = None) -> ChipExposure:
        chip = load_chip(
            self.path, gain=self.options.gain, read_noise=self.options.read_noise,
            saturation=self.options.saturation, identity=self.identity,
            out=self._fillable(spare),
        )  # fmt: skip
        # Checked here too, so that the error names the trace file; what it warns of,
        # prepare_chip warns of, naming the file too (Traces.path).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)
            self.traces.check_geometry(*chip.reads.shape[1:], source=str(self.trace_path))
        return chip

    def _fillable(self, spare: list | None) -> np.ndarray | None:
        """The cube in ``spare``, taken out of it (so that nothing else keeps it while the file
        is read), where this file's reads fit it; None otherwise, and the cube goes."""
        cube = spare.pop() if spare else None
        return cube if cube is not None and cube.shape == self.shape else None


def _offer_reads(spare: list, source: ChipSource, chip: ChipExposure) -> None:
    """Put the raw cube of a chip done with in ``spare``, for the next file to fill: only a
    cube loaded here from its file (nothing else holds it: the stages' results keep copies,
    never views), never a caller's array."""
    if isinstance(source, _FileChip) and chip.reads.dtype == np.uint16:
        spare[:] = [chip.reads]


def _with_calibration(source: ChipSource, options: FitOptions) -> ChipSource:
    """``source`` with the options' calibration overrides, where any is set."""
    overrides = {
        name: getattr(options, name)
        for name in ("gain", "read_noise", "saturation")
        if getattr(options, name) is not None
    }
    if not overrides:
        return source
    return lambda: dataclasses.replace(_load(source), **overrides)


def _load(source: ChipSource, spare: list | None = None) -> ChipExposure:
    """The chip of ``source``; a file's read into the cube in ``spare`` where it fits
    (:class:`_FileChip`, which takes the cube out of the list)."""
    if isinstance(source, _FileChip):
        return source(spare)
    chip = source() if callable(source) else source
    if not isinstance(chip, ChipExposure):
        raise TypeError(
            f"chips: expected ChipExposure (or a loader of one), got {type(chip).__name__}"
        )
    return chip


def _corrected_1f(source: ChipSource, traces: Traces, options: FitOptions) -> Callable:
    """A loader of the corrected chip. A chip corrected in the caller's own array (in memory,
    ``writable``) is kept, so that ``joint_chips``' second load does not correct it twice."""
    kept = []

    def load() -> ChipExposure:
        if kept:
            return kept[0]
        chip = correct_1f(
            _load(source), traces, options.reference_correction, halfwidth=options.map_halfwidth
        )
        if chip.reads is getattr(source, "reads", None):
            kept.append(chip)
        return chip

    return load


def _check_consistent(chip: ChipExposure, seen: dict) -> None:
    """The chips of one call are one exposure: one telescope, night, number of reads and set of
    read times."""
    for key in ("telescope", "mjd"):
        value = getattr(chip, key)
        if value is None:
            continue
        if key in seen and seen[key][0] != value:
            raise InputError(
                chip.source,
                key,
                f"{seen[key][0]!r} like {seen[key][1]} (one exposure per call)",
                repr(value),
            )
        seen.setdefault(key, (value, chip.source))
    _check_same_shape(chip.source, chip.reads.shape, seen)
    # One exposure's chips are read together: the result keeps one set of read times. Within a
    # millisecond: each file's own header gives them.
    if chip.read_times is not None:
        times = np.asarray(chip.read_times, dtype=np.float64)
        label = f"chip {chip.name}" if chip.source == "<memory>" else chip.source
        if "read_times" in seen and not np.allclose(times, seen["read_times"][0], rtol=0.0,
                                                    atol=1e-3):  # fmt: skip
            raise InputError(label, "read_times",
                             f"the read times of {seen['read_times'][1]} (one exposure per call)",
                             "other times")  # fmt: skip
        seen.setdefault("read_times", (times, label))


def _check_same_shape(source: str, shape: tuple, seen: dict) -> None:
    """The chips of one exposure have one number of reads and one image size."""
    if "n_reads" in seen and seen["n_reads"][0] != shape[0]:
        raise InputError(
            source, "reads", f"{seen['n_reads'][0]} reads like {seen['n_reads'][1]}",
            str(shape[0]),
        )  # fmt: skip
    seen.setdefault("n_reads", (shape[0], source))
    image = tuple(int(n) for n in shape[1:])
    if "image" in seen and seen["image"][0] != image:
        expected = f"{seen['image'][0][0]} x {seen['image'][0][1]} pixels like {seen['image'][1]}"
        raise InputError(source, "image shape", expected, f"{image[0]} x {image[1]}")
    seen.setdefault("image", (image, source))


def _without_images(chip: ChipResult) -> ChipResult:
    """``chip`` without its images and the prepared chip's maps (written to the product)."""
    images = dict.fromkeys(("flux", "flux_var", "chi2", "n_diff", "flags"))
    maps = dict.fromkeys(("pixel_map", "saturated", "rate"))
    prepared = dataclasses.replace(chip.prepared, **maps)
    return dataclasses.replace(chip, prepared=prepared, **images)


def _without_unread_maps(prep: PreparedChip) -> PreparedChip:
    """``prep`` without the rate, saturation and purity maps (43 MB a chip): no stage reads
    them after the preparation, and a streamed result drops them with the images (the pixel
    map's fibers stay: the extraction reads them)."""
    pixel_map = dataclasses.replace(prep.pixel_map, purity=None)
    return dataclasses.replace(prep, pixel_map=pixel_map, saturated=None, rate=None)


def _without_jump_mask(fits: FiberFits) -> FiberFits:
    """``fits`` without the omega fit's per-difference jump mask, ``(n_fibers, n_pix, K)`` bool:
    28 MB a chip that neither the product nor the plots read, kept through the later chips."""
    if fits.fit is None or fits.fit.jump_mask is None:
        return fits
    return dataclasses.replace(fits, fit=dataclasses.replace(fits.fit, jump_mask=None))


def _return_freed_memory() -> None:
    """Give freed heap memory back to the system between chips (glibc's ``malloc_trim``).

    A full collection first: an array in a reference cycle (a library that keeps an exception
    keeps every calling frame's locals, a chip's reads among them, as astropy's time parsing
    did) is freed only by the cyclic collector. glibc then keeps what was freed in its arenas,
    while the next chip's large arrays, mapped apart, would come on top. Where large arrays
    come from the heap too (``MALLOC_MMAP_MAX_=0``, as ``pyapred`` commands run), the next chip
    reuses the heap and it is kept.
    """
    import ctypes
    import gc

    gc.collect()
    if os.environ.get("MALLOC_MMAP_MAX_") == "0":
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@contextlib.contextmanager
def _timed(totals: dict, name: str):
    """Add the wall-clock seconds of the block to ``totals[name]``."""
    start = time.perf_counter()
    yield
    totals[name] = totals.get(name, 0.0) + time.perf_counter() - start


def _progress(total: int, enabled: bool):
    """A tqdm bar over ``total`` steps, or a silent stand-in."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="pyapred fit", unit="step", disable=not enabled)
