"""Figure 4: total waiting queue vs time, eight replicas behind round-robin, 1:1 workload,
λ ∈ {8, 24, 40, 160, 400} req/s (the per-replica rates of Figure 2).

The paper's 8-GPU runs show bounded queues at 8 and 24 req/s and growth from 40 up. kvstab
simulates eight replicas (``num_replicas=8``, ``router='round_robin'``) and sums their
waiting queues.

Usage: python experiments/fig4_queue_eight_gpus.py [--quick] [--force] [--results DIR]
"""

from __future__ import annotations

import _common as ex

from kvstab import paper
from kvstab import reproduce as rp
from kvstab.progress import Progress

NAME = "fig4_queue_eight_gpus"
ORDER = 61
TITLE = "Figure 4: total waiting queue vs time, eight replicas, 1:1"


def config(quick: bool) -> dict:
    return {
        "seed": 6,
        "workload": "1:1",
        "rates_per_s": [8.0, 24.0, 40.0, 160.0, 400.0],
        "num_replicas": 8,
        "router": "round_robin",
        "kv_capacity_tokens": paper.KV_CAPACITY_TOKENS,
        "chunk_tokens": paper.CHUNK_TOKENS,
        "num_steps": ex.pick(quick, 8000, 32000),
        "trajectories_per_rate": ex.pick(quick, 3, 32),
        "warmup_frac": 0.25,
    }


def run(cfg: dict, progress: Progress) -> dict:
    fig2 = rp.sibling(__file__, "fig2_queue_one_gpu")  # the same experiment, 8 replicas
    return fig2.queue_experiment(cfg, progress)


if __name__ == "__main__":
    import sys

    sys.exit(rp.experiment_main(sys.modules[__name__]))
