"""Summaries of simulator output: throughput with confidence intervals, queue drift, waits.

All functions take numpy arrays from a :class:`kvstab.simulate.SimResult` (or from block
outputs) and return plain floats / arrays. Confidence intervals are 95 % Student-t intervals
over independent trajectories; with one trajectory, over batch means of its post-warm-up
blocks (10 batches).
"""

from __future__ import annotations

import math

import numpy as np

# Two-sided 97.5 % Student-t quantiles; beyond 30 degrees of freedom the normal 1.96 suffices
# to the third digit.
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
}


def t_quantile_975(dof: int) -> float:
    """Two-sided 95 % Student-t critical value for ``dof`` degrees of freedom."""
    if dof < 1:
        return math.inf
    if dof > 30:
        return 1.96 + 2.4 / dof  # within 0.3 % of the exact value
    keys = sorted(_T975)
    for lo, hi in zip(keys, keys[1:], strict=False):
        if lo <= dof <= hi:
            w = (dof - lo) / (hi - lo)
            return _T975[lo] * (1 - w) + _T975[hi] * w
    return _T975[dof]


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % CI of independent samples (nan-free). Returns (mean, low, high)."""
    x = np.asarray(x, np.float64).ravel()
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    h = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - h, m + h


def warmup_blocks(num_blocks: int, warmup_frac: float) -> int:
    """Number of leading blocks discarded as warm-up (at least one block is kept)."""
    return min(max(int(math.ceil(num_blocks * warmup_frac)), 0), num_blocks - 1)


def throughput_per_traj(completed: np.ndarray, clock_s: np.ndarray, w: int) -> np.ndarray:
    """Completions per second after warm-up block w, per trajectory.

    Args:
        completed: (traj, block) cumulative completions at block ends.
        clock_s: (traj, block) clock at block ends.
        w: warm-up blocks; the rate is measured from the end of block w-1 (or t=0) on.
    """
    c0 = completed[:, w - 1] if w > 0 else np.zeros(completed.shape[0])
    t0 = clock_s[:, w - 1] if w > 0 else np.zeros(clock_s.shape[0])
    return (completed[:, -1] - c0) / (clock_s[:, -1] - t0)


def batch_means_ci(series_rate: np.ndarray, num_batches: int = 10) -> tuple[float, float, float]:
    """CI of a rate from one trajectory's per-block rates via batch means."""
    x = np.asarray(series_rate, np.float64)
    nb = min(num_batches, x.size)
    if nb < 2:
        return float(x.mean()), math.nan, math.nan
    batches = np.array_split(x, nb)
    return mean_ci(np.array([b.mean() for b in batches]))


def slope_per_traj(y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Least-squares slope of y against t, per row (traj, block) -> (traj,)."""
    tc = t - t.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = (tc * tc).sum(axis=1)
    return np.where(den > 0, (tc * yc).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def quantiles(x: np.ndarray, qs=(0.5, 0.9, 0.99)) -> dict[str, float]:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {f"p{int(q * 100)}": math.nan for q in qs}
    return {f"p{int(q * 100)}": float(np.quantile(x, q)) for q in qs}
