"""What the tutorial notebooks share, kept out of the cells a reader sees.

* :func:`sized`: the notebook's size, or a toy size when ``KVSTAB_TOY=1`` (the tests' quick
  execution of the notebooks sets it; a reader never needs to).
"""

from __future__ import annotations

import os


def toy() -> bool:
    """True when ``KVSTAB_TOY`` is set to anything but '' or '0'."""
    return os.environ.get("KVSTAB_TOY", "") not in ("", "0")


def sized(value, toy_value):
    """``value``, or ``toy_value`` when the notebooks run at toy size (``KVSTAB_TOY=1``)."""
    return toy_value if toy() else value
