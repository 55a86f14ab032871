"""kvstab: stability analysis of LLM inference under KV-cache memory limits.

Implements and extends the queueing model of Nie, Si and Zhou, "A Queueing-Theoretic
Framework for Stability Analysis of LLM Inference with KV Cache Memory Constraints"
(arXiv 2605.04595): closed forms (:mod:`kvstab.analytic`), a vectorized JAX simulator
(:mod:`kvstab.sim`) with a plain-Python twin (:mod:`kvstab.reference`), boundary
estimators (:mod:`kvstab.stability`) and trace calibration (:mod:`kvstab.fit`).
"""

__version__ = "0.1.0"

# Bumped whenever the simulator's behaviour changes (admission, preemption, timing,
# arrivals, what is counted). Written into every results file so a figure can be traced
# back to the semantics that produced it. See docs/semantics.md.
SIM_SEMANTICS_VERSION = 3

# Before JAX starts: one CPU device per core, and the persistent compile cache
# (kvstab/runtime.py; KVSTAB_CPU_DEVICES=1 and KVSTAB_CACHE_DIR=off opt out).
from kvstab import runtime as _runtime  # noqa: E402

_runtime.configure()

from kvstab.errors import InputError  # noqa: E402
from kvstab.laws import (  # noqa: E402
    Constant,
    Empirical,
    Geometric,
    Independent,
    JointEmpirical,
    LogNormal,
    Uniform,
    parse_law,
)

__all__ = [
    "SIM_SEMANTICS_VERSION",
    "Constant",
    "Empirical",
    "Geometric",
    "Independent",
    "InputError",
    "JointEmpirical",
    "LogNormal",
    "Uniform",
    "__version__",
    "parse_law",
]

# ``kvstab.sweep(grid, ...)``: the function (its module's other names: ``from kvstab.sweep
# import SweepResult``).
from kvstab.sweep import SweepResult, sweep  # noqa: E402

__all__ += ["SweepResult", "sweep"]
