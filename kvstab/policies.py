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
    SVF,
    CapAdmission,
    ConservativeAdmission,
    CurrentAdmission,
    LargestKVVictim,
    LeastProgressVictim,
    Policy,
    Recompute,
    ReserveAdmission,
    Swap,
    WatermarkAdmission,
)

# name -> one line saying what it stands for (shown by ``kvstab compare --list``).
DESCRIPTIONS = {
    "vllm": "greedy admission (current KV), recompute the newest on overflow, FCFS (vLLM)",
    "vllm-watermark": "vLLM v0: greedy admission keeping 1% of M free (watermark), recompute",
    "swap": "greedy admission, swap the newest to host memory on overflow, FCFS",
    "least-progress": "greedy admission, recompute the least-progressed request, FCFS",
    "largest-kv": "greedy admission, recompute the request holding the most KV, FCFS",
    "spf": "greedy admission, recompute, shortest prompt first (window 32)",
    "svf": "greedy admission, recompute, smallest volume g(s,o) first (window 32; knows o)",
    "cap": "reserve s + max_tokens (the law's longest output) per request "
    "(TensorRT-LLM guaranteed-no-evict); never overflows",
    "reserve-oracle": "reserve each request's true peak s+o (an oracle; never overflows)",
    "sglang": "SGLang: reserve a decaying ratio of the running requests' remaining max_tokens, "
    "retract the least progressed with headroom on overflow (recompute)",
}


def policy_presets(law=None) -> dict[str, Policy]:
    """Every named preset, built for ``law`` (a joint length law). ``cap`` and ``sglang``
    need the law's longest output as their max_tokens; they are left out when ``law`` is
    None or its outputs are unbounded."""
    presets = {
        "vllm": Policy(CurrentAdmission(), Recompute(), FCFS()),
        "vllm-watermark": Policy(WatermarkAdmission(0.01), Recompute(), FCFS()),
        "swap": Policy(CurrentAdmission(), Swap(), FCFS()),
        "least-progress": Policy(CurrentAdmission(), Recompute(), FCFS(), LeastProgressVictim()),
        "largest-kv": Policy(CurrentAdmission(), Recompute(), FCFS(), LargestKVVictim()),
        "spf": Policy(CurrentAdmission(), Recompute(), SPF(32)),
        "svf": Policy(CurrentAdmission(), Recompute(), SVF(32)),
        "reserve-oracle": Policy(ReserveAdmission(), Recompute(), FCFS()),
    }
    cap = None if law is None else law.max_output
    if cap is not None:
        presets["cap"] = Policy(CapAdmission(int(cap)), Recompute(), FCFS())
        presets["sglang"] = Policy(
            ConservativeAdmission(int(cap)), Recompute(), FCFS(), LeastProgressVictim()
        )
    return presets


def preset(name: str, law=None) -> Policy:
    """The preset ``name`` for ``law``; an InputError lists the names."""
    table = policy_presets(law)
    if name not in table:
        if name in ("cap", "sglang"):
            raise InputError(
                "policy", f"{name} needs a workload whose outputs are bounded (its max_tokens)"
            )
        raise InputError("policy", f"must be one of {', '.join(table)}, got {name!r}")
    return table[name]
