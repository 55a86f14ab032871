"""What the ``kvstab`` subcommands share: one definition of each flag group and its checks.

* number parsers for argparse (:func:`parse_float`, :func:`parse_int`);
* flag groups: workload (:func:`add_workload_args`), system (:func:`add_system_args`),
  policy (:func:`add_policy_args`), batch time (:func:`add_batch_time_args`), output and
  progress (:func:`add_output_args`);
* turning flags into objects and checking them: :func:`workload_from_args`,
  :func:`check_fits_memory`, :func:`parse_coefs`, :func:`check_writable`;
* :func:`flag_names`: a command's own API-field -> flag names for its one-line errors.

Bad input raises :class:`kvstab.errors.InputError`; :func:`kvstab.cli.main` turns it into one
line naming the flag and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Mapping

from kvstab import paper, traces
from kvstab.errors import InputError
from kvstab.laws import Independent, parse_law
from kvstab.sim.components import ADMISSIONS, ORDERS, OVERFLOWS, VICTIMS

DEFAULTS = {
    "prompt": paper.WORKLOADS["1:1"]["prompt"],
    "output": paper.WORKLOADS["1:1"]["output"],
    "kv_tokens": paper.KV_CAPACITY_TOKENS,
    "chunk": paper.CHUNK_TOKENS,
    "batch_time": paper.BATCH_TIME_S,
}
TRACE_FORMATS = ("auto", "azure", "mooncake", "csv")


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def parse_int(text: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")) or v != int(v):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(v)


# ---------------------------------------------------------------------------------------------
# Flag groups


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """Workload and system flags shared by capacity, simulate and boundary."""
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
        choices=TRACE_FORMATS,
        default="auto",
        help="format of --trace (default: from the file name and header)",
    )
    add_system_args(p)


def add_system_args(p: argparse.ArgumentParser, title: str = "system") -> None:
    """The system flags: KV capacity M, chunk ŝ, batch time b̄ (defaults: the paper's)."""
    s = p.add_argument_group(title)
    s.add_argument(
        "--kv-tokens",
        type=parse_int,
        default=DEFAULTS["kv_tokens"],
        metavar="M",
        help="KV-cache capacity M in tokens (default %(default)s)",
    )
    s.add_argument(
        "--chunk",
        type=parse_int,
        default=DEFAULTS["chunk"],
        metavar="S_HAT",
        help="chunked-prefill size ŝ in tokens per step (default %(default)s)",
    )
    s.add_argument(
        "--batch-time",
        type=parse_float,
        default=DEFAULTS["batch_time"],
        metavar="B",
        help="representative batch time b̄ in seconds (default %(default)s)",
    )


def add_policy_args(p: argparse.ArgumentParser, with_order: bool = True) -> None:
    """Scheduling-policy flags shared by simulate and boundary."""
    g = p.add_argument_group("policy")
    g.add_argument(
        "--admission",
        choices=tuple(ADMISSIONS),
        default="current",
        help="admit on current memory use (default, like vLLM), keeping a --watermark "
        "free (vLLM's watermark), on the true peak s+o (reserve, an oracle), on "
        "s + --max-tokens (cap, TensorRT-LLM's guaranteed-no-evict), or on a decaying "
        "share of the running requests' remaining --max-tokens (conservative, SGLang)",
    )
    g.add_argument(
        "--watermark",
        type=parse_float,
        default=0.01,
        metavar="W",
        help="watermark admission keeps a fraction W of M free, 0 <= W < 1 (default 0.01)",
    )
    g.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="output cap of cap/conservative admission; N >= the longest output",
    )
    g.add_argument(
        "--overflow",
        choices=tuple(OVERFLOWS),
        default="recompute",
        help="preemption: recompute (progress lost, default) or swap (kept)",
    )
    g.add_argument(
        "--victim",
        choices=tuple(VICTIMS),
        default="newest",
        help="which running request overflow preempts: the newest admitted (default, "
        "vLLM), the least progressed, or the one holding the most KV",
    )
    if not with_order:
        return
    g.add_argument(
        "--order",
        choices=tuple(ORDERS),
        default="fcfs",
        help="queue order: first come first served, shortest prompt first, or smallest "
        "KV memory-time volume g(s, o) first (svf, knows o)",
    )
    g.add_argument(
        "--spf-window",
        type=int,
        default=32,
        metavar="W",
        help="spf/svf look at the first W waiting requests (default 32)",
    )


def policy_words(args: argparse.Namespace) -> dict:
    """The policy flags as keyword arguments of :func:`kvstab.sim.policy_from_names`."""
    words = dict(
        admission=args.admission,
        overflow=args.overflow,
        victim=args.victim,
        watermark=args.watermark,
        max_tokens=args.max_tokens,
    )
    if hasattr(args, "order"):
        words.update(order=args.order, spf_window=args.spf_window)
    return words


def add_batch_time_args(p: argparse.ArgumentParser) -> None:
    """Batch-time model flags of simulate."""
    g = p.add_argument_group("batch time")
    g.add_argument(
        "--batch-time-model",
        choices=("constant", "linear", "random"),
        default="constant",
        help="constant b̄ (default), linear in the batch, or random",
    )
    g.add_argument(
        "--linear-coefs",
        default="0.02,2e-5,2e-5,0",
        metavar="C0,CP,CD,CKV",
        help="linear model b = c0 + cp*prefill + cd*decode + ckv*kv tokens (seconds)",
    )
    g.add_argument(
        "--batch-time-law",
        choices=("lognormal", "two_point"),
        default="lognormal",
        help="random model: b = b̄·ξ, ξ lognormal(0, σ) or a slow fraction",
    )
    g.add_argument("--batch-time-sigma", type=float, default=0.25, metavar="SIGMA")
    g.add_argument("--slow-fraction", type=float, default=0.3)
    g.add_argument("--slow-factor", type=float, default=3.0)


def add_output_args(
    p: argparse.ArgumentParser,
    *,
    out: bool = False,
    plot: bool = False,
    quiet: bool = True,
    group: argparse._ArgumentGroup | None = None,
) -> None:
    """Output flags: ``--json`` always; ``--out FILE``, ``--plot FILE``, ``--quiet`` on request."""
    o = group if group is not None else p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON object")
    if plot:
        o.add_argument(
            "--plot",
            default=None,
            metavar="FILE",
            help="write the stability picture (PNG, PDF or SVG by the suffix)",
        )
    if out:
        o.add_argument(
            "--out",
            default=None,
            metavar="FILE",
            help="write a JSON results file (configuration, seed, versions, data)",
        )
    if quiet:
        o.add_argument("--quiet", action="store_true", help="no progress on stderr")


# ---------------------------------------------------------------------------------------------
# From flags to objects, with checks


def workload_from_args(args: argparse.Namespace):
    """Build the joint law from --trace or --prompt/--output."""
    if args.trace:
        trace = traces.read_trace(args.trace, fmt=args.trace_format)
        return trace.joint_law()
    return Independent(parse_law(args.prompt, "prompt"), parse_law(args.output, "output"))


def check_fits_memory(joint, kv_tokens: int) -> None:
    """A request with s + o > M can never be served; unbounded laws need a cap."""
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


def parse_coefs(text: str) -> tuple[float, ...]:
    """``--linear-coefs C0,CP,CD,CKV`` as four floats."""
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise InputError(
            "linear_coefs", f"need four comma-separated numbers, got {text!r}"
        ) from None
    if len(vals) != 4:
        raise InputError("linear_coefs", f"need four comma-separated numbers, got {text!r}")
    return vals


def check_writable(field: str, path: str | None) -> None:
    """``path`` (if given) can be written: its directory exists and it is not a directory."""
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(field, f"directory {parent} does not exist")
    if os.path.isdir(path):
        raise InputError(field, f"{path} is a directory; give a file name")
    if not os.access(parent, os.W_OK):
        raise InputError(field, f"cannot write to {parent}")


def flag_names(flags: Mapping[str, str]) -> Callable:
    """Decorate a command's ``run(args)`` so that its API errors name its own flags.

    ``flags`` maps API field names to this command's flags; :data:`kvstab.cli.FLAG_FOR`
    covers the shared ones.
    """

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(run)
        def wrapped(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except InputError as e:
                if e.field in flags:
                    raise InputError(flags[e.field], e.message) from None
                raise

        return wrapped

    return wrap
