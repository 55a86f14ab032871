"""``kvstab boundary``: the critical arrival rate λ* of one replica, by simulation.

Runs :func:`kvstab.stability.estimate_boundary` (saturated throughput μ_sim, drift tests on a
grid of arrival rates from an empty and from a loaded start, λ* with a bootstrap CI) and
prints a summary (``--json``: one JSON object). ``--plot FILE`` draws the stability picture,
``--out FILE`` writes the results file (configuration, seed, versions). Progress goes to
stderr as one updating line (``--quiet``: none). Bad input exits with status 2 and one line
naming the flag.
"""

from __future__ import annotations

import argparse
import json
import sys

from kvstab import analytic
from kvstab.cli.common import (
    add_output_args,
    add_policy_args,
    add_workload_args,
    check_fits_memory,
    check_writable,
    flag_names,
    parse_int,
    policy_words,
    workload_from_args,
)
from kvstab.errors import InputError
from kvstab.plotting import plot_boundary
from kvstab.progress import Progress

# API field names -> this command's flags (kvstab.cli.FLAG_FOR covers the shared ones).
_FLAGS = {
    "replications": "--trajectories",
    "num_steps": "--steps",
    "grid_points": "--grid-points",
    "initial_queue": "--initial-queue",
    "seed": "--seed",
    "precision": "--precision",
    "admission": "--admission",
    "overflow": "--overflow",
    "plot": "--plot",
    "out": "--out",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``boundary`` subcommand to the ``kvstab`` parser."""
    p = sub.add_parser(
        "boundary",
        help="critical arrival rate lambda* by simulation, with a CI and a stability plot",
        description="Estimate the stability boundary of one replica by simulation: saturated "
        "throughput mu_sim, drift tests over a grid of arrival rates (empty and loaded "
        "start), and the critical rate lambda* with a 95% bootstrap CI, compared with the "
        "closed-form mu and mu(1-delta).",
    )
    add_workload_args(p)
    add_policy_args(p)
    e = p.add_argument_group("estimation")
    e.add_argument(
        "--precision",
        choices=("fast", "default", "fine"),
        default="default",
        help="preset of grid size, runs per rate and steps (default: default, about half "
        "a minute on two CPU cores for the paper's 1:1 workload; fast: about 10 s)",
    )
    e.add_argument(
        "--trajectories",
        type=parse_int,
        default=None,
        metavar="R",
        help="simulated trajectories per arrival rate (overrides the preset)",
    )
    e.add_argument(
        "--steps",
        type=parse_int,
        default=None,
        metavar="T",
        help="batch steps per trajectory (overrides the preset)",
    )
    e.add_argument(
        "--grid-points",
        type=parse_int,
        default=None,
        metavar="K",
        help="arrival rates per grid (overrides the preset)",
    )
    e.add_argument(
        "--initial-queue",
        type=parse_int,
        default=None,
        metavar="N0",
        help="requests waiting at t = 0 in the loaded-start runs (default: from mu and the "
        "horizon)",
    )
    e.add_argument("--seed", type=parse_int, default=0, help="PRNG seed (default 0)")
    add_output_args(p, out=True, plot=True)
    p.set_defaults(func=run)


@flag_names(_FLAGS)
def run(args: argparse.Namespace) -> int:
    # The simulator and scipy (about 1 s): loaded when this command runs, not by every call.
    from kvstab import stability
    from kvstab.sim import ConstantBatchTime, System, policy_from_names

    analytic.validate_system(args.kv_tokens, args.chunk, args.batch_time)
    for name, v, low in (
        ("replications", args.trajectories, 2),
        ("num_steps", args.steps, 100),
        ("grid_points", args.grid_points, 2),
        ("initial_queue", args.initial_queue, 1),
    ):
        if v is not None and v < low:
            raise InputError(name, f"must be an integer >= {low}, got {v}")
    if args.seed < 0:
        raise InputError("seed", f"must be an integer >= 0, got {args.seed}")
    check_writable("plot", args.plot)
    check_writable("out", args.out)
    joint = workload_from_args(args)
    check_fits_memory(joint, args.kv_tokens)
    if args.steps is not None:  # a run too short to estimate anything: refuse, say how long
        t_min = stability.min_steps(joint, args.chunk)
        if args.steps < t_min:
            raise InputError(
                "num_steps",
                f"{args.steps} steps is too short for this workload: the warm-up and the "
                f"measurement window need at least {t_min} steps (give --steps >= {t_min})",
            )

    progress = Progress("kvstab boundary", quiet=args.quiet)
    progress.update(0, 1, "compiling the simulator")
    try:
        result = stability.estimate_boundary(
            joint,
            System(args.kv_tokens, args.chunk, ConstantBatchTime(args.batch_time)),
            policy_from_names(**policy_words(args)),
            precision=args.precision,
            replications=args.trajectories,
            num_steps=args.steps,
            grid_points=args.grid_points,
            initial_queue=args.initial_queue,
            seed=args.seed,
            progress=None if args.quiet else progress.stage(),
        )
    finally:
        progress.close()
    data = result.to_dict()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(result.summary_text())
        if args.out:
            print(f"  results    {args.out}")
    if args.plot:  # last: the results above are kept if drawing fails
        try:
            plot_boundary(result, args.plot)
        except Exception as e:  # noqa: BLE001 - any drawing failure; the results stand
            kept = f"; results kept in {args.out}" if args.out else "; results printed above"
            print(
                f"kvstab boundary: error: --plot: could not draw {args.plot} "
                f"({type(e).__name__}: {e}){kept}",
                file=sys.stderr,
            )
            return 1
        if not args.json:
            print(f"  plot       {args.plot}")
    return 0
