"""The ``kvstab`` command line.

Every subcommand shares the workload and system flags of ``kvstab capacity``. Bad input
exits with status 2 and one line naming the flag and the allowed range, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from kvstab.errors import InputError

# Python field names -> command-line flags, so API errors read the same on the command line.
FLAG_FOR = {
    "kv_capacity_tokens": "--kv-tokens",
    "chunk_tokens": "--chunk",
    "batch_time_s": "--batch-time",
    "rate_per_s": "--rate",
    "utilization": "--utilization",
    "g_form": "--g",
    "workload": "--prompt/--output",
    "prompt": "--prompt",
    "output": "--output",
    "trace": "--trace",
    "arrival_rate_per_s": "--rate",
    "num_steps": "--steps",
    "num_trajectories": "--trajectories",
    "num_replicas": "--replicas",
    "warmup_frac": "--warmup",
    "initial_queue": "--initial-queue",
    "spf_window": "--spf-window",
    "linear_coefs": "--linear-coefs",
    "sigma": "--batch-time-sigma",
    "slow_fraction": "--slow-fraction",
    "slow_factor": "--slow-factor",
    "steps": "--steps",
    "trajectories": "--trajectories",
    "replicas": "--replicas",
    "seed": "--seed",
    "records": "--records",
    "router": "--router",
    "batch_time_model": "--batch-time-model",
}

DEFAULTS = {
    "prompt": "uniform:10:1600",
    "output": "uniform:10:1600",
    "kv_tokens": 131000,
    "chunk": 512,
    "batch_time": 0.0372,
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _int(text: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")) or v != int(v):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(v)


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """Workload and system flags shared by capacity, simulate, boundary and fit."""
    w = p.add_argument_group("workload")
    w.add_argument(
        "--prompt",
        default=DEFAULTS["prompt"],
        metavar="LAW",
        help="prompt-length law (default %(default)s): const:V, uniform:A:B, "
        "geometric:MEAN[:CAP], lognormal:MEDIAN:SIGMA[:CAP], empirical:V1,V2,...",
    )
    w.add_argument(
        "--output",
        default=DEFAULTS["output"],
        metavar="LAW",
        help="output-length law (default %(default)s), same forms as --prompt",
    )
    w.add_argument(
        "--trace",
        metavar="FILE",
        default=None,
        help="use the joint (s, o) law of a request trace instead of --prompt/--output",
    )
    w.add_argument(
        "--trace-format",
        choices=("auto", "azure", "mooncake", "csv"),
        default="auto",
        help="format of --trace (default: from the file name and header)",
    )
    add_system_args(p)


def add_system_args(p: argparse.ArgumentParser, title: str = "system") -> None:
    """The system flags: KV capacity M, chunk ŝ, batch time b̄."""
    s = p.add_argument_group(title)
    s.add_argument(
        "--kv-tokens",
        type=_int,
        default=DEFAULTS["kv_tokens"],
        metavar="M",
        help="KV-cache capacity M in tokens (default %(default)s)",
    )
    s.add_argument(
        "--chunk",
        type=_int,
        default=DEFAULTS["chunk"],
        metavar="S_HAT",
        help="chunked-prefill size ŝ in tokens per step (default %(default)s)",
    )
    s.add_argument(
        "--batch-time",
        type=_float,
        default=DEFAULTS["batch_time"],
        metavar="B",
        help="representative batch time b̄ in seconds (default %(default)s)",
    )


def workload_from_args(args: argparse.Namespace):
    """Build the joint law from --trace or --prompt/--output."""
    from kvstab.laws import Independent, parse_law

    if args.trace:
        from kvstab import traces

        trace = traces.read_trace(args.trace, fmt=args.trace_format)
        return trace.joint_law()
    return Independent(parse_law(args.prompt, "prompt"), parse_law(args.output, "output"))


def check_fits_memory(joint, kv_tokens: int) -> None:
    """A request with s + o > M can never be served; unbounded laws need a cap."""
    from kvstab.laws import Independent

    if isinstance(joint, Independent):
        for name, law in (("prompt", joint.prompt), ("output", joint.output)):
            if law.max_value is None:
                raise InputError(
                    name,
                    f"{law.spec} is unbounded, so s+o can exceed M; add a cap "
                    f"({law.spec.split(':')[0]}:...:CAP)",
                )
    if joint.max_total is not None and joint.max_total > kv_tokens:
        raise InputError(
            "workload",
            f"max(s+o) = {joint.max_total} exceeds --kv-tokens {kv_tokens}; such a request can "
            f"never be served: need max(s+o) <= M",
        )


def _run_capacity(args: argparse.Namespace) -> int:
    from kvstab import analytic

    analytic.validate_system(args.kv_tokens, args.chunk, args.batch_time)
    joint = workload_from_args(args)
    check_fits_memory(joint, args.kv_tokens)
    import jax

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
        print(
            f"  at {r.rate_per_s:g} req/s: {r.verdict} on one replica; "
            f"{r.gpus} replica(s) for utilisation <= {r.utilization:g}"
        )
    else:
        print("  (give --rate to get a verdict and a replica count)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from kvstab import __version__

    parser = _Parser(
        prog="kvstab",
        description="Will an LLM service stay stable under its KV-cache limit? Closed forms, "
        "simulation and calibration for the model of Nie, Si & Zhou (2026).",
    )
    parser.add_argument("--version", action="version", version=f"kvstab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    cap = sub.add_parser("capacity", help="closed-form critical rate, stability band and GPU count")
    add_workload_args(cap)
    cap.add_argument(
        "--rate",
        type=_float,
        default=None,
        metavar="LAMBDA",
        help="arrival rate λ in requests/s: adds a verdict and a replica count",
    )
    cap.add_argument(
        "--utilization",
        type=_float,
        default=0.9,
        metavar="RHO",
        help="target utilisation ρ in (0, 1] for the replica count (default 0.9)",
    )
    cap.add_argument(
        "--g",
        choices=("exact", "paper"),
        default="exact",
        help="g(s,o): exact chunk sum (what the simulator measures, default) or "
        "the paper's closed form",
    )
    cap.add_argument("--json", action="store_true", help="print one JSON object")
    cap.set_defaults(func=_run_capacity)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Other modules add subcommands here (simulate, boundary, fit, reproduce).
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _register_extra_commands() -> None:
    import importlib

    for name in (
        "kvstab.cli_simulate",
        "kvstab.cli_boundary",
        "kvstab.cli_fit",
        "kvstab.cli_reproduce",
    ):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        if mod.register not in _EXTRA_COMMANDS:
            _EXTRA_COMMANDS.append(mod.register)


def use_all_cpu_cores() -> None:
    """Expose one XLA CPU device per core, so the simulator shards trajectories over them.

    Must run before JAX creates its CPU backend (the command line calls it first). Respects
    an XLA_FLAGS that already sets the device count, and KVSTAB_CPU_DEVICES (e.g. 1).
    """
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    n = int(os.environ.get("KVSTAB_CPU_DEVICES", os.cpu_count() or 1))
    if n > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def main(argv: Sequence[str] | None = None) -> int:
    use_all_cpu_cores()
    _register_extra_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        flag = FLAG_FOR.get(e.field, e.field)
        print(f"kvstab {args.command}: error: {flag}: {e.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"kvstab {args.command}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
