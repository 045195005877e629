"""The wheel ships the Julia package where pyapred/solver/_julia.py looks for it."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_julia_package(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("pyapred-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"pyapred/julia/src/{p.name}" for p in (ROOT / "julia" / "src").glob("*.jl")}
    assert {"pyapred/julia/Project.toml", "pyapred/solver/_julia.py"} | sources <= names
    # Unpacked, the bridge finds the shipped copy first.
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = "from pyapred.solver._julia import julia_package_dir; print(julia_package_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "site", check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert Path(out) == tmp_path / "site" / "pyapred" / "julia"
