"""Beyond the paper: a stability map over (λ, M) for the 1:1 workload on one replica.

For each KV capacity M (16k to 131k tokens) a grid of arrival rates around μ(M) is simulated,
all (λ, M) pairs in one compiled call (λ and M are per-trajectory arrays). Each cell gets the
post-warm-up growth rate of the waiting queue, normalised by λ (0: stable; 1 − λ*/λ above the
boundary). Overlaid: the closed forms μ(M) = M/(b̄·E[g]) (Theorem 4.1) and μ(1 − δ(M)) with
δ = max(s+o)/M (Theorem 4.2), and the simulated boundary λ*(M) (hinge fit per M, 95 % CI).
Small M makes δ large, so the gap between the two theorems' bounds becomes visible.

Usage: python experiments/stability_map.py [--quick] [--force] [--results DIR]
"""

from __future__ import annotations

import _common as ex
import numpy as np

from kvstab import paper
from kvstab import reproduce as rp
from kvstab.progress import Progress

NAME = "stability_map"
ORDER = 80
TITLE = "Stability map over (λ, M), 1:1 workload (kvstab simulation)"


def config(quick: bool) -> dict:
    return {
        "seed": 9,
        "workload": "1:1",
        "kv_capacity_tokens": ex.pick(
            quick,
            [16000, 24000, 32000, 48000, 64000, 96000, paper.KV_CAPACITY_TOKENS],
            [
                12000,
                16000,
                20000,
                24000,
                32000,
                40000,
                48000,
                64000,
                80000,
                96000,
                paper.KV_CAPACITY_TOKENS,
            ],
        ),
        "rate_factors": ex.pick(
            quick,
            [0.7, 0.8, 0.86, 0.92, 0.97, 1.02, 1.08, 1.16, 1.3],
            list(np.round(np.linspace(0.6, 1.4, 21), 3)),
        ),
        "chunk_tokens": paper.CHUNK_TOKENS,
        # small M serves few requests per step: the horizon must be long for them
        "num_steps": ex.pick(quick, 16000, 64000),
        "trajectories_per_cell": ex.pick(quick, 3, 12),
        "warmup_frac": 0.25,
    }


def run(cfg: dict, progress: Progress) -> dict:
    from kvstab.sim import ConstantBatchTime, Poisson, System, Workload, simulate

    law = paper.law_for(cfg["workload"])
    b = paper.WORKLOADS[cfg["workload"]]["batch_time_s"]
    Ms = np.asarray(cfg["kv_capacity_tokens"], np.int64)
    f = np.asarray(cfg["rate_factors"], np.float64)
    n = cfg["trajectories_per_cell"]
    th = [ex.mu_theory(law, b, kv_capacity_tokens=int(m)) for m in Ms]
    mu = np.array([t["mu"] for t in th])
    # trajectory order: (M, rate, replicate)
    M_traj = np.repeat(Ms, f.size * n)
    lam_traj = np.repeat((mu[:, None] * f[None, :]).ravel(), n)
    progress(f"{Ms.size} capacities x {f.size} rates x {n} trajectories in one call")
    res = simulate(
        Workload(law, Poisson(lam_traj)),
        System(M_traj, cfg["chunk_tokens"], ConstantBatchTime(b)),
        num_steps=cfg["num_steps"],
        num_trajectories=M_traj.size,
        seed=cfg["seed"],
        warmup_frac=cfg["warmup_frac"],
        progress=progress.sim("simulate"),
    )
    slope = res.queue_slope_per_traj()
    thr = res.throughput_per_traj()
    cells = slope.reshape(Ms.size, f.size, n)
    lam = lam_traj.reshape(Ms.size, f.size, n)
    boundaries = []
    for i in range(Ms.size):
        bnd = ex.hinge_boundary(lam[i].ravel(), cells[i].ravel(), seed=cfg["seed"] + i)
        boundaries.append({"mean": bnd["mean"], "ci": bnd["ci"]})
    return {
        "kv_capacity_tokens": Ms,
        "rate_factors": f,
        "rates_per_s": mu[:, None] * f[None, :],
        "queue_slope_per_s": cells.mean(axis=2),
        "growth_fraction": (cells / lam).mean(axis=2),
        "throughput_per_s": thr.reshape(Ms.size, f.size, n).mean(axis=2),
        "mu_theory": mu,
        "mu_stable": np.array([t["mu_stable"] for t in th]),
        "delta": np.array([t["delta"] for t in th]),
        "lambda_star": [bd["mean"] for bd in boundaries],
        "lambda_star_ci": [bd["ci"] for bd in boundaries],
        "lambda_star_method": ex.hinge_boundary.__doc__.split("\n")[0],
        "batch_time_s": b,
        "law": law.spec,
        "flags": sorted({fl for fls in res.flags for fl in fls}),
        "notes": [
            "kvstab simulation; lambda* per M from a hinge fit of the queue growth rate "
            "on this grid (95 % bootstrap CI)."
        ],
    }


if __name__ == "__main__":
    import sys

    sys.exit(rp.experiment_main(sys.modules[__name__]))
