"""``pyapred inspect``: a short description of any file pyapred reads."""

from __future__ import annotations

from pathlib import Path

import h5py

from ..errors import InputError
from .apz import read_apz
from .hdf5 import open_h5, read_group


def describe(path: str | Path) -> str:
    """A few lines about a raw ``.apz`` exposure or an HDF5 file (ApogeeReduction.jl's or ours).

    Raises
    ------
    InputError
        The file is missing, or not a readable ``.apz`` or HDF5 file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing file", found="nothing")
    if path.suffix == ".apz":
        return _describe_apz(path)
    return _describe_hdf5(path)


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

        def visit(name: str, item) -> None:
            if isinstance(item, h5py.Dataset) and not name.startswith("metadata/"):
                julia = "(" + ", ".join(map(str, item.shape[::-1])) + ")"
                lines.append(f"  {name}: {item.dtype}, h5py {item.shape}, Julia {julia}")

        handle.visititems(visit)
        if isinstance(handle.get("metadata"), h5py.Group):
            for key, value in read_group(path, handle["metadata"]).items():
                lines.append(f"  metadata/{key} = {value!r}")
    return "\n".join(lines)
