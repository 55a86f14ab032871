"""Scheduling policies side by side: which one keeps the closed-form capacity μ?

The paper's μ = M/(b̄·E[g]) bounds the throughput of *every* policy (Theorem 4.1) and
μ(1−δ) is guaranteed to a work-conserving one (Theorem 4.2). :func:`compare_policies` runs
the same measurements for each named preset of :mod:`kvstab.policies` on one workload and
system, and returns one row per policy (:class:`CompareResult`):

* ``mu``, ``delta``, ``mu_stable``: the closed form (:func:`kvstab.stability.theory`);
* ``mu_sim`` (``mu_sim_ci``), ``lambda_star`` (``ci_low``, ``ci_high``),
  ``lambda_star_empty`` (``lambda_star_empty_ci``), ``metastable``, the verdict brackets,
  ``preemptions_per_completion``, ``mean_kv_tokens`` and ``kv_utilization`` of the saturated
  run: one :func:`kvstab.stability.estimate_boundary` call (its saturated run, and its rate
  grids from an empty and from a loaded start);
* ``p99_wait_s`` (``p99_wait_ci``), ``p50_wait_s``: waiting time (arrival to first
  admission) at ``load_factor``·μ (0.8·μ), from one :func:`kvstab.sim.simulate` call with
  per-request records. The 99th percentile is computed per trajectory over the recorded
  requests that arrived after the warm-up (a request still waiting at the end counts with its
  wait so far, a lower bound: ``censored`` says how many); the row reports the mean over
  trajectories with a 95 % t interval (:func:`kvstab.metrics.mean_ci`).
* ``lambda_star_over_mu`` (``lambda_star_over_mu_ci``): λ*/μ, the fraction of the closed form
  the policy achieves; ``mu_stable / mu`` = 1 − δ is the guaranteed floor.

Precision presets (:data:`PRECISIONS`): ``tiny`` (tests, seconds), ``fast``, ``default`` and
``fine``; each names an estimate_boundary preset (with overrides) and the size of the loaded
run. With ``results_path`` every finished policy is written at once (atomic JSON with the
configuration, seed and versions) and a rerun with the same configuration skips it: an
interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from kvstab import SIM_SEMANTICS_VERSION, __version__, metrics
from kvstab.errors import InputError, check_number
from kvstab.policies import DESCRIPTIONS, policy_presets
from kvstab.progress import Progress
from kvstab.results import read_json, to_jsonable, write_json

# estimate_boundary's preset (and overrides) and the loaded run at load_factor·μ per precision.
PRECISIONS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        boundary="fast",
        grid_points=4,
        replications=3,
        num_steps=1536,
        load_trajectories=4,
        load_steps=1536,
    ),
    "fast": dict(boundary="fast", load_trajectories=16, load_steps=12288),
    # estimate_boundary's default preset at 6 replications x 24,576 steps (0.56x its cost):
    # ten presets in under 10 minutes on 2 CPU cores.
    "default": dict(
        boundary="default",
        replications=6,
        num_steps=24576,
        load_trajectories=32,
        load_steps=16384,
    ),
    "fine": dict(boundary="fine", load_trajectories=64, load_steps=32768),
}
LOAD_FACTOR = 0.8
RESULTS_KIND = "kvstab compare"

# The columns of the table (key, header, format).
_COLUMNS = (
    ("policy", "policy", "{}"),
    ("mu_sim", "mu_sim", "{:.3f}"),
    ("mu_sim_ci", "95% CI", "[{:.3f}, {:.3f}]"),
    ("lambda_star", "lambda*", "{:.3f}"),
    ("lambda_star_ci", "95% CI", "[{:.3f}, {:.3f}]"),
    ("lambda_star_over_mu", "l*/mu", "{:.3f}"),
    ("lambda_star_empty", "l*_empty", "{:.3f}"),
    ("metastable", "metastable", "{}"),
    ("preemptions_per_completion", "preempt/compl", "{:.3f}"),
    ("kv_utilization", "KV used", "{:.1%}"),
    ("p99_wait_s", "p99 wait s", "{:.2f}"),
)


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        if any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in value):
            return "-"
        return fmt.format(*value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return fmt.format(value)


@dataclasses.dataclass
class CompareResult:
    """One row per policy (dicts, module docstring) and the run's configuration.

    Attributes:
        rows: one dict per policy, in the order asked for.
        config: workload, system, precision and sizes, load factor (what a resume must match).
        theory: μ, δ, μ(1−δ), E[g] of the workload and system.
        seed, kvstab_version, sim_semantics_version: provenance.
        wall_s: seconds spent (policies resumed from a results file count zero).
        resumed: names of the policies whose rows came from the results file.
    """

    rows: list
    config: dict
    theory: dict
    seed: int
    kvstab_version: str = __version__
    sim_semantics_version: int = SIM_SEMANTICS_VERSION
    wall_s: float = 0.0
    resumed: list = dataclasses.field(default_factory=list)

    def row(self, policy: str) -> dict:
        for r in self.rows:
            if r["policy"] == policy:
                return r
        raise KeyError(policy)

    def to_dict(self) -> dict:
        return to_jsonable(
            {
                "kind": RESULTS_KIND,
                "config": self.config,
                "seed": self.seed,
                "kvstab_version": self.kvstab_version,
                "sim_semantics_version": self.sim_semantics_version,
                "theory": self.theory,
                "rows": self.rows,
                "wall_s": self.wall_s,
                "resumed": self.resumed,
            }
        )

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def table_text(self) -> str:
        """The rows as an aligned plain-text table, with μ and μ(1−δ) above it."""
        th, c = self.theory, self.config
        head = [
            f"kvstab compare: {len(self.rows)} policies on {c['workload']}",
            f"  M = {c['kv_capacity_tokens']:,} KV tokens, chunk = {c['chunk_tokens']}, "
            f"b = {c['batch_time_s']:g} s; mu = {th['mu']:.3f} req/s, mu(1-delta) = "
            f"{th['mu_stable']:.3f} req/s (1-delta = {1 - th['delta']:.3f})",
            f"  rates in req/s; lambda* from a loaded start, l*_empty from an empty one; "
            f"preemptions and KV of the saturated run; p99 wait at "
            f"{c['load_factor']:g} mu = {c['load_factor'] * th['mu']:.3f} req/s",
        ]
        cells = [[h for _, h, _ in _COLUMNS]]
        for r in self.rows:
            cells.append([_fmt(r.get(k), f) for k, _, f in _COLUMNS])
        widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
        lines = []
        for j, row in enumerate(cells):
            lines.append(
                "  "
                + "  ".join(
                    v.ljust(w) if i == 0 else v.rjust(w)
                    for i, (v, w) in enumerate(zip(row, widths, strict=True))
                )
            )
            if j == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        tail = [
            f"  precision {c['precision']}, seed {self.seed}, {self.wall_s:.0f} s"
            + (f" (resumed: {', '.join(self.resumed)})" if self.resumed else "")
        ]
        for r in self.rows:
            if r.get("load_above_lambda_star"):
                tail.append(
                    f"  {r['policy']}: {c['load_factor']:g} mu is above its lambda*: the queue "
                    "grows there, so its waits grow with the run's length"
                )
            for note in r.get("notes", []):
                tail.append(f"  note ({r['policy']}): {note}")
            if r.get("flags"):
                tail.append(f"  flags ({r['policy']}): {', '.join(r['flags'])}")
        return "\n".join(head + lines + tail)

    def plot(self, path=None, *, title: str | None = None):
        """λ*/μ per policy with its 95 % CI (loaded start; the empty start's λ*/μ as open
        markers), μ(1−δ)/μ and 1 as horizontal lines; second panel: preemptions per
        completion (bars) and the p99 wait at 0.8·μ (points, right axis). Returns the figure
        (written to ``path`` when given)."""
        return plot_rows(self.rows, self.theory, self.config, path, title=title)


def plot_rows(rows, theory: dict, config: dict, path=None, *, title: str | None = None):
    """The figure of :meth:`CompareResult.plot`, from rows (e.g. read from a results file)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kvstab.plotting import COLORS, DPI

    def num(x):
        return math.nan if x is None else float(x)

    names = [r["policy"] for r in rows]
    x = np.arange(len(rows))
    mu = float(theory["mu"])
    fig = Figure(figsize=(max(7.0, 1.1 * len(rows) + 4.0), 4.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    lam = np.array([num(r.get("lambda_star")) for r in rows]) / mu
    lo = np.array([num(r.get("ci_low")) for r in rows]) / mu
    hi = np.array([num(r.get("ci_high")) for r in rows]) / mu
    emp = np.array([num(r.get("lambda_star_empty")) for r in rows]) / mu
    sat = np.array([num(r.get("mu_sim")) for r in rows]) / mu
    ok = np.isfinite(lam)
    yerr = np.vstack([np.where(ok, lam - lo, 0), np.where(ok, hi - lam, 0)])
    yerr = np.nan_to_num(np.maximum(yerr, 0))
    ax.errorbar(
        x[ok],
        lam[ok],
        yerr=yerr[:, ok],
        fmt="o",
        color=COLORS["loaded"],
        capsize=4,
        label="λ*/μ, loaded start (95 % CI)",
    )
    ax.plot(x, emp, "o", mfc="none", color=COLORS["empty"], label="λ*/μ, empty start")
    ax.plot(x, sat, "_", ms=14, mew=2, color=COLORS["mu_sim"], label="μ_sim/μ (saturated)")
    for i, r in enumerate(rows):
        if r.get("metastable"):
            ax.annotate(
                "metastable",
                (x[i], lam[i] if ok[i] else 0.5),
                textcoords="offset points",
                xytext=(0, -16),
                ha="center",
                fontsize=7,
                color=COLORS["loaded"],
            )
    ax.axhline(1.0, color=COLORS["mu"], lw=1.2, label="μ (Theorem 4.1)")
    ax.axhline(
        theory["mu_stable"] / mu,
        color=COLORS["mu_stable"],
        lw=1.2,
        ls="--",
        label="μ(1−δ)/μ (Theorem 4.2)",
    )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("critical rate / closed-form μ")
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"{config['workload']}; μ = {mu:.3f} req/s", fontsize=9)
    pre = np.array([num(r.get("preemptions_per_completion")) for r in rows])
    ax2.bar(x, np.nan_to_num(pre), color=COLORS["mu_sim"], alpha=0.7)
    ax2.set_ylabel("preemptions per completion (saturated)")
    ax2.set_xticks(x, names, rotation=30, ha="right")
    ax2.grid(True, axis="y", alpha=0.3, linewidth=0.6)
    ax3 = ax2.twinx()
    p99 = np.array([num(r.get("p99_wait_s")) for r in rows])
    ax3.plot(x, p99, "D", color=COLORS["lambda_star"], label="p99 wait")
    ax3.set_ylabel(f"p99 wait at {config['load_factor']:g}·μ (s)", color=COLORS["lambda_star"])
    if np.isfinite(p99).any() and np.nanmax(p99) > 0:
        ax3.set_yscale("log")
    ax2.set_title("bars: preemptions; ◆: p99 wait", fontsize=9)
    fig.suptitle(title or "Scheduling policies against the closed form (kvstab compare)")
    if path is not None:
        fig.savefig(path)
    return fig


# ---------------------------------------------------------------------------------------------


def _waits(res, load_rate: float) -> dict:
    """p50/p99 waits per trajectory of the recorded requests arriving after the warm-up."""
    w = res.warmup_blocks
    n = res.num_trajectories
    wait = np.asarray(res.records["wait_s"], np.float64).reshape(n, -1)
    arrival = np.asarray(res.records["arrival_s"], np.float64).reshape(n, -1)
    t_warm = res.clock_s[:, w - 1][:, None] if w > 0 else np.zeros((n, 1))
    t_end = res.clock_s[:, -1][:, None]
    after = np.isfinite(arrival) & (arrival >= t_warm) & (arrival < t_end)
    censored = after & np.isnan(wait)
    # still waiting at the end: its wait so far, a lower bound
    wait = np.where(censored, t_end - arrival, wait)
    wait = np.where(after, wait, np.nan)
    p99 = np.array([np.nanquantile(v, 0.99) if np.isfinite(v).any() else np.nan for v in wait])
    p50 = np.array([np.nanquantile(v, 0.5) if np.isfinite(v).any() else np.nan for v in wait])
    good = np.isfinite(p99)
    m, lo, hi = metrics.mean_ci(p99[good]) if good.any() else (math.nan,) * 3
    m50 = float(np.mean(p50[good])) if good.any() else math.nan
    comp = float(res.completed[:, -1].sum())
    return {
        "load_rate": float(load_rate),
        "p99_wait_s": m,
        "p99_wait_ci": [lo, hi],
        "p50_wait_s": m50,
        "mean_wait_s": float(np.nanmean(wait)) if np.isfinite(wait).any() else math.nan,
        "waits_recorded": int(np.isfinite(wait).sum()),
        "censored": int(censored.sum()),
        "throughput_at_load": float(np.mean(res.throughput_per_traj())),
        "preemptions_per_completion_at_load": float(res.preempted[:, -1].sum() / comp)
        if comp
        else math.nan,
        "mean_queue_at_load": float(res.queue[:, w:].mean()),
    }


def _policy_spec(policy) -> str:
    return repr(policy)


def _check_precision(precision: str) -> dict:
    if precision not in PRECISIONS:
        raise InputError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return dict(PRECISIONS[precision])


def compare_policies(
    law,
    system=None,
    policies: Sequence[str] | None = None,
    *,
    precision: str = "default",
    seed: int = 0,
    load_factor: float = LOAD_FACTOR,
    progress: bool | Progress = True,
    results_path=None,
) -> CompareResult:
    """Compare named policy presets on one workload and system (module docstring).

    Args:
        law: joint law of (s, o) (bounded: max(s+o) ≤ M), or an Independent law.
        system: :class:`kvstab.sim.System` (default: the paper's replica).
        policies: preset names of :func:`kvstab.policies.policy_presets` (default: all of
            them, in the registry's order).
        precision: 'tiny' (tests), 'fast', 'default' or 'fine' (:data:`PRECISIONS`).
        seed: PRNG seed (each policy sees the same random numbers).
        load_factor: the waiting times are measured at load_factor·μ (default 0.8).
        progress: True: a progress line per policy and stage on stderr; False: none; or a
            :class:`~kvstab.progress.Progress` to report to.
        results_path: write the results (config, seed, versions, rows so far) after every
            policy; finished policies with the same configuration are read back, not rerun.
    """
    t0 = time.perf_counter()
    table = policy_presets(law)
    if policies is None:
        names = list(table)
    elif isinstance(policies, str):
        names = [n.strip() for n in policies.split(",") if n.strip()]
    else:
        names = list(policies)
    if not names:
        raise InputError("policies", f"give at least one of {', '.join(table)}")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise InputError(
            "policies", f"unknown {', '.join(map(repr, unknown))}; must be among {', '.join(table)}"
        )
    if len(set(names)) != len(names):
        raise InputError("policies", f"each policy at most once, got {', '.join(names)}")
    p = _check_precision(precision)
    check_number("seed", seed, low=0, integer=True)
    check_number("load_factor", load_factor, low=0, high=1, low_open=True, high_open=True)
    # the simulator (about a second to import): after the checks of the arguments
    from kvstab import stability
    from kvstab.sim import Outputs, Poisson, System, Workload, simulate

    system = System() if system is None else system
    M, chunk, b = stability.system_values(law, system)
    th = stability.theory(law, system)
    if isinstance(progress, Progress):
        prog = progress
    else:
        prog = Progress("kvstab compare", quiet=not progress)

    joint = stability._joint(law)
    config = {
        "workload": joint.spec,
        "kv_capacity_tokens": M,
        "chunk_tokens": chunk,
        "batch_time_s": b,
        "batch_time_model": getattr(system.batch_time, "name", type(system.batch_time).__name__),
        "precision": precision,
        "sizes": p,
        "load_factor": float(load_factor),
        "seed": int(seed),
    }
    previous: dict[str, dict] = {}
    if results_path is not None:
        old = read_json(results_path, missing_ok=True)
        if (
            isinstance(old, dict)
            and old.get("kind") == RESULTS_KIND
            and old.get("config") == to_jsonable(config)
            and old.get("kvstab_version") == __version__
            and old.get("sim_semantics_version") == SIM_SEMANTICS_VERSION
        ):
            previous = {r["policy"]: r for r in old.get("rows", []) if isinstance(r, dict)}

    rows: list[dict] = []
    resumed: list[str] = []
    result = CompareResult(rows=rows, config=config, theory=th, seed=int(seed), resumed=resumed)

    def save():
        if results_path is not None:
            result.wall_s = time.perf_counter() - t0
            write_json(results_path, result.to_dict())

    overrides = {k: p[k] for k in ("grid_points", "replications", "num_steps") if k in p}
    for i, name in enumerate(names):
        policy = table[name]
        spec = _policy_spec(policy)
        old_row = previous.get(name)
        if old_row is not None and old_row.get("policy_spec") == spec:
            rows.append(old_row)
            resumed.append(name)
            prog(f"[{i + 1}/{len(names)}] {name}: finished earlier, read from {results_path}")
            continue
        t_pol = time.perf_counter()
        prog(f"[{i + 1}/{len(names)}] {name}: {DESCRIPTIONS.get(name, '')}")
        bnd = stability.estimate_boundary(
            law,
            system,
            policy,
            precision=p["boundary"],
            seed=int(seed),
            progress=prog.stage(f"{name} ({i + 1}/{len(names)})"),
            **overrides,
        )
        prog.close()
        load_rate = float(load_factor) * th["mu"]
        horizon = p["load_steps"] * b
        _, load_warmup, _ = stability.warmup_steps(law, chunk, p["load_steps"])
        res = simulate(
            Workload(law, Poisson(load_rate)),
            system,
            policy,
            num_steps=p["load_steps"],
            num_trajectories=p["load_trajectories"],
            seed=int(seed) + 100,
            warmup_frac=load_warmup,
            outputs=Outputs(num_records=int(1.2 * load_rate * horizon) + 64),
            progress=prog.sim(f"{name} ({i + 1}/{len(names)}): waits at {load_factor:g} mu"),
        )
        prog.close()
        sat = bnd.saturation
        mu = th["mu"]
        row = {
            "policy": name,
            "description": DESCRIPTIONS.get(name, ""),
            "policy_spec": spec,
            **policy.names(),
            "mu": mu,
            "delta": th["delta"],
            "mu_stable": th["mu_stable"],
            "mu_sim": bnd.mu_sim,
            "mu_sim_ci": list(bnd.mu_sim_ci),
            "lambda_star": bnd.lambda_star,
            "ci_low": bnd.ci_low,
            "ci_high": bnd.ci_high,
            "lambda_star_ci": [bnd.ci_low, bnd.ci_high],
            "lambda_star_over_mu": bnd.lambda_star / mu,
            "lambda_star_over_mu_ci": [bnd.ci_low / mu, bnd.ci_high / mu],
            "lambda_star_empty": bnd.lambda_star_empty,
            "lambda_star_empty_ci": list(bnd.lambda_star_empty_ci),
            "metastable": bool(bnd.metastable),
            "metastable_rates": list(bnd.metastable_rates),
            "bracket_empty": list(bnd.bracket_empty),
            "bracket_loaded": list(bnd.bracket_loaded),
            "relation": bnd.relation,
            "preemptions_per_completion": sat["preemptions_per_completion"],
            "mean_kv_tokens": sat["mean_kv_tokens"],
            "kv_utilization": sat["kv_utilization"],
            "mean_running": sat["mean_running"],
            **_waits(res, load_rate),
            # the waits are measured above the policy's boundary: the queue grows there
            "load_above_lambda_star": bool(load_rate > bnd.ci_high),
            "flags": sorted(set(bnd.flags) | {f for fl in res.flags for f in fl}),
            "notes": list(bnd.notes),
            "boundary_config": {k: v for k, v in bnd.config.items() if k != "drift_test"},
            "wall_s": time.perf_counter() - t_pol,
        }
        rows.append(to_jsonable(row))
        prog(
            f"[{i + 1}/{len(names)}] {name}: lambda*/mu = {row['lambda_star_over_mu']:.3f}, "
            f"mu_sim = {row['mu_sim']:.3f} req/s ({row['wall_s']:.0f} s)"
        )
        save()
    result.wall_s = time.perf_counter() - t0
    save()
    return result


def load_result(path) -> CompareResult:
    """A :class:`CompareResult` read back from a results file written by compare_policies."""
    d = read_json(path)
    if not isinstance(d, dict) or d.get("kind") != RESULTS_KIND:
        raise InputError("results_path", f"{path} is not a kvstab compare results file")
    return CompareResult(
        rows=d["rows"],
        config=d["config"],
        theory=d["theory"],
        seed=d["seed"],
        kvstab_version=d["kvstab_version"],
        sim_semantics_version=d["sim_semantics_version"],
        wall_s=d.get("wall_s", 0.0),
        resumed=d.get("resumed", []),
    )


__all__ = ["PRECISIONS", "CompareResult", "compare_policies", "load_result", "plot_rows"]
