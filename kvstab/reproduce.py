"""Shared machinery for regenerating the paper's tables and figures (``kvstab reproduce``).

The reproduction is split in two, so that figures can be redrawn without simulating:

* ``experiments/NAME.py``: one script per experiment. It builds a config (``--quick`` or full
  size), simulates, and writes ``results/NAME.json`` (config, seed, data, kvstab version and
  ``SIM_SEMANTICS_VERSION``). A results file whose stored config matches is not recomputed.
* ``paper_figures/NAME.py``: read results files and write figures (PDF + PNG) and tables
  (Markdown + JSON). They never simulate.

This module holds what both sides share: the paper's numbers (PAPER.md §4), the experiments'
workloads, results-file I/O (atomic writes, freshness checks), locating the repository and the
trace data, progress reporting on stderr, and the estimators used in the tables (μ_sim from a
saturated run, λ* from a λ sweep), each with a confidence interval.

Where :mod:`kvstab.stability` is available its estimators are used for μ_sim and λ*; otherwise
the fallbacks defined here are used and the results file says which one produced the number.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from kvstab import SIM_SEMANTICS_VERSION, __version__
from kvstab.results import to_jsonable, write_json_atomic  # noqa: F401  (re-exported)

RESULTS_FORMAT = 1  # bump when the layout of results files changes

# ---------------------------------------------------------------------------------------------
# The paper's setup and numbers (PAPER.md §4). GAPs are |μ_theory − μ_gpu| / μ_gpu.

KV_CAPACITY_TOKENS = 131000
CHUNK_TOKENS = 512

PAPER_TABLE1 = [
    {
        "workload": "1:1",
        "prompt": "uniform:10:1600",
        "output": "uniform:10:1600",
        "batch_time_s": 0.0372,
        "mu_gpu": 3.387,
        "mu_theory": 3.263,
        "gap": 0.0366,
    },
    {
        "workload": "2:1",
        "prompt": "uniform:10:2133",
        "output": "uniform:10:1066",
        "batch_time_s": 0.0430,
        "mu_gpu": 3.650,
        "mu_theory": 3.956,
        "gap": 0.0838,
    },
    {
        "workload": "1:2",
        "prompt": "uniform:10:1066",
        "output": "uniform:10:2133",
        "batch_time_s": 0.0337,
        "mu_gpu": 2.969,
        "mu_theory": 2.902,
        "gap": 0.0225,
    },
    {
        "workload": "Mixed",
        "prompt": "first half 2:1, then 1:2",
        "output": "",
        "batch_time_s": None,
        "mu_gpu": 3.137,
        "mu_theory": 3.385,
        "gap": 0.0790,
    },
]
PAPER_TABLE2 = {
    "trace": "LongBench v2 (503 questions), p(s,o) fitted on 80 %, tested on 20 % at 20 req/s",
    "mu_gpu": 0.610,
    "mu_theory": 0.561,
    "gap": 0.0803,
}
PAPER_TABLE3 = {
    "num_replicas": 8,
    "mu_gpu": 26.710,
    "mu_theory": 25.808,  # the paper's "8·μ_theory"; 8 × 3.263 = 26.104 (unexplained)
    "gap": 0.0338,
}
PAPER_TABLE4 = {
    "workload": "8:1",
    "mu_gpu": 5.470,
    "rows": [
        {"estimator": "5% trimmed mean", "mu_theory": 4.977, "gap": 0.090},
        {"estimator": "10% trimmed mean", "mu_theory": 5.862, "gap": 0.072},
    ],
}

# Workloads of the synthetic experiments: (prompt law spec, output law spec, b̄ in s).
WORKLOADS = {row["workload"]: row for row in PAPER_TABLE1[:3]}
# Not in the paper's text: the 4:1 (Figure 5) and 8:1 (Table 4, Figures 7-8) ranges follow the
# pattern of Table 1 (upper bounds in the P/D ratio, summing to about 3200 tokens).
EXTRA_WORKLOADS = {
    "4:1": {"prompt": "uniform:10:2560", "output": "uniform:10:640"},
    "8:1": {"prompt": "uniform:10:2844", "output": "uniform:10:356"},
}

# kvstab's heavy-tailed batch-time model for the 8:1 appendix experiment (Table 4, Figs 7-8):
# b = b̄·ξ, ξ = exp(σ Z) times ``slow_factor`` with probability ``slow_fraction`` (PAPER.md §4:
# "about 70 % similar, 30 % much slower"). Illustrative values, not fitted to a GPU.
HEAVY_TAIL = {
    "batch_time_s": 0.030,
    "batch_time_law": "two_point",
    "batch_time_sigma": 0.10,
    "slow_fraction": 0.30,
    "slow_factor": 3.0,
}

# kvstab's linear batch-time model b = c₀ + c_p·P + c_d·D + c_kv·KV (PAPER.md §1, choice 3)
# used for Figures 1 and 5 (s, s/token). Illustrative coefficients, not fitted to timing data
# (the paper publishes none): a fixed cost per batch (weights read, launch overheads) that
# dominates, as the paper's near-constant batch times suggest, plus per-token prefill, decode
# and KV-read costs; a saturated 1:1 replica then has a median batch time near 40 ms.
LINEAR_COEFS = (0.030, 1.0e-5, 2.0e-5, 3.0e-8)


def law_for(workload: str):
    """The joint law of a named synthetic workload (``"1:1"``, ``"2:1"``, ``"8:1"``, ...)."""
    from kvstab.laws import Independent, parse_law

    row = WORKLOADS.get(workload) or EXTRA_WORKLOADS[workload]
    return Independent(parse_law(row["prompt"], "prompt"), parse_law(row["output"], "output"))


def rel_gap(value: float | None, reference: float | None) -> float | None:
    """|value − reference| / reference (the paper's GAP), None if either is missing."""
    if value is None or reference is None or not np.isfinite(value) or not reference:
        return None
    return abs(float(value) - float(reference)) / abs(float(reference))


# ---------------------------------------------------------------------------------------------
# Sizes: --quick (CI, 2 CPU cores) and full (meant for a GPU).


def pick(quick: bool, quick_value: Any, full_value: Any) -> Any:
    return quick_value if quick else full_value


# ---------------------------------------------------------------------------------------------
# JSON results files


# to_jsonable and write_json_atomic live in kvstab.results (imported above).


def read_json(path: str | os.PathLike) -> Any | None:
    """The parsed file, or None if it is missing or not valid JSON (e.g. from an old crash)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def arr(x: Any, dtype=np.float64) -> np.ndarray:
    """A results-file list back to a numpy array (None -> NaN)."""
    if x is None:
        return np.asarray(np.nan, dtype)
    a = np.asarray(
        x if not isinstance(x, list) else _none_to_nan(x),
        dtype=dtype,
    )
    return a


def _none_to_nan(x):
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return np.nan if x is None else x


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
    import jax

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
    old = read_json(path)
    if not isinstance(old, dict) or old.get("status") not in ("ok", "skipped"):
        return False
    return all(old.get(k) == v for k, v in versions().items()) and old.get(
        "config_digest"
    ) == config_digest(config)


def load_results(results_dir: str | os.PathLike, name: str) -> dict | None:
    """A results file, or None if it does not exist (figure scripts draw a placeholder)."""
    return read_json(results_path(results_dir, name))


# ---------------------------------------------------------------------------------------------
# Progress on stderr


class Progress:
    """Progress lines on stderr: ``[k/n] NAME: message (elapsed)``.

    Args:
        name: experiment or figure name.
        index, total: position of this job in the run (1-based), for ``k/n``.
        stream: where to write (stderr).
        every_s: minimum seconds between two simulator-segment lines.
    """

    def __init__(self, name: str, index: int = 1, total: int = 1, stream=None, every_s=10.0):
        self.name = name
        self.index = index
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self._last = -math.inf
        self._task = ""

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, message: str) -> None:
        self._task = message
        self._last = time.perf_counter()
        print(
            f"[{self.index}/{self.total}] {self.name}: {message} ({self.elapsed_s:.1f} s)",
            file=self.stream,
            flush=True,
        )

    def sim(self, label: str) -> Callable[[int, int, int], None]:
        """A ``progress`` callback for :func:`kvstab.simulate.simulate` (throttled)."""

        def report(done: int, total: int, attempt: int) -> None:
            now = time.perf_counter()
            if done < total and now - self._last < self.every_s:
                return
            self._last = now
            extra = f", re-run {attempt}" if attempt > 1 else ""
            print(
                f"[{self.index}/{self.total}] {self.name}: {label}: step {done}/{total}{extra} "
                f"({self.elapsed_s:.1f} s)",
                file=self.stream,
                flush=True,
            )

        return report

    def stage(self, label: str) -> Callable[[float, float, str], None]:
        """A ``progress(done, total, stage)`` callback for :mod:`kvstab.stability` (throttled)."""

        def report(done: float, total: float, stage: str) -> None:
            now = time.perf_counter()
            pct = 100.0 * done / total if total else 100.0
            key = (label, stage, round(pct))
            if key == self._task or (done < total and now - self._last < self.every_s):
                return
            self._last, self._task = now, key
            print(
                f"[{self.index}/{self.total}] {self.name}: {label}: {stage} ({pct:.0f} %) "
                f"({self.elapsed_s:.1f} s)",
                file=self.stream,
                flush=True,
            )

        return report


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


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Name, size and SHA-256 of an input file (recorded in results, never copied)."""
    p = Path(path)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": p.name, "bytes": p.stat().st_size, "sha256": h.hexdigest()}


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
        if p.name.startswith("_") or p.stem in ("common",):
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
    progress = progress or Progress(name)
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
    import argparse

    p = argparse.ArgumentParser(description=getattr(module, "TITLE", module.NAME))
    p.add_argument("--quick", action="store_true", help="small sizes (CI, a few CPU cores)")
    p.add_argument("--force", action="store_true", help="rerun even if results are fresh")
    p.add_argument("--results", default="results", help="results directory (default results/)")
    args = p.parse_args(argv)
    run_experiment(module, quick=args.quick, results_dir=args.results, force=args.force)
    return 0


def figure_main(module: ModuleType, argv: Sequence[str] | None = None) -> int:
    """Command line of one figure script: ``python paper_figures/NAME.py [--results] [--out]``."""
    import argparse

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


# ---------------------------------------------------------------------------------------------
# Estimators used in the tables


def mu_theory(
    law, batch_time_s: float, *, kv_capacity_tokens=KV_CAPACITY_TOKENS, chunk_tokens=CHUNK_TOKENS
) -> dict:
    """Closed forms (PAPER.md §3): E[g] (exact and paper form), μ, δ and μ(1−δ)."""
    import jax

    from kvstab import analytic

    with jax.enable_x64(True):  # exact sums over ~10^6 support points in double precision
        eg = float(analytic.mean_g(law, chunk_tokens, "exact"))
        eg_paper = float(analytic.mean_g(law, chunk_tokens, "paper"))
    mu = kv_capacity_tokens / (batch_time_s * eg)
    d = law.max_total / kv_capacity_tokens if law.max_total is not None else math.nan
    return {
        "mean_g_exact": eg,
        "mean_g_paper": eg_paper,
        "mu": mu,
        "mu_paper_form": kv_capacity_tokens / (batch_time_s * eg_paper),
        "delta": d,
        "mu_stable": mu * (1.0 - d),
    }


def _stability_module():
    """:mod:`kvstab.stability` if it exists (written by another engineer), else None."""
    if importlib.util.find_spec("kvstab.stability") is None:
        return None
    return importlib.import_module("kvstab.stability")


def throughput_ci(result) -> dict:
    """μ_sim from a :class:`~kvstab.simulate.SimResult`: post-warm-up completions/s per
    trajectory, mean and 95 % t interval over trajectories."""
    from kvstab import metrics

    thr = result.throughput_per_traj()
    m, lo, hi = metrics.mean_ci(thr)
    return {
        "mean": m,
        "ci": [lo, hi],
        "per_traj": thr,
        "method": "post-warm-up completions/s of a saturated run; 95 % t interval over "
        f"{thr.size} independent trajectories",
        "flags": sorted({f for fl in result.flags for f in fl}),
        "preemptions_per_completion": float(
            result.preempted[:, -1].sum() / max(result.completed[:, -1].sum(), 1)
        ),
        "mean_kv_tokens": float(result.kv_tokens[:, result.warmup_blocks :].mean()),
    }


def saturated_throughput(
    law,
    *,
    batch_time_s,
    num_steps,
    num_trajectories,
    seed,
    progress: Callable | None = None,
    **sim_kwargs,
) -> dict:
    """μ_sim: the maximal throughput of a saturated (endless-backlog) run, with a 95 % CI.

    The fallback of :func:`stability_estimates` (:func:`throughput_ci` of one
    :func:`kvstab.simulate.simulate` call); also used directly where
    :mod:`kvstab.stability` does not apply (several replicas).
    """
    from kvstab.sim import Saturated, Workload, components_from_names, simulate

    kv = sim_kwargs.pop("kv_capacity_tokens", KV_CAPACITY_TOKENS)
    chunk = sim_kwargs.pop("chunk_tokens", CHUNK_TOKENS)
    run = {
        k: sim_kwargs.pop(k) for k in ("warmup_frac", "sizes", "max_attempts") if k in sim_kwargs
    }
    res = simulate(
        Workload(law, Saturated(), sim_kwargs.pop("initial_queue", 0)),
        num_steps=num_steps,
        num_trajectories=num_trajectories,
        seed=seed,
        progress=progress,
        **run,
        **components_from_names(
            kv_capacity_tokens=kv, chunk_tokens=chunk, batch_time_s=batch_time_s, **sim_kwargs
        ),
    )
    out = throughput_ci(res)
    out["estimator"] = "kvstab.reproduce.saturated_throughput (fallback)"
    out["sim_config"] = res.config
    out["wall_s"] = res.wall_s
    return out


def hinge_boundary(
    rates: np.ndarray, slopes: np.ndarray, *, num_boot: int = 400, seed: int = 0
) -> dict:
    """λ* from queue growth rates on a λ grid: least-squares fit of slope = max(0, λ − λ*).

    Above the boundary the waiting queue grows at λ minus the maximal throughput; below it the
    queue is stationary (zero drift). The hinge's knee is λ*. The 95 % CI is a percentile
    bootstrap over trajectories (resampled within each λ).

    Args:
        rates: (traj,) arrival rate of each trajectory, req/s.
        slopes: (traj,) post-warm-up growth rate of the waiting queue, req/s.
    """
    rates = np.asarray(rates, np.float64)
    slopes = np.asarray(slopes, np.float64)
    ok = np.isfinite(slopes)
    rates, slopes = rates[ok], slopes[ok]
    grid = np.linspace(rates.min() * 0.8, rates.max(), 4001)

    def fit(r, y):
        pred = np.maximum(0.0, r[None, :] - grid[:, None])
        sse = ((y[None, :] - pred) ** 2).sum(axis=1)
        return float(grid[int(np.argmin(sse))])

    est = fit(rates, slopes)
    rng = np.random.default_rng(seed)
    levels = np.unique(rates)
    groups = [np.flatnonzero(rates == lv) for lv in levels]
    boots = []
    for _ in range(num_boot):
        idx = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
        boots.append(fit(rates[idx], slopes[idx]))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {
        "mean": est,
        "ci": [float(lo), float(hi)],
        "method": "hinge fit slope = max(0, λ − λ*) to post-warm-up queue growth rates on a "
        f"λ grid; 95 % percentile bootstrap over trajectories ({num_boot} resamples)",
    }


def boundary(
    law,
    *,
    batch_time_s,
    rate_grid,
    num_steps,
    num_trajectories_per_rate,
    seed,
    progress: Callable | None = None,
    **sim_kwargs,
) -> dict:
    """λ*: the simulated stability boundary with a 95 % CI.

    One simulation of the whole λ grid (``num_trajectories_per_rate`` trajectories per rate,
    one compiled call) and :func:`hinge_boundary`. The fallback of
    :func:`stability_estimates`; also used directly for several replicas, which
    :func:`kvstab.stability.estimate_boundary` (one replica) does not cover.

    Args:
        rate_grid: arrival rates to simulate, req/s.
    """
    from kvstab.sim import components_from_names, simulate, workload_from_names

    rate_grid = np.asarray(rate_grid, np.float64)
    rates = np.repeat(rate_grid, int(num_trajectories_per_rate))
    kv = sim_kwargs.pop("kv_capacity_tokens", KV_CAPACITY_TOKENS)
    chunk = sim_kwargs.pop("chunk_tokens", CHUNK_TOKENS)
    run = {
        k: sim_kwargs.pop(k) for k in ("warmup_frac", "sizes", "max_attempts") if k in sim_kwargs
    }
    arrivals = {k: sim_kwargs.pop(k) for k in ("arrivals", "initial_queue") if k in sim_kwargs}
    res = simulate(
        workload_from_names(law, arrival_rate_per_s=rates, **arrivals),
        num_steps=num_steps,
        num_trajectories=rates.size,
        seed=seed,
        progress=progress,
        **run,
        **components_from_names(
            kv_capacity_tokens=kv, chunk_tokens=chunk, batch_time_s=batch_time_s, **sim_kwargs
        ),
    )
    slopes = res.queue_slope_per_traj()
    out = hinge_boundary(rates, slopes, seed=seed)
    out["estimator"] = "kvstab.reproduce.boundary (fallback: λ grid + hinge fit)"
    out["rate_grid"] = rate_grid
    out["slope_mean"] = [float(np.mean(slopes[rates == r])) for r in rate_grid]
    out["throughput_mean"] = [
        float(np.mean(res.throughput_per_traj()[rates == r])) for r in rate_grid
    ]
    out["flags"] = sorted({f for fl in res.flags for f in fl})
    out["wall_s"] = res.wall_s
    return out


def harmonic_mix(values: Iterable[float], fractions: Iterable[float]) -> float:
    """(Σ q_ℓ / x_ℓ)⁻¹: the long-run rate of a workload run in phases (PAPER.md §3, μ_mix)."""
    v = np.asarray(list(values), np.float64)
    q = np.asarray(list(fractions), np.float64)
    return float(1.0 / np.sum(q / v))


# ---------------------------------------------------------------------------------------------
# Summaries of many trajectories for plotting


def band(x: np.ndarray, axis: int = 0) -> dict:
    """Mean, median and the 10 %–90 % band of an array across ``axis`` (trajectories)."""
    x = np.asarray(x, np.float64)
    return {
        "mean": np.nanmean(x, axis=axis),
        "p10": np.nanquantile(x, 0.1, axis=axis),
        "p50": np.nanquantile(x, 0.5, axis=axis),
        "p90": np.nanquantile(x, 0.9, axis=axis),
    }


def thin(x: np.ndarray, max_points: int = 400) -> np.ndarray:
    """Indices that keep at most ``max_points`` evenly spaced points of a long series."""
    n = int(np.asarray(x).shape[-1])
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def ecdf_points(x: np.ndarray, num: int = 400) -> dict:
    """Quantiles at ``num`` probability levels (a compact ECDF) of the finite values of ``x``.

    Returns ``{"probs", "values", "n", "n_missing"}``; ``n_missing`` counts non-finite values
    (e.g. requests not admitted by the end of the run, censored).
    """
    x = np.asarray(x, np.float64).ravel()
    fin = x[np.isfinite(x)]
    probs = (np.arange(1, num + 1) - 0.5) / num
    values = np.quantile(fin, probs) if fin.size else np.full(num, np.nan)
    return {
        "probs": probs,
        "values": values,
        "n": int(fin.size),
        "n_missing": int(x.size - fin.size),
    }


def shared_sizes(
    laws: Sequence[Any],
    *,
    num_steps: int,
    saturated: bool,
    max_rate_per_s: float = 0.0,
    batch_time_s: float = 0.04,
    kv_capacity_tokens: int = KV_CAPACITY_TOKENS,
    chunk_tokens: int = CHUNK_TOKENS,
    num_replicas: int = 1,
) -> dict:
    """Static simulator sizes large enough for every law in ``laws``.

    Passing the same ``sizes`` to several :func:`kvstab.simulate.simulate` calls of equal
    ``num_steps`` lets them share one compiled program (only shapes and the static config
    decide recompilation). Sizes that turn out too small are still enlarged by the driver.
    """
    import jax

    from kvstab import analytic

    def pow2(x: float) -> int:
        return 1 << max(1, int(math.ceil(math.log2(max(x, 2)))))

    max_running, cal_len, num_requests = 2, 2, 1
    for i, law in enumerate(laws):
        s, o = (np.asarray(x) for x in law.sample(jax.random.PRNGKey(1000 + i), (4096,)))
        first = np.minimum(s, chunk_tokens).mean()
        max_running = max(max_running, pow2(2.2 * kv_capacity_tokens / max(first, 1)))
        life = int(np.max(-(-s // chunk_tokens) + o))
        p, q = getattr(law, "prompt", None), getattr(law, "output", None)
        if p is not None and p.max_value is not None and q.max_value is not None:
            life = max(life, -(-p.max_value // chunk_tokens) + q.max_value)
        cal_len = max(cal_len, pow2(life + 2))
        if saturated:
            eg = float(np.mean(np.asarray(analytic.g_exact(s, o, chunk_tokens))))
            n = 1.25 * num_steps * kv_capacity_tokens / eg + 2 * max_running + 256
        else:
            mean_arr = max_rate_per_s / num_replicas * num_steps * batch_time_s
            n = 1.15 * mean_arr + 6 * math.sqrt(mean_arr + 1) + 256
        num_requests = max(num_requests, int(n))
    return {
        "max_running": max_running,
        "max_preempted": max_running,
        "cal_len": cal_len,
        "num_requests": num_requests,
    }


def queue_series(
    result, rates: Sequence[float], num_samples: int = 3, max_points: int = 400
) -> dict:
    """Waiting queue vs time per arrival rate, from one λ-sweep :class:`SimResult`.

    ``result`` has ``len(rates)·n`` trajectories, rate-major (``np.repeat(rates, n)``).
    Returns, per rate, the band (mean, median, 10 %/90 %) of the queue at block ends across
    trajectories, a few sample trajectories, the post-warm-up growth rate (mean and 95 % CI)
    and the final queue; the time axis is the mean clock at block ends (s).
    """
    from kvstab import metrics

    rates = [float(r) for r in rates]
    q = np.asarray(result.queue_end, np.float64)
    t = np.asarray(result.clock_s, np.float64)
    n = q.shape[0] // len(rates)
    idx = thin(q, max_points)
    slopes = result.queue_slope_per_traj()
    out = []
    for i, lam in enumerate(rates):
        rows = slice(i * n, (i + 1) * n)
        s_m, s_lo, s_hi = metrics.mean_ci(slopes[rows]) if n >= 2 else (slopes[i], None, None)
        out.append(
            {
                "rate_per_s": lam,
                "time_s": t[rows].mean(axis=0)[idx],
                "queue": band(q[rows][:, idx]),
                "samples": q[rows][: min(num_samples, n)][:, idx],
                "slope_per_s": s_m,
                "slope_ci": [s_lo, s_hi],
                "final_queue_mean": float(q[rows, -1].mean()),
                "max_queue_mean": float(q[rows].max(axis=1).mean()),
                "throughput_per_s": float(result.throughput_per_traj()[rows].mean()),
            }
        )
    return {
        "num_trajectories_per_rate": n,
        "series": out,
        "flags": sorted({f for fl in result.flags for f in fl}),
    }


def boundary_sizes(
    items: Sequence[tuple[Any, float]],
    *,
    num_steps: int,
    kv_capacity_tokens: int = KV_CAPACITY_TOKENS,
    chunk_tokens: int = CHUNK_TOKENS,
) -> dict:
    """Static sizes that fit :func:`kvstab.stability.estimate_boundary` for every
    (law, b̄) in ``items``, so that their simulations share one compiled program.

    Mirrors estimate_boundary's own sizing (arrivals up to 1.265·μ over the horizon, plus
    the loaded start's queue), taking the largest over the items.
    """
    stab = _stability_module()
    base = shared_sizes(
        [law for law, _ in items],
        num_steps=num_steps,
        saturated=False,
        max_rate_per_s=0.0,
        kv_capacity_tokens=kv_capacity_tokens,
        chunk_tokens=chunk_tokens,
    )
    need = 0
    for law, b in items:
        mu = mu_theory(law, b, kv_capacity_tokens=kv_capacity_tokens, chunk_tokens=chunk_tokens)[
            "mu"
        ]
        horizon = num_steps * b
        arrivals = 1.1 * 1.15 * mu * horizon
        if stab is not None and hasattr(stab, "loaded_start_queue"):
            life = stab.mean_lifetime_steps(law, chunk_tokens)
            n0 = stab.loaded_start_queue(mu, horizon, mu * b * life)
        else:
            n0 = int(0.1 * mu * horizon + 3 * math.sqrt(2 * mu * horizon)) + 512
        need = max(need, int(1.15 * arrivals + 6 * math.sqrt(arrivals + 1)) + n0 + 256)
    base["num_requests"] = need
    return base


def stability_estimates(
    law,
    *,
    batch_time_s: float,
    num_steps: int,
    grid_points: int,
    replications: int,
    seed: int,
    sizes: dict | None = None,
    progress: Progress | None = None,
    label: str = "",
    fallback_rate_factors: Sequence[float] = (0.85, 0.92, 0.98, 1.04, 1.1, 1.18),
    **sim_options,
) -> dict:
    """μ_sim and λ* of one replica, each with a 95 % CI.

    With :mod:`kvstab.stability`: one :func:`~kvstab.stability.estimate_boundary` call (its
    saturated run gives μ_sim, its loaded-start crossing fit λ*). Without it (fallback):
    :func:`saturated_throughput` and :func:`boundary` (λ grid ``fallback_rate_factors``·μ,
    hinge fit), stated in the ``*_estimator`` fields.

    Returns:
        dict with ``mu_sim``, ``mu_sim_ci``, ``mu_sim_estimator``, ``lambda_star``,
        ``lambda_star_ci``, ``lambda_star_estimator``, ``detail`` (the estimator's report).
    """
    stab = _stability_module()
    if stab is not None and hasattr(stab, "estimate_boundary"):
        r = stab.estimate_boundary(
            law,
            kv_capacity_tokens=sim_options.pop("kv_capacity_tokens", KV_CAPACITY_TOKENS),
            chunk_tokens=sim_options.pop("chunk_tokens", CHUNK_TOKENS),
            batch_time_s=batch_time_s,
            num_steps=num_steps,
            grid_points=grid_points,
            replications=replications,
            seed=seed,
            sizes=sizes,
            progress=progress.stage(label) if progress is not None else None,
            **sim_options,
        )
        d = r.to_dict()
        sat = d.get("saturation", {})
        return {
            "mu_sim": r.mu_sim,
            "mu_sim_ci": list(r.mu_sim_ci),
            "mu_sim_estimator": "kvstab.stability.estimate_boundary's saturated run "
            f"({sat.get('num_trajectories')} trajectories, {sat.get('num_steps')} steps): "
            "post-warm-up completions/s, 95 % t interval over trajectories",
            "lambda_star": r.lambda_star,
            "lambda_star_ci": [r.ci_low, r.ci_high],
            "lambda_star_estimator": "kvstab.stability.estimate_boundary: " + r.method,
            "detail": {k: v for k, v in d.items() if k != "config"}
            | {"config": {k: v for k, v in d["config"].items() if k != "drift_test"}},
        }
    warm = sim_options.pop("warmup_frac", 0.25)
    mu = mu_theory(law, batch_time_s)["mu"]
    sat = saturated_throughput(
        law,
        batch_time_s=batch_time_s,
        num_steps=num_steps,
        num_trajectories=grid_points * replications,
        seed=seed,
        warmup_frac=warm,
        progress=progress.sim(f"{label} saturated") if progress is not None else None,
        **sim_options,
    )
    bnd = boundary(
        law,
        batch_time_s=batch_time_s,
        rate_grid=mu * np.asarray(fallback_rate_factors),
        num_steps=num_steps,
        num_trajectories_per_rate=replications,
        seed=seed + 1,
        warmup_frac=warm,
        progress=progress.sim(f"{label} lambda grid") if progress is not None else None,
        **sim_options,
    )
    return {
        "mu_sim": sat["mean"],
        "mu_sim_ci": sat["ci"],
        "mu_sim_estimator": sat["estimator"] + ": " + sat["method"],
        "lambda_star": bnd["mean"],
        "lambda_star_ci": bnd["ci"],
        "lambda_star_estimator": bnd["estimator"] + ": " + bnd["method"],
        "detail": {
            "saturation": {k: v for k, v in sat.items() if k != "sim_config"},
            "boundary": bnd,
        },
    }
