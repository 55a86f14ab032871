"""Named scheduling policies: the presets that ``kvstab compare`` runs side by side.

A preset is a :class:`kvstab.sim.Policy` (admission, overflow, order, victim choice) under a
short name that says which engine or paper it stands for. Some presets depend on the workload
(an output cap must be at least the longest output the law can produce), so they are built by
:func:`policy_presets` for a given law.

docs/semantics.md states each rule precisely, with its source.
"""

from __future__ import annotations

from kvstab.errors import InputError
from kvstab.sim.components import (
    FCFS,
    SPF,
    CurrentAdmission,
    Policy,
    Recompute,
    ReserveAdmission,
    Swap,
)

# name -> one line saying what it stands for (shown by ``kvstab compare --list``).
DESCRIPTIONS = {
    "vllm": "greedy admission (current KV), recompute the newest on overflow, FCFS (vLLM)",
    "swap": "greedy admission, swap the newest to host memory on overflow, FCFS",
    "spf": "greedy admission, recompute, shortest prompt first (window 32)",
    "reserve-oracle": "reserve each request's true peak s+o (an oracle; never overflows)",
}


def policy_presets(law=None) -> dict[str, Policy]:
    """Every named preset, built for ``law`` (a joint length law; needed by the presets that
    depend on the workload, which are left out when it is None)."""
    del law  # no preset depends on the workload yet
    return {
        "vllm": Policy(CurrentAdmission(), Recompute(), FCFS()),
        "swap": Policy(CurrentAdmission(), Swap(), FCFS()),
        "spf": Policy(CurrentAdmission(), Recompute(), SPF(32)),
        "reserve-oracle": Policy(ReserveAdmission(), Recompute(), FCFS()),
    }


def preset(name: str, law=None) -> Policy:
    """The preset ``name`` for ``law``; an InputError lists the names."""
    table = policy_presets(law)
    if name not in table:
        raise InputError("policy", f"must be one of {', '.join(table)}, got {name!r}")
    return table[name]
