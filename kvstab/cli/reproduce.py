"""``kvstab reproduce``: run the paper's experiments, then draw every figure and table.

Runs the scripts in ``experiments/`` (each writes ``RESULTS/NAME.json`` atomically, with its
config, seed, kvstab version and SIM_SEMANTICS_VERSION) and then those in ``paper_figures/``
(they read results files and write PDF + PNG figures and Markdown + JSON tables to ``OUT``).
An experiment whose results file exists with the same config and versions is not rerun
(``--force`` reruns it), so an interrupted run resumes where it stopped. Progress goes to
stderr: which job, k/n, elapsed seconds.

The scripts live in the repository, not in the installed package: run the command from a
checkout (or set ``KVSTAB_REPO``). ``--quick`` sizes finish in a few minutes on 2 CPU cores
(CI); the full sizes are meant for a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from kvstab import reproduce as rp
from kvstab.errors import InputError
from kvstab.progress import Progress


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` subcommand to the ``kvstab`` parser."""
    p = sub.add_parser(
        "reproduce",
        help="regenerate the paper's tables and figures (experiments, then drawing)",
        description="Run the experiments in experiments/ (results files in --results; fresh "
        "ones are reused) and draw every figure and table from paper_figures/ into --out.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: a few minutes on 2 CPU cores (CI); default: full sizes, meant for a GPU",
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this experiment or draw only this figure/table (with the "
        "experiments it reads); repeat or comma-separate; see --list",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rerun experiments even when their results files are up to date",
    )
    p.add_argument(
        "--results", default="results", metavar="DIR", help="results directory (default: results/)"
    )
    p.add_argument(
        "--out",
        default=os.path.join("paper_figures", "out"),
        metavar="DIR",
        help="figures and tables directory (default: paper_figures/out/)",
    )
    p.add_argument(
        "--repo",
        default=None,
        metavar="DIR",
        help="kvstab checkout holding experiments/ and paper_figures/ (default: "
        "KVSTAB_REPO, the current directory or a parent of it)",
    )
    p.add_argument("--no-draw", action="store_true", help="run the experiments only")
    p.add_argument("--list", action="store_true", help="list experiments and figures, then exit")
    p.set_defaults(func=run)


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        items = [x.strip() for x in v.split(",")]
        if not all(items):  # '' or 'a,,b': an empty name would silently select everything
            raise InputError("--only", f"empty name in {v!r}; give names (see --list)")
        out.extend(items)
    return out


def run(args: argparse.Namespace) -> int:
    only = _split(args.only)
    root = Path(args.repo).resolve() if args.repo else rp.repo_root()
    if root is None or not (root / "experiments").is_dir():
        raise InputError(
            "--repo",
            "cannot find experiments/ and paper_figures/: run from a kvstab checkout, or give "
            "--repo DIR (or set KVSTAB_REPO)",
        )
    experiments = rp.discover(root / "experiments")
    figures = rp.discover(root / "paper_figures")
    exp_by_name = {m.NAME: m for m in experiments}
    fig_by_name = {m.NAME: m for m in figures}

    if args.list:
        print("experiments (experiments/NAME.py -> RESULTS/NAME.json):")
        for m in experiments:
            print(f"  {m.NAME:24s} {getattr(m, 'TITLE', '')}")
        print("figures and tables (paper_figures/NAME.py -> OUT/...):")
        for m in figures:
            print(f"  {m.NAME:24s} reads {', '.join(m.INPUTS)}")
        return 0

    if only:
        unknown = [n for n in only if n not in exp_by_name and n not in fig_by_name]
        if unknown:
            raise InputError(
                "--only",
                f"unknown name {unknown[0]!r}; choose from "
                f"{', '.join(sorted(set(exp_by_name) | set(fig_by_name)))}",
            )
        fig_sel = [m for m in figures if m.NAME in only or any(i in only for i in m.INPUTS)]
        wanted = {n for n in only if n in exp_by_name}
        for m in fig_sel:
            if m.NAME in only:  # a figure named explicitly: its required (first) input runs too
                wanted.add(m.INPUTS[0])
        exp_sel = [m for m in experiments if m.NAME in wanted]
    else:
        exp_sel, fig_sel = experiments, figures
    if args.no_draw:
        fig_sel = []

    t0 = time.perf_counter()
    total = len(exp_sel) + len(fig_sel)
    size = "quick" if args.quick else "full"
    print(
        f"kvstab reproduce: {len(exp_sel)} experiment(s) ({size} size) -> {args.results}, "
        f"{len(fig_sel)} figure/table script(s) -> {args.out}",
        file=sys.stderr,
        flush=True,
    )
    failed: list[str] = []
    counts = {"ran": 0, "cached": 0, "skipped": 0}
    k = 0
    for m in exp_sel:
        k += 1
        prog = Progress(m.NAME, job=(k, total), every_s=10.0)
        try:
            _, status = rp.run_experiment(
                m, quick=args.quick, results_dir=args.results, force=args.force, progress=prog
            )
            counts[status] += 1
        except (KeyboardInterrupt, InputError):
            raise
        except Exception:  # keep going: the other experiments and figures are independent
            failed.append(m.NAME)
            print(
                f"[{k}/{total}] {m.NAME}: FAILED\n{traceback.format_exc()}",
                file=sys.stderr,
                flush=True,
            )
    written: list[Path] = []
    for m in fig_sel:
        k += 1
        prog = Progress(m.NAME, job=(k, total), every_s=10.0)
        try:
            written += rp.draw_figure(m, results_dir=args.results, out_dir=args.out, progress=prog)
        except KeyboardInterrupt:
            raise
        except Exception:
            failed.append(m.NAME)
            print(
                f"[{k}/{total}] {m.NAME}: FAILED\n{traceback.format_exc()}",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - t0
    print(
        f"kvstab reproduce: done in {elapsed:.1f} s: {counts['ran']} experiment(s) run, "
        f"{counts['cached']} up to date, {counts['skipped']} skipped (missing data); "
        f"{len(written)} file(s) written to {args.out}"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""),
        file=sys.stderr,
        flush=True,
    )
    for p in written:
        print(p)
    return 1 if failed else 0
