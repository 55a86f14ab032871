"""``kvstab fit``: calibrate the workload of a request trace.

Fits, on one trace:

* the joint length law p(s, o) (:class:`kvstab.fit.CopulaLogNormal`) on the first 80 % of the
  requests, and compares its E[g] with the held-out 20 % (PAPER.md §4's protocol), with the
  critical rate μ = M/(b̄·E[g]) (PAPER.md §3) implied by each;
* arrival models (Poisson, gamma renewal, two-state MMPP) compared by AIC;
* optionally, a linear batch-time model and the b̄ estimators from a timing log
  (``--batch-log``).

Progress goes to stderr; results to stdout (``--json``: one JSON object). Bad input exits with
status 2 and one line naming the flag.
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import numpy as np

from kvstab import analytic, traces
from kvstab.cli.common import (
    TRACE_FORMATS,
    add_output_args,
    add_system_args,
    flag_names,
    parse_float,
    parse_int,
)
from kvstab.errors import InputError, check_number
from kvstab.progress import Progress
from kvstab.traces import detect_bucket_s

# API field names -> this command's flags (kvstab.cli.FLAG_FOR covers the shared ones).
_FLAGS = {
    "frac": "--train-frac",
    "steps": "--steps",
    "components": "--components",
    "batch_log": "--batch-log",
    "columns": "--columns",
    "time_unit_s": "--time-unit",
    "trace_format": "--format",
    "bucket_s": "--jitter",
    "gaps": "--trace",
    "lengths": "--trace",
    "gamma_renewal": "--trace",
    "mmpp2": "--trace",
    "prompt": "--trace",
    "output": "--trace",
    "arrival_s": "--trace",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``fit`` subcommand to the ``kvstab`` parser."""
    p = sub.add_parser(
        "fit",
        help="fit the length law and arrival process of a request trace",
        description="Fit p(s, o) (log-normal marginals, Gaussian copula) on the first 80%% of a "
        "trace and test E[g] on the rest; fit Poisson, gamma-renewal and MMPP "
        "arrivals; optionally fit a batch-time model to a timing log.",
    )
    t = p.add_argument_group("trace")
    t.add_argument(
        "--trace",
        required=True,
        metavar="FILE",
        help="request trace: Azure CSV, Mooncake JSONL[.gz] or "
        "CSV arrival_s,prompt_tokens,output_tokens",
    )
    t.add_argument(
        "--format",
        "--trace-format",
        dest="trace_format",
        default="auto",
        choices=TRACE_FORMATS,
        help="trace format (default: from the file name and header)",
    )
    t.add_argument(
        "--columns",
        default=None,
        metavar="MAP",
        help="other column names, e.g. 'arrival_s=Timestamp,prompt_tokens=Request "
        "tokens,output_tokens=Response tokens'",
    )
    t.add_argument(
        "--time-unit",
        dest="time_unit_s",
        type=parse_float,
        default=None,
        metavar="S",
        help="seconds per unit of a numeric time column (default 1; Mooncake 0.001)",
    )
    t.add_argument(
        "--drop-zero",
        action="store_true",
        help="exclude rows with 0 prompt or 0 output tokens instead of failing",
    )
    t.add_argument(
        "--jitter",
        default="auto",
        metavar="auto|none|S",
        help="spread tied timestamps uniformly over buckets of S seconds before the "
        "arrival fits; auto (default): the detected bucket (3 s for Mooncake "
        "conversation) or, for occasional ties, the smallest positive gap",
    )
    add_system_args(p, "system (for E[g] and mu)")
    f = p.add_argument_group("fitting")
    f.add_argument(
        "--train-frac",
        type=parse_float,
        default=0.8,
        metavar="F",
        help="fraction of requests (chronological) for fitting the length law (default 0.8)",
    )
    f.add_argument(
        "--components",
        type=parse_int,
        default=1,
        metavar="C",
        help="log-normal components per marginal (default 1)",
    )
    f.add_argument(
        "--steps",
        type=parse_int,
        default=300,
        metavar="N",
        help="maximum optimizer steps per fit (default 300)",
    )
    f.add_argument("--no-mmpp", action="store_true", help="skip the MMPP arrival fit")
    f.add_argument("--seed", type=parse_int, default=0, help="seed for the timestamp jitter")
    f.add_argument(
        "--batch-log",
        default=None,
        metavar="FILE",
        help="timing log CSV prefill_tokens,decode_tokens,kv_tokens,duration_s: "
        "fit b = c0 + cp*P + cd*D + ckv*KV and the b-bar estimators",
    )
    add_output_args(p)
    p.set_defaults(func=run)


def _parse_columns(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(
                "columns", f"expected NAME=COLUMN pairs separated by commas, got {text!r}"
            )
        out[key.strip()] = value.strip()
    return out


def _parse_jitter(option: str) -> str | float | None:
    """--jitter: 'auto', None (none) or a width in seconds > 0; checked before any fitting."""
    if option in ("none", "auto"):
        return None if option == "none" else "auto"
    try:
        width = float(option)
    except ValueError:
        raise InputError("bucket_s", f"expected auto, none or seconds, got {option!r}") from None
    if not math.isfinite(width) or width <= 0:
        raise InputError("bucket_s", f"must be auto, none or seconds > 0, got {option!r}")
    return width


def _jitter_width(trace, option: str) -> float | None:
    parsed = _parse_jitter(option)
    if parsed != "auto":
        return parsed
    bucket = detect_bucket_s(trace)
    if bucket is not None:
        return bucket
    gaps = trace.interarrival_s
    if np.any(gaps == 0) and np.any(gaps > 0):
        return float(gaps[gaps > 0].min())
    return None


@flag_names(_FLAGS)
def run(args: argparse.Namespace) -> int:
    from kvstab import fit  # optax and the fitting code: only `kvstab fit` loads them

    analytic.validate_system(args.kv_tokens, args.chunk, args.batch_time)
    check_number("frac", args.train_frac, low=0, high=1, low_open=True, high_open=True)
    check_number("steps", args.steps, low=1, integer=True)
    check_number("components", args.components, low=1, high=8, integer=True)
    _parse_jitter(args.jitter)
    bar = Progress("kvstab fit", quiet=args.quiet)
    progress = None if args.quiet else bar.optimizer()
    say = bar.say

    trace = traces.read_trace(
        args.trace,
        fmt=args.trace_format,
        columns=_parse_columns(args.columns),
        drop_zero=args.drop_zero,
        time_unit_s=args.time_unit_s,
    )
    need = int((trace.prompt + trace.output).max())
    if need > args.kv_tokens:
        i = int((trace.prompt + trace.output).argmax())
        raise InputError(
            "kv_capacity_tokens",
            f"must hold every request of the trace: request {i} needs s+o = {need:,} tokens > "
            f"{args.kv_tokens:,}, so it could never be served (give --kv-tokens >= {need})",
        )
    summary = trace.summary(args.chunk)
    say(f"kvstab fit: {len(trace)} requests from {trace.source} ({trace.format})")

    say("  fitting the length law ...")
    lengths = fit.fit_lengths(
        trace,
        args.train_frac,
        components=args.components,
        steps=args.steps,
        chunk_tokens=args.chunk,
        kv_capacity_tokens=args.kv_tokens,
        batch_time_s=args.batch_time,
        progress=progress,
    )
    bar.close()

    width = _jitter_width(trace, args.jitter)
    arrival_trace = trace
    if width is not None:
        arrival_trace = traces.jitter_buckets(trace, width, jax.random.key(args.seed))
        say(f"  arrivals: timestamps spread uniformly over {width:g}-s buckets (seed {args.seed})")
    say("  fitting arrival models ...")
    arrivals = fit.fit_arrivals(
        arrival_trace, mmpp=not args.no_mmpp, steps=args.steps, progress=progress
    )
    bar.close()

    batch = None
    if args.batch_log:
        say("  fitting the batch-time model ...")
        batch = fit.fit_batch_log(
            fit.read_batch_log(args.batch_log), steps=args.steps, progress=progress
        )
        bar.close()

    law = lengths.law
    mean_g_all = summary["mean_g_exact"]
    result = {
        "trace": {k: v for k, v in summary.items()},
        "system": {
            "kv_capacity_tokens": args.kv_tokens,
            "chunk_tokens": args.chunk,
            "batch_time_s": args.batch_time,
        },
        "rate_per_s": trace.rate_per_s,
        "mean_g_empirical": lengths.mean_g_test,
        "mean_g_empirical_train": lengths.mean_g_train,
        "mean_g_empirical_all": mean_g_all,
        "mean_g_fit": lengths.mean_g_fit,
        "mean_g_rel_error": lengths.rel_error_test,
        "mu_fit": lengths.mu(lengths.mean_g_fit),
        "mu_empirical": lengths.mu(lengths.mean_g_test),
        "mu_empirical_all": lengths.mu(mean_g_all),
        "loglik": lengths.fit.loglik,
        "params": lengths.fit.params(),
        "lengths": lengths.to_dict(),
        "arrivals": arrivals.to_dict(),
        "arrival_jitter_s": width,
        "batch_time": None if batch is None else batch.to_dict(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    p = result["params"]
    print(
        f"kvstab fit: {trace.source} ({trace.format}, {len(trace)} requests, "
        f"{trace.num_dropped_zero} zero-token rows dropped)"
    )
    print(
        f"  arrivals     {trace.rate_per_s:.4g} req/s over {trace.span_s:.1f} s; inter-arrival "
        f"CV {summary['interarrival_cv']:.3g}, dispersion (1 s) "
        f"{summary['dispersion_index_1s']:.3g}"
    )
    print(
        f"  length law   fitted on the first {lengths.num_train} requests "
        f"({lengths.fit.steps} steps{'' if lengths.fit.converged else ', not converged'}):"
    )
    for name in ("prompt", "output"):
        q = p[name]
        comps = ", ".join(
            f"{w:.3g} x median {m:.4g} sigma {sg:.3g}"
            for w, m, sg in zip(q["weights"], q["median_tokens"], q["sigma"], strict=True)
        )
        print(f"    {name:<8}   discretized log-normal ({comps}) on 1..{q['cap']}")
    print(
        f"    copula     rho = {p['rho']:.3f};  log-likelihood {lengths.fit.loglik:.6g} "
        f"({lengths.fit.loglik / lengths.num_train:.4f} per request)"
    )
    print(
        f"  E[g]         fit {lengths.mean_g_fit:,.0f}   held-out {lengths.num_test} requests "
        f"{lengths.mean_g_test:,.0f} ({100 * lengths.rel_error_test:+.2f} %)   first part "
        f"{lengths.mean_g_train:,.0f}   token*steps (exact g, chunk {args.chunk})"
    )
    print(
        f"  mu           fit {result['mu_fit']:.4g} req/s   held-out {result['mu_empirical']:.4g}"
        f" req/s   (M = {args.kv_tokens:,}, b = {args.batch_time:g} s)"
    )
    print(f"  law          {law.spec}")
    print("  arrival models (log-likelihood of the gaps, AIC):")
    for m in arrivals.models:
        extra = ""
        if m.name == "gamma_renewal":
            extra = f"shape {m.shape:.4g} (CV {m.cv:.3g})"
        elif m.name == "mmpp2":
            extra = (
                f"rates {m.rates_per_s[0]:.4g}/{m.rates_per_s[1]:.4g} req/s, switching "
                f"{m.switch_per_s[0]:.3g}/{m.switch_per_s[1]:.3g} /s"
            )
        print(
            f"    {m.name:<14} rate {m.rate_per_s:.4g} req/s  loglik {m.loglik:.6g}  "
            f"AIC {m.aic:.6g}  {extra}"
        )
    print(f"    best by AIC: {arrivals.best}")
    if batch is not None:
        e = batch.estimators
        print(
            f"  batch time   b = {batch.c0_s:.4g} + {batch.cp_s_per_token:.3g}*P + "
            f"{batch.cd_s_per_token:.3g}*D + {batch.ckv_s_per_token:.3g}*KV  (Huber, "
            f"{batch.num_batches} batches)"
        )
        print(
            f"    b-bar      median {e['median_s']:.4g} s, 5% trimmed mean "
            f"{e['trimmed_mean_5_s']:.4g} s, 10% trimmed mean {e['trimmed_mean_10_s']:.4g} s"
        )
    return 0
