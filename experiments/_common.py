"""Helpers shared by the experiment scripts (``experiments/*.py``), not by the package.

Sizes (``--quick`` vs full), the GAP, closed-form and simulated estimators with confidence
intervals (μ_sim, λ*), summaries of many trajectories for plotting, static simulator sizes
shared between calls, and fingerprints of input files. The paper's numbers are in
:mod:`kvstab.paper`; running scripts and results files in :mod:`kvstab.reproduce`.

The scripts import this module as ``_common`` (their folder is on ``sys.path``, both when run
as ``python experiments/NAME.py`` and when loaded by ``kvstab reproduce``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kvstab.paper import CHUNK_TOKENS, KV_CAPACITY_TOKENS
from kvstab.progress import Progress

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


def rel_gap(value: float | None, reference: float | None) -> float | None:
    """|value − reference| / reference (the paper's GAP), None if either is missing."""
    if value is None or reference is None or not np.isfinite(value) or not reference:
        return None
    return abs(float(value) - float(reference)) / abs(float(reference))


def pick(quick: bool, quick_value: Any, full_value: Any) -> Any:
    return quick_value if quick else full_value


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Name, size and SHA-256 of an input file (recorded in results, never copied)."""
    p = Path(path)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": p.name, "bytes": p.stat().st_size, "sha256": h.hexdigest()}


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
    one compiled call) and :func:`hinge_boundary`. For several replicas, which
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
    out["estimator"] = "experiments/_common.py boundary (λ grid + hinge fit)"
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


# TODO(sizing): replace with the one sizing function of kvstab/sim/sizing.py.
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


# TODO(sizing): replace with the one sizing function of kvstab/sim/sizing.py.
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
    from kvstab import stability

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
        life = stability.mean_lifetime_steps(law, chunk_tokens)
        n0 = stability.loaded_start_queue(mu, horizon, mu * b * life)
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
    warmup_frac: float = 0.25,
    sizes: dict | None = None,
    progress: Progress | None = None,
    label: str = "",
    **words,
) -> dict:
    """μ_sim and λ* of one replica, each with a 95 % CI.

    One :func:`kvstab.stability.estimate_boundary` call: its saturated run gives μ_sim, its
    loaded-start crossing fit λ*; the ``*_estimator`` fields say so. ``words``: the
    system and policy in a results file's words (kv_capacity_tokens, batch_time_model,
    order...: :func:`kvstab.sim.components_from_names`).

    Returns:
        dict with ``mu_sim``, ``mu_sim_ci``, ``mu_sim_estimator``, ``lambda_star``,
        ``lambda_star_ci``, ``lambda_star_estimator``, ``detail`` (the estimator's report).
    """
    from kvstab import stability
    from kvstab.sim import components_from_names

    comps = components_from_names(batch_time_s=batch_time_s, **words)
    r = stability.estimate_boundary(
        law,
        comps["system"],
        comps["policy"],
        num_steps=num_steps,
        grid_points=grid_points,
        replications=replications,
        seed=seed,
        warmup_frac=warmup_frac,
        sizes=sizes,
        progress=progress.stage(label) if progress is not None else None,
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
