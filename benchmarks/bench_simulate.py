# ruff: noqa: E402  (the XLA device count must be set before JAX starts)
"""Simulator throughput benchmark (issue 3): the 1:1 workload at saturation.

Prints and writes (JSON) compile time, steady-state completed requests simulated per second,
trajectory-steps per second, state memory per trajectory, and the same workload through the
plain-Python reference for the speed ratio. Runs on whatever JAX backend is active (CPU here,
GPU when JAX's CUDA build is installed).

    python benchmarks/bench_simulate.py                       # N=2048, 4096 steps
    python benchmarks/bench_simulate.py --trajectories 65536  # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

from kvstab.cli import use_all_cpu_cores

use_all_cpu_cores()  # one XLA CPU device per core: the simulator shards over them

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np

from kvstab import analytic, reference
from kvstab.laws import Independent, Uniform
from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS
from kvstab.results import write_json
from kvstab.sim import ConstantBatchTime, Policy, SimParams, StaticConfig, System
from kvstab.sim.engine import compact_rows
from kvstab.sim.rollout import _rollout_jit, batch_rollout
from kvstab.sim.state import init_state
from kvstab.workload import sample_workload

M, CHUNK, B = KV_CAPACITY_TOKENS, CHUNK_TOKENS, BATCH_TIME_S  # the paper's system


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4096)
    ap.add_argument("--overflow", choices=("recompute", "swap"), default="recompute")
    ap.add_argument("--reference-steps", type=int, default=4096)
    ap.add_argument("--admit-window", type=int, default=StaticConfig.admit_window)
    ap.add_argument("--preempt-window", type=int, default=StaticConfig.preempt_window)
    ap.add_argument(
        "--compact-rows", type=int, default=0, help="StaticConfig.compact_rows (0: automatic)"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs; the median is reported (noisy hosts)"
    )
    ap.add_argument("--out", default=None, help="JSON results file (default benchmarks/results/)")
    args = ap.parse_args(argv)

    law = Independent(Uniform(10, 1600), Uniform(10, 1600))
    n, T = args.trajectories, args.steps
    eg = float(analytic.mean_g(law, CHUNK))
    num_requests = int(1.3 * T * M / eg) + 2048
    wl = sample_workload(
        jax.random.PRNGKey(0),
        law,
        num_trajectories=n,
        num_requests=num_requests,
        arrivals="saturated",
    )
    policy = Policy.from_names(overflow=args.overflow)
    cfg = StaticConfig(
        chunk_tokens=CHUNK,
        num_steps=T,
        block_steps=64,
        saturated=True,
        policy=policy,
        max_running=1024,
        max_preempted=1024,
        cal_len=2048,
        admit_window=args.admit_window,
        preempt_window=args.preempt_window,
        compact_rows=args.compact_rows,
    )
    params = SimParams(
        jnp.full(n, M, jnp.int32),
        jnp.ones(n, jnp.float32),
        jnp.full(n, B, jnp.float32),
        jnp.zeros((n, 4), jnp.float32),
    )
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(init_state(cfg, n)))
    wl_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(wl))

    state0 = init_state(cfg, n)
    t0 = time.perf_counter()
    _rollout_jit.lower(wl, params, None, state0, cfg).compile()
    compile_s = time.perf_counter() - t0
    out = batch_rollout(wl, params, None, cfg)  # warm (cached executable)
    jax.block_until_ready(out)
    runs = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        out = batch_rollout(wl, params, None, cfg)
        jax.block_until_ready(out)
        runs.append(time.perf_counter() - t0)
    run = float(np.median(runs))
    completed = int(np.asarray(out.final.completed).sum())
    flags = int(np.bitwise_or.reduce(np.asarray(out.final.flags)))

    # The reference on one trajectory of the same workload.
    rs = np.asarray(wl.prompt[0])
    ro = np.asarray(wl.output[0])
    t0 = time.perf_counter()
    ref = reference.simulate(
        None,
        rs,
        ro,
        system=System(M, CHUNK, ConstantBatchTime(B)),
        policy=policy,
        num_steps=args.reference_steps,
        saturated=True,
    )
    ref_s = time.perf_counter() - t0
    ref_rate = ref.num_completed / ref_s

    dev = jax.devices()[0]
    mem = (dev.memory_stats() or {}) if hasattr(dev, "memory_stats") else {}
    peak = mem.get("peak_bytes_in_use")  # accelerators report it; the CPU backend does not
    res = {
        "benchmark": "simulate: 1:1 workload at saturation",
        "backend": jax.default_backend(),
        "device": str(getattr(dev, "device_kind", dev.platform)),
        "cpu_count": os.cpu_count(),
        "jax_devices": jax.local_device_count(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "trajectories": n,
        "steps": T,
        "overflow": args.overflow,
        "admit_window": args.admit_window,
        "preempt_window": args.preempt_window,
        "compact_rows": compact_rows(cfg, n // jax.local_device_count()),
        "load_average_1min": os.getloadavg()[0],
        "compile_s": compile_s,
        "run_s": run,
        "run_s_all": runs,
        "completed_per_s_best": completed / min(runs),
        "completed": completed,
        "completed_per_s": completed / run,
        "trajectory_steps_per_s": n * T / run,
        "us_per_trajectory_step": run / (n * T) * 1e6,
        "state_bytes_per_trajectory": state_bytes / n,
        "workload_bytes_per_trajectory": wl_bytes / n,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_bytes": peak,
        "device_peak_bytes_per_trajectory": None if peak is None else peak / n,
        "flags": flags,
        "reference_steps": args.reference_steps,
        "reference_completed_per_s": ref_rate,
        "speedup_vs_reference": (completed / run) / ref_rate,
        "completions_per_step": completed / (n * T),
        "theory_completions_per_step": M / eg,
    }
    for k, v in res.items():
        if isinstance(v, list):
            v = " ".join(f"{x:.3f}" for x in v)
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    path = args.out or os.path.join(
        os.path.dirname(__file__), "results", f"simulate_{res['backend']}_{n}x{T}.json"
    )
    write_json(path, {"kind": "benchmark", "result": res})
    print(f"wrote {path}")
    return 0 if flags == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
