"""``kvstab report``: the whole package in one answer (:func:`kvstab.report.report`).

The closed form, a simulation at the rate (queue, waits and TTFT percentiles with CIs,
preemptions), the simulated λ* with its CI and the replica count, in plain words; ``--json``
for one JSON object, ``--plot FILE`` for a one-page figure. The default sizes finish in under
a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json

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
from kvstab.progress import Progress
from kvstab.results import write_json

FLAGS = {
    "rate_per_s": "--rate",
    "trajectories": "--trajectories",
    "steps": "--steps",
    "boundary_grid_points": "--boundary-rates",
    "boundary_replications": "--boundary-runs",
    "boundary_steps": "--boundary-steps",
    "slo": "--slo",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand to the ``kvstab`` parser."""
    from kvstab import report as rep

    p = sub.add_parser(
        "report",
        help="closed form + simulation + simulated lambda* + replica count, in one answer",
        description="The closed form, a simulation at --rate, the simulated critical rate "
        "lambda* and the replica count for one replica (defaults: the paper's 1:1 workload "
        "on one A100-class replica). Under a minute on 2 CPU cores at the default sizes.",
    )
    add_workload_args(p)
    p.add_argument(
        "--rate",
        type=parse_float,
        default=3.0,
        metavar="LAMBDA",
        help="arrival rate λ in requests/s, > 0 (default %(default)s)",
    )
    p.add_argument(
        "--utilization",
        type=parse_float,
        default=0.9,
        metavar="RHO",
        help="target utilisation ρ in (0, 1] for the replica count (default 0.9)",
    )
    p.add_argument(
        "--slo",
        default=None,
        metavar="SLO",
        help='a latency target, e.g. "ttft_p99<=2s,tpot_p99<=0.1s": also size the replicas '
        "that meet it (simulates G and G-1: minutes)",
    )
    s = p.add_argument_group("sizes (the defaults fit in a minute on 2 CPU cores)")
    s.add_argument(
        "--trajectories",
        type=parse_int,
        metavar="N",
        default=rep.SIM_TRAJECTORIES,
        help="simulated trajectories at --rate, >= 2 (default %(default)s)",
    )
    s.add_argument(
        "--steps",
        type=parse_int,
        metavar="T",
        default=rep.SIM_STEPS,
        help="batch steps per trajectory, >= 256 (default %(default)s)",
    )
    s.add_argument(
        "--boundary-rates",
        type=parse_int,
        default=rep.BOUNDARY["grid_points"],
        metavar="K",
        help="rates on the lambda* grid, >= 2 (default %(default)s)",
    )
    s.add_argument(
        "--boundary-runs",
        type=parse_int,
        default=rep.BOUNDARY["replications"],
        metavar="R",
        help="runs per rate for lambda*, >= 2 (default %(default)s)",
    )
    s.add_argument(
        "--boundary-steps",
        type=parse_int,
        default=rep.BOUNDARY["num_steps"],
        metavar="T",
        help="steps per lambda* run, >= 100 (default %(default)s)",
    )
    s.add_argument(
        "--no-boundary",
        action="store_true",
        help="skip the simulated lambda* (about half the time)",
    )
    s.add_argument("--seed", type=parse_int, default=0, help="random seed, >= 0 (default 0)")
    add_output_args(p, out=True, plot=True, quiet=True)
    p.set_defaults(func=run)


@flag_names(FLAGS)
def run(args: argparse.Namespace) -> int:
    from kvstab import analytic
    from kvstab.report import plot_report, report

    analytic.validate_system(args.kv_tokens, args.chunk, args.batch_time)
    joint = workload_from_args(args)
    check_fits_memory(joint, args.kv_tokens)
    check_writable("plot", args.plot)
    check_writable("out", args.out)
    progress = Progress("kvstab report", quiet=args.quiet)
    r = report(
        joint,
        rate_per_s=args.rate,
        kv_capacity_tokens=args.kv_tokens,
        chunk_tokens=args.chunk,
        batch_time_s=args.batch_time,
        utilization=args.utilization,
        trajectories=args.trajectories,
        steps=args.steps,
        boundary=not args.no_boundary,
        boundary_grid_points=args.boundary_rates,
        boundary_replications=args.boundary_runs,
        boundary_steps=args.boundary_steps,
        seed=args.seed,
        slo=args.slo,
        progress=progress,
    )
    progress.close()
    if args.plot:
        plot_report(r, args.plot)
    if args.out:  # config, seed, kvstab and SIM_SEMANTICS versions are in r.config
        write_json(args.out, {"kind": "report", **r.to_dict()})
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    print(r.text())
    if args.plot:
        print(f"figure: {args.plot}")
    return 0
