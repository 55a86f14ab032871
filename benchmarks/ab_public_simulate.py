# ruff: noqa: E402  (the XLA device count must be set before JAX starts)
"""Before/after benchmark of the public simulate(), end to end: the 1:1 workload at saturation.

Times the first call (compile included) and a repeated call, and counts completions (which
must match between versions). It also runs with the pre-refactor API, so one script times both:

    PYTHONPATH=<old checkout> python benchmarks/ab_public_simulate.py 1024 4096 old.json
    python benchmarks/ab_public_simulate.py 1024 4096 new.json
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from kvstab.cli import use_all_cpu_cores

use_all_cpu_cores()

from kvstab import SIM_SEMANTICS_VERSION, __version__
from kvstab.laws import Independent, Uniform
from kvstab.results import write_json

LAW = Independent(Uniform(10, 1600), Uniform(10, 1600))


def runner(n: int, t: int):
    """A zero-argument call of the public simulate() for whichever API is installed."""
    try:
        from kvstab.sim import Saturated, System, Workload, simulate
    except ImportError:  # the pre-refactor API
        from kvstab.simulate import simulate

        def run_old():
            return simulate(LAW, saturated=True, num_steps=t, num_trajectories=n, seed=3)

        return "old", run_old

    def run_new():
        return simulate(
            Workload(LAW, Saturated()), System(), num_steps=t, num_trajectories=n, seed=3
        )

    return "new", run_new


def main(argv: list[str]) -> int:
    n, t = int(argv[0]), int(argv[1])
    api, run = runner(n, t)
    out: dict = {"api": api, "trajectories": n, "steps": t, "seed": 3}
    for i in range(2):
        t0 = time.perf_counter()
        res = run()
        out[f"call{i}_s"] = round(time.perf_counter() - t0, 3)
    out["completed"] = int(res.completed[:, -1].sum())
    out["completed_per_s_repeat"] = round(out["completed"] / out["call1_s"])
    out.update(machine=platform.machine(), cpus=os.cpu_count(), kvstab_version=__version__)
    out["sim_semantics_version"] = SIM_SEMANTICS_VERSION
    print(json.dumps(out))
    if len(argv) > 2:
        write_json(argv[2], out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
