"""Figures 1, 5, 7 and 8: batch-time distributions from kvstab's batch-time models.

The paper's batch-time figures are GPU measurements, which cannot be rerun here. kvstab
regenerates their analogues from its own batch-time models, and every figure says so:

* Figures 1 and 5: the linear model b = c₀ + c_p·P + c_d·D + c_kv·KV
  (``LINEAR_COEFS`` in ``_common.py``, illustrative coefficients) inside a simulation, so
  batch times respond to the batch's prefill/decode tokens and resident KV: the 1:1 workload
  (Figure 1) and P/D 2:1 and 4:1 (Figure 5), each at λ ∈ {1, 2, 3, 5} req/s (λ = 5 overloads
  every workload; per-step batch times after warm-up, pooled over trajectories).
* Figures 7 and 8: the heavy-tailed two-point random model of Table 4
  (``HEAVY_TAIL`` in ``_common.py``, ~30 % slow batches) and the same after 5 % and 10 %
  trimming, with the b̄ estimators marked.

Usage: python experiments/batch_time_figs.py [--quick] [--force] [--results DIR]
"""

from __future__ import annotations

import _common as ex
import numpy as np

from kvstab import paper
from kvstab import reproduce as rp
from kvstab.progress import Progress

NAME = "batch_time_figs"
ORDER = 70
TITLE = "Figures 1, 5, 7, 8: batch times from kvstab's batch-time models"


def config(quick: bool) -> dict:
    return {
        "seed": 8,
        "workloads": ["1:1", "2:1", "4:1"],
        "rates_per_s": [1.0, 2.0, 3.0, 5.0],
        "linear_coefs": list(ex.LINEAR_COEFS),
        "kv_capacity_tokens": paper.KV_CAPACITY_TOKENS,
        "chunk_tokens": paper.CHUNK_TOKENS,
        "num_steps": ex.pick(quick, 4000, 20000),
        "trajectories_per_rate": ex.pick(quick, 2, 16),
        "warmup_frac": 0.25,
        "heavy_tail": dict(ex.HEAVY_TAIL),
        "num_batch_samples": 10000,
        "heavy_tail_seed": 4 + 7,  # the same draws as Table 4's estimators
    }


def run(cfg: dict, progress: Progress) -> dict:
    from kvstab.sim import LinearBatchTime, Outputs, Poisson, System, Workload, simulate

    laws = {w: paper.law_for(w) for w in cfg["workloads"]}
    n = cfg["trajectories_per_rate"]
    rates = np.repeat(np.asarray(cfg["rates_per_s"], np.float64), n)
    sizes = ex.shared_sizes(
        list(laws.values()),
        num_steps=cfg["num_steps"],
        saturated=False,
        max_rate_per_s=max(cfg["rates_per_s"]),
        batch_time_s=0.08,
    )
    linear = {}
    for i, (w, law) in enumerate(laws.items()):
        progress(f"{w}: linear batch-time model at rates {cfg['rates_per_s']}")
        res = simulate(
            Workload(law, Poisson(rates)),
            System(
                cfg["kv_capacity_tokens"],
                cfg["chunk_tokens"],
                LinearBatchTime(*cfg["linear_coefs"]),
            ),
            num_steps=cfg["num_steps"],
            num_trajectories=rates.size,
            seed=cfg["seed"] + i,
            outputs=Outputs(record_steps=True),
            warmup_frac=cfg["warmup_frac"],
            sizes=sizes,
            progress=progress.sim(w),
        )
        bt = np.asarray(res.steps["batch_time_s"], np.float64)
        k0 = int(cfg["warmup_frac"] * bt.shape[1])
        thr = res.throughput_per_traj()
        per_rate = []
        for j, lam in enumerate(cfg["rates_per_s"]):
            rows = slice(j * n, (j + 1) * n)
            x = bt[rows, k0:].ravel()
            per_rate.append(
                {
                    "rate_per_s": lam,
                    "ecdf": ex.ecdf_points(x, num=400),
                    "mean_s": float(x.mean()),
                    "median_s": float(np.median(x)),
                    "p90_s": float(np.quantile(x, 0.9)),
                    "p99_s": float(np.quantile(x, 0.99)),
                    "max_s": float(x.max()),
                    "throughput_per_s": float(thr[rows].mean()),
                    "mean_kv_tokens": float(res.steps["kv_tokens"][rows, k0:].mean()),
                    "mean_prefill_tokens": float(res.steps["prefill_tokens"][rows, k0:].mean()),
                    "mean_decode_tokens": float(res.steps["decode_tokens"][rows, k0:].mean()),
                }
            )
        linear[w] = {
            "law": law.spec,
            "per_rate": per_rate,
            "flags": sorted({f for fl in res.flags for f in fl}),
        }

    progress("heavy-tailed two-point model (Figures 7 and 8)")
    # the same model and estimators as Table 4
    table4_heavy_tail = rp.sibling(__file__, "table4_heavy_tail")

    ht = {**cfg["heavy_tail"]}
    times = table4_heavy_tail.model_batch_times(
        ht, cfg["num_batch_samples"], cfg["heavy_tail_seed"]
    )
    est = table4_heavy_tail.estimators(times)
    srt = np.sort(times)
    trimmed = {}
    for frac in (0.05, 0.10):
        cut = int(np.floor(frac * srt.size))
        trimmed[f"{int(frac * 100)}"] = ex.ecdf_points(srt[cut : srt.size - cut], num=400)
    edges = np.geomspace(srt[0] * 0.95, srt[-1] * 1.05, 61)
    counts, _ = np.histogram(times, bins=edges)
    return {
        "linear": linear,
        "linear_coefs": cfg["linear_coefs"],
        "heavy_tail": {
            "model": ht,
            "num_samples": int(times.size),
            "ecdf": ex.ecdf_points(times, num=400),
            "trimmed_ecdf": trimmed,
            "hist_edges_s": edges,
            "hist_counts": counts,
            "estimators_s": est,
            "slow_fraction_observed": float(
                np.mean(times > ht["batch_time_s"] * np.sqrt(ht["slow_factor"]))
            ),
        },
        "notes": [
            "kvstab batch-time model output, not GPU measurements.",
            "Linear model coefficients are illustrative (not fitted to a GPU).",
        ],
    }


if __name__ == "__main__":
    import sys

    sys.exit(rp.experiment_main(sys.modules[__name__]))
