"""Per-request latency from simulator records: waiting time, TTFT, TPOT, end-to-end latency,
and their percentiles with confidence intervals (docs/slo.md).

Definitions (times in seconds, from :attr:`kvstab.sim.SimResult.records`):

* ``wait``: first admission − arrival;
* ``ttft``: end of the step that produced the first output token − arrival;
* ``tpot``: (finish − first token) / (o − 1), requests with o > 1 only;
* ``e2e``: finish − arrival.

Which requests count: those arriving in the measurement window [end of warm-up, end of run −
cool-down). A request of the window whose event did not happen by the end of the run is
*censored*: its value is only known to exceed the time left, and it counts as +inf (it
exceeds every threshold). With a cool-down at least as long as a threshold this is exact for
wait/TTFT/e2e. TPOT counts finished requests only (an unfinished request's decode rate is
unknown); how many were left out is noted.

Percentile and interval: the point estimate is the percentile of all the window's requests
pooled over trajectories (the ``inverted_cdf`` order statistic). Requests of one trajectory
are correlated (they share queues), so the interval is a *cluster bootstrap over
trajectories*: resample whole trajectories with replacement, recompute the pooled
percentile, take the 2.5 % and 97.5 % points. Trajectories are independent, so this accounts
for any correlation within a trajectory. A note is attached when the percentile rests on
too few requests (fewer than 10/(1 − q) in the window) or the interval on too few
trajectories (fewer than 10).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from kvstab.errors import InputError, check_number

# metric name -> what it measures (the SLO grammar's words)
METRICS = {
    "wait": "waiting time (first admission - arrival)",
    "ttft": "time to first token (first token - arrival)",
    "tpot": "time per output token ((finish - first token) / (o - 1), o > 1)",
    "e2e": "end-to-end latency (finish - arrival)",
}
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}
MIN_TRAJECTORIES = 10
CI_METHOD = "cluster bootstrap over trajectories (resample whole trajectories), 95 %"


@dataclasses.dataclass
class Latencies:
    """Per-request latencies of one run, (traj, req) per metric, seconds.

    ``values[m]`` holds +inf for censored requests and nan for requests outside the window
    (for tpot also with o = 1, or unfinished: ``left_out["tpot"]`` counts those per
    trajectory). ``window_s`` is (traj, 2): each trajectory's measurement window.
    """

    values: dict
    window_s: np.ndarray
    left_out: dict = dataclasses.field(default_factory=dict)

    @property
    def num_trajectories(self) -> int:
        return int(self.window_s.shape[0])

    def select(self, rows) -> Latencies:
        """The latencies of a subset of trajectories (e.g. one λ of a sweep)."""
        rows = np.asarray(rows)
        return Latencies(
            {k: v[rows] for k, v in self.values.items()},
            self.window_s[rows],
            {k: v[rows] for k, v in self.left_out.items()},
        )


@dataclasses.dataclass
class Percentile:
    """A percentile of one metric with its interval and the counts it rests on."""

    metric: str
    quantile: str
    estimate: float
    low: float
    high: float
    num_requests: int
    num_censored: int
    num_trajectories: int
    notes: list

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def request_latencies(
    records: dict,
    clock_s: np.ndarray,
    *,
    output_tokens: np.ndarray,
    num_replicas: int = 1,
    warmup_blocks: int = 0,
    cooldown_frac: float = 0.25,
) -> Latencies:
    """Latencies per request from a run's records (see the module docstring).

    Args:
        records: :attr:`SimResult.records` ((traj·replica, req) arrays in seconds).
        output_tokens: o of each recorded request, same shape
            (``SimResult.request_lengths["output_tokens"]``).
        clock_s: (traj, block) clock at block ends (:attr:`SimResult.clock_s`).
        num_replicas: G; record rows are ordered (traj, replica) and a trajectory's replicas
            are pooled.
        warmup_blocks: blocks before the window opens.
        cooldown_frac: fraction of the run after warm-up, at its end, in which arrivals are
            not counted (they would be censored by the end of the run).
    """
    check_number("cooldown_frac", cooldown_frac, low=0, high=1, high_open=True)
    if records is None:
        raise InputError("records", "the run kept no per-request records; give num_records > 0")
    g = int(num_replicas)
    clock_s = np.asarray(clock_s, np.float64)
    n = clock_s.shape[0]
    t_end = clock_s[:, -1]
    t0 = clock_s[:, warmup_blocks - 1] if warmup_blocks > 0 else np.zeros(n)
    t1 = t_end - cooldown_frac * (t_end - t0)

    def per_traj(x):  # (traj·replica, req) -> (traj, replica·req)
        x = np.asarray(x)
        return x.reshape(n, g * x.shape[1])

    arr = per_traj(records["arrival_s"]).astype(np.float64)
    inside = np.isfinite(arr) & (arr >= t0[:, None]) & (arr < t1[:, None])
    o = per_traj(output_tokens)

    def since(event, start):
        v = np.where(np.isfinite(event), event - start, np.inf)  # not by the end: censored
        return np.where(inside, v, np.nan)

    first = per_traj(records["first_token_s"])
    fin = per_traj(records["finish_s"])
    # TPOT of an unfinished request is not counted (its decode rate is unknown: +inf would
    # call every long request of a short run slow); the count left out is kept for a note
    tpot = (fin - first) / np.maximum(o - 1, 1)  # nan where it did not finish
    values = {
        "wait": since(per_traj(records["first_admit_s"]), arr),
        "ttft": since(first, arr),
        "tpot": np.where(inside & (o > 1), tpot, np.nan),
        "e2e": since(fin, arr),
    }
    left_out = {"tpot": (inside & (o > 1) & ~np.isfinite(fin)).sum(axis=1)}
    return Latencies(values, np.stack([t0, t1], axis=1), left_out)


def latencies_of(result, *, cooldown_frac: float = 0.25) -> Latencies:
    """:func:`request_latencies` of a :class:`kvstab.sim.SimResult`."""
    if result.records is None or result.request_lengths is None:
        raise InputError("records", "the run kept no per-request records; give num_records > 0")
    return request_latencies(
        result.records,
        result.clock_s,
        output_tokens=result.request_lengths["output_tokens"],
        num_replicas=int(result.config["num_replicas"]),
        warmup_blocks=result.warmup_blocks,
        cooldown_frac=cooldown_frac,
    )


def _check_metric(metric: str, quantile: str) -> float:
    if metric not in METRICS:
        raise InputError("metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    if quantile not in QUANTILES:
        raise InputError("quantile", f"must be one of {', '.join(QUANTILES)}, got {quantile!r}")
    return QUANTILES[quantile]


def percentile(
    lat: Latencies,
    metric: str,
    quantile: str,
    *,
    num_boot: int = 400,
    seed: int = 0,
    level: float = 0.95,
) -> Percentile:
    """The pooled percentile of ``metric`` and its cluster-bootstrap interval.

    Args:
        lat: from :func:`request_latencies`.
        metric: wait, ttft, tpot or e2e.
        quantile: p50, p90, p99 or p999.
        num_boot: bootstrap resamples of the trajectories.
        seed: the bootstrap's seed (the interval is a deterministic function of it).
        level: two-sided confidence level.
    """
    q = _check_metric(metric, quantile)
    check_number("num_boot", num_boot, low=1, integer=True)
    check_number("level", level, low=0, high=1, low_open=True, high_open=True)
    x = lat.values[metric]
    n = x.shape[0]
    valid = ~np.isnan(x)
    counts = valid.sum(axis=1)
    total = int(counts.sum())
    notes = []
    if total == 0:
        return Percentile(metric, quantile, math.nan, math.nan, math.nan, 0, 0, n,
                          ["no request in the measurement window"])  # fmt: skip
    tid = np.broadcast_to(np.arange(n)[:, None], x.shape)[valid]
    v = x[valid]
    order = np.argsort(v, kind="stable")
    v, tid = v[order], tid[order]
    est = _weighted_quantile(v, np.ones((1, v.size)), q)[0]
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=int(num_boot)).astype(np.float64)
    chunk = max(1, 4_000_000 // v.size)  # bounded memory: (chunk, requests) at a time
    boot = np.concatenate(
        [_weighted_quantile(v, w[i : i + chunk][:, tid], q) for i in range(0, len(w), chunk)]
    )
    a = (1 - level) / 2
    lo, hi = (np.quantile(boot, [a, 1 - a], method="inverted_cdf") if n >= 2
              else (math.nan, math.nan))  # fmt: skip
    need = 10 / (1 - q)
    if total < need:
        notes.append(
            f"few requests: {total} in the window, fewer than 10/(1-q) = {need:.0f}; "
            "run longer or more trajectories"
        )
    if n < MIN_TRAJECTORIES:
        notes.append(f"interval from {n} trajectories (< {MIN_TRAJECTORIES}): rough")
    censored = int(np.isinf(v).sum())
    if censored:
        notes.append(f"{censored} request(s) unfinished at the end of the run count as +inf")
    left = int(np.sum(lat.left_out.get(metric, 0)))
    if left:
        notes.append(
            f"{left} request(s) of the window unfinished at the end of the run are left out "
            f"({100 * left / (left + total):.0f} %)"
        )
    return Percentile(metric, quantile, float(est), float(lo), float(hi), total, censored, n,
                      notes)  # fmt: skip


def _weighted_quantile(v_sorted: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Per row of ``weights`` (rows, len(v)): the inverted-cdf q-quantile of the sorted values
    ``v_sorted`` taken with those multiplicities (the smallest v with cum. weight >= q·W)."""
    cw = np.cumsum(weights, axis=1)
    target = q * cw[:, -1:]
    idx = (cw < target - 1e-9 * np.maximum(target, 1)).sum(axis=1)
    return v_sorted[np.minimum(idx, v_sorted.size - 1)]


def summary(lat: Latencies, *, quantiles=tuple(QUANTILES), **kw) -> dict:
    """{metric: {quantile: Percentile.to_dict()}} for every metric."""
    return {m: {qn: percentile(lat, m, qn, **kw).to_dict() for qn in quantiles} for m in METRICS}
