"""Summaries of simulator output: throughput with confidence intervals, queue drift, waits.

All functions take numpy arrays from a :class:`kvstab.simulate.SimResult` (or from block
outputs) and return plain floats / arrays. Confidence intervals are Student-t intervals (95 %
unless a level is given) over independent trajectories; with one trajectory, over batch means
of its post-warm-up blocks (10 batches). :func:`mean_ci` is the package's one interval.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import stdtrit


class MeanCI(NamedTuple):
    """A sample mean and the bounds of its Student-t confidence interval (units of the data)."""

    mean: float
    low: float
    high: float


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with ``dof`` degrees of freedom (exact; inf if dof < 1)."""
    return float(stdtrit(dof, p)) if dof >= 1 else math.inf


def standard_error(x: np.ndarray) -> float:
    """Standard error of the mean of independent samples, s/√n (nan for fewer than 2)."""
    x = np.asarray(x, np.float64).ravel()
    return float(x.std(ddof=1)) / math.sqrt(x.size) if x.size >= 2 else math.nan


def mean_ci(x: np.ndarray, alpha: float = 0.025) -> MeanCI:
    """Mean and (1 − 2α) Student-t interval of independent samples (nan-free).

    The default α = 0.025 is the two-sided 95 % interval; α is also the one-sided level of
    the test "mean > low" (or "mean < high"), the form the stability drift tests use.

    Returns:
        ``MeanCI(mean, low, high)``; low and high are nan for fewer than 2 samples.
    """
    x = np.asarray(x, np.float64).ravel()
    m = float(x.mean())
    if x.size < 2:
        return MeanCI(m, math.nan, math.nan)
    h = t_quantile(1.0 - alpha, x.size - 1) * standard_error(x)
    return MeanCI(m, m - h, m + h)


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
