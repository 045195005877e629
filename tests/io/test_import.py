"""``import pyapred`` stays light: astropy and h5py load only with ``pyapred.io``, ISA-L only
when a product is written."""

import subprocess
import sys


def test_import_pyapred_does_not_load_astropy_or_h5py():
    code = (
        "import sys, pyapred; "
        "print(sorted(m for m in ('astropy', 'h5py', 'pyapred.io', 'isal') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_reading_files_does_not_load_isal():
    """ISA-L deflates what a product writes; `pyapred.io` loads it with the first product."""
    code = "import sys, pyapred.io; print('isal' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
