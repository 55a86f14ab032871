"""Parameter sweeps: a grid of systems × R replications, in few compiled calls, resumable.

:func:`sweep` runs every point of a grid (the product of its axes) R times and returns a
:class:`SweepResult`: one tidy row per point with the point's settings, the closed form's μ
and μ(1−δ) beside it, and the simulated metrics with 95 % confidence intervals over the R
replications (docs/sweeps.md lists the columns).

How the work is cut
-------------------

* **Traced axes** (:data:`TRACED_AXES`: λ as ``rate`` or ``rate_fraction`` of the point's μ,
  ``kv_tokens`` M, ``batch_time`` b̄) are per-trajectory values of the simulator: points that
  differ only in them share one compiled program and run side by side in one call.
* **Static axes** (:data:`STATIC_AXES`: ``chunk`` ŝ, ``replicas`` G, ``router``, ``admission``,
  ``overflow``, ``order``, ``workload``) change the compiled program: each combination of
  them compiles once (its buffer sizes are fixed from its largest λ and M, so every chunk of
  it has the same shapes).
* The points of a static combination are cut into **chunks** of ``chunk_points`` points
  (chunk_points × R trajectories per call). Each finished chunk is written at once (a
  temporary file and a rename) under ``out/chunks/``; a re-run skips the chunks on disk, and
  refuses an output directory written by a different configuration, naming what changed.
* Chunks are spread over every local device (the simulator shards a call's trajectories);
  under ``jax.distributed`` (or ``process_id``/``num_processes``) process p runs the chunks
  c with c mod P = p, and every process assembles the table once all chunk files exist
  (the output directory must be shared); process 0 writes it.

Seeds
-----

Point i (its index in the grid, rows in order) has the seed :func:`point_seed`\\ (seed, i),
and its R trajectories are exactly those of ``simulate(..., num_trajectories=R,
seed=point_seed(seed, i), sizes=...)`` with the same sizes: :meth:`SweepResult.simulate_args`
gives that call. So a point does not depend on the chunking, the padding, the devices or the
other points (only a chunk whose buffers had to grow differs, and its sizes are recorded).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kvstab import SIM_SEMANTICS_VERSION, __version__, analytic, metrics, paper
from kvstab.errors import InputError, check_number
from kvstab.results import provenance, read_json, to_jsonable, write_json_atomic

TRACED_AXES = ("kv_tokens", "batch_time", "rate", "rate_fraction")
STATIC_AXES = ("workload", "chunk", "replicas", "router", "admission", "overflow", "order")
AXES = STATIC_AXES + TRACED_AXES
DEFAULTS = {
    "workload": "1:1",
    "chunk": paper.CHUNK_TOKENS,
    "replicas": 1,
    "router": "round_robin",
    "admission": "current",
    "overflow": "recompute",
    "order": "fcfs",
    "kv_tokens": paper.KV_CAPACITY_TOKENS,
    "batch_time": paper.BATCH_TIME_S,
}
_INTEGER_AXES = ("chunk", "replicas", "kv_tokens")
_NAME_AXES = ("router", "admission", "overflow", "order")
QUANTILES = (0.5, 0.9, 0.99)
LATENCIES = ("wait", "ttft", "latency")
LATENCY_MARGIN_LIFETIMES = 3.0  # latencies of requests arriving this long before the end
CENSORED_FRAC = 0.9  # below this fraction of post-warm-up arrivals finished: a note
TARGET_TRAJECTORIES = 2048  # default chunk: about this many trajectories per call
MEMORY_FRACTION = 0.5  # of the host's memory (or the device's) one chunk may take


def point_seed(seed: int, index: int) -> int:
    """The seed of grid point ``index`` of a sweep with base ``seed``: independent streams
    per point (a SeedSequence of (seed, index)), in [0, 2³¹)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] >> 1)


# ---------------------------------------------------------------------------------------------
# The grid


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    vals = list(np.ravel(value)) if isinstance(value, np.ndarray) else list(value)
    if not vals:
        raise InputError(name, "is an empty axis: give at least one value")
    return vals


def _law_of(name: str, value: Any):
    """A workload value -> (label, joint law): a paper name, a trace file, or a law."""
    from kvstab.laws import as_joint

    if isinstance(value, str):
        if value in paper.WORKLOADS or value in paper.EXTRA_WORKLOADS:
            return value, paper.law_for(value)
        if os.path.isfile(value):
            from kvstab import traces

            return value, traces.read_trace(value).joint_law()
        names = ", ".join([*paper.WORKLOADS, *paper.EXTRA_WORKLOADS])
        raise InputError(
            name, f"must be a workload name ({names}), a trace file or a law, got {value!r}"
        )
    try:
        law = as_joint(value)
    except Exception:
        raise InputError(
            name, f"must be a workload name, a trace file or a law, got {value!r}"
        ) from None
    return law.spec, law


def normalize_grid(grid: Mapping[str, Any]) -> dict[str, list]:
    """Every axis as a checked list of values (a scalar is a one-value axis); defaults filled.

    Raises InputError naming the axis: unknown axis, empty axis, non-numeric or
    out-of-range value, both or neither of ``rate`` and ``rate_fraction``.
    """
    if not isinstance(grid, Mapping):
        raise InputError("grid", f"must be a mapping of axis -> values, got {type(grid).__name__}")
    unknown = [k for k in grid if k not in AXES]
    if unknown:
        raise InputError(
            str(unknown[0]),
            f"is not an axis the sweep can vary; axes: {', '.join(AXES)}",
        )
    has = [k for k in ("rate", "rate_fraction") if k in grid]
    if len(has) != 1:
        raise InputError(
            "rate",
            "give exactly one of rate (λ, requests/s) and rate_fraction (λ/μ of each point)",
        )
    out: dict[str, list] = {}
    for name in AXES:
        if name not in grid and name not in DEFAULTS:
            continue
        vals = _as_list(name, grid.get(name, DEFAULTS.get(name)))
        if name in _NAME_AXES:
            for v in vals:
                if not isinstance(v, str):
                    raise InputError(name, f"values must be names, got {v!r}")
        elif name != "workload":
            checked = []
            for v in vals:
                try:
                    x = float(v)
                except (TypeError, ValueError):
                    raise InputError(name, f"values must be numbers, got {v!r}") from None
                if name in _INTEGER_AXES:
                    check_number(name, x, low=1, integer=True)
                    x = int(x)
                elif name in ("rate", "rate_fraction"):
                    check_number(name, x, low=0, low_open=True)
                else:
                    check_number(name, x, low=0, low_open=True)
                checked.append(x)
            vals = checked
        if len(set(map(repr, vals))) != len(vals):
            raise InputError(name, f"has repeated values: {vals}")
        out[name] = vals
    return out


def _static_components(st: dict):
    """Policy and cluster of a static combination (names checked by the components)."""
    from kvstab.sim import Cluster, policy_from_names, router_from_name

    return (
        policy_from_names(st["admission"], st["overflow"], st["order"]),
        Cluster(int(st["replicas"]), router_from_name(st["router"])),
    )


def _points(axes: dict[str, list]) -> list[dict]:
    """Every grid point (static axes outer, traced inner), with its closed-form values."""
    laws = {}
    lam_axis = "rate" if "rate" in axes else "rate_fraction"
    traced = ["kv_tokens", "batch_time", lam_axis]
    pts = []
    for combo_id, st in enumerate(itertools.product(*(axes[a] for a in STATIC_AXES))):
        st = dict(zip(STATIC_AXES, st, strict=True))
        key = id(st["workload"]) if not isinstance(st["workload"], str) else st["workload"]
        if key not in laws:
            laws[key] = _law_of("workload", st["workload"])
        label, law = laws[key]
        _static_components(st)  # check the names once per combination
        mean_g = float(analytic.mean_g(law, st["chunk"]))
        for tv in itertools.product(*(axes[a] for a in traced)):
            p = dict(st, **dict(zip(traced, tv, strict=True)))
            p["workload"] = label
            M, G, b = p["kv_tokens"], p["replicas"], p["batch_time"]
            if law.max_total is None:
                raise InputError("workload", f"{label} is unbounded: add a cap to the law")
            if law.max_total > M:
                raise InputError(
                    "kv_tokens",
                    f"M = {M} is below max(s+o) = {law.max_total} of {label}: such a request "
                    "can never be served",
                )
            mu = analytic.critical_rate(M * G, b, mean_g)
            delta = law.max_total / M
            p["mu"] = float(mu)
            p["mu_stable"] = float(mu * (1 - delta))
            p["delta"] = float(delta)
            if lam_axis == "rate_fraction":
                p["rate"] = p["rate_fraction"] * p["mu"]
            p["_combo"] = combo_id
            p["_law"] = law
            pts.append(p)
    for i, p in enumerate(pts):
        p["point"] = i
    return pts


# ---------------------------------------------------------------------------------------------
# Sizes, memory and chunks


def _combo_sizes(law, pts: list[dict], *, num_steps: int, seed: int) -> dict:
    """Buffer sizes for every point of one static combination (largest λ, M and b̄)."""
    import jax

    from kvstab.sim.api import _segments
    from kvstab.sim.components import Outputs
    from kvstab.sim.sizing import allocate_sizes

    p0 = pts[0]
    T = _segments(num_steps, Outputs())[3]
    s, o = (np.asarray(x) for x in law.sample(jax.random.PRNGKey(int(seed) + 1), (4096,)))
    G = int(p0["replicas"])
    lam = max(p["rate"] for p in pts)
    b = max(p["batch_time"] for p in pts)
    return allocate_sizes(
        s,
        o,
        kv_capacity_tokens=max(p["kv_tokens"] for p in pts),
        chunk_tokens=int(p0["chunk"]),
        num_steps=T,
        mean_arrivals=lam / G * T * b,
        law=law,
    )


def _bytes_per_trajectory(sizes: dict, replicas: int, num_steps: int, records: bool) -> int:
    """A generous estimate of one trajectory's memory in a call (device and host copies)."""
    nr = sizes["num_requests"] * replicas
    per_row = (
        sizes["num_requests"] * 12  # arrival epoch, s, o
        + (sizes["num_requests"] * 24 if records else 0)  # records (6 int32)
        + sizes["max_running"] * 12
        + sizes["max_preempted"] * 8
        + sizes["cal_len"] * 20
    )
    blocks = 300 * 40  # per-block outputs
    del nr
    return int(3 * (replicas * per_row + blocks) + 16 * num_steps // 64)


def available_memory_bytes() -> int:
    """Memory one chunk may use: half the first local device's limit (GPU), else half the
    host's physical memory."""
    import jax

    dev = jax.local_devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:
        stats = {}
    if stats.get("bytes_limit"):
        return int(MEMORY_FRACTION * stats["bytes_limit"])
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        phys = 8 << 30
    return int(MEMORY_FRACTION * phys)


def _gb(x: float) -> str:
    return f"{x / 2**30:.3g} GiB"


# ---------------------------------------------------------------------------------------------
# Metrics of one point


def _ci_cols(prefix: str, x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {prefix: math.nan, f"{prefix}_lo": math.nan, f"{prefix}_hi": math.nan}
    m, lo, hi = metrics.mean_ci(x)
    return {prefix: m, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def _latency_cols(res, rows: np.ndarray, G: int, margin_s: float) -> tuple[dict, float]:
    """Per-replication mean and quantiles of wait, TTFT and latency of the requests that
    arrived after warm-up and at least ``margin_s`` before the end (3 mean lifetimes: time
    to finish in a stable system), with CIs over replications; and the fraction of them
    finished (unfinished ones are left out of the statistics: censored)."""
    out: dict = {}
    rec = res.records
    w = res.warmup_blocks
    t0 = res.clock_s[:, w - 1] if w > 0 else np.zeros(res.num_trajectories)
    t1 = res.clock_s[:, -1] - margin_s
    t1 = np.where(t1 > t0, t1, res.clock_s[:, -1])
    per = {
        f"{k}_{s}": []
        for k in LATENCIES
        for s in ("mean", *(f"p{int(q * 100)}" for q in QUANTILES))
    }
    done, total = 0, 0
    for r in rows:
        sl = slice(int(r) * G, (int(r) + 1) * G)
        arr = rec["arrival_s"][sl].ravel()
        keep = (arr >= t0[r]) & (arr <= t1[r])
        total += int(keep.sum())
        done += int(np.isfinite(rec["latency_s"][sl].ravel()[keep]).sum())
        for k in LATENCIES:
            x = rec[f"{k}_s"][sl].ravel()[keep]
            x = x[np.isfinite(x)]
            per[f"{k}_mean"].append(x.mean() if x.size else math.nan)
            for q in QUANTILES:
                per[f"{k}_p{int(q * 100)}"].append(np.quantile(x, q) if x.size else math.nan)
    for name, vals in per.items():
        out.update(_ci_cols(f"{name}_s", np.array(vals)))
    return out, (done / total if total else math.nan)


def _point_row(res, p: dict, rows: np.ndarray, mean_life: float, records: bool) -> dict:
    from kvstab.stability import assess_drift

    w = res.warmup_blocks
    row = {"point": p["point"]}
    row.update({a: p[a] for a in AXES if a in p})
    row.update({k: p[k] for k in ("mu", "mu_stable", "delta")})
    row.update(seed=p["_seed"], chunk_id=p["chunk_id"])
    row.update(_ci_cols("throughput_per_s", res.throughput_per_traj()[rows]))
    drift = assess_drift(res, p["rate"], mean_lifetime=mean_life, rows=rows)
    row["queue_growth_per_s"] = drift.slope
    row["queue_growth_per_s_lo"], row["queue_growth_per_s_hi"] = drift.slope_ci
    row["verdict"] = drift.verdict
    row["theory"] = analytic.verdict(p["rate"], p["mu"], p["mu_stable"])
    row["mean_queue"] = float(res.queue[rows][:, w:].mean())
    comp = res.completed[rows][:, -1].astype(np.float64)
    pre = res.preempted[rows][:, -1].astype(np.float64)
    row.update(
        _ci_cols(
            "preemptions_per_completion", np.where(comp > 0, pre / np.maximum(comp, 1), np.nan)
        )
    )
    row.update(
        _ci_cols("mean_kv_tokens", res.kv_tokens[rows][:, w:].astype(np.float64).mean(axis=1))
    )
    notes = []
    if drift.verdict == "inconclusive":
        notes.append(drift.reason)
    if records:
        margin = LATENCY_MARGIN_LIFETIMES * mean_life * p["batch_time"]
        lat, finished = _latency_cols(res, rows, int(p["replicas"]), margin)
        row.update(lat)
        row["finished_frac"] = finished
        if not finished >= CENSORED_FRAC:
            notes.append(
                f"latencies censored: {finished:.0%} of the requests that arrived after "
                "warm-up finished by the end"
            )
    row["flags"] = " ".join(drift.flags)
    row["note"] = "; ".join(notes)
    return row


# ---------------------------------------------------------------------------------------------
# The result


@dataclasses.dataclass
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
        rows: one dict per grid point, in grid order (always available; no pandas needed).
        columns: the column names, in order.
        config: the sweep's configuration (also in ``out/sweep.json``).
        out: the output directory, or None.
        chunks_run, chunks_skipped: chunks simulated now / found finished on disk.
        compilations: rollout compilations during this call.
        wall_s: seconds for this call.
        chunks: per chunk, the buffer sizes and record count its points ran with.
    """

    rows: list[dict]
    columns: list[str]
    config: dict
    out: Path | None
    chunks_run: int
    chunks_skipped: int
    compilations: int
    wall_s: float
    chunks: dict

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array."""
        if name not in self.columns:
            raise InputError("column", f"no column {name!r}; columns: {', '.join(self.columns)}")
        return np.array([r.get(name) for r in self.rows])

    def to_pandas(self):
        """The table as a pandas DataFrame (pandas is optional: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "SweepResult.to_pandas needs pandas (pip install pandas); the table is "
                "available without it as SweepResult.rows (a list of dicts) and in sweep.csv"
            ) from None
        return pd.DataFrame(self.rows, columns=self.columns)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The table as CSV text (and written atomically to ``path`` if given)."""
        text = table_csv(self.rows, self.columns)
        if path is not None:
            _write_text_atomic(Path(path), text)
        return text

    def simulate_args(self, index: int) -> dict:
        """Keyword arguments of the one :func:`kvstab.sim.simulate` call whose trajectories
        are exactly those of grid point ``index`` (same seed, same sizes)."""
        from kvstab.sim import Outputs, Poisson, System, Workload

        row = self.rows[index]
        cfg = self.config
        info = self.chunks[str(row["chunk_id"])]
        law = _law_of("workload", _workload_value(cfg, row["workload"]))[1]
        policy, cluster = _static_components(row)
        return dict(
            workload=Workload(law, Poisson(row["rate"])),
            system=System(int(row["kv_tokens"]), int(row["chunk"]), _bt(row["batch_time"])),
            policy=policy,
            cluster=cluster,
            outputs=Outputs(num_records=info["num_records"]),
            num_steps=cfg["num_steps"],
            num_trajectories=cfg["replications"],
            seed=int(row["seed"]),
            warmup_frac=cfg["warmup_frac"],
            sizes=dict(info["sizes"]),
        )

    def plot(self, path: str | os.PathLike, metric: str = "queue_growth_per_s", **kw) -> Path:
        """A heat map of ``metric`` over the two swept traced axes (or lines with CI bands
        over one): :func:`plot_sweep`."""
        return plot_sweep(self, path, metric, **kw)


def _bt(b):
    from kvstab.sim import ConstantBatchTime

    return ConstantBatchTime(b if np.ndim(b) else float(b))


def _workload_value(cfg: dict, label: str):
    for v in cfg["_workload_objects"]:
        if (v if isinstance(v, str) else _law_of("workload", v)[0]) == label:
            return v
    return label


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    return str(v)


def table_csv(rows: list[dict], columns: list[str]) -> str:
    """The rows as CSV text (nan and None as empty cells; floats in full precision)."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(columns)
    for r in rows:
        wr.writerow([_fmt(r.get(c)) for c in columns])
    return buf.getvalue()


def _write_text_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# The driver


def _config_of(axes: dict, **settings) -> dict:
    words = {
        k: [v if isinstance(v, (str, int, float)) else _law_of(k, v)[0] for v in vals]
        for k, vals in axes.items()
    }
    return {"axes": words, **settings}


# Written beside the configuration but not part of its identity.
_UNHASHED = ("provenance", "config_hash", "chunking", "num_chunks", "complete", "columns",
             "chunks", "files")  # fmt: skip


def _diff(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if k.startswith("_") or k in _UNHASHED:
            continue
        if k == "axes":
            oa, na = old.get(k, {}), new.get(k, {})
            for a in sorted(set(oa) | set(na)):
                if oa.get(a) != na.get(a):
                    out.append(f"{a}: {oa.get(a)} -> {na.get(a)}")
        elif old.get(k) != new.get(k):
            out.append(f"{k}: {old.get(k)} -> {new.get(k)}")
    return out


def _hash(cfg: dict) -> str:
    keep = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in _UNHASHED}
    return hashlib.sha256(json.dumps(to_jsonable(keep), sort_keys=True).encode()).hexdigest()[:16]


def sweep(
    grid: Mapping[str, Any],
    *,
    replications: int = 16,
    num_steps: int = 4096,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    chunk_points: int | None = None,
    records: bool | int = True,
    warmup_frac: float = 0.25,
    progress: Callable[[float, float], None] | None = None,
    process_id: int | None = None,
    num_processes: int | None = None,
    memory_bytes: int | None = None,
    wait_timeout_s: float = 24 * 3600.0,
    stop_after_chunks: int | None = None,
) -> SweepResult:
    """Run every point of ``grid`` ``replications`` times; one tidy row per point.

    Args:
        grid: axis -> value or list of values. Traced axes (one compiled call for all their
            values): ``rate`` (λ into the cluster, requests/s) or ``rate_fraction`` (λ/μ,
            μ the closed form of the point), ``kv_tokens`` M, ``batch_time`` b̄ (s). Static
            axes (one compilation per combination): ``workload`` (a paper workload name
            such as ``"1:1"``, a trace file, or a length law), ``chunk`` ŝ, ``replicas`` G,
            ``router``, ``admission``, ``overflow``, ``order``. Omitted axes take the
            paper's values (:data:`DEFAULTS`); exactly one of rate / rate_fraction.
        replications: R independent trajectories per point (≥ 2 for intervals).
        num_steps: batch steps per trajectory (rounded up as :func:`kvstab.sim.simulate`).
        seed: base seed; point i uses :func:`point_seed`\\ (seed, i).
        out: output directory (chunks, ``sweep.csv``, ``sweep.json``, ``sweep.parquet`` when
            pyarrow is installed); a re-run with the same configuration resumes.
        chunk_points: points per compiled call (default: about 2048 trajectories, within
            the memory available).
        records: per-request records for wait/TTFT/latency: True (every request), an int
            (the first N per replica), False (none: faster, no latency columns).
        warmup_frac: fraction of each run excluded from the statistics.
        progress: ``progress(points_done, points_total)``, called during and between chunks.
        process_id, num_processes: this process's share of the chunks (default: from
            ``jax.process_index()`` / ``jax.process_count()``).
        memory_bytes: memory one chunk may use (default: :func:`available_memory_bytes`).
        wait_timeout_s: how long a process waits for the other processes' chunks.
        stop_after_chunks: stop (raising KeyboardInterrupt) after running this many chunks
            (tests of resumption).

    Returns:
        :class:`SweepResult`. Raises InputError for a bad grid (naming the axis) or a grid
        whose smallest chunk would not fit in memory (estimated before allocating).
    """
    import jax

    from kvstab.sim import Outputs, Poisson, System, Workload, num_compilations, simulate
    from kvstab.stability import mean_lifetime_steps

    wall0 = time.perf_counter()
    c0 = num_compilations()
    check_number("replications", replications, low=1, integer=True)
    check_number("num_steps", num_steps, low=1, integer=True)
    check_number("seed", seed, low=0, integer=True)
    check_number("warmup_frac", warmup_frac, low=0, high=1, high_open=True)
    if chunk_points is not None:
        check_number("chunk_points", chunk_points, low=1, integer=True)
    if not isinstance(records, bool):
        check_number("records", records, low=0, integer=True)
    R, seed = int(replications), int(seed)
    axes = normalize_grid(grid)
    pts = _points(axes)
    for p in pts:
        p["_seed"] = point_seed(seed, p["point"])
    combos: dict[int, list[dict]] = {}
    for p in pts:
        combos.setdefault(p["_combo"], []).append(p)
    mem = available_memory_bytes() if memory_bytes is None else int(memory_bytes)

    out_dir = Path(out) if out is not None else None
    stored = read_json(out_dir / "sweep.json", missing_ok=True) if out_dir else None
    config = _config_of(
        axes,
        replications=R,
        num_steps=int(num_steps),
        seed=seed,
        records=records,
        warmup_frac=float(warmup_frac),
        chunk_points=None if chunk_points is None else int(chunk_points),
        num_points=len(pts),
        seeds="point i: kvstab.sweep.point_seed(seed, i)",
        kvstab_version=__version__,
        sim_semantics_version=SIM_SEMANTICS_VERSION,
    )
    config["config_hash"] = _hash(config)
    config["_workload_objects"] = axes["workload"]
    if stored is not None and stored.get("config_hash") != config["config_hash"]:
        changed = _diff(stored, config) or ["(versions or settings)"]
        raise InputError(
            "out",
            f"{out_dir} holds a sweep with a different configuration ({'; '.join(changed)}); "
            "re-run with the same settings to resume, or use another output directory",
        )
    # An automatic chunking is kept on a re-run (another machine may have more memory).
    stored_k = stored.get("chunking") if chunk_points is None and stored else None

    # Plan: sizes per combination, chunks of equal shape per combination.
    plan = []  # (combo, [points], sizes, points per chunk)
    ks = []
    for ci_, (cid, cpts) in enumerate(combos.items()):
        law = cpts[0]["_law"]
        sizes = _combo_sizes(law, cpts, num_steps=num_steps, seed=seed)
        per_traj = _bytes_per_trajectory(sizes, int(cpts[0]["replicas"]), num_steps, bool(records))
        if per_traj * R > mem:
            raise InputError(
                "replications",
                f"one grid point ({R} trajectories of {num_steps} steps, {sizes['num_requests']} "
                f"requests buffered each) needs about {_gb(per_traj * R)}, more than the "
                f"{_gb(mem)} available: lower replications, num_steps or the largest rate",
            )
        k = chunk_points or max(1, min(len(cpts), TARGET_TRAJECTORIES // R, mem // (per_traj * R)))
        if stored_k is not None and len(stored_k) == len(combos):
            k = int(stored_k[ci_])
        k = min(k, len(cpts))
        ks.append(k)
        if per_traj * R * k > mem:
            raise InputError(
                "chunk_points",
                f"{k} points per chunk need about {_gb(per_traj * R * k)}, more than the "
                f"{_gb(mem)} available: at most {max(1, mem // (per_traj * R))}",
            )
        for j in range(0, len(cpts), k):
            plan.append((cid, cpts[j : j + k], sizes, k))
    for ci, (_, cpts, _, _) in enumerate(plan):
        for p in cpts:
            p["chunk_id"] = ci
    config["chunking"] = ks  # points per chunk, per static combination (not hashed)
    config["num_chunks"] = len(plan)
    if out_dir is not None and stored is None:
        write_json_atomic(
            out_dir / "sweep.json",
            {
                **{k: v for k, v in config.items() if not k.startswith("_")},
                "provenance": provenance(),
                "complete": False,
            },
        )

    if process_id is None or num_processes is None:
        process_id, num_processes = jax.process_index(), jax.process_count()
    mine = [c for c in range(len(plan)) if c % int(num_processes) == int(process_id)]
    total_pts = len(pts)
    done_pts = 0
    chunk_rows: dict[int, list[dict]] = {}
    chunk_sizes: dict[int, dict] = {}
    skipped = ran = 0
    life_cache: dict[int, float] = {}

    def chunk_path(c: int) -> Path:
        return out_dir / "chunks" / f"chunk-{c:05d}.json"

    def load(c: int) -> bool:
        if out_dir is None:
            return False
        got = read_json(chunk_path(c), missing_ok=True)
        if not got or got.get("config_hash") != config["config_hash"]:
            return False
        if got.get("points") != [q["point"] for q in plan[c][1]]:
            return False  # another chunking: run it again
        chunk_rows[c] = got["rows"]
        chunk_sizes[c] = {"sizes": got["sizes"], "num_records": got["num_records"]}
        return True

    for c in mine:
        cid, cpts, sizes, k = plan[c]
        if load(c):
            skipped += 1
            done_pts += len(cpts)
            if progress:
                progress(done_pts, total_pts)
            continue
        if stop_after_chunks is not None and ran >= stop_after_chunks:
            raise KeyboardInterrupt(f"stopped after {ran} chunks (stop_after_chunks)")
        # Pad to k points (equal shapes: one compilation per combination) and to a multiple
        # of the local devices (the simulator shards trajectories over them).
        ndev = jax.local_device_count()
        padded = list(cpts) + [cpts[-1]] * (k - len(cpts))
        while (len(padded) * R) % ndev:
            padded.append(cpts[-1])
        p0 = cpts[0]
        law = p0["_law"]
        policy, cluster = _static_components(p0)
        rep = lambda key, padded=padded: np.repeat([q[key] for q in padded], R)  # noqa: E731
        nrec = (int(sizes["num_requests"]) if records is True else int(records)) if records else 0

        def sim_progress(d, tot, attempt=1, _base=done_pts, _n=len(cpts)):  # noqa: B008
            if progress:
                progress(_base + _n * d / tot, total_pts)

        res = simulate(
            Workload(law, Poisson(rep("rate"))),
            System(rep("kv_tokens").astype(np.int64), int(p0["chunk"]), _bt(rep("batch_time"))),
            policy,
            cluster=cluster,
            outputs=Outputs(num_records=nrec),
            num_steps=num_steps,
            num_trajectories=len(padded) * R,
            seed=[q["_seed"] for q in padded],
            warmup_frac=warmup_frac,
            sizes=dict(sizes),
            progress=sim_progress,
        )
        if cid not in life_cache:
            life_cache[cid] = mean_lifetime_steps(law, int(p0["chunk"]))
        rows = [
            _point_row(res, q, np.arange(i * R, (i + 1) * R), life_cache[cid], bool(nrec))
            for i, q in enumerate(cpts)
        ]
        chunk_rows[c] = to_jsonable(rows)
        chunk_sizes[c] = {"sizes": res.config["sizes"], "num_records": nrec}
        if out_dir is not None:
            write_json_atomic(
                chunk_path(c),
                {
                    "config_hash": config["config_hash"],
                    "chunk": c,
                    "points": [q["point"] for q in cpts],
                    "sizes": res.config["sizes"],
                    "num_records": nrec,
                    "attempts": res.attempts,
                    "wall_s": res.wall_s,
                    "rows": rows,
                },
            )
        ran += 1
        done_pts += len(cpts)
        if progress:
            progress(done_pts, total_pts)

    # Other processes' chunks: wait for their files.
    others = [c for c in range(len(plan)) if c not in chunk_rows]
    if others:
        if out_dir is None:
            raise InputError("out", "a sweep shared by several processes needs an output directory")
        deadline = time.monotonic() + wait_timeout_s
        while True:
            others = [c for c in others if not load(c)]
            if not others:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"chunks {others[:5]} of other processes never appeared")
            time.sleep(0.5)

    rows = [r for c in range(len(plan)) for r in _jsonrows(chunk_rows[c])]
    columns = _columns(rows)
    result = SweepResult(
        rows=rows,
        columns=columns,
        config=config,
        out=out_dir,
        chunks_run=ran,
        chunks_skipped=skipped,
        compilations=num_compilations() - c0,
        wall_s=time.perf_counter() - wall0,
        chunks={str(c): s for c, s in chunk_sizes.items()},
    )
    if out_dir is not None and int(process_id) == 0:
        write_table(result)
    return result


def _jsonrows(rows: list[dict]) -> list[dict]:
    return [{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows]


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def write_table(result: SweepResult) -> dict[str, Path]:
    """``sweep.csv`` (and ``sweep.parquet`` when pyarrow is installed) and the sidecar
    ``sweep.json`` (configuration, seed, versions, columns) in ``result.out``."""
    out = Path(result.out)
    paths = {"csv": result.to_csv(out / "sweep.csv") and out / "sweep.csv"}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {c: [r.get(c) for r in result.rows] for c in result.columns}
        pq.write_table(pa.table(cols), out / "sweep.parquet")
        paths["parquet"] = out / "sweep.parquet"
    except ImportError:
        pass
    side = {k: v for k, v in result.config.items() if not k.startswith("_")}
    write_json_atomic(
        out / "sweep.json",
        {
            **side,
            "provenance": provenance(),
            "complete": True,
            "columns": result.columns,
            "chunks": result.chunks,
            "files": {k: str(v.name) for k, v in paths.items()},
        },
    )
    paths["json"] = out / "sweep.json"
    return paths


# ---------------------------------------------------------------------------------------------
# Pictures


def plot_sweep(
    result: SweepResult,
    path: str | os.PathLike,
    metric: str = "queue_growth_per_s",
    *,
    x: str | None = None,
    y: str | None = None,
) -> Path:
    """A heat map of ``metric`` over two axes with μ and μ(1−δ) drawn over it, or (one axis)
    the metric against it with its 95 % band. Other axes must have one value (else one
    picture per value would be needed: filter the rows first).

    ``path``'s suffix picks the format (.png, .pdf, .svg).
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise InputError("plot", f"the file name must end in .png, .pdf or .svg, got {path.name}")
    if metric not in result.columns:
        raise InputError("plot", f"no column {metric!r} to plot")
    varied = [a for a, v in result.config["axes"].items() if len(v) > 1]
    lam = "rate" if "rate" in result.config["axes"] else "rate_fraction"
    if x is None:
        x = lam if lam in varied else (varied[0] if varied else lam)
    if y is None:
        rest = [a for a in varied if a != x]
        y = rest[0] if rest else None
    extra = [a for a in varied if a not in (x, y)]
    if extra:
        raise InputError("plot", f"more than two axes vary ({', '.join(varied)}): pick x and y")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvstab import plotting  # noqa: F401  (the package's style)

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs = result.column(x).astype(float)
    m = result.column(metric).astype(float)
    if y is None:
        order = np.argsort(xs)
        ax.plot(xs[order], m[order], "o-", label=metric)
        if f"{metric}_lo" in result.columns:
            lo = result.column(f"{metric}_lo").astype(float)[order]
            hi = result.column(f"{metric}_hi").astype(float)[order]
            ax.fill_between(xs[order], lo, hi, alpha=0.3, label="95% CI")
        if x == "rate":
            for col, style, lab in (("mu", "--", "μ"), ("mu_stable", ":", "μ(1−δ)")):
                ax.axvline(float(result.column(col)[0]), ls=style, color="k", label=lab)
        elif x == "rate_fraction":
            ax.axvline(1.0, ls="--", color="k", label="μ")
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.legend()
    else:
        ys = result.column(y).astype(float)
        ux, uy = np.unique(xs), np.unique(ys)
        Z = np.full((len(uy), len(ux)), np.nan)
        for xi, yi, v in zip(xs, ys, m, strict=True):
            Z[np.searchsorted(uy, yi), np.searchsorted(ux, xi)] = v
        finite = Z[np.isfinite(Z)]
        vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
        cmap = "RdBu_r" if finite.size and finite.min() < 0 < finite.max() else "viridis"
        kw = dict(vmin=-vmax, vmax=vmax) if cmap == "RdBu_r" else {}
        pcm = ax.pcolormesh(ux, uy, Z, shading="nearest", cmap=cmap, **kw)
        fig.colorbar(pcm, ax=ax, label=metric)
        # μ and μ(1−δ) over the y axis, in the x axis's units
        if x in ("rate", "rate_fraction"):
            yy, mu, mus = (
                result.column(y).astype(float),
                result.column("mu").astype(float),
                result.column("mu_stable").astype(float),
            )
            o = np.argsort(yy)
            scale = mu[o] if x == "rate_fraction" else np.ones_like(mu[o])
            ax.plot(mu[o] / scale, yy[o], "k--", label="μ")
            ax.plot(mus[o] / scale, yy[o], "k:", label="μ(1−δ)")
            ax.legend(loc="best")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    ax.set_title(f"{metric} ({result.config['replications']} replications per point)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
