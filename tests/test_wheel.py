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
    julia = ROOT / "julia"
    files = [p for p in julia.rglob("*") if p.is_file() and p.suffix in (".jl", ".toml", ".md")]
    shipped = {f"pyapred/julia/{p.relative_to(julia).as_posix()}" for p in files}
    assert shipped, "nothing to ship"
    expected = {"pyapred/julia/Project.toml", "pyapred/julia/LICENSE", "pyapred/julia/README.md",
                "pyapred/julia/test/runtests.jl", "pyapred/solver/_julia.py"}  # fmt: skip
    assert expected | shipped <= names
    assert not any(n.startswith("pyapred/tests/") or n.startswith("tests/") for n in names)
    # Unpacked, the bridge finds the shipped copy first, and the vectors are found beside it.
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = (
        "from pyapred.solver._julia import julia_package_dir\n"
        "from pyapred.conformance import default_stage_dir, default_vector_dir\n"
        "print(julia_package_dir()); print(default_vector_dir()); print(default_stage_dir())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "site", check=True,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    package = tmp_path / "site" / "pyapred" / "julia"
    assert [Path(p) for p in out] == [package, package / "test" / "conformance",
                                      package / "test" / "stages"]  # fmt: skip
