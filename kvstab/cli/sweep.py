"""``kvstab sweep``: a grid of systems × replications, resumable, as a tidy table.

A comma-separated list on any axis flag makes an axis (``--kv-tokens 40000,80000
--rate-fraction 0.5,0.8,1.1``); ``--grid FILE.toml`` gives the axes in a file (flags given on
the command line override it). See docs/sweeps.md. The axis flags keep their comma lists
as text (dests ``axis_<name>``) and are checked by :func:`kvstab.sweep.normalize_grid`.
"""

from __future__ import annotations

import argparse
import json
import tomllib

from kvstab.cli.common import check_fits_memory, parse_int
from kvstab.errors import InputError

# axis -> flag (and back), for the one-line errors
AXIS_FLAGS = {
    "workload": "--workload",
    "chunk": "--chunk",
    "replicas": "--replicas",
    "router": "--router",
    "admission": "--admission",
    "overflow": "--overflow",
    "order": "--order",
    "kv_tokens": "--kv-tokens",
    "batch_time": "--batch-time",
    "rate": "--rate",
    "rate_fraction": "--rate-fraction",
}
OTHER_FLAGS = {
    "replications": "--replications",
    "num_steps": "--steps",
    "seed": "--seed",
    "warmup_frac": "--warmup",
    "records": "--records",
    "chunk_points": "--chunk-points",
    "out": "--out",
    "plot": "--plot",
    "grid": "--grid",
    "column": "--plot-metric",
    "prompt": "--prompt",
    "output": "--output",
}


def _split(axis: str, text: str) -> list[str]:
    items = [x.strip() for x in str(text).split(",")]
    if not text or not str(text).strip():
        raise InputError(axis, "is an empty axis: give at least one value")
    if any(x == "" for x in items):
        raise InputError(axis, f"has an empty value in {text!r}")
    return items


def _read_grid(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise InputError("grid", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError("grid", f"{path} is not valid TOML: {e}") from None
    return data


def grid_from_args(args: argparse.Namespace) -> tuple[dict, dict]:
    """(grid, run settings) from --grid and the axis flags (flags win)."""
    grid: dict = {}
    run: dict = {}
    if args.grid:
        data = _read_grid(args.grid)
        run = {k: data.pop(k) for k in ("replications", "steps", "seed", "records") if k in data}
        grid.update(data)
    for axis in AXIS_FLAGS:
        text = getattr(args, f"axis_{axis}")
        if text is not None:
            grid[axis] = _split(axis, text)
    if args.prompt or args.output:
        from kvstab.cli.common import DEFAULTS
        from kvstab.laws import Independent, parse_law

        law = Independent(
            parse_law(args.prompt or DEFAULTS["prompt"], "prompt"),
            parse_law(args.output or DEFAULTS["output"], "output"),
        )
        if "workload" in grid and args.axis_workload is not None:
            raise InputError("workload", "give --workload or --prompt/--output, not both")
        for m in grid.get("kv_tokens", [131000]):
            try:
                check_fits_memory(law, int(float(m)))
            except ValueError:
                pass  # a bad --kv-tokens value is reported by the grid check
        grid["workload"] = [law]
    return grid, run


def run(args: argparse.Namespace) -> int:
    from kvstab.progress import Progress

    if args.distributed:
        import jax

        kw = {}
        if args.coordinator:
            kw = dict(
                coordinator_address=args.coordinator,
                num_processes=args.num_processes,
                process_id=args.process_id,
            )
        jax.distributed.initialize(**kw)
    from kvstab.sweep import sweep

    grid, settings = grid_from_args(args)
    records = settings.get("records", args.records_spec)
    if isinstance(records, str):
        if records in ("all", "none"):
            records = records == "all"
        else:
            try:
                records = int(records)
            except ValueError:
                raise InputError(
                    "records", f"must be all, none or an integer >= 0, got {records!r}"
                ) from None
    if args.plot:
        from pathlib import Path

        if Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
            raise InputError(
                "plot", f"the file name must end in .png, .pdf or .svg, got {args.plot}"
            )
    progress = Progress("kvstab sweep", quiet=args.quiet)
    res = sweep(
        grid,
        replications=settings.get("replications", args.replications),
        num_steps=settings.get("steps", args.steps),
        seed=settings.get("seed", args.seed),
        out=args.out,
        chunk_points=args.chunk_points,
        records=records,
        warmup_frac=args.warmup,
        progress=lambda d, t: progress.update(d, t, unit="points"),
    )
    progress.close()
    if args.plot:
        res.plot(args.plot, args.plot_metric)
    if args.json:
        from kvstab.results import to_jsonable

        print(json.dumps(to_jsonable(res.rows), indent=1))
        return 0
    varied = [a for a, v in res.config["axes"].items() if len(v) > 1]
    cols = ["point", *varied, "rate", "mu", "mu_stable", "throughput_per_s",
            "queue_growth_per_s", "verdict", "theory", "ttft_p99_s", "note"]  # fmt: skip
    cols = [c for c in dict.fromkeys(cols) if c in res.columns]
    print(
        f"kvstab sweep: {len(res.rows)} points x {res.config['replications']} replications, "
        f"{res.config['num_steps']} steps; {res.chunks_run} chunk(s) run, "
        f"{res.chunks_skipped} resumed from disk, {res.compilations} compilation(s), "
        f"{res.wall_s:.1f} s"
    )
    print("  ".join(f"{c:>12.12}" for c in cols))
    for r in res.rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:>12.5g}" if isinstance(v, float) else f"{str(v):>12.12}")
        print("  ".join(cells))
    if args.out:
        print(f"table: {args.out}/sweep.csv (configuration: {args.out}/sweep.json)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` subcommand to the ``kvstab`` parser."""
    p = sub.add_parser(
        "sweep",
        help="run a grid of systems (λ, M, b̄, ŝ, G, policies, workloads) x replications",
        description="Every flag of the grid takes one value or a comma-separated list (an "
        "axis). λ, M and b̄ ride in one compiled call; every combination of the other axes "
        "compiles once. Resumable: re-run the same command with the same --out.",
    )
    g = p.add_argument_group("grid (comma-separated lists make axes)")
    g.add_argument("--grid", metavar="FILE.toml", help="axes (and replications, steps, seed, "
                   "records) from a TOML file; flags override it")  # fmt: skip
    g.add_argument(
        "--rate",
        dest="axis_rate",
        metavar="L1,L2,...",
        help="arrival rates λ (requests/s, cluster)",
    )
    g.add_argument("--rate-fraction", dest="axis_rate_fraction", metavar="F1,F2,...",
                   help="λ as fractions of each point's closed-form μ")  # fmt: skip
    g.add_argument("--kv-tokens", dest="axis_kv_tokens", metavar="M1,M2,...", help="KV capacity M")
    g.add_argument(
        "--batch-time", dest="axis_batch_time", metavar="B1,...", help="batch time b̄ (s)"
    )
    g.add_argument("--chunk", dest="axis_chunk", metavar="S1,...", help="chunked-prefill size ŝ")
    g.add_argument("--replicas", dest="axis_replicas", metavar="G1,...", help="replicas G")
    g.add_argument(
        "--router", dest="axis_router", metavar="NAMES", help="round_robin, random, jsq, least_kv"
    )
    g.add_argument("--admission", dest="axis_admission", metavar="NAMES", help="current, reserve")
    g.add_argument("--overflow", dest="axis_overflow", metavar="NAMES", help="recompute, swap")
    g.add_argument("--order", dest="axis_order", metavar="NAMES", help="fcfs, spf")
    g.add_argument("--workload", dest="axis_workload", metavar="NAMES",
                   help="1:1 (default), 2:1, 1:2, 4:1, 8:1 or trace files")  # fmt: skip
    g.add_argument("--prompt", metavar="LAW", help="one prompt-length law instead of --workload")
    g.add_argument("--output", metavar="LAW", help="one output-length law instead of --workload")
    r = p.add_argument_group("run")
    r.add_argument("--replications", type=parse_int, default=16, help="trajectories per point")
    r.add_argument("--steps", type=parse_int, default=4096, help="batch steps per trajectory")
    r.add_argument("--seed", type=parse_int, default=0, help="base seed (point i: "
                   "kvstab.sweep.point_seed(seed, i))")  # fmt: skip
    r.add_argument("--warmup", type=float, default=0.25, metavar="FRAC")
    r.add_argument("--records", dest="records_spec", default="all", metavar="all|none|N",
                   help="per-request records for wait/TTFT/latency (none: faster)")  # fmt: skip
    r.add_argument("--chunk-points", dest="chunk_points", type=parse_int, default=None,
                   metavar="K", help="points per call (default: ~2048 trajectories)")  # fmt: skip
    d = p.add_argument_group("several machines (jax.distributed; docs/sweeps.md)")
    d.add_argument("--distributed", action="store_true",
                   help="jax.distributed.initialize() (SLURM, Kubernetes: automatic)")  # fmt: skip
    d.add_argument("--coordinator", metavar="HOST:PORT", default=None)
    d.add_argument("--num-processes", dest="num_processes", type=parse_int, default=None)
    d.add_argument("--process-id", dest="process_id", type=parse_int, default=None)
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", default=None,
                   help="output directory: chunks, sweep.csv, sweep.json (resumable)")  # fmt: skip
    o.add_argument("--json", action="store_true", help="print the rows as JSON")
    o.add_argument("--plot", metavar="FILE", default=None,
                   help="heat map (2 axes) or CI-band lines (1 axis): .png/.pdf/.svg")  # fmt: skip
    o.add_argument("--plot-metric", dest="plot_metric", default="queue_growth_per_s",
                   metavar="COLUMN")  # fmt: skip
    o.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_with_flags(run))


def _with_flags(fn):
    flags = {**AXIS_FLAGS, **OTHER_FLAGS}

    def wrapped(args):
        try:
            return fn(args)
        except InputError as e:
            if e.field in flags:
                raise InputError(flags[e.field], e.message) from None
            raise

    return wrapped
