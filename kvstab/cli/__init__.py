"""The ``kvstab`` command line: ``main`` and the parser.

One module per subcommand (:mod:`~kvstab.cli.capacity`, :mod:`~kvstab.cli.simulate`,
:mod:`~kvstab.cli.boundary`, :mod:`~kvstab.cli.compare`, :mod:`~kvstab.cli.fit`,
:mod:`~kvstab.cli.report`, :mod:`~kvstab.cli.reproduce`, :mod:`~kvstab.cli.size`,
:mod:`~kvstab.cli.sweep`), each with
``register(subparsers)``; the flags they share are defined once in :mod:`kvstab.cli.common`.
Bad input exits with status 2 and one line naming the flag and the allowed range, never a
traceback.
"""

from __future__ import annotations

import _thread
import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from kvstab import __version__
from kvstab.cli import (
    boundary,
    capacity,
    compare,
    fit,
    report,
    reproduce,
    simulate,
    size,
    sweep,
)
from kvstab.cli.common import validate_args
from kvstab.errors import InputError
from kvstab.runtime import use_all_cpu_cores  # noqa: F401  (re-exported: benchmarks use it)

COMMANDS = (report, capacity, simulate, boundary, compare, sweep, size, fit, reproduce)

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


def stop_on_second_interrupt() -> None:
    """Ctrl-C at any stage: the first raises KeyboardInterrupt in the main thread as usual
    (finished results are kept); a second one exits at once with status 130, even while the
    main thread is inside compiled code that Python cannot interrupt (an XLA compilation, a
    long simulator segment).

    SIGINT is blocked in the main thread (and the threads it starts later) and taken by a
    watcher thread with ``sigwait``. Only for a real command line (``main()`` without argv),
    never when ``main(argv)`` is called in-process.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if not hasattr(signal, "pthread_sigmask") or signal.getsignal(signal.SIGINT) in (
        signal.SIG_IGN,
        None,
    ):
        return

    def watch():
        count = 0
        while True:
            signal.sigwait({signal.SIGINT})
            count += 1
            if count == 1:
                _thread.interrupt_main()
            else:
                os.write(2, b"kvstab: interrupted twice; stopping now\n")
                os._exit(130)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    threading.Thread(target=watch, name="kvstab-interrupt", daemon=True).start()


_PARSER: list = []  # built once per process: main() is also called in-process (tests)


def main(argv: Sequence[str] | None = None) -> int:
    # ``import kvstab`` has already exposed one CPU device per core (kvstab/runtime.py).
    if argv is None:
        stop_on_second_interrupt()
    if not _PARSER:
        _PARSER.append(build_parser())
    parser = _PARSER[0]
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        validate_args(args, sub.choices[args.command], argv)  # every flag, before any work
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
        if argv is None:  # a real command line: exit now. Finalizing the interpreter while
            # XLA threads still run crashed (SIGSEGV) after Ctrl-C.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130


if __name__ == "__main__":
    sys.exit(main())
