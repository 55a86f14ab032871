# ruff: noqa: E402  (the XLA device count must be set before JAX starts)
"""Sweep benchmark (issue 13): a (λ, M) grid of the 1:1 workload × R replications × T steps.

The issue's size is 1,000 points (40 λ/μ × 25 M) × 64 replications × 4,096 steps (64,000
trajectories, one compilation). Prints and writes (JSON, benchmarks/results/) the wall time
(compile included), the compilations, trajectory-steps per second and, for a smaller grid
than the issue's, the wall time extrapolated linearly in trajectories (labelled as such).

    python benchmarks/bench_sweep.py                                 # the issue's size
    python benchmarks/bench_sweep.py --rates 8 --kvs 5               # 40 points (2-core CPU)
    python benchmarks/bench_sweep.py --replications 64 --rates 40 --kvs 26  # GPU: 66,560
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

from kvstab.cli import use_all_cpu_cores

use_all_cpu_cores()

import jax
import numpy as np

from kvstab.results import write_json
from kvstab.sweep import sweep

FULL = dict(rates=40, kvs=25, replications=64, steps=4096)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=int, default=FULL["rates"], help="λ/μ values in [0.5, 1.2]")
    ap.add_argument("--kvs", type=int, default=FULL["kvs"], help="M values in [40000, 131000]")
    ap.add_argument("--replications", type=int, default=FULL["replications"])
    ap.add_argument("--steps", type=int, default=FULL["steps"])
    ap.add_argument("--records", choices=("all", "none"), default="all")
    ap.add_argument("--chunk-points", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    grid = {
        "workload": "1:1",
        "rate_fraction": np.round(np.linspace(0.5, 1.2, args.rates), 4).tolist(),
        "kv_tokens": np.linspace(40000, 131000, args.kvs).astype(int).tolist(),
    }
    points = args.rates * args.kvs
    trajs = points * args.replications
    last = [0.0]

    def progress(done, total):
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            print(f"  {done:.1f}/{total} points", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = sweep(
            grid,
            replications=args.replications,
            num_steps=args.steps,
            out=tmp,
            records=args.records == "all",
            chunk_points=args.chunk_points,
            progress=progress,
        )
        wall = time.perf_counter() - t0
    full_trajs = FULL["rates"] * FULL["kvs"] * FULL["replications"]
    steps = int(res.config["num_steps"])
    out = {
        "kind": "bench_sweep",
        "grid": {"rate_fraction": len(grid["rate_fraction"]), "kv_tokens": args.kvs},
        "points": points,
        "replications": args.replications,
        "trajectories": trajs,
        "num_steps": steps,
        "records": args.records,
        "chunks": res.config["num_chunks"],
        "chunk_points": res.config["chunk_points"],
        "wall_s": wall,
        "compilations": res.compilations,
        "trajectory_steps_per_s": trajs * steps / wall,
        "devices": [str(d) for d in jax.local_devices()],
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "verdicts": {v: int(sum(r["verdict"] == v for r in res.rows)) for v in
                     ("stable", "unstable", "inconclusive")},  # fmt: skip
    }
    if trajs != full_trajs or steps != FULL["steps"]:
        out["extrapolated_full_wall_s"] = wall * full_trajs * FULL["steps"] / (trajs * steps)
        out["extrapolation"] = (
            "linear in trajectories x steps from this smaller run (compile time included "
            "once, so an overestimate by about one compile); not a measurement"
        )
    path = args.out or os.path.join(
        os.path.dirname(__file__),
        "results",
        f"sweep_{jax.default_backend()}_{points}x{args.replications}x{steps}.json",
    )
    write_json(path, out)
    for k, v in out.items():
        print(f"{k}: {v}")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
