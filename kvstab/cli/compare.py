"""``kvstab compare``: scheduling policies side by side on one workload and system.

Runs :func:`kvstab.compare.compare_policies` for the named presets of
:mod:`kvstab.policies` (``--policies``; default: all of them) and prints one row per policy:
μ_sim, λ* (loaded and empty start) with 95 % CIs, λ*/μ, the metastability verdict,
preemptions per completion, KV in use and the p99 wait at 0.8·μ, with μ and μ(1−δ) above.
``--list`` prints the presets, ``--json`` the rows, ``--plot FILE`` draws λ*/μ per policy,
``--out FILE`` writes (and resumes from) the results file. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys

from kvstab.cli.common import (
    add_output_args,
    add_workload_args,
    check_fits_memory,
    check_writable,
    flag_names,
    parse_int,
    workload_from_args,
)
from kvstab.errors import InputError
from kvstab.progress import Progress

_FLAGS = {
    "policies": "--policies",
    "precision": "--precision",
    "seed": "--seed",
    "plot": "--plot",
    "out": "--out",
    "results_path": "--out",
}
PRECISION_CHOICES = ("tiny", "fast", "default", "fine")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to the ``kvstab`` parser."""
    p = sub.add_parser(
        "compare",
        help="scheduling policies side by side: mu_sim, lambda*, metastability, waits",
        description="Compare named scheduling policies on one workload and system: per "
        "policy the saturated throughput mu_sim, the critical rate lambda* from a loaded and "
        "an empty start (95% CIs), the metastability verdict, preemptions per completion, "
        "KV in use and the p99 wait at 0.8 mu, beside the closed-form mu and mu(1-delta).",
    )
    add_workload_args(p)
    g = p.add_argument_group("policies")
    g.add_argument(
        "--policies",
        default=None,
        metavar="A,B,...",
        help="comma-separated preset names (default: every preset; --list shows them)",
    )
    g.add_argument("--list", action="store_true", help="print the presets and exit")
    e = p.add_argument_group("estimation")
    e.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="default",
        help="size of the runs per policy (default: default, about 4 minutes for the four "
        "original presets on two CPU cores for the 1:1 workload; fast: about half; tiny: a "
        "smoke test, not an estimate)",
    )
    e.add_argument("--seed", type=parse_int, default=0, help="PRNG seed (default 0)")
    add_output_args(p, out=True, plot=True)
    p.set_defaults(func=run)


def _list(law) -> int:
    from kvstab.policies import DESCRIPTIONS, policy_presets

    table = policy_presets(law)
    width = max(len(n) for n in table)
    for name in table:
        print(f"{name.ljust(width)}  {DESCRIPTIONS.get(name, '')}")
    return 0


@flag_names(_FLAGS)
def run(args: argparse.Namespace) -> int:
    from kvstab import analytic
    from kvstab.policies import policy_presets

    analytic.validate_system(args.kv_tokens, args.chunk, args.batch_time)
    joint = workload_from_args(args)
    if args.list:
        return _list(joint)
    if args.seed < 0:
        raise InputError("seed", f"must be an integer >= 0, got {args.seed}")
    names = None
    if args.policies is not None:
        names = [n.strip() for n in args.policies.split(",") if n.strip()]
        table = policy_presets(joint)
        unknown = [n for n in names if n not in table]
        if not names or unknown:
            raise InputError(
                "policies",
                (f"unknown {', '.join(map(repr, unknown))}; " if unknown else "empty; ")
                + f"choose among {', '.join(table)}",
            )
    check_writable("plot", args.plot)
    check_writable("out", args.out)
    check_fits_memory(joint, args.kv_tokens)

    from kvstab.compare import compare_policies
    from kvstab.sim import ConstantBatchTime, System

    progress = Progress("kvstab compare", quiet=args.quiet)
    try:
        result = compare_policies(
            joint,
            System(args.kv_tokens, args.chunk, ConstantBatchTime(args.batch_time)),
            names,
            precision=args.precision,
            seed=args.seed,
            progress=progress,
            results_path=args.out,
        )
    finally:
        progress.close()
    if args.plot:
        result.plot(args.plot)
    if args.json:
        print(result.to_json(indent=2))
        return 0
    print(result.table_text())
    if args.out:
        print(f"  results    {args.out}")
    if args.plot:
        print(f"  plot       {args.plot}")
    sys.stdout.flush()
    return 0
