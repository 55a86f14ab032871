"""``kvstab capacity``: the closed-form critical rate, stability band and replica count."""

from __future__ import annotations

import argparse
import json

import jax

from kvstab import analytic
from kvstab.cli.common import (
    add_output_args,
    add_workload_args,
    check_fits_memory,
    parse_float,
    workload_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``capacity`` subcommand to the ``kvstab`` parser."""
    p = sub.add_parser("capacity", help="closed-form critical rate, stability band and GPU count")
    add_workload_args(p)
    p.add_argument(
        "--rate",
        type=parse_float,
        default=None,
        metavar="LAMBDA",
        help="arrival rate λ in requests/s: adds a verdict and a replica count",
    )
    p.add_argument(
        "--utilization",
        type=parse_float,
        default=0.9,
        metavar="RHO",
        help="target utilisation ρ in (0, 1] for the replica count (default 0.9)",
    )
    p.add_argument(
        "--g",
        choices=("exact", "paper"),
        default="exact",
        help="g(s,o): exact chunk sum (what the simulator measures, default) or "
        "the paper's closed form",
    )
    add_output_args(p, quiet=False, group=p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    analytic.validate_system(args.kv_tokens, args.chunk, args.batch_time)
    joint = workload_from_args(args)
    check_fits_memory(joint, args.kv_tokens)
    with jax.enable_x64(True):  # exact sums over ~10^6 support points in double precision
        report = analytic.capacity(
            joint,
            kv_capacity_tokens=args.kv_tokens,
            chunk_tokens=args.chunk,
            batch_time_s=args.batch_time,
            g_form=args.g,
            rate_per_s=args.rate,
            utilization=args.utilization,
        )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    r = report
    print("kvstab capacity: one replica, closed form (Nie, Si & Zhou, arXiv 2605.04595)")
    print(f"  workload   {r.workload}")
    print(
        f"  system     M = {r.kv_capacity_tokens:,} KV tokens, chunk = {r.chunk_tokens}, "
        f"batch time = {r.batch_time_s:g} s"
    )
    print(f"  E[g]       {r.mean_g:,.1f} token*steps   ({r.g_form} g; {r.summation})")
    print(f"  mu         {r.mu:.4g} req/s   unstable above this rate (Theorem 4.1)")
    print(f"  delta      {r.delta:.4g}          = max(s+o) / M")
    print(f"  mu(1-d)    {r.mu_stable:.4g} req/s   stable below this rate (Theorem 4.2)")
    if r.rate_per_s is not None:
        from kvstab.report import verdict_phrase

        print(
            f"  at {r.rate_per_s:g} req/s: "
            + verdict_phrase(r.rate_per_s, r.mu, r.mu_stable, r.gpus, r.utilization)
        )
    else:
        print("  (give --rate to get a verdict and a replica count)")
    return 0
