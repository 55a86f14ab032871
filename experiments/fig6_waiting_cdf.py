"""Figure 6 (appendix): waiting-time CDFs, one replica, 1:1, λ ∈ {2, 3.387, 4, 5} req/s.

The paper: almost no waiting at 2 req/s; at its measured critical rate 3.387 waits already
drift (median about 177 s in one version). kvstab records, per trajectory, the first
``num_records`` requests' waiting time (arrival to first admission), time to first token and
latency (``num_records``); requests not admitted by the end of the run are censored (counted,
and the CDF stays below 1). With a stable rate the waits are stationary; above the boundary
they grow with the request index, so the CDF depends on the horizon (stated in the figure).

Usage: python experiments/fig6_waiting_cdf.py [--quick] [--force] [--results DIR]
"""

from __future__ import annotations

import _common as ex
import numpy as np

from kvstab import metrics, paper
from kvstab import reproduce as rp
from kvstab.progress import Progress

NAME = "fig6_waiting_cdf"
ORDER = 62
TITLE = "Figure 6: waiting-time CDFs, one replica, 1:1"


def config(quick: bool) -> dict:
    return {
        "seed": 7,
        "workload": "1:1",
        "rates_per_s": [2.0, 3.387, 4.0, 5.0],
        "kv_capacity_tokens": paper.KV_CAPACITY_TOKENS,
        "chunk_tokens": paper.CHUNK_TOKENS,
        "num_steps": ex.pick(quick, 12000, 48000),
        "trajectories_per_rate": ex.pick(quick, 6, 64),
        "num_records": ex.pick(quick, 1000, 4000),
        "warmup_frac": 0.25,
        # only requests that arrived in the first 80 % of the run: the last ones have not
        # had time to finish, which would censor the latency CDF
        "arrival_window_frac": 0.8,
    }


def run(cfg: dict, progress: Progress) -> dict:
    from kvstab.sim import ConstantBatchTime, Outputs, Poisson, System, Workload, simulate

    law = paper.law_for(cfg["workload"])
    b = paper.WORKLOADS[cfg["workload"]]["batch_time_s"]
    n = cfg["trajectories_per_rate"]
    rates = np.repeat(np.asarray(cfg["rates_per_s"], np.float64), n)
    progress(
        f"{len(cfg['rates_per_s'])} rates x {n} trajectories, "
        f"records of the first {cfg['num_records']} requests"
    )
    res = simulate(
        Workload(law, Poisson(rates)),
        System(cfg["kv_capacity_tokens"], cfg["chunk_tokens"], ConstantBatchTime(b)),
        num_steps=cfg["num_steps"],
        num_trajectories=rates.size,
        seed=cfg["seed"],
        outputs=Outputs(num_records=cfg["num_records"]),
        warmup_frac=cfg["warmup_frac"],
        progress=progress.sim("simulate"),
    )
    rec = res.records
    horizon = float(res.clock_s[:, -1].mean())
    series = []
    for i, lam in enumerate(cfg["rates_per_s"]):
        rows = slice(i * n, (i + 1) * n)
        # requests that arrived within the window (the first part of the run)
        arrived = rec["arrival_s"][rows] <= cfg["arrival_window_frac"] * horizon
        entry = {"rate_per_s": lam}
        for key in ("wait_s", "ttft_s", "latency_s"):
            x = np.where(arrived, rec[key][rows], np.nan)
            # censored: arrived but the event did not happen by the end of the run
            cens = np.where(arrived & ~np.isfinite(rec[key][rows]), np.inf, x)
            e = ex.ecdf_points(cens[arrived], num=300)
            med = np.nanmedian(np.where(np.isinf(cens), np.nan, cens), axis=1)
            m, lo, hi = (
                metrics.mean_ci(med[np.isfinite(med)])
                if np.isfinite(med).sum() >= 2
                else (float("nan"),) * 3
            )
            e["median_per_traj_mean"] = m
            e["median_per_traj_ci"] = [lo, hi]
            e["pooled_median"] = float(np.median(np.where(arrived, cens, np.nan)[arrived]))
            entry[key] = e
        entry["num_requests"] = int(arrived.sum())
        entry["last_arrival_s"] = float(
            np.nanmax(np.where(arrived, rec["arrival_s"][rows], np.nan))
        )
        series.append(entry)
    th = ex.mu_theory(law, b)
    return {
        "series": series,
        "horizon_s": horizon,
        "arrival_window_frac": cfg["arrival_window_frac"],
        "mu_theory": th["mu"],
        "mu_stable": th["mu_stable"],
        "batch_time_s": b,
        "flags": sorted({f for fl in res.flags for f in fl}),
        "sim_config": res.config,
    }


if __name__ == "__main__":
    import sys

    sys.exit(rp.experiment_main(sys.modules[__name__]))
