"""Beyond the paper: how the router changes queueing on eight replicas, 1:1 workload.

The paper routes round-robin. kvstab compares four routers (round_robin, random, jsq =
join the shortest queue, least_kv = fewest KV tokens held + waiting prompt tokens) on the
same arrival streams (common random numbers: one seed, the same λ grid) at loads from 70 %
to 98 % of the cluster's closed-form capacity 8μ. Per router and load: mean waiting queue
(cluster total), throughput, and waiting-time quantiles of recorded requests, each with a
95 % interval over trajectories where one applies.

Usage: python experiments/routers.py [--quick] [--force] [--results DIR]
"""

from __future__ import annotations

import _common as ex
import numpy as np

from kvstab import metrics, paper
from kvstab import reproduce as rp
from kvstab.progress import Progress

NAME = "routers"
ORDER = 70
TITLE = "Routers: queueing on eight replicas, 1:1 workload (beyond the paper)"
ROUTERS = ["round_robin", "random", "jsq", "least_kv"]


def config(quick: bool) -> dict:
    return {
        "seed": 11,
        "workload": "1:1",
        "num_replicas": 8,
        "routers": ROUTERS,
        "kv_capacity_tokens": paper.KV_CAPACITY_TOKENS,
        "chunk_tokens": paper.CHUNK_TOKENS,
        "load_factors": [0.7, 0.8, 0.9, 0.95, 0.98],
        "num_steps": ex.pick(quick, 6000, 32000),
        "trajectories_per_load": ex.pick(quick, 4, 32),
        "num_records": ex.pick(quick, 300, 2000),
        "warmup_frac": 0.25,
    }


def run(cfg: dict, progress: Progress) -> dict:
    from kvstab.sim import (
        Cluster,
        ConstantBatchTime,
        Outputs,
        Poisson,
        System,
        Workload,
        router_from_name,
        simulate,
    )

    law = paper.law_for(cfg["workload"])
    b = paper.WORKLOADS[cfg["workload"]]["batch_time_s"]
    g = cfg["num_replicas"]
    th = ex.mu_theory(law, b)
    n = cfg["trajectories_per_load"]
    loads = np.asarray(cfg["load_factors"], np.float64)
    rates = np.repeat(loads * g * th["mu"], n)
    out = {}
    flags = set()
    for router in cfg["routers"]:
        progress(f"{router}: {loads.size} loads x {n} trajectories on {g} replicas")
        res = simulate(
            Workload(law, Poisson(rates)),
            System(cfg["kv_capacity_tokens"], cfg["chunk_tokens"], ConstantBatchTime(b)),
            num_steps=cfg["num_steps"],
            num_trajectories=rates.size,
            cluster=Cluster(g, router_from_name(router)),
            seed=cfg["seed"],
            outputs=Outputs(num_records=cfg["num_records"]),
            warmup_frac=cfg["warmup_frac"],
            progress=progress.sim(router),
        )
        flags |= {f for fl in res.flags for f in fl}
        w = res.warmup_blocks
        queue = res.queue[:, w:].mean(axis=1)
        thr = res.throughput_per_traj()
        # waits of recorded requests that arrived after the warm-up, per trajectory
        wait = res.records["wait_s"].reshape(rates.size, -1)
        arrival = res.records["arrival_s"].reshape(rates.size, -1)
        t_warm = res.clock_s[:, w - 1][:, None] if w > 0 else np.zeros((rates.size, 1))
        after_warmup = arrival >= t_warm  # nan arrivals (empty record slots) are excluded
        # arrived after the warm-up but never admitted by the end: censored, counted apart
        censored = after_warmup & np.isnan(wait)
        wait = np.where(after_warmup, wait, np.nan)
        rows = []
        for i, f in enumerate(loads):
            sl = slice(i * n, (i + 1) * n)
            qm, qlo, qhi = metrics.mean_ci(queue[sl])
            tm, tlo, thi = metrics.mean_ci(thr[sl])
            pooled = wait[sl].ravel()
            done = pooled[np.isfinite(pooled)]
            rows.append(
                {
                    "load": float(f),
                    "rate_per_s": float(f * g * th["mu"]),
                    "mean_queue": qm,
                    "mean_queue_ci": [qlo, qhi],
                    "throughput_per_s": tm,
                    "throughput_ci": [tlo, thi],
                    "wait_p50_s": float(np.quantile(done, 0.5)) if done.size else None,
                    "wait_p90_s": float(np.quantile(done, 0.9)) if done.size else None,
                    "wait_p99_s": float(np.quantile(done, 0.99)) if done.size else None,
                    "num_waits": int(done.size),
                    "not_admitted": int(censored[sl].sum()),
                }
            )
        out[router] = rows
    return {
        "series": out,
        "mu_theory_cluster": g * th["mu"],
        "mu_stable_cluster": g * th["mu_stable"],
        "batch_time_s": b,
        "flags": sorted(flags),
    }


if __name__ == "__main__":
    import sys

    sys.exit(rp.experiment_main(sys.modules[__name__]))
