"""What ``kvstab reproduce`` runs: experiment and figure scripts, and their results files.

The reproduction is split in two, so that figures can be redrawn without simulating:

* ``experiments/NAME.py``: one script per experiment. It builds a config (``--quick`` or full
  size), simulates, and writes ``results/NAME.json`` (config, seed, data, kvstab version and
  ``SIM_SEMANTICS_VERSION``). A results file whose stored config matches is not recomputed.
  Helpers only the experiments use (estimators with CIs, summaries, buffer sizes) live next to
  them in ``experiments/_common.py``.
* ``paper_figures/NAME.py``: read results files and write figures (PDF + PNG) and tables
  (Markdown + JSON). They never simulate; their style is ``paper_figures/_style.py``.

This module holds what the command needs at run time: locating the checkout and the trace
data, loading the scripts, running an experiment unless its results file is fresh, and
drawing a figure. The paper's numbers are in :mod:`kvstab.paper`; JSON I/O in
:mod:`kvstab.results`; progress display in :mod:`kvstab.progress`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import jax
import numpy as np

from kvstab import SIM_SEMANTICS_VERSION, __version__
from kvstab.progress import Progress
from kvstab.results import read_json, to_jsonable, write_json_atomic

RESULTS_FORMAT = 1  # bump when the layout of results files changes

# ---------------------------------------------------------------------------------------------
# Results files: freshness


def results_path(results_dir: str | os.PathLike, name: str) -> Path:
    return Path(results_dir) / f"{name}.json"


def versions() -> dict:
    """What a results file must match, besides its config, to be reused."""
    return {
        "kvstab_version": __version__,
        "sim_semantics_version": SIM_SEMANTICS_VERSION,
        "results_format": RESULTS_FORMAT,
    }


def environment() -> dict:
    try:
        devices = [str(d) for d in jax.devices()]
    except RuntimeError:  # pragma: no cover - no backend
        devices = []
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "devices": devices,
        "cpu_count": os.cpu_count(),
    }


def config_digest(config: dict) -> str:
    text = json.dumps(to_jsonable(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_fresh(path: str | os.PathLike, config: dict) -> bool:
    """True when ``path`` holds finished results for exactly this config and these versions."""
    old = read_json(path, missing_ok=True)
    if not isinstance(old, dict) or old.get("status") not in ("ok", "skipped"):
        return False
    return all(old.get(k) == v for k, v in versions().items()) and old.get(
        "config_digest"
    ) == config_digest(config)


def load_results(results_dir: str | os.PathLike, name: str) -> dict | None:
    """A results file, or None if it does not exist (figure scripts draw a placeholder)."""
    return read_json(results_path(results_dir, name), missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Locating the repository's scripts and the trace data


def repo_root(start: str | os.PathLike | None = None) -> Path | None:
    """The kvstab checkout holding ``experiments/`` and ``paper_figures/``.

    Looks at ``KVSTAB_REPO``, then upwards from ``start`` (default: the current directory),
    then upwards from this file (an editable install).
    """
    cands: list[Path] = []
    if os.environ.get("KVSTAB_REPO"):
        cands.append(Path(os.environ["KVSTAB_REPO"]))
    for base in (Path(start) if start else Path.cwd(), Path(__file__).resolve().parent):
        base = base.resolve()
        cands.extend([base, *base.parents])
    for c in cands:
        if (c / "experiments").is_dir() and (c / "paper_figures").is_dir():
            return c
    return None


def data_dir() -> Path | None:
    """The trace directory: ``KVSTAB_DATA``, else ``<repo>/../shared/data``; None if absent."""
    env = os.environ.get("KVSTAB_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    roots = [repo_root(), Path(__file__).resolve().parents[1]]
    for r in roots:
        if r is not None and (r.parent / "shared" / "data").is_dir():
            return r.parent / "shared" / "data"
    return None


def find_trace(filename: str) -> Path | None:
    d = data_dir()
    if d is None or not (d / filename).is_file():
        return None
    return d / filename


# ---------------------------------------------------------------------------------------------
# Loading and running experiment / figure scripts


def load_script(path: str | os.PathLike) -> ModuleType:
    """Import a script file as a module named ``_kvstab_<folder>_<stem>``.

    The folder goes on ``sys.path`` only for helper modules with unique names (``_style``);
    scripts import each other with :func:`sibling`.
    """
    path = Path(path).resolve()
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)
    mod_name = f"_kvstab_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


def sibling(file: str | os.PathLike, stem: str) -> ModuleType:
    """Another script of the same folder (``experiments/`` or ``paper_figures/``), by path.

    Scripts in the two folders share names (``fig2_queue_one_gpu.py`` is in both), so they
    import each other through this helper, never through ``sys.path``.
    """
    path = Path(file).resolve().parent / f"{stem}.py"
    mod = sys.modules.get(f"_kvstab_{path.parent.name}_{path.stem}")
    return mod if mod is not None else load_script(path)


def discover(folder: str | os.PathLike) -> list[ModuleType]:
    """Scripts in ``folder`` that declare ``NAME`` (files starting with ``_`` are helpers)."""
    mods = []
    for p in sorted(Path(folder).glob("*.py")):
        if p.name.startswith("_"):
            continue
        mod = load_script(p)
        if hasattr(mod, "NAME"):
            mods.append(mod)
    mods.sort(key=lambda m: (getattr(m, "ORDER", 50), m.NAME))
    return mods


def run_experiment(
    module: ModuleType,
    *,
    quick: bool,
    results_dir: str | os.PathLike,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[Path, str]:
    """Run one experiment script's ``run(config, progress)`` unless its results are fresh.

    Returns:
        (results path, ``"cached"`` | ``"ran"`` | ``"skipped"``).
    """
    name = module.NAME
    progress = progress or Progress(name, every_s=10.0)
    config = module.config(quick)
    path = results_path(results_dir, name)
    if not force and is_fresh(path, config):
        progress("results are up to date, not rerun (use --force to rerun)")
        return path, "cached"
    progress("running" + (" (quick size)" if quick else " (full size)"))
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    out = module.run(config, progress)
    status = "ok"
    reason = None
    if isinstance(out, Skip):
        status, reason, out = "skipped", out.reason, {}
    record = {
        "experiment": name,
        "title": getattr(module, "TITLE", name),
        "status": status,
        "reason": reason,
        **versions(),
        "seed": config.get("seed"),
        "quick": bool(quick),
        "config": config,
        "config_digest": config_digest(config),
        "started_utc": started,
        "wall_s": time.perf_counter() - t0,
        "environment": environment(),
        "data": out,
    }
    write_json_atomic(path, record)
    progress(
        f"{'skipped: ' + reason if reason else 'done'} -> {path} (took {record['wall_s']:.1f} s)"
    )
    return path, "skipped" if status == "skipped" else "ran"


@dataclasses.dataclass(frozen=True)
class Skip:
    """Returned by an experiment's ``run`` when it cannot run here (e.g. no trace data)."""

    reason: str


def experiment_main(module: ModuleType, argv: Sequence[str] | None = None) -> int:
    """Command line of one experiment script: ``python experiments/NAME.py [--quick] ...``."""
    p = argparse.ArgumentParser(description=getattr(module, "TITLE", module.NAME))
    p.add_argument("--quick", action="store_true", help="small sizes (CI, a few CPU cores)")
    p.add_argument("--force", action="store_true", help="rerun even if results are fresh")
    p.add_argument("--results", default="results", help="results directory (default results/)")
    args = p.parse_args(argv)
    run_experiment(module, quick=args.quick, results_dir=args.results, force=args.force)
    return 0


def figure_main(module: ModuleType, argv: Sequence[str] | None = None) -> int:
    """Command line of one figure script: ``python paper_figures/NAME.py [--results] [--out]``."""
    p = argparse.ArgumentParser(description=getattr(module, "TITLE", module.NAME))
    p.add_argument("--results", default="results", help="results directory (default results/)")
    p.add_argument("--out", default="paper_figures/out", help="output directory")
    args = p.parse_args(argv)
    paths = draw_figure(module, results_dir=args.results, out_dir=args.out)
    for q in paths:
        print(q)
    return 0


def draw_figure(
    module: ModuleType,
    *,
    results_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    progress: Progress | None = None,
) -> list[Path]:
    """Call a figure script's ``draw(results, out_dir)`` with its input results files."""
    results = {name: load_results(results_dir, name) for name in module.INPUTS}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = module.draw(results, Path(out_dir))
    if progress is not None:
        progress("wrote " + ", ".join(p.name for p in paths))
    return paths
