"""``pyapred inspect``: a short description of any file pyapred reads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py

from ..errors import InputError
from .apz import read_apz
from .hdf5 import decode, open_h5, read_group
from .paths import check_input_file
from .product import is_fits_path, read_product

#: Metadata keys a summary shows (the rest with ``full``).
_KEY_METADATA = ("pyapred_version", "backend", "telescope", "mjd", "expnum", "DATE-OBS",
                 "TIMESYS", "input_files")  # fmt: skip
_SUMMARY_LINES = 12


def describe(path: str | Path, *, full: bool = False) -> str:
    """A few lines about a raw ``.apz`` exposure, an HDF5 file (ApogeeReduction.jl's or ours), a
    FITS product (``pyapred fit --out p.fits``) or a simulation's truth file (``.npz``).

    Parameters
    ----------
    path : str or Path
    full : bool
        Every dataset and metadata key of an HDF5 file (``pyapred inspect --full``); by default
        a summary: per chip its images, per fiber group its models, and the key metadata.

    Returns
    -------
    str
        The description; for an HDF5 product that :func:`~pyapred.io.read_product` refuses
        without images (its fiber groups and metadata; images are not read), a last line with
        its reason (the structure is still described).

    Raises
    ------
    InputError
        The file is missing, or not a readable ``.apz``, HDF5, ``.npz`` file or FITS product.
    """
    path = check_input_file(path, "file")  # names a folder, a FIFO, a link loop as such
    if path.suffix == ".apz":
        return _describe_apz(path)
    if is_fits_path(path):
        return _describe_fits(path, full=full)
    if path.suffix == ".npz":
        return _describe_npz(path)
    try:
        text = _describe_hdf5(path) if full else _summarize_hdf5(path)
    except (KeyError, AttributeError, TypeError) as exc:  # a dangling link, an odd structure
        raise InputError(path, "HDF5 structure", "groups and datasets that can be read",
                         f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    return text + _product_verdict(path)


def _product_verdict(path: Path) -> str:
    """A line saying why the product readers refuse an HDF5 product (a wrong format version, a
    NaN without its flag), or nothing: inspect describes a damaged product's structure, which
    is what one needs to see, but must not pass it for a readable one."""
    with open_h5(path) as handle:
        if handle.attrs.get("pyapred_product_format") is None:
            return ""
    try:
        read_product(path, images=False)
    except InputError as exc:
        reason = str(exc).removeprefix(f"{exc.path}: ")  # the path heads the description
        return f"\n  not readable as a product (read_product, pyapred guider): {reason}"
    return ""


#: FITS BITPIX -> the type it holds (BZERO 2**15, 2**31 or 2**63: the unsigned type).
_BITPIX = {8: "uint8", 16: "int16", 32: "int32", 64: "int64", -32: "float32", -64: "float64"}


def _describe_fits(path: Path, *, full: bool) -> str:
    """A FITS product: per chip its images, from their headers (no pixel read), per fiber group
    its models, and the key metadata; with ``full`` every HDU and every metadata key.
    :func:`~pyapred.io.read_product` (without images) checks the structure first, so a damaged
    or foreign FITS file is refused as the product readers refuse it."""
    from astropy.io import fits

    product = read_product(path, images=False)
    lines = [f"{path}: FITS, pyapred product format {product.format_version}"]
    chips: dict[str, list] = {}
    with fits.open(path, memmap=False) as hdul:  # the data of each HDU is read only on access
        for number, hdu in enumerate(hdul):
            header = hdu.header
            if "PAPCHIP" in header:
                chips.setdefault(str(header["PAPCHIP"]), []).append(hdu)
            if full:
                lines.append(f"  HDU {number} {_name(hdu.name)}: {_hdu_line(hdu)}")
    if not full:
        for chip, hdus in chips.items():
            names = ", ".join(_name(str(hdu.name)) for hdu in hdus)
            lines.append(f"  {_name(chip)}: {_name(str(hdus[0].name))} {_hdu_line(hdus[0])}; "
                         f"{names}")  # fmt: skip
    for group, results in product.fibers.items():
        n, k = results.omega.shape
        lines.append(f"  FIBERS_{_name(group.upper())}: {n} fibers, {k} read differences; "
                     f"{_models_text(results.model)}")  # fmt: skip
    shown = product.metadata if full else {
        key: product.metadata[key] for key in _KEY_METADATA if key in product.metadata
    }  # fmt: skip
    for key, value in shown.items():
        lines.append(f"  METADATA {_name(key)} = {repr(value) if full else _short(value)}")
    rest = len(product.metadata) - len(shown)
    if rest:
        lines.append(f"  and {rest} more metadata keys")
    if not full:
        lines.append("  (pyapred inspect --full: every HDU and metadata key)")
    return "\n".join(lines)


def _hdu_line(hdu) -> str:
    """``float32 (2048, 2560), DN/read`` of an image HDU, from its header; a table's rows and
    columns."""
    header = hdu.header
    if header.get("XTENSION") == "BINTABLE":
        return f"a table of {header.get('NAXIS2')} rows, columns {', '.join(hdu.columns.names)}"
    bitpix = header.get("BITPIX")
    kind = _BITPIX.get(bitpix, f"BITPIX {bitpix}")
    if bitpix in (16, 32, 64) and header.get("BZERO") == 2 ** (bitpix - 1):
        kind = "u" + kind
    shape = tuple(header.get(f"NAXIS{i}") for i in range(header.get("NAXIS", 0), 0, -1))
    units = f", {header['BUNIT']}" if header.get("BUNIT") else ""
    return f"{kind} {shape}{units}" if shape else "no data"


def _describe_npz(path: Path) -> str:
    """The arrays of a NumPy ``.npz`` file (``pyapred simulate``'s truth file), from each
    array's ``.npy`` header alone: loading them decompressed every array (gigabytes from a
    small file) only to print its dtype and shape."""
    import zipfile

    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    raise ValueError(f"{member}: not a .npy array")
                with archive.open(member) as handle:
                    version = npy.read_magic(handle)
                    if version not in readers:
                        raise ValueError(f"{member}: .npy format {version}")
                    shape, _, dtype = readers[version](handle)
                arrays[member.removesuffix(".npy")] = (dtype, shape)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # EOF: an empty file
        raise InputError(path, "npz", "a NumPy .npz file of arrays",
                         str(exc) or type(exc).__name__) from None  # fmt: skip
    lines = [f"{path}: NumPy arrays ({len(arrays)}; pyapred simulate's truth file holds omega,"
             " fiber types and per-chip fluxes)"]  # fmt: skip
    for name, (dtype, shape) in arrays.items():
        lines.append(f"  {_name(name)}: {dtype}, {shape}")
    return "\n".join(lines)


def _summarize_hdf5(path: Path) -> str:
    """A product by chip, fiber group and key metadata; another HDF5 file by top-level group."""
    lines = [f"{path}: HDF5"]
    with open_h5(path) as handle:
        version = handle.attrs.get("pyapred_product_format")
        groups = {name: item for name, item in handle.items() if isinstance(item, h5py.Group)}
        datasets = [name for name, item in handle.items() if isinstance(item, h5py.Dataset)]
        if version is not None:
            lines[0] += f", pyapred product format {version}"
        for name, group in groups.items():
            if name == "metadata":
                continue
            if name == "fibers":
                for key, fibers in group.items():
                    lines.append(f"  fibers/{_name(key)}: {_fiber_line(fibers)}")
                continue
            members = [k for k, v in group.items() if isinstance(v, h5py.Dataset)]
            # One dataset described (the others' types and units differ): dimage, else the first.
            first = "dimage" if "dimage" in members else (members[0] if members else None)
            shape = "" if first is None else f" {_name(first)} {_dataset_line(group[first])};"
            more = f" and {len(members) - 8} more" if len(members) > 8 else ""
            shown = ", ".join(_name(m) for m in members[:8])
            lines.append(f"  {_name(name)}:{shape} {shown}{more}")
        for name in datasets[:_SUMMARY_LINES]:
            lines.append(f"  {_name(name)}: {_dataset_line(handle[name])}")
        if len(datasets) > _SUMMARY_LINES:
            lines.append(f"  ... and {len(datasets) - _SUMMARY_LINES} more datasets")
        if isinstance(handle.get("metadata"), h5py.Group):
            metadata = read_group(path, handle["metadata"])
            for key in _KEY_METADATA:
                if key in metadata:
                    lines.append(f"  metadata/{key} = {_short(metadata[key])}")
            rest = len(set(metadata) - set(_KEY_METADATA))
            if rest:
                lines.append(f"  and {rest} more metadata keys")
    lines.append("  (pyapred inspect --full: every dataset and metadata key)")
    return "\n".join(lines)


#: The most fibers a summary counts the models of (a group holds 300, or 900 for three chips).
_MAX_FIBERS_SHOWN = 4096


def _fiber_line(group) -> str:
    """``300 fibers, 46 read differences; models 210 time_variable, 88 borrowed, 2 constant``."""
    if not isinstance(group, h5py.Group):
        return _dataset_line(group)
    parts = []
    if "omega" in group:
        shape = getattr(group["omega"], "shape", None)
        if shape is not None and len(shape) == 2:
            parts.append(f"{shape[0]} fibers, {shape[-1]} read differences")
        else:
            parts.append(f"omega of shape {shape} (expected (fibers, read differences))")
    if "model" in group:
        model = group["model"]
        size = getattr(model, "size", None)
        # One per fiber: a damaged product's 300 million were read and counted one by one.
        if isinstance(model, h5py.Dataset) and size is not None and size > _MAX_FIBERS_SHOWN:
            parts.append(f"model of shape {model.shape} (expected one per fiber)")
        else:
            parts.append(_models_text(decode(m) for m in model[()]))
    return "; ".join(parts) or f"{len(group)} datasets"


def _models_text(models) -> str:
    """``models 210 time_variable, 88 borrowed, 2 constant``: each model's fibers, most first."""
    counts = Counter(models).most_common()
    return "models " + ", ".join(f"{n} {m}" for m, n in counts)


def _name(text: str) -> str:
    """A name from the file as it may be printed: quoted with its escapes (``repr``) where it
    holds a control character (a newline forged lines of the listing, an escape sequence
    reached the terminal)."""
    return text if text.isprintable() else repr(text)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _describe_apz(path: Path) -> str:
    exposure = read_apz(path, rows=slice(0, 0))  # headers and times only: no pixel decompressed
    times = exposure.read_times
    return "\n".join([
        f"{path}: raw exposure, {exposure.telescope.upper()} chip {exposure.chip} "
        f"({exposure.name.chip_color}), SJD {exposure.mjd}, exposure {exposure.expnum}",
        f"  {exposure.n_reads_in_file} reads (NREAD {exposure.header.get('NREAD', 'absent')}), "
        f"EXPTYPE {exposure.header.get('EXPTYPE', 'absent')}",
        f"  read times ({times.scale.upper()}): {times[0].isot} .. {times[-1].isot}",
    ])  # fmt: skip


def _describe_hdf5(path: Path) -> str:
    lines = [f"{path}: HDF5"]
    with open_h5(path) as handle:
        version = handle.attrs.get("pyapred_product_format")
        if version is not None:
            lines[0] += f", pyapred product format {version}"

        groups = [handle]

        def visit(name: str, item) -> None:
            if isinstance(item, h5py.Group):
                groups.append(item)
            elif isinstance(item, h5py.Dataset) and not name.startswith("metadata/"):
                lines.append(f"  {_name(name)}: {_dataset_line(item)}")

        handle.visititems(visit)
        # Soft and external links, which visititems does not follow: said as links (one to
        # itself or to nothing was left out of the listing, silently).
        for group in groups:
            for key in group:
                link = group.get(key, getlink=True)
                if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                    name = f"{group.name.rstrip('/')}/{key}".lstrip("/")
                    where = getattr(link, "filename", "")
                    target = f"{where}:{link.path}" if where else link.path
                    state = _link_state(group, key)
                    lines.append(f"  {_name(name)}: a link to {_name(target)}{state}")
        if isinstance(handle.get("metadata"), h5py.Group):
            for key, value in read_group(path, handle["metadata"]).items():
                lines.append(f"  metadata/{_name(key)} = {value!r}")
    return "\n".join(lines)


def _link_state(group: h5py.Group, key: str) -> str:
    """``""`` where the link leads to something, else why not (it points to nothing, to
    itself, or to a file that is not there)."""
    try:
        group[key]  # noqa: B018 (follows the link)
    except (KeyError, OSError, RuntimeError) as exc:
        return f" (that cannot be followed: {exc})"
    return ""


def _dataset_line(item: h5py.Dataset) -> str:
    """``float32, h5py (2048, 2560), Julia (2560, 2048), DN/read, gzip+shuffle``: the type (str
    for strings), the shapes, the units where they are not empty and the compression."""
    string = h5py.check_string_dtype(item.dtype)
    dtype = f"str ({string.encoding})" if string is not None else str(item.dtype)
    parts = [dtype, f"h5py {item.shape}", f"Julia {item.shape[::-1]}"]
    units = decode(item.attrs.get("units", ""))
    if isinstance(units, str) and units:  # a numeric attribute is not units
        parts.append(units)
    if item.compression:
        parts.append(item.compression + ("+shuffle" if item.shuffle else ""))
    return ", ".join(parts)
