"""What the ``kvstab`` subcommands share: one definition of each flag group and its checks.

* number parsers for argparse (:func:`parse_float`, :func:`parse_int`);
* flag groups: workload (:func:`add_workload_args`), system (:func:`add_system_args`),
  policy (:func:`add_policy_args`), batch time (:func:`add_batch_time_args`), output and
  progress (:func:`add_output_args`);
* turning flags into objects and checking them: :func:`workload_from_args`,
  :func:`check_fits_memory`, :func:`parse_coefs`, :func:`check_writable`;
* :func:`flag_names`: a command's own API-field -> flag names for its one-line errors;
* :func:`validate_args`: every flag of every command checked (type, finiteness, the ranges of
  :mod:`kvstab.validate`, writable outputs) before the command runs; :data:`FLAG_RANGES` is the
  table, keyed by argparse ``dest``, so a new command's flags are checked by reusing names.

Bad input raises :class:`kvstab.errors.InputError`; :func:`kvstab.cli.main` turns it into one
line naming the flag and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable, Mapping

from kvstab import paper, traces, validate
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
        default=None,
        metavar="LAW",
        help=f"prompt-length law (default {DEFAULTS['prompt']}): const:V, uniform:A:B, "
        "geometric:MEAN[:CAP], lognormal:MEDIAN:SIGMA[:CAP], empirical:V1,V2,...",
    )
    w.add_argument(
        "--output",
        default=None,
        metavar="LAW",
        help=f"output-length law (default {DEFAULTS['output']}), same forms as --prompt",
    )
    w.add_argument(
        "--trace",
        metavar="FILE",
        default=None,
        help="use the joint (s, o) law of a request trace (not with --prompt/--output)",
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
        type=parse_int,
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
        type=parse_int,
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
    g.add_argument("--batch-time-sigma", type=parse_float, default=0.25, metavar="SIGMA")
    g.add_argument("--slow-fraction", type=parse_float, default=0.3)
    g.add_argument("--slow-factor", type=parse_float, default=3.0)


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
    prompt = DEFAULTS["prompt"] if args.prompt is None else args.prompt
    output = DEFAULTS["output"] if args.output is None else args.output
    return Independent(parse_law(prompt, "prompt"), parse_law(output, "output"))


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
    want = f"need four finite comma-separated numbers c0 > 0, cp, cd, ckv >= 0, got {text!r}"
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise InputError("linear_coefs", want) from None
    if len(vals) != 4 or not all(math.isfinite(x) and x >= 0 for x in vals) or vals[0] <= 0:
        raise InputError("linear_coefs", want)
    return vals


def check_writable(field: str, path: str | None, *, figure: bool = False) -> None:
    """``path`` (if given) can be written: its directory exists and it is not a directory;
    with ``figure``, matplotlib can write its suffix."""
    validate.check_output_file(field, path, figure=figure)


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


# ---------------------------------------------------------------------------------------------
# Every flag checked before a command runs

_TOKENS = dict(integer=True, low=1, high=validate.MAX_TOKENS)
# argparse dest -> check_value's range. A flag left at None (optional) is not checked;
# commands keep their own stricter lower bounds (boundary's --steps >= 100).
FLAG_RANGES: dict[str, dict] = {
    "kv_tokens": _TOKENS,
    "chunk": _TOKENS,
    "batch_time": dict(low=validate.BATCH_TIME_RANGE_S[0], high=validate.BATCH_TIME_RANGE_S[1]),
    "rate": dict(low=0, high=validate.MAX_RATE_PER_S),
    "utilization": dict(low=0, high=1, low_open=True),
    "steps": dict(integer=True, low=1, high=validate.MAX_STEPS),
    "trajectories": dict(integer=True, low=1, high=validate.INT32_MAX),
    "seed": dict(integer=True, low=0, high=validate.MAX_SEED),
    "initial_queue": dict(integer=True, low=0, high=validate.MAX_TOKENS),
    "replicas": dict(integer=True, low=1, high=validate.MAX_REPLICAS),
    "records": dict(integer=True, low=0, high=validate.INT32_MAX),
    "spf_window": dict(integer=True, low=1, high=validate.MAX_WINDOW),
    "watermark": dict(low=0, high=1, high_open=True),
    "max_tokens": dict(integer=True, low=1, high=validate.MAX_TOKENS),
    "warmup": dict(low=0, high=1, high_open=True),
    "batch_time_sigma": dict(low=0, high=10),
    "slow_fraction": dict(low=0, high=1),
    "slow_factor": dict(low=0, high=1e6, low_open=True),
    "grid_points": dict(integer=True, low=2, high=1000),
    "train_frac": dict(low=0, high=1, low_open=True, high_open=True),
    "components": dict(integer=True, low=1, high=8),
    "time_unit_s": dict(low=0, high=1e9, low_open=True),
}
# Output paths: dest -> what they must be (by the flag's metavar: FILE or DIR).
OUTPUT_DESTS = ("out", "plot", "results")


def _flags_of(parser: argparse.ArgumentParser, argv) -> dict[str, str]:
    """dest -> the flag as the user typed it (else the flag's first long name)."""
    typed = {a.split("=", 1)[0] for a in (argv if argv is not None else sys.argv[1:])}
    out = {}
    for action in parser._actions:
        if not action.option_strings:
            continue
        as_typed = [o for o in action.option_strings if o in typed]
        out[action.dest] = as_typed[0] if as_typed else max(action.option_strings, key=len)
    return out


def validate_args(args: argparse.Namespace, parser: argparse.ArgumentParser, argv=None) -> None:
    """Check every flag of a parsed command line before the command does any work.

    Raises :class:`InputError` whose field is the flag as typed (``--kv-tokens``): numbers
    by :data:`FLAG_RANGES` (type, finiteness, range), output files and directories
    (writable, a figure suffix matplotlib supports), laws that parse, and flags that
    contradict each other (``--trace`` with ``--prompt``/``--output``).
    """
    flags = _flags_of(parser, argv)
    metavars = {a.dest: a.metavar for a in parser._actions}
    for dest, flag in flags.items():
        value = getattr(args, dest, None)
        if dest in FLAG_RANGES:
            validate.check_value(flag, value, optional=True, **FLAG_RANGES[dest])
        elif dest in OUTPUT_DESTS and value is not None:
            if metavars.get(dest) == "DIR":
                validate.check_output_dir(flag, value)
            else:
                validate.check_output_file(flag, value, figure=dest == "plot")
    if getattr(args, "trace", None) and "prompt" in flags:
        given = [flags[d] for d in ("prompt", "output") if getattr(args, d, None) is not None]
        if given:
            raise InputError(
                "--trace",
                f"the trace gives the joint (s, o) law itself; drop {' and '.join(given)} "
                "(it would be ignored)",
            )
    for dest in ("prompt", "output"):
        if dest in flags and getattr(args, dest, None) is not None:
            parse_law(args.prompt if dest == "prompt" else args.output, flags[dest])
    if "linear_coefs" in flags and getattr(args, "linear_coefs", None) is not None:
        try:
            parse_coefs(args.linear_coefs)
        except InputError as e:
            raise InputError(flags["linear_coefs"], e.message) from None
