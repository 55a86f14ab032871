"""Beyond the paper: which scheduling policy keeps the closed-form capacity μ?

For Table 1's workloads (1:1, 2:1, 1:2) and two near-homogeneous ones (s and o uniform on
950..1050 tokens; s and o constant 1000 tokens), every policy preset of
:mod:`kvstab.policies` is run through :func:`kvstab.compare.compare_policies`: μ_sim, λ* from
a loaded and an empty start (95 % CIs), the metastability verdict, preemptions per
completion, KV in use and the p99 wait at 0.8·μ, beside μ and μ(1−δ).

The question (Ao, Dong, Luo & Simchi-Levi, arXiv 2606.15555, predict limit cycles that lose
up to half the throughput under greedy admission with evict-and-restart on homogeneous
requests): where is μ met, where and by how much does it fail, and which policy restores it?

Usage: python experiments/policies.py [--quick] [--force] [--results DIR]
"""

from __future__ import annotations

import _common as ex

from kvstab import paper
from kvstab import reproduce as rp
from kvstab.progress import Progress

NAME = "policies"
ORDER = 90
TITLE = "Scheduling policies against the closed form μ (beyond the paper)"

# Near-homogeneous workloads (not in the paper): every request about the same size.
HOMOGENEOUS = {
    "near-homogeneous": {"prompt": "uniform:950:1050", "output": "uniform:950:1050"},
    "homogeneous": {"prompt": "const:1000", "output": "const:1000"},
}


def _workloads(quick: bool) -> dict:
    """name -> (prompt law, output law, b̄): Table 1's rows and the homogeneous ones."""
    table1 = {
        name: {
            "prompt": row["prompt"],
            "output": row["output"],
            "batch_time_s": row["batch_time_s"],
        }
        for name, row in paper.WORKLOADS.items()
    }
    extra = {
        name: dict(laws, batch_time_s=paper.BATCH_TIME_S) for name, laws in HOMOGENEOUS.items()
    }
    if quick:  # the one where greedy admission may cycle (a smoke run: ~20 s per policy)
        return {"near-homogeneous": extra["near-homogeneous"]}
    return table1 | extra


def _preset_names() -> list:
    from kvstab.policies import policy_presets

    return list(policy_presets(paper.law_for("1:1")))


def config(quick: bool) -> dict:
    return {
        "seed": 12,
        "workloads": _workloads(quick),
        "policies": _preset_names(),  # every preset at the time of the run
        "kv_capacity_tokens": paper.KV_CAPACITY_TOKENS,
        "chunk_tokens": paper.CHUNK_TOKENS,
        "precision": ex.pick(quick, "tiny", "default"),
        "load_factor": 0.8,
    }


def run(cfg: dict, progress: Progress) -> dict:
    from kvstab.compare import compare_policies
    from kvstab.laws import Independent, parse_law
    from kvstab.sim import ConstantBatchTime, System

    out = {}
    flags = set()
    for i, (name, wl) in enumerate(cfg["workloads"].items()):
        law = Independent(parse_law(wl["prompt"], "prompt"), parse_law(wl["output"], "output"))
        system = System(
            cfg["kv_capacity_tokens"], cfg["chunk_tokens"], ConstantBatchTime(wl["batch_time_s"])
        )
        progress(
            f"workload {name} ({i + 1}/{len(cfg['workloads'])}): {len(cfg['policies'])} policies"
        )
        res = compare_policies(
            law,
            system,
            cfg["policies"],
            precision=cfg["precision"],
            seed=cfg["seed"],
            load_factor=cfg["load_factor"],
            progress=progress,
        )
        d = res.to_dict()
        for row in d["rows"]:
            row.pop("boundary_config", None)  # the sizes are in the config above
            flags |= set(row.get("flags", []))
        out[name] = {"theory": d["theory"], "rows": d["rows"], "wall_s": d["wall_s"]}
        progress.say(res.table_text())
    return {
        "workloads": out,
        "flags": sorted(flags),
        "notes": [
            "kvstab simulation; lambda* from a loaded start (estimate_boundary), lambda*_empty "
            "from an empty start; preemptions and KV use of the saturated run; waits at "
            "load_factor*mu (95 % t intervals over trajectories)."
        ],
    }


if __name__ == "__main__":
    import sys

    sys.exit(rp.experiment_main(sys.modules[__name__]))
