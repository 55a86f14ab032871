"""Figure 2: waiting queue vs time, one replica, 1:1 workload, λ ∈ {1, 3, 5, 20, 50} req/s.

The paper's GPU runs show a bounded queue (< 5) at 1 and 3 req/s and linear growth at 5, 20
and 50. kvstab simulates the same system (M = 131,000, ŝ = 512, b̄ = 0.0372 s, Poisson
arrivals, FCFS with recompute preemption); all rates run in one compiled call (λ is a
per-trajectory array). Results: mean and 10-90 % band across trajectories, a few sample paths.

Usage: python experiments/fig2_queue_one_gpu.py [--quick] [--force] [--results DIR]
"""

from __future__ import annotations

import _common as ex
import numpy as np

from kvstab import paper
from kvstab import reproduce as rp
from kvstab.progress import Progress

NAME = "fig2_queue_one_gpu"
ORDER = 60
TITLE = "Figure 2: waiting queue vs time, one replica, 1:1"


def config(quick: bool) -> dict:
    return {
        "seed": 5,
        "workload": "1:1",
        "rates_per_s": [1.0, 3.0, 5.0, 20.0, 50.0],
        "num_replicas": 1,
        "kv_capacity_tokens": paper.KV_CAPACITY_TOKENS,
        "chunk_tokens": paper.CHUNK_TOKENS,
        "num_steps": ex.pick(quick, 8000, 32000),
        "trajectories_per_rate": ex.pick(quick, 6, 64),
        "warmup_frac": 0.25,
    }


def run(cfg: dict, progress: Progress) -> dict:
    return queue_experiment(cfg, progress)


def queue_experiment(cfg: dict, progress: Progress) -> dict:
    from kvstab.sim import (
        Cluster,
        ConstantBatchTime,
        Poisson,
        System,
        Workload,
        router_from_name,
        simulate,
    )

    law = paper.law_for(cfg["workload"])
    b = paper.WORKLOADS[cfg["workload"]]["batch_time_s"]
    rates = np.repeat(np.asarray(cfg["rates_per_s"], np.float64), cfg["trajectories_per_rate"])
    progress(
        f"{len(cfg['rates_per_s'])} rates x {cfg['trajectories_per_rate']} trajectories "
        f"on {cfg['num_replicas']} replica(s)"
    )
    res = simulate(
        Workload(law, Poisson(rates)),
        System(cfg["kv_capacity_tokens"], cfg["chunk_tokens"], ConstantBatchTime(b)),
        num_steps=cfg["num_steps"],
        num_trajectories=rates.size,
        cluster=Cluster(cfg["num_replicas"], router_from_name(cfg.get("router", "round_robin"))),
        seed=cfg["seed"],
        warmup_frac=cfg["warmup_frac"],
        progress=progress.sim("simulate"),
    )
    th = ex.mu_theory(law, b)
    out = ex.queue_series(res, cfg["rates_per_s"])
    out.update(
        {
            "mu_theory": cfg["num_replicas"] * th["mu"],
            "mu_stable": cfg["num_replicas"] * th["mu_stable"],
            "batch_time_s": b,
            "sim_config": res.config,
        }
    )
    return out


if __name__ == "__main__":
    import sys

    sys.exit(rp.experiment_main(sys.modules[__name__]))
