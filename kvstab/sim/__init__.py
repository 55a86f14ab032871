"""The JAX simulator of KV-limited batched decoding (docs/semantics.md, PAPER.md §1).

The model: requests arrive (a length law and an arrival process: :class:`Workload`), wait
in a queue, and are run in batches by one or more replicas (:class:`System`, :class:`Cluster`).
Each step every running request executes one prefill chunk or decodes one token, holding a
growing share of the KV cache of M tokens; a scheduler (:class:`Policy`) admits waiting
requests while they fit and preempts the newest when memory overflows. The reference
(:mod:`kvstab.reference`) is the same model in plain Python, driven by the same components.

Files, in reading order:

* ``components.py``: the choices (admission, overflow, order, batch time, router, arrivals)
  as small objects, each with a JAX hook and a reference hook;
* ``api.py``: :func:`simulate`, the one entry point, and :class:`SimResult`;
* ``step.py``: one step, in the order of docs/semantics.md;
* ``state.py``: the state (grouped by role), parameters, static configuration, flags;
* ``sizing.py``: buffer sizes (allocate on the host, grow on a flag);
* ``engine.py``: how the preemption/admission loops run over a batch (speed only);
* ``rollout.py``: scan over steps, jit, sharding over devices.

Example::

    from kvstab.laws import Independent, Uniform
    from kvstab.sim import Poisson, Policy, Swap, System, Workload, simulate

    law = Independent(Uniform(10, 1600), Uniform(10, 1600))
    res = simulate(Workload(law, Poisson(3.0)), System(kv_capacity_tokens=131000),
                   Policy(overflow=Swap()), num_steps=8192, num_trajectories=32)
"""

from kvstab.sim.api import SimResult, simulate, step_records
from kvstab.sim.components import (
    FCFS,
    JSQ,
    SPF,
    Cluster,
    ConstantBatchTime,
    CurrentAdmission,
    Deterministic,
    LeastKV,
    LinearBatchTime,
    Outputs,
    Poisson,
    Policy,
    RandomBatchTime,
    RandomRouter,
    Recompute,
    Replay,
    ReserveAdmission,
    RoundRobin,
    Saturated,
    Swap,
    System,
    Workload,
    arrivals_from_name,
    batch_time_from_name,
    components_from_names,
    policy_from_names,
    router_from_name,
    workload_from_names,
)
from kvstab.sim.rollout import batch_rollout, num_compilations
from kvstab.sim.sizing import allocate_sizes
from kvstab.sim.state import Flag, SimParams, StaticConfig

__all__ = [
    "FCFS",
    "JSQ",
    "SPF",
    "Cluster",
    "ConstantBatchTime",
    "CurrentAdmission",
    "Deterministic",
    "Flag",
    "LeastKV",
    "LinearBatchTime",
    "Outputs",
    "Poisson",
    "Policy",
    "RandomBatchTime",
    "RandomRouter",
    "Recompute",
    "Replay",
    "ReserveAdmission",
    "RoundRobin",
    "Saturated",
    "SimParams",
    "SimResult",
    "StaticConfig",
    "Swap",
    "System",
    "Workload",
    "allocate_sizes",
    "arrivals_from_name",
    "batch_rollout",
    "batch_time_from_name",
    "components_from_names",
    "num_compilations",
    "policy_from_names",
    "router_from_name",
    "simulate",
    "step_records",
    "workload_from_names",
]
