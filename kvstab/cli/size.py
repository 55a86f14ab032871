"""``kvstab size``: the fewest replicas meeting a latency SLO at a given rate (docs/slo.md)."""

from __future__ import annotations

import argparse
import json
import math

from kvstab import analytic
from kvstab.cli.common import (
    add_output_args,
    add_workload_args,
    check_fits_memory,
    check_writable,
    flag_names,
    parse_float,
    parse_int,
    workload_from_args,
)
from kvstab.errors import InputError
from kvstab.progress import Progress
from kvstab.results import read_json, to_jsonable, write_json

_FLAGS = {
    "slo": "--slo",
    "max_replicas": "--max-replicas",
    "cooldown_frac": "--cooldown",
    "num_trajectories": "--trajectories",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``size`` subcommand to the ``kvstab`` parser."""
    p = sub.add_parser(
        "size",
        help="fewest replicas meeting a latency SLO (simulated), beside the closed forms",
    )
    add_workload_args(p)
    t = p.add_argument_group("target")
    t.add_argument(
        "--rate",
        type=parse_float,
        required=True,
        metavar="LAMBDA",
        help="total Poisson arrival rate λ in requests/s",
    )
    t.add_argument(
        "--slo",
        required=True,
        metavar="SLO",
        help='latency SLO, e.g. "ttft_p99<=2s,tpot_p99<=100ms" (metrics wait, ttft, tpot, '
        "e2e; quantiles p50, p90, p99, p999; units s, ms)",
    )
    t.add_argument(
        "--router",
        choices=("round_robin", "random", "jsq", "least_kv"),
        default="round_robin",
        help="how requests reach the replicas (default round_robin)",
    )
    t.add_argument(
        "--utilization",
        type=parse_float,
        default=0.9,
        metavar="RHO",
        help="ρ of the closed-form rule ⌈λ/(ρμ)⌉ printed for comparison (default 0.9)",
    )
    t.add_argument(
        "--max-replicas",
        type=parse_int,
        default=None,
        metavar="G",
        help="give up above this G (default max(2⌈λ/(ρμ)⌉, ⌈λ/μ⌉ + 4))",
    )
    r = p.add_argument_group("run (per replica count tried)")
    r.add_argument("--steps", type=parse_int, default=4096, help="batch steps per trajectory")
    r.add_argument("--trajectories", type=parse_int, default=16)
    r.add_argument("--seed", type=parse_int, default=0)
    r.add_argument(
        "--warmup",
        type=parse_float,
        default=0.25,
        metavar="FRAC",
        help="fraction of the run before requests are counted (default 0.25)",
    )
    r.add_argument("--cooldown", type=parse_float, default=0.25, metavar="FRAC",
                   help="fraction of the counted part, at its end, whose arrivals are not "
                   "counted, so that they can finish (default 0.25)")  # fmt: skip
    add_output_args(p, out=True)
    p.set_defaults(func=run)


@flag_names(_FLAGS)
def run(args: argparse.Namespace) -> int:
    from kvstab.slo import _num, parse_slo, size_for_slo

    slo = parse_slo(args.slo)  # first: a bad --slo fails before any work
    analytic.validate_system(args.kv_tokens, args.chunk, args.batch_time)
    if not args.rate > 0 or not math.isfinite(args.rate):
        raise InputError("rate_per_s", f"must be a number > 0, got {args.rate}")
    for name, v, lo in (("steps", args.steps, 1), ("trajectories", args.trajectories, 2),
                        ("seed", args.seed, 0)):  # fmt: skip
        if v < lo:
            raise InputError(name, f"must be an integer >= {lo}, got {v}")
    if not 0 <= args.warmup < 1:
        raise InputError("warmup_frac", f"must be a number in [0, 1), got {args.warmup}")
    joint = workload_from_args(args)
    check_fits_memory(joint, args.kv_tokens)
    check_writable("out", args.out)
    config = {
        "slo": str(slo),
        "rate_per_s": args.rate,
        "router": args.router,
        "workload": joint.spec,
        "kv_capacity_tokens": args.kv_tokens,
        "chunk_tokens": args.chunk,
        "batch_time_s": args.batch_time,
        "steps": args.steps,
        "trajectories": args.trajectories,
        "seed": args.seed,
        "warmup_frac": args.warmup,
        "cooldown_frac": args.cooldown,
    }
    # resumable: an --out file of the same configuration keeps the replica counts it checked
    done = {}
    old = read_json(args.out, missing_ok=True) if args.out else None
    if old and old.get("kind") == "size" and old.get("config") == to_jsonable(config):
        done = {int(g): c for g, c in old.get("checks", {}).items()}

    def save(g, check):
        if args.out:
            done[g] = check
            write_json(args.out, {"kind": "size", "config": config, "checks": done})

    progress = Progress("kvstab size", quiet=args.quiet)
    if done:
        progress.say(f"resuming from {args.out}: G = {', '.join(map(str, sorted(done)))} done")
    report = size_for_slo(
        slo,
        joint,
        rate_per_s=args.rate,
        kv_capacity_tokens=args.kv_tokens,
        chunk_tokens=args.chunk,
        batch_time_s=args.batch_time,
        router=args.router,
        utilization=args.utilization,
        max_replicas=args.max_replicas,
        num_trajectories=args.trajectories,
        num_steps=args.steps,
        seed=args.seed,
        cooldown_frac=args.cooldown,
        warmup_frac=args.warmup,
        progress=lambda g: progress.sim(f"G = {g}"),
        done=dict(done),
        on_check=save,
    )
    progress.close()
    if args.out:
        checks = {c["num_replicas"]: c for c in report["checks"]}
        write_json(args.out, {"kind": "size", "config": config, "checks": checks,
                              "report": report})  # fmt: skip
    if args.json:
        print(json.dumps(to_jsonable({**report, "config": config}), indent=2))
        return 0
    r = report
    print(f"kvstab size: fewest replicas meeting {r['slo']} at {r['rate_per_s']:g} req/s")
    print(f"  workload     {joint.spec}")
    print(
        f"  system       M = {args.kv_tokens:,} KV tokens, chunk = {args.chunk}, "
        f"batch time = {args.batch_time:g} s; router {r['router']}"
    )
    print(
        f"  closed form  ceil(lambda/mu) = {r['closed_form_replicas']}   "
        f"(mu = {r['mu_per_replica']:.4g} req/s per replica; fewer are unstable)"
    )
    print(f"  rho rule     ceil(lambda/(rho mu)) = {r['rho_rule_replicas']}   "
          f"(rho = {r['utilization']:g})")  # fmt: skip
    for c in r["checks"]:
        parts = [
            f"{o['metric']}_{o['quantile']} {_num(o['estimate']):.3g} s "
            f"(95% CI {_num(o['low']):.3g} .. {_num(o['high']):.3g})"
            for o in c["objectives"]
        ]
        flags = f"  FLAGS {', '.join(c['flags'])}" if c["flags"] else ""
        print(f"  G = {c['num_replicas']:<3d}     {c['verdict']:<12s} {'; '.join(parts)}{flags}")
    if r["replicas"] is not None:
        extra = r["replicas"] - r["closed_form_replicas"]
        print(
            f"  answer       {r['replicas']} replica(s)"
            + (
                f"; {r['replicas'] - 1} do not meet it ({r['replicas_minus_one_verdict']})"
                if r["replicas_minus_one_verdict"]
                else ""
            )  # fmt: skip
            + f"; the SLO costs {extra} replica(s) over ceil(lambda/mu)"
        )
    else:
        print(f"  answer       {r['message']}")
    print(
        f"  run          {args.trajectories} trajectories x {args.steps} steps per G; "
        f"intervals: {r['ci_method']}"
    )
    return 0
