"""``python -m pyapred``: the ``pyapred`` command, for an environment whose scripts folder is
not on the PATH."""

import sys

from .cli import console

sys.exit(console())
