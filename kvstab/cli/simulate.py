"""``kvstab simulate``: run the JAX simulator from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from kvstab import analytic
from kvstab.cli.common import (
    add_batch_time_args,
    add_output_args,
    add_policy_args,
    add_workload_args,
    check_fits_memory,
    check_writable,
    parse_coefs,
    parse_float,
    parse_int,
    policy_words,
    workload_from_args,
)
from kvstab.errors import InputError
from kvstab.progress import Progress
from kvstab.results import to_jsonable, write_json


def run(args: argparse.Namespace) -> int:
    # The simulator (JAX-heavy): loaded when this command runs, not by every `kvstab` call.
    from kvstab.sim import components_from_names, simulate, workload_from_names

    analytic.validate_system(args.kv_tokens, args.chunk, args.batch_time)
    if args.rate is None and not args.saturated:
        raise InputError("rate_per_s", "give --rate LAMBDA (requests/s, >= 0) or --saturated")
    if args.rate is not None and args.saturated:
        raise InputError("rate_per_s", "give either --rate or --saturated, not both")
    for name, v, lo in (
        ("steps", args.steps, 1),
        ("trajectories", args.trajectories, 1),
        ("replicas", args.replicas, 1),
        ("seed", args.seed, 0),
        ("records", args.records, 0),
    ):
        if v < lo:
            raise InputError(name, f"must be an integer >= {lo}, got {v}")
    joint = workload_from_args(args)
    check_fits_memory(joint, args.kv_tokens)
    coefs = parse_coefs(args.linear_coefs)
    check_writable("out", args.out)
    progress = Progress("kvstab simulate", quiet=args.quiet)
    prog = progress.sim()
    res = simulate(
        workload_from_names(
            joint,
            arrival_rate_per_s=args.rate,
            saturated=args.saturated,
            initial_queue=args.initial_queue,
        ),
        num_steps=args.steps,
        num_trajectories=args.trajectories,
        seed=args.seed,
        warmup_frac=args.warmup,
        progress=prog,
        **components_from_names(
            kv_capacity_tokens=args.kv_tokens,
            chunk_tokens=args.chunk,
            batch_time_s=args.batch_time,
            num_replicas=args.replicas,
            router=args.router,
            **policy_words(args),
            batch_time_model=args.batch_time_model,
            linear_coefs=coefs,
            batch_time_law=args.batch_time_law,
            batch_time_sigma=args.batch_time_sigma,
            slow_fraction=args.slow_fraction,
            slow_factor=args.slow_factor,
            num_records=args.records,
        ),
    )
    progress.close()
    summ = res.summary()
    summ["num_steps_requested"] = args.steps
    summ["warnings"] = _warnings(res, summ, joint, args)
    if res.config["num_steps"] != args.steps and not args.quiet:
        print(
            f"kvstab simulate: note: --steps {args.steps:,} ran as {res.config['num_steps']:,} "
            f"steps (whole blocks of {res.config['block_steps']} steps, in equal segments)",
            file=sys.stderr,
        )
    mu = analytic.mu_for(joint, args.kv_tokens * args.replicas, args.batch_time, args.chunk)
    summ["mu_theory"] = float(mu)
    if args.saturated:  # the backlog is a buffer, not a queue: its length means nothing
        for k in ("mean_queue", "final_queue", "queue_slope_per_s", "queue_slope_ci"):
            summ[k] = None
    out = {**summ, "config": res.config}
    if args.out:
        write_json(args.out, {"kind": "simulate", "summary": summ, "config": res.config})
    if args.json:
        print(json.dumps(to_jsonable(out), indent=2))
        return 0
    lo, hi = summ["throughput_ci"]
    print("kvstab simulate: JAX simulator (docs/semantics.md)")
    print(f"  workload     {res.config['workload']}")
    load = "saturated (endless backlog)" if args.saturated else f"Poisson, {args.rate:g} req/s"
    print(f"  arrivals     {load}; {args.replicas} replica(s), router {args.router}")
    print(
        f"  policy       admission {args.admission}, overflow {args.overflow}, order {args.order}"
        + ("" if args.victim == "newest" else f", victim {args.victim}")
    )
    print(
        f"  run          {args.trajectories} trajectories x {res.config['num_steps']} steps "
        f"({summ['simulated_s']:.0f} s simulated, first {summ['warmup_s']:.0f} s warm-up), "
        f"{summ['wall_s']:.1f} s wall"
    )
    print(
        f"  throughput   {summ['throughput_per_s']:.4g} req/s  (95% CI {lo:.4g} .. {hi:.4g}); "
        f"closed-form mu = {summ['mu_theory']:.4g}"
    )
    print(
        f"  KV in use    mean {summ['mean_kv_tokens']:,.0f}, max {summ['max_kv_tokens']:,} "
        f"of {args.kv_tokens:,} tokens per replica"
    )
    print(f"  preemptions  {summ['preemptions_per_completion']:.3g} per completed request")
    if not args.saturated:
        s_lo, s_hi = summ["queue_slope_ci"]
        print(
            f"  queue        mean {summ['mean_queue']:.3g}, final {summ['final_queue']:.3g}, "
            f"growth {summ['queue_slope_per_s']:.3g} req/s (95% CI {s_lo:.3g} .. {s_hi:.3g})"
        )
    if "wait_s" in summ:
        w = summ["wait_s"]
        print(f"  waiting      median {w['p50']:.3g} s, p90 {w['p90']:.3g} s, p99 {w['p99']:.3g} s")
    for w in summ["warnings"]:
        print(f"  WARNING      {w}")
    if summ["flags"]:
        print(
            f"  FLAGS        {', '.join(summ['flags'])} (a cap was hit even after re-runs: "
            "treat the numbers with care)"
        )
    return 0


def _warnings(res, summ: dict, joint, args) -> list[str]:
    """Why the numbers may not mean what they say: a run shorter than the workload needs
    (:func:`kvstab.stability.min_steps`), a throughput CI reaching below zero."""
    from kvstab import stability

    out = []
    T = res.config["num_steps"]
    t_min = stability.min_steps(joint, args.chunk, args.warmup)
    if T < t_min:
        out.append(
            f"run too short: {T:,} steps, but the warm-up and the measurement window need at "
            f"least {t_min:,} steps for this workload (give --steps >= {t_min})"
        )
    lo = summ["throughput_ci"][0]
    if lo is not None and lo < 0:
        out.append(
            f"throughput CI reaches {lo:.3g} < 0: too few trajectories or steps to estimate it"
        )
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` subcommand to the ``kvstab`` parser."""
    p = sub.add_parser("simulate", help="simulate queue trajectories with the JAX simulator")
    add_workload_args(p)
    load = p.add_argument_group("load")
    load.add_argument(
        "--rate",
        type=parse_float,
        default=None,
        metavar="LAMBDA",
        help="Poisson arrival rate λ in requests/s (to all replicas together)",
    )
    load.add_argument(
        "--saturated",
        action="store_true",
        help="an endless backlog: measures the maximal throughput",
    )
    load.add_argument(
        "--initial-queue",
        type=parse_int,
        default=0,
        metavar="N",
        help="requests already waiting at t = 0",
    )
    load.add_argument("--replicas", type=parse_int, default=1, metavar="G")
    load.add_argument(
        "--router",
        choices=("round_robin", "random", "jsq", "least_kv"),
        default="round_robin",
        help="how requests reach the G replicas: round_robin (default, the paper's) or random "
        "split the stream; jsq (fewest waiting + running) and least_kv (fewest KV tokens held "
        "+ waiting prompt tokens) route on the replicas' state (constant batch time only)",
    )
    add_policy_args(p)
    add_batch_time_args(p)
    r = p.add_argument_group("run")
    r.add_argument("--steps", type=parse_int, default=20000, help="batch steps per trajectory")
    r.add_argument("--trajectories", type=parse_int, default=64)
    r.add_argument("--seed", type=parse_int, default=0)
    r.add_argument(
        "--warmup",
        type=parse_float,
        default=0.25,
        metavar="FRAC",
        help="fraction of the run excluded as warm-up (default 0.25)",
    )
    r.add_argument(
        "--records",
        type=parse_int,
        default=0,
        metavar="N",
        help="keep per-request records of the first N requests (waits, TTFT)",
    )
    add_output_args(p, out=True)
    p.set_defaults(func=run)
