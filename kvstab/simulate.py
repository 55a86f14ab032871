"""Compatibility path: the simulator lives in :mod:`kvstab.sim`.

``from kvstab.simulate import simulate, SimResult`` keeps working; new code imports
:mod:`kvstab.sim`.
"""

from kvstab.sim import *  # noqa: F403
from kvstab.sim import __all__  # noqa: F401
