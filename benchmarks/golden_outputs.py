"""Prove a refactor changes no simulated number: record every output on fixed seeds, compare.

Runs a fixed set of cases (every admission x overflow x order combination, the three batch-time
models, static and dynamic routers, trace replay, saturated and loaded starts) through the
public ``simulate`` and through the reference simulator, and digests every output array
(per-step KV, queue, running, completions, preemptions, batch time; per-block series; every
request's admission, first-token and finish step and preemption count; flags; the reference's
per-step and per-request arrays) bit for bit.

    python benchmarks/golden_outputs.py --record benchmarks/results/golden_<commit>.json
    python benchmarks/golden_outputs.py --compare benchmarks/results/golden_<commit>.json

``--compare`` exits 1 and names every case and field that differs. The baseline committed in
benchmarks/results/ was recorded from the code before the architecture refactor (its commit is
in the file). A case is written as the keyword arguments of the pre-refactor API; ``_run`` and
``_run_reference`` translate them to the components of :mod:`kvstab.sim`.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _cases() -> dict[str, dict]:
    """name -> (law spec, keyword arguments of the pre-refactor ``simulate``)."""
    cases: dict[str, dict] = {}
    base = dict(
        law="uniform:1:300/uniform:1:300",
        kv_capacity_tokens=2400,
        chunk_tokens=64,
        batch_time_s=0.03125,
        arrival_rate_per_s=40.0,
        num_steps=768,
        num_trajectories=3,
        num_records=96,
        record_steps=True,
    )
    for (adm, ovf, order), seed in zip(
        itertools.product(("current", "reserve"), ("recompute", "swap"), ("fcfs", "spf")),
        range(100, 200),
        strict=False,
    ):
        cases[f"{adm}-{ovf}-{order}"] = dict(
            base, admission=adm, overflow=ovf, order=order, spf_window=4, seed=seed
        )
    cases["linear"] = dict(
        base, batch_time_model="linear", linear_coefs=(0.01, 1e-5, 2e-5, 1e-6), seed=7
    )
    cases["random-lognormal"] = dict(base, batch_time_model="random", seed=8)
    cases["random-two-point"] = dict(
        base, batch_time_model="random", batch_time_law="two_point", seed=9
    )
    cases["saturated"] = dict(base, saturated=True, arrival_rate_per_s=None, seed=10)
    cases["saturated-swap-spf"] = dict(
        base, saturated=True, arrival_rate_per_s=None, overflow="swap", order="spf", seed=11
    )
    cases["initial-queue"] = dict(base, initial_queue=40, seed=12)
    cases["deterministic"] = dict(base, arrivals="deterministic", seed=13)
    cases["sweep-rate-M"] = dict(
        base,
        num_trajectories=4,
        arrival_rate_per_s=[10.0, 30.0, 50.0, 70.0],
        kv_capacity_tokens=[1200, 2400, 2400, 4800],
        seed=14,
    )
    cases["geometric-lognormal"] = dict(
        base, law="geometric:80:1200/lognormal:60:0.8:600", kv_capacity_tokens=6000, seed=15
    )
    for router in ("round_robin", "random", "jsq", "least_kv"):
        cases[f"router-{router}"] = dict(
            base, num_replicas=3, router=router, arrival_rate_per_s=100.0, seed=16
        )
    cases["router-round_robin-random-bt"] = dict(
        base, num_replicas=2, router="round_robin", batch_time_model="random", seed=17
    )
    rng = np.random.default_rng(18)
    n = 400
    arr = np.cumsum(rng.exponential(1 / 30.0, n))
    replay = (arr, rng.integers(1, 400, n), rng.integers(1, 300, n))
    cases["replay"] = dict(base, law=None, replay=replay, num_trajectories=1, seed=19)
    cases["replay-jsq"] = dict(
        base, law=None, replay=replay, num_trajectories=1, num_replicas=2, router="jsq", seed=20
    )
    return cases


def _reference_cases() -> dict[str, dict]:
    """Small reference runs (every policy combination and batch-time model)."""
    rng = np.random.default_rng(5)
    n = 120
    arr = np.cumsum(rng.integers(0, 4, n) / 64.0)
    s = rng.integers(1, 200, n)
    o = rng.integers(1, 120, n)
    out = {}
    for adm, ovf, order in itertools.product(
        ("current", "reserve"), ("recompute", "swap"), ("fcfs", "spf")
    ):
        out[f"ref-{adm}-{ovf}-{order}"] = dict(
            arrival_s=arr, prompt=s, output=o, kv_capacity_tokens=900, chunk_tokens=32,
            num_steps=300, stream_ends=True, admission=adm, overflow=ovf, order=order,
            spf_window=4, batch_time_s=1 / 32,
        )  # fmt: skip
    out["ref-linear"] = dict(
        out["ref-current-recompute-fcfs"], batch_time="linear",
        linear_coefs=(1 / 64, 1 / 1024, 1 / 2048, 1 / 65536),
    )  # fmt: skip
    out["ref-random"] = dict(
        out["ref-current-recompute-fcfs"], batch_time="random",
        batch_time_factors=rng.uniform(0.5, 2.0, 300),
    )  # fmt: skip
    out["ref-saturated"] = dict(out["ref-current-swap-spf"], saturated=True)
    for router in ("round_robin", "jsq", "least_kv"):
        out[f"ref-cluster-{router}"] = dict(
            out["ref-current-recompute-fcfs"], num_replicas=2, router=router
        )
    return out


def _digest(x) -> str:
    a = np.ascontiguousarray(np.asarray(x))
    if a.dtype == object:
        return hashlib.sha256(repr(a.tolist()).encode()).hexdigest()[:20]
    h = hashlib.sha256(f"{a.dtype.kind}{a.dtype.itemsize}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:20]


def _run(case: dict):
    """Run one case (the pre-refactor keyword arguments) through this kvstab's public API."""
    from kvstab.laws import Independent, parse_law

    kw = dict(case)
    spec = kw.pop("law")
    law = None if spec is None else Independent(*(parse_law(x) for x in spec.split("/")))
    try:
        import kvstab.sim as sim
    except ImportError:  # the pre-refactor API
        import kvstab.simulate as old

        return old.simulate(law, **kw)
    rate = kw.pop("arrival_rate_per_s", None)
    replay = kw.pop("replay", None)
    if replay is not None:
        arrivals = sim.Replay(*replay)
    elif kw.pop("saturated", False):
        arrivals = sim.Saturated()
    else:
        arrivals = sim.arrivals_from_name(kw.pop("arrivals", "poisson"), rate)
    kw.pop("arrivals", None)
    workload = sim.Workload(law, arrivals, initial_queue=kw.pop("initial_queue", 0))
    batch_time = sim.batch_time_from_name(
        kw.pop("batch_time_model", "constant"),
        batch_time_s=kw.pop("batch_time_s", 0.0372),
        linear_coefs=kw.pop("linear_coefs", (0.0, 0.0, 0.0, 0.0)),
        law=kw.pop("batch_time_law", "lognormal"),
    )
    system = sim.System(kw.pop("kv_capacity_tokens"), kw.pop("chunk_tokens"), batch_time)
    policy = sim.policy_from_names(
        kw.pop("admission", "current"),
        kw.pop("overflow", "recompute"),
        kw.pop("order", "fcfs"),
        kw.pop("spf_window", 32),
    )
    cluster = sim.Cluster(
        kw.pop("num_replicas", 1), sim.router_from_name(kw.pop("router", "round_robin"))
    )
    outputs = sim.Outputs(kw.pop("num_records", 0), kw.pop("record_steps", False))
    return sim.simulate(workload, system, policy, cluster=cluster, outputs=outputs, **kw)


def _sim_fields(res) -> dict[str, str]:
    out = {}
    for name in (
        "clock_s", "queue", "queue_end", "running", "kv_tokens", "max_kv_tokens",
        "completed", "preempted", "arrived",
    ):  # fmt: skip
        out[name] = _digest(getattr(res, name))
    out["flags"] = _digest(np.array([",".join(sorted(f)) for f in res.flags], dtype=object))
    for k, v in sorted((res.records or {}).items()):
        out[f"records.{k}"] = _digest(v)
    for k, v in sorted((res.steps or {}).items()):
        out[f"steps.{k}"] = _digest(v)
    return out


def _ref_fields(res) -> dict[str, str]:
    out = {}
    obj = res if isinstance(res, dict) else vars(res)
    for k, v in sorted(obj.items()):
        if k == "replicas":
            for i, r in enumerate(v):
                for kk, vv in _ref_fields(r).items():
                    out[f"replica{i}.{kk}"] = vv
        elif k == "routed":
            out[k] = _digest(np.array(repr([list(map(int, r)) for r in v]), dtype=object))
        elif isinstance(v, dict):
            out[k] = _digest(np.array(repr(sorted(v.items())), dtype=object))
        elif isinstance(v, (np.ndarray, list, tuple, int, float, bool)):
            out[k] = _digest(np.asarray(v))
    return out


def _run_reference(case: dict):
    """Run one reference case (the pre-refactor keyword arguments) through this kvstab."""
    from kvstab import reference

    kw = dict(case)
    arr, s, o = kw.pop("arrival_s"), kw.pop("prompt"), kw.pop("output")
    try:
        from kvstab import sim
    except ImportError:  # the pre-refactor API
        if "router" in kw:
            return reference.simulate_cluster(arr, s, o, **kw)
        return reference.simulate(arr, s, o, **kw)

    model = kw.pop("batch_time", "constant")
    factors = kw.pop("batch_time_factors", None)
    batch_time = sim.batch_time_from_name(
        model,
        batch_time_s=kw.pop("batch_time_s", 0.0372),
        linear_coefs=kw.pop("linear_coefs", (0.0, 0.0, 0.0, 0.0)),
    )
    system = sim.System(kw.pop("kv_capacity_tokens"), kw.pop("chunk_tokens"), batch_time)
    policy = sim.policy_from_names(
        kw.pop("admission", "current"),
        kw.pop("overflow", "recompute"),
        kw.pop("order", "fcfs"),
        kw.pop("spf_window", 32),
    )
    if factors is not None:
        kw["batch_time_factors"] = factors
    if "router" in kw:
        kw["router"] = sim.router_from_name(kw.pop("router"))
        return reference.simulate_cluster(arr, s, o, system=system, policy=policy, **kw)
    return reference.simulate(arr, s, o, system=system, policy=policy, **kw)


def collect(only: str | None = None) -> dict[str, dict[str, str]]:
    results: dict[str, dict[str, str]] = {}
    cases = _cases()
    refs = _reference_cases()
    names = [n for n in list(cases) + list(refs) if only is None or only in n]
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}", file=sys.stderr, flush=True)
        if name in cases:
            results[name] = _sim_fields(_run(cases[name]))
        else:
            results[name] = _ref_fields(_run_reference(refs[name]))
    return results


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", metavar="FILE", help="write the digests of this code's outputs")
    g.add_argument("--compare", metavar="FILE", help="compare this code's outputs with FILE")
    p.add_argument("--only", help="run only the cases whose name contains this text")
    args = p.parse_args(argv)
    got = collect(args.only)
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(
            json.dumps({"commit": _commit(), "cases": got}, indent=1, sort_keys=True) + "\n"
        )
        print(f"recorded {len(got)} cases to {args.record}")
        return 0
    want = json.loads(Path(args.compare).read_text())
    bad = []
    for name, fields in got.items():
        ref = want["cases"].get(name)
        if ref is None:
            bad.append(f"{name}: not in the baseline")
            continue
        for f in sorted(set(fields) | set(ref)):
            if fields.get(f) != ref.get(f):
                bad.append(f"{name}: {f} differs")
    n_fields = sum(len(f) for f in got.values())
    if bad:
        print("\n".join(bad))
        print(f"DIFFERENT: {len(bad)} of {n_fields} outputs differ from {want['commit'][:12]}")
        return 1
    print(
        f"IDENTICAL: {len(got)} cases, {n_fields} output arrays, bit for bit equal to the "
        f"baseline recorded at {want['commit'][:12]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
