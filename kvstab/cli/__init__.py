"""The ``kvstab`` command line: ``main`` and the parser.

One module per subcommand (:mod:`~kvstab.cli.capacity`, :mod:`~kvstab.cli.simulate`,
:mod:`~kvstab.cli.boundary`, :mod:`~kvstab.cli.fit`, :mod:`~kvstab.cli.reproduce`,
:mod:`~kvstab.cli.report`), each with
``register(subparsers)``; the flags they share are defined once in :mod:`kvstab.cli.common`.
Bad input exits with status 2 and one line naming the flag and the allowed range, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kvstab import __version__
from kvstab.cli import boundary, capacity, fit, report, reproduce, simulate
from kvstab.errors import InputError

COMMANDS = (report, capacity, simulate, boundary, fit, reproduce)

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
    "watermark": "--watermark",
    "max_tokens": "--max-tokens",
    "victim": "--victim",
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
    "out": "--out",
    "plot": "--plot",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kvstab",
        description="Will an LLM service stay stable under its KV-cache limit? Closed forms, "
        "simulation and calibration for the model of Nie, Si & Zhou (2026).",
    )
    parser.add_argument("--version", action="version", version=f"kvstab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    for command in COMMANDS:
        command.register(sub)
    return parser


def use_all_cpu_cores() -> None:
    """Expose one XLA CPU device per core, so the simulator shards trajectories over them.

    Must run before JAX creates its CPU backend (the command line calls it first). Respects
    an XLA_FLAGS that already sets the device count, and KVSTAB_CPU_DEVICES (e.g. 1).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    n = int(os.environ.get("KVSTAB_CPU_DEVICES", os.cpu_count() or 1))
    if n > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def main(argv: Sequence[str] | None = None) -> int:
    use_all_cpu_cores()
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
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"kvstab {args.command}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
