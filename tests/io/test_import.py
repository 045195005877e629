"""``import pyapred`` stays light: astropy and h5py load only with ``pyapred.io``."""

import subprocess
import sys


def test_import_pyapred_does_not_load_astropy_or_h5py():
    code = (
        "import sys, pyapred; "
        "print(sorted(m for m in ('astropy', 'h5py', 'pyapred.io') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
