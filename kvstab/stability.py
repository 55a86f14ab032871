"""Stability by simulation: saturated throughput μ_sim, drift tests and the critical rate λ*.

The paper (PAPER.md §3) brackets the stability boundary of one replica between μ(1−δ)
(Theorem 4.2, work-conserving policies) and μ = M/(b̄·E[g]) (Theorem 4.1, any policy). This
module measures where the boundary of a *given* policy actually lies, with the vectorized
simulator (:func:`kvstab.sim.simulate`) and stated statistics.

Public API
----------

* :func:`saturated_throughput` -> :class:`SaturationResult`: μ_sim (completions/s with an
  endless backlog) with a 95 % t interval over independent trajectories, the KV memory in
  use, and a **warm-up check** (the estimate re-done with twice the warm-up).
* :func:`drift_test` -> :class:`DriftResult`: 'stable' | 'unstable' | 'inconclusive' at one
  arrival rate λ, from the waiting-queue series after warm-up. :func:`assess_drift` applies
  the same test to a :class:`~kvstab.sim.SimResult` already in hand (or to a subset of
  its trajectories, e.g. one rate of a sweep).
* :func:`estimate_boundary` -> :class:`BoundaryResult`: the critical rate λ* with a
  bootstrap CI, from an empty and from a heavily loaded start (metastability), with the grid
  data for :func:`kvstab.plotting.plot_boundary`.

The drift test (:func:`assess_drift`)
-------------------------------------

Per trajectory i, the ordinary least-squares slope β_i of the waiting queue (at block ends)
against the clock over the post-warm-up window (requests/s). Across the n independent
trajectories, the Student-t interval of the mean slope at level 1 − 2α (α = 0.025: a 95 %
two-sided interval; each bound is a one-sided test at level α). With the practical threshold

    τ = max(0.01·λ, 2 requests / window length)     (requests/s)

(growth below 1 % of the arrival rate, or by fewer than 2 requests over the whole window,
is not called instability):

* **unstable** iff the lower bound > τ: a one-sided t test of H0 "mean slope ≤ τ" rejected
  at level α. P(unstable | true drift ≤ τ) ≤ α = 2.5 % (asymptotically; the trajectories are
  i.i.d., the slopes approximately normal).
* **stable** iff the upper bound < τ (the one-sided test of H0 "mean slope ≥ τ" rejected at
  level α: P(stable | drift ≥ τ) ≤ 2.5 %) **and** the queue is not much larger in the second
  half of the window than in the first: mean queue over the second half ≤ 1.5 × the mean
  over the first half + 2 requests (on the point estimates: this extra condition can only
  turn 'stable' into 'inconclusive', so it leaves the error bound of 'stable' as it is, and
  it catches queues that accelerate late in the window).
* **inconclusive** otherwise, and always when the window after warm-up is shorter than
  5 mean request lifetimes (E⌈s/ŝ⌉ + E[o] steps: the system cannot have forgotten its start
  in less), when fewer than 2 trajectories or 8 post-warm-up blocks are available, or when
  the simulator raised a flag (a static cap hit, a buffer exhausted).

The p-value of the one-sided t test of "mean slope > 0" is reported as well (``p_positive``).
An unstable verdict reports the growth rate (mean slope) with its interval; when the queue
never empties the growth rate is λ − μ_sim (tested in tests/test_stability.py).

The critical rate (:func:`estimate_boundary`)
---------------------------------------------

All simulator calls share one compiled configuration (K·R trajectories of T steps):

1. **μ_sim**: an endless-backlog run (every buffered request but the last few waiting at
   t = 0; the dynamics of a saturated run (``Saturated()`` arrivals), checked never to run dry), K·R
   trajectories, with the warm-up check of :func:`saturated_throughput`.
2. **Coarse grid**, one call from an **empty** and one from a **loaded start**: K rates × R
   replications over [min(0.8·μ(1−δ), 0.85·μ_sim), max(1.15·μ, 1.15·μ_sim)]. The loaded
   start has n₀ requests waiting at t = 0 (:func:`loaded_start_queue`: enough to keep the
   queue non-empty for the whole run at rates down to about 0.9·λ*). Each rate gets the
   drift test's verdict.
3. **λ***: on the loaded-start rates at which *every* trajectory kept max(2, 0.1 × running)
   requests waiting in every block after warm-up ("backlogged": FCFS admits i.i.d. requests
   from the head of a queue that the step's admissions cannot exhaust, whatever the
   arrivals do, so the queue grows at λ − D with one departure rate D), the regression
   growth = λ − λ* over trajectories, the growth corrected for each trajectory's realized
   arrivals (a control variate with mean zero), gives λ* = mean of (λ − growth), with a
   95 % percentile bootstrap CI (trajectories resampled within rates). The free line
   growth = a·(λ − λ*) is fitted as a check (a = 1 expected). Rates whose queue emptied are
   left out: reflection at zero biases their slope.
4. **Fine grid** (precision 'default' and 'fine'): K rates over λ*₀·[0.94, 1.06] around the
   first estimate, both starts again; λ* is re-fitted on both grids.
5. **Metastability**: a rate judged 'stable' from the empty start and 'unstable' from the
   loaded start (:func:`metastable_rates`) means the boundary depends on the start; then
   ``metastable`` is True and both are reported: the empty start's verdict bracket and the
   loaded-start λ*, which is always the one reported as ``lambda_star``.

Where λ* falls relative to μ(1−δ) and μ is reported in words (``relation``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from kvstab import SIM_SEMANTICS_VERSION, __version__, analytic, metrics
from kvstab.display import Displayable
from kvstab.errors import InputError, check_number
from kvstab.laws import Independent, JointEmpirical, as_joint
from kvstab.sim.api import simulate
from kvstab.sim.components import (
    FCFS,
    LinearBatchTime,
    Poisson,
    Policy,
    RandomBatchTime,
    System,
    Workload,
)
from kvstab.sim.sizing import request_buffer_size
from kvstab.validate import (
    INT32_MAX,
    MAX_SEED,
    MAX_STEPS,
    MAX_TOKENS,
    check_sizes,
    check_value,
)

ALPHA = 0.025  # one-sided level of each drift test (a 95 % two-sided interval)
REL_THRESHOLD = 0.01  # practical growth threshold, fraction of λ
ABS_THRESHOLD_REQUESTS = 2.0  # ... and at least this many requests over the window
HALF_GROWTH_REL = 0.5  # second-half mean queue may exceed the first by 50 % + 2 requests
HALF_GROWTH_ABS = 2.0
MIN_WINDOW_LIFETIMES = 5.0
MIN_BLOCKS = 8
BACKLOG_MIN_REQUESTS = 2.0  # "backlogged": at least this many waiting in every block ...
BACKLOG_MIN_FRAC = 0.1  # ... and this fraction of the running count
WARMUP_FRAC = 0.25
WARMUP_LIFETIMES = 6.0  # warm-up at least this many size-biased mean lifetimes E[L²]/E[L]
MAX_WARMUP_FRAC = 0.6
WARMUP_CHECK_ALPHA = 0.005  # the paired warm-up check: a 99 % interval (1 % false alarms)
BOOTSTRAP_RESAMPLES = 2000

VERDICTS = ("stable", "unstable", "inconclusive")

# Presets: K grid rates, R replications per rate, T steps, saturated-run trajectories.
PRECISIONS = {
    "fast": dict(grid_points=8, replications=8, num_steps=24576, refine=False),
    "default": dict(grid_points=12, replications=8, num_steps=32768, refine=True),
    "fine": dict(grid_points=16, replications=16, num_steps=65536, refine=True),
}


# ---------------------------------------------------------------------------------------------
# Small statistics helpers


def _t_sf(t: float, dof: int) -> float:
    return float(stats.t.sf(t, dof))


def _p_greater(x: np.ndarray, value: float) -> float:
    """One-sided t-test p-value of H0: mean ≤ value (small p: mean > value)."""
    x = np.asarray(x, np.float64).ravel()
    if x.size < 2:
        return math.nan
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    m = float(x.mean())
    if se == 0:
        return 0.0 if m > value else 1.0
    return _t_sf((m - value) / se, x.size - 1)


# ---------------------------------------------------------------------------------------------
# Theory and the law's time scales


def _joint(law):
    return as_joint(law)


def theory(law, system: System = System()) -> dict:
    """μ, δ, μ(1−δ) and E[g] (exact g) of the closed form, in double precision.

    b̄ is the system's batch-time scale (:func:`system_values`)."""
    M, chunk, b = system_values(law, system)
    with jax.enable_x64(True):
        rep = analytic.capacity(
            _joint(law), kv_capacity_tokens=M, chunk_tokens=chunk, batch_time_s=b
        )
    return {"mu": rep.mu, "delta": rep.delta, "mu_stable": rep.mu_stable, "mean_g": rep.mean_g}


def lifetime_moments(law, chunk_tokens: int) -> tuple[float, float]:
    """(E[L], E[L²]/E[L]) of a request's lifetime L = ⌈s/ŝ⌉ + o in batch steps.

    E[L²]/E[L] is the mean total lifetime of the request in progress at a random time (the
    size-biased mean): the time scale on which a cohort started together forgets its start.
    """
    joint = _joint(law)
    if isinstance(joint, Independent):
        with jax.enable_x64(True):
            k, p = joint.prompt.table()
            p = p / jnp.sum(p)
            c = jnp.ceil(k / chunk_tokens)
            c1, c2 = float(jnp.sum(c * p)), float(jnp.sum(c * c * p))
            ko, po = joint.output.table()
            po = po / jnp.sum(po)
            o1, o2 = float(jnp.sum(ko * po)), float(jnp.sum(ko * ko * po))
        m1 = c1 + o1
        m2 = c2 + 2 * c1 * o1 + o2
        return m1, m2 / m1
    if isinstance(joint, JointEmpirical):
        s, o = np.asarray(joint.prompts), np.asarray(joint.outputs)
    else:
        s, o = (np.asarray(x) for x in joint.sample(jax.random.PRNGKey(0), (20000,)))
    life = (-(-s // chunk_tokens) + o).astype(np.float64)
    return float(life.mean()), float((life**2).mean() / life.mean())


def mean_lifetime_steps(law, chunk_tokens: int) -> float:
    """E[⌈s/ŝ⌉ + o]: a request's mean lifetime in batch steps (docs/semantics.md)."""
    return lifetime_moments(law, chunk_tokens)[0]


def warmup_steps(law, chunk_tokens: int, num_steps: int, warmup_frac: float = WARMUP_FRAC):
    """The warm-up rule: max(warmup_frac·T, 6·E[L²]/E[L]) steps, as a fraction of T.

    A run that starts with a backlog (or a burst) admits a cohort of requests together; the
    completion rate then oscillates with the lifetimes and the oscillation dies out within
    about 6 size-biased mean lifetimes (measured on Table 1's workloads: 1:1 by ~6,000 steps,
    1:2 by ~8,000 steps: both about 5.6 E[L²]/E[L]). Returns (steps, fraction of T, text).
    """
    _, lsb = lifetime_moments(law, chunk_tokens)
    steps = max(warmup_frac * num_steps, WARMUP_LIFETIMES * lsb)
    frac = min(steps / num_steps, MAX_WARMUP_FRAC)
    text = (
        f"the first max({warmup_frac:.0%} of the steps, {WARMUP_LIFETIMES:g} x E[L^2]/E[L] = "
        f"{WARMUP_LIFETIMES * lsb:.0f} steps) are discarded"
        + (f" (capped at {MAX_WARMUP_FRAC:.0%} of the run)" if frac < steps / num_steps else "")
    )
    return int(math.ceil(frac * num_steps)), frac, text


def min_steps(law, chunk_tokens: int, warmup_frac: float = WARMUP_FRAC) -> int:
    """The shortest run whose drift and throughput estimates mean something: a warm-up of
    WARMUP_LIFETIMES size-biased lifetimes that is not capped (at MAX_WARMUP_FRAC of the
    run), then at least MIN_WINDOW_LIFETIMES mean lifetimes of measurement."""
    life = mean_lifetime_steps(law, chunk_tokens)
    _, lsb = lifetime_moments(law, chunk_tokens)
    warm = WARMUP_LIFETIMES * lsb
    window = MIN_WINDOW_LIFETIMES * life
    return int(math.ceil(max(warm / MAX_WARMUP_FRAC, warm + window, window / (1 - warmup_frac))))


def system_values(law, system: System) -> tuple[int, int, float]:
    """(M, ŝ, b̄) of one replica, checked (an :class:`InputError` naming the field).

    b̄ is the batch time's scale: ``batch_time_s`` of a constant or random batch time (the
    median-like scale of b = b̄·ξ, as the paper's μ uses it), or for a linear batch time
    the time of a full batch (:meth:`LinearBatchTime.mean_s`).
    """
    if not isinstance(system, System):
        raise InputError("system", f"must be a kvstab.sim.System, got {system!r}")
    M, chunk, bt = system.kv_capacity_tokens, system.chunk_tokens, system.batch_time
    if isinstance(bt, LinearBatchTime):
        s, o = (
            np.asarray(x, np.float64) for x in _joint(law).sample(jax.random.PRNGKey(0), (4096,))
        )
        b = bt.mean_s(
            chunk_tokens=chunk, kv_capacity_tokens=np.max(M), mean_total_tokens=np.mean(s + o)
        )
    else:
        b = getattr(bt, "batch_time_s", None)
    for field, v in (("kv_capacity_tokens", M), ("batch_time_s", b)):
        if np.ndim(v) != 0:
            raise InputError(field, "must be one number (one replica), not one per trajectory")
    check_number("kv_capacity_tokens", M, low=1, integer=True)
    check_number("chunk_tokens", chunk, low=1, integer=True)
    check_number("batch_time_s", b, low=0, low_open=True)
    return int(M), int(chunk), float(b)


def _check_policy(policy: Policy) -> None:
    if not isinstance(policy, Policy):
        raise InputError("policy", f"must be a kvstab.sim.Policy, got {policy!r}")


def _other_components(system: System, policy: Policy) -> dict:
    """The run's choices beyond M, ŝ, b̄, admission and overflow, in the command line's words
    (:func:`kvstab.sim.components_from_names`); empty for the defaults (results files)."""
    words: dict[str, Any] = {}
    bt = system.batch_time
    if isinstance(bt, RandomBatchTime):
        words.update(
            batch_time_model=bt.name,
            batch_time_law=bt.law,
            batch_time_sigma=bt.sigma,
            slow_fraction=bt.slow_fraction,
            slow_factor=bt.slow_factor,
        )
    elif isinstance(bt, LinearBatchTime):
        words.update(batch_time_model=bt.name, linear_coefs=list(bt.coefs))
    if not isinstance(policy.order, FCFS):
        words.update(order=policy.order.name, spf_window=policy.order.window)
    names = policy.names()
    words.update({k: names[k] for k in ("victim", "watermark", "max_tokens") if k in names})
    return words


def _flags_of(res) -> list[str]:
    return sorted({f for fl in res.flags for f in fl})


# ---------------------------------------------------------------------------------------------
# Saturated throughput


@dataclasses.dataclass(repr=False)
class SaturationResult(Displayable):
    """Throughput of a replica with an endless backlog (what the paper calls μ_gpu).

    Attributes:
        mu_sim: mean over trajectories of completions/s after warm-up (requests/s).
        ci_low, ci_high: 95 % Student-t interval over the independent trajectories.
        mean_kv_tokens: mean KV tokens in use after warm-up; kv_utilization = that / M.
        mean_running: mean number of running requests after warm-up.
        preemptions_per_completion: over the whole run.
        warmup_rule: the rule in words; warmup_s the warm-up length in seconds.
        warmup_check: μ_sim re-estimated with twice the warm-up from the same run:
            ``mu_sim``, ``ci``, ``outside_ci`` (that estimate lies outside the interval above),
            ``paired_diff`` and ``paired_diff_ci`` (per-trajectory difference doubled − single,
            99 % t interval: about 1 % false alarms), ``significant`` (it excludes 0),
            ``beyond_ci_halfwidth`` (|paired_diff| > half the width of [ci_low, ci_high]),
            ``ok`` = not (significant and beyond_ci_halfwidth): the estimate changed beyond
            its CI, and not by chance, when the warm-up was doubled.
        flags: simulator flags raised (empty when clean).
    """

    mu_sim: float
    ci_low: float
    ci_high: float
    mean_kv_tokens: float
    kv_utilization: float
    mean_running: float
    preemptions_per_completion: float
    warmup_rule: str
    warmup_s: float
    warmup_check: dict
    num_trajectories: int
    num_steps: int
    simulated_s: float
    seed: int
    config: dict
    flags: list
    wall_s: float
    per_trajectory: np.ndarray = dataclasses.field(repr=False, default=None)

    @property
    def ci(self) -> tuple[float, float]:
        return (self.ci_low, self.ci_high)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("per_trajectory")
        return _jsonable(d)

    def summary(self) -> dict:
        """The headline numbers, flat (what ``repr`` and the HTML table show)."""
        return {
            "mu_sim (req/s)": self.mu_sim,
            "95% CI": [self.ci_low, self.ci_high],
            "KV utilisation": self.kv_utilization,
            "mean running": self.mean_running,
            "preemptions / completion": self.preemptions_per_completion,
            "warm-up check ok": bool(self.warmup_check.get("ok", True)),
            "trajectories x steps": f"{self.num_trajectories} x {self.num_steps}",
            "flags": ", ".join(self.flags) or "none",
            "wall (s)": self.wall_s,
        }

    def _display_title(self) -> str:
        return f"SaturationResult: {self.config.get('workload', '')}"

    def _display_rows(self) -> dict:
        return self.summary()


BACKLOG_RATE = 1e-9  # req/s: the buffer's last requests never arrive within a simulated run
BACKLOG_SPARE = 16  # requests of the buffer left out of the initial backlog


def _backlog_requests(mu: float, horizon_s: float) -> int:
    """Buffer length that a backlogged run cannot exhaust (μ ≥ μ_sim by Theorem 4.1)."""
    served = max(float(mu), 1e-9) * horizon_s
    return int(1.5 * served + 6 * math.sqrt(served + 1) + 512)


def _backlogged_run(law, *, common: dict, sizes: dict, seed: int, progress):
    """An endless-backlog run: every buffered request but the last few waits at t = 0.

    The same dynamics as a saturated run (``Saturated()`` arrivals; docs/semantics.md: every
    request of the buffer has arrived at t = 0) as long as the backlog lasts, which is checked (the
    buffer is doubled and the run repeated if it ran out). Being an arrival-driven run (at
    1e-9 req/s) it shares its compiled configuration with drift tests and rate grids of the
    same size (``sizes``).
    """
    sz = dict(sizes)
    n = int(common["num_trajectories"])
    for _ in range(4):
        backlog = int(sz["num_requests"]) - BACKLOG_SPARE
        res = simulate(
            Workload(law, Poisson(np.full(n, BACKLOG_RATE)), initial_queue=backlog),
            seed=int(seed),
            sizes=sz,
            progress=progress,
            **common,
        )
        sz = dict(res.config["sizes"])
        if np.all(res.queue_end.min(axis=1) >= 1):
            return res, sz
        sz["num_requests"] = 2 * int(sz["num_requests"])
    raise RuntimeError("the backlog of the saturated run ran out four times; please report this")


def saturated_throughput(
    law,
    system: System = System(),
    policy: Policy = Policy(),
    *,
    num_trajectories: int = 32,
    num_steps: int = 20000,
    seed: int = 0,
    warmup_frac: float = WARMUP_FRAC,
    sizes: dict | None = None,
    progress: Callable | None = None,
) -> SaturationResult:
    """μ_sim: completions per second with an endless backlog, after warm-up.

    The run is arrival-driven with a backlog that it cannot exhaust (checked), i.e. the
    dynamics of a saturated run (``Saturated()`` arrivals); it shares its compilation with
    :func:`drift_test` calls of the same ``num_trajectories``, ``num_steps`` and ``sizes``.

    Warm-up rule (:func:`warmup_steps`): the first max(``warmup_frac``·T, 6·E[L²]/E[L])
    steps are discarded (whole blocks, rounded up). Checked by re-estimating with twice that
    warm-up from the same run (``warmup_check``).

    Args:
        system: M, ŝ and the batch-time model of the replica (b̄: :func:`system_values`).
        policy: admission, overflow and order.
        sizes: static capacities passed to the simulator (max_running, max_preempted,
            cal_len, num_requests); by default the buffer holds 1.5·μ·T·b̄ + 512 requests.
    """
    _, chunk_tokens, batch_time_s = system_values(law, system)
    _check_policy(policy)
    check_number("num_trajectories", num_trajectories, low=2, integer=True)
    check_number("num_steps", num_steps, low=1, integer=True)
    check_number("seed", seed, low=0, integer=True)
    check_number("warmup_frac", warmup_frac, low=0, high=0.5, high_open=True)
    mu = theory(law, system)["mu"]
    sz = dict(sizes or {})
    sz.setdefault("num_requests", _backlog_requests(mu, num_steps * batch_time_s))
    _, frac, rule = warmup_steps(law, chunk_tokens, num_steps, warmup_frac)
    common = {
        "system": system,
        "policy": policy,
        "warmup_frac": frac,
        "num_steps": int(num_steps),
        "num_trajectories": int(num_trajectories),
    }
    res, _ = _backlogged_run(law, common=common, sizes=sz, seed=seed, progress=progress)
    return _saturation_from(res, rule)


def _backlog_config(config: dict) -> dict:
    """The simulator configuration of an endless-backlog run, said as such."""
    out = dict(config)
    out["arrival_rate_per_s"] = None
    out["saturated"] = True
    out["arrivals"] = (
        f"endless backlog: {out.get('initial_queue')} requests waiting at t = 0, no arrivals"
    )
    return out


def _saturation_from(res, rule: str) -> SaturationResult:
    w = res.warmup_blocks
    nb = res.clock_s.shape[1]
    thr = res.throughput_per_traj()
    m, lo, hi = metrics.mean_ci(thr, ALPHA)
    w2 = min(max(2 * w, 1), nb - 1)
    thr2 = metrics.throughput_per_traj(res.completed, res.clock_s, w2)
    m2, lo2, hi2 = metrics.mean_ci(thr2, ALPHA)
    dm, dlo, dhi = metrics.mean_ci(thr2 - thr, WARMUP_CHECK_ALPHA)
    outside = not (lo <= m2 <= hi)
    # A real warm-up bias shows as a significant paired difference (same trajectories) that
    # is also larger than the reported uncertainty; the doubled-warm-up estimate alone is
    # noisier than the CI (its window is shorter), so "outside the CI" by itself is noise.
    significant = bool(np.isfinite(dlo) and (dlo > 0 or dhi < 0))
    beyond = bool(abs(dm) > (hi - lo) / 2)
    comp = float(res.completed[:, -1].sum())
    M = float(np.max(np.asarray(res.config["kv_capacity_tokens"])))
    kv = float(res.kv_tokens[:, w:].mean())
    return SaturationResult(
        mu_sim=m,
        ci_low=lo,
        ci_high=hi,
        mean_kv_tokens=kv,
        kv_utilization=kv / M,
        mean_running=float(res.running[:, w:].mean()),
        preemptions_per_completion=float(res.preempted[:, -1].sum() / comp) if comp else math.nan,
        warmup_rule=(
            f"{rule}: {w} of {nb} blocks of {res.config['block_steps']} steps; checked against "
            f"a doubled warm-up ({w2} blocks)"
        ),
        warmup_s=float(res.clock_s[:, w - 1].mean()) if w > 0 else 0.0,
        warmup_check={
            "warmup_blocks": w2,
            "warmup_s": float(res.clock_s[:, w2 - 1].mean()),
            "mu_sim": m2,
            "ci": [lo2, hi2],
            "paired_diff": dm,
            "paired_diff_ci": [dlo, dhi],
            "outside_ci": bool(outside),
            "significant": significant,
            "beyond_ci_halfwidth": beyond,
            "ok": bool(not (significant and beyond)),
        },
        num_trajectories=res.num_trajectories,
        num_steps=int(res.config["num_steps"]),
        simulated_s=float(res.clock_s[:, -1].mean()),
        seed=int(res.config["seed"]),
        config=_backlog_config(res.config),
        flags=_flags_of(res),
        wall_s=res.wall_s,
        per_trajectory=thr,
    )


# ---------------------------------------------------------------------------------------------
# Drift test


@dataclasses.dataclass
class DriftResult:
    """Verdict of the drift test at one arrival rate (see the module docstring).

    Attributes:
        verdict: 'stable', 'unstable' or 'inconclusive'; reason: why, in words.
        rate_per_s: λ.
        slope: mean over trajectories of the OLS slope of the queue vs time (requests/s);
            slope_ci: its (1 − 2α) t interval; slope_se: standard error.
        threshold: τ (requests/s).
        p_positive: one-sided t test p-value of H0 "mean slope ≤ 0".
        growth_rate, growth_ci: = slope and slope_ci for an unstable verdict, else None.
        queue_first_half, queue_second_half: mean queue over the two halves of the window;
            half_ok: second ≤ 1.5 × first + 2 requests (needed for 'stable').
        throughput: mean completions/s after warm-up.
        backlogged: in every post-warm-up block, every trajectory had at least
            max(2, 0.1 × mean running) requests waiting (at the block's end and on average).
        window_s, window_steps, window_lifetimes: the measured window after warm-up.
    """

    verdict: str
    reason: str
    rate_per_s: float
    slope: float
    slope_ci: tuple
    slope_se: float
    threshold: float
    p_positive: float
    growth_rate: float | None
    growth_ci: tuple | None
    queue_first_half: float
    queue_second_half: float
    half_ok: bool
    throughput: float
    backlogged: bool
    min_queue: float
    final_queue: float
    window_s: float
    window_steps: int
    window_lifetimes: float
    num_trajectories: int
    alpha: float
    test: str
    flags: list = dataclasses.field(default_factory=list)
    config: dict | None = None
    per_trajectory_slope: np.ndarray | None = dataclasses.field(repr=False, default=None)
    per_trajectory_arrival_rate: np.ndarray | None = dataclasses.field(repr=False, default=None)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("per_trajectory_slope")
        d.pop("per_trajectory_arrival_rate")
        return _jsonable(d)


TEST_DESCRIPTION = (
    "per-trajectory OLS slope of the waiting queue vs time after warm-up; t interval over "
    "trajectories at level 1-2*alpha; unstable iff lower bound > tau, stable iff upper bound "
    "< tau and the second-half mean queue is at most 1.5x the first-half mean + 2 requests; "
    "tau = max(0.01*lambda, 2 requests / window); inconclusive if the "
    "window is < 5 mean lifetimes"
)


def assess_drift(
    res,
    rate_per_s: float,
    *,
    mean_lifetime: float,
    rows: np.ndarray | None = None,
    alpha: float = ALPHA,
    rel_threshold: float = REL_THRESHOLD,
    abs_threshold_requests: float = ABS_THRESHOLD_REQUESTS,
    min_window_lifetimes: float = MIN_WINDOW_LIFETIMES,
) -> DriftResult:
    """The drift test on trajectories ``rows`` (default: all) of a SimResult at rate λ.

    Args:
        res: a :class:`kvstab.sim.SimResult` of an arrival-driven run.
        rate_per_s: the λ those trajectories ran at.
        mean_lifetime: E[⌈s/ŝ⌉ + o] in steps (:func:`mean_lifetime_steps`).
    """
    rows = np.arange(res.num_trajectories) if rows is None else np.asarray(rows)
    w = res.warmup_blocks
    nb = res.clock_s.shape[1]
    block_steps = int(res.config["block_steps"])
    clock = res.clock_s[rows]
    qend = res.queue_end[rows]
    qmean = res.queue[rows]
    n = len(rows)
    post = nb - w
    window_steps = post * block_steps
    window_s = float(np.mean(clock[:, -1] - (clock[:, w - 1] if w > 0 else 0.0)))
    window_lt = window_steps / max(mean_lifetime, 1e-9)
    slopes = metrics.slope_per_traj(qend[:, w:], clock[:, w:])
    slopes = np.where(np.isfinite(slopes), slopes, 0.0)
    m, lo, hi = metrics.mean_ci(slopes, alpha)
    se = metrics.standard_error(slopes)
    tau = max(rel_threshold * float(rate_per_s), abs_threshold_requests / max(window_s, 1e-12))
    h = post // 2
    q1 = qmean[:, w : w + h].mean(axis=1) if h > 0 else qmean[:, w:].mean(axis=1)
    q2 = qmean[:, w + h :].mean(axis=1)
    q1m, q2m = float(q1.mean()), float(q2.mean())
    # On the point estimates: this criterion can only turn a 'stable' into 'inconclusive',
    # so the error rate of 'stable' stays that of the slope test.
    half_ok = bool(q2m - q1m <= HALF_GROWTH_REL * q1m + HALF_GROWTH_ABS)
    post_q = np.minimum(qend[:, w:], qmean[:, w:])
    # A queue of one or two can still run dry within a step that admits several requests:
    # ask for a tenth of the running requests (at least 2) waiting in every block.
    running = float(res.running[rows][:, w:].mean())
    backlog_min = max(BACKLOG_MIN_REQUESTS, BACKLOG_MIN_FRAC * running)
    backlogged = bool(np.all(post_q >= backlog_min))
    thr = metrics.throughput_per_traj(res.completed[rows], clock, w)
    flags = sorted({f for r in rows for f in res.flags[int(r)]})
    level = f"{100 * (1 - 2 * alpha):.4g}% CI"
    if flags:
        verdict, reason = "inconclusive", f"simulator flags raised: {', '.join(flags)}"
    elif n < 2:
        verdict, reason = "inconclusive", "need at least 2 trajectories for an interval"
    elif post < MIN_BLOCKS:
        verdict, reason = "inconclusive", f"only {post} blocks after warm-up (need {MIN_BLOCKS})"
    elif window_lt < min_window_lifetimes:
        verdict, reason = (
            "inconclusive",
            f"run too short: the window after warm-up is {window_lt:.1f} mean request "
            f"lifetimes ({window_steps} steps), need >= {min_window_lifetimes:g}",
        )
    elif lo > tau:
        verdict, reason = (
            "unstable",
            f"queue grows at {m:.4g} req/s, {level} [{lo:.4g}, {hi:.4g}] above tau = {tau:.3g}",
        )
    elif hi < tau and half_ok:
        verdict, reason = (
            "stable",
            f"queue slope {m:.4g} req/s, {level} [{lo:.4g}, {hi:.4g}] below tau = {tau:.3g}; "
            f"mean queue {q1m:.3g} -> {q2m:.3g} over the window halves",
        )
    elif hi < tau:
        verdict, reason = (
            "inconclusive",
            f"slope CI [{lo:.4g}, {hi:.4g}] below tau = {tau:.3g} but the mean queue grew "
            f"{q1m:.3g} -> {q2m:.3g} between the window halves",
        )
    else:
        verdict, reason = (
            "inconclusive",
            f"slope CI [{lo:.4g}, {hi:.4g}] req/s contains tau = {tau:.3g}",
        )
    unstable = verdict == "unstable"
    return DriftResult(
        verdict=verdict,
        reason=reason,
        rate_per_s=float(rate_per_s),
        slope=m,
        slope_ci=(lo, hi),
        slope_se=se,
        threshold=tau,
        p_positive=_p_greater(slopes, 0.0),
        growth_rate=m if unstable else None,
        growth_ci=(lo, hi) if unstable else None,
        queue_first_half=q1m,
        queue_second_half=q2m,
        half_ok=half_ok,
        throughput=float(np.mean(thr)),
        backlogged=backlogged,
        min_queue=float(post_q.min()),
        final_queue=float(qend[:, -1].mean()),
        window_s=window_s,
        window_steps=int(window_steps),
        window_lifetimes=float(window_lt),
        num_trajectories=n,
        alpha=alpha,
        test=TEST_DESCRIPTION,
        flags=flags,
        per_trajectory_slope=slopes,
        per_trajectory_arrival_rate=metrics.slope_per_traj(
            res.arrived[rows][:, w:].astype(np.float64), clock[:, w:]
        ),
    )


def drift_test(
    law,
    rate_per_s: float,
    system: System = System(),
    policy: Policy = Policy(),
    *,
    num_trajectories: int = 16,
    num_steps: int = 20000,
    seed: int = 0,
    initial_queue: int = 0,
    warmup_frac: float = WARMUP_FRAC,
    alpha: float = ALPHA,
    sizes: dict | None = None,
    progress: Callable | None = None,
) -> DriftResult:
    """Simulate at arrival rate λ and apply the drift test (module docstring).

    The warm-up is :func:`warmup_steps`'s rule, max(``warmup_frac``·T, 6·E[L²]/E[L]).

    Returns a :class:`DriftResult`; ``config`` holds the simulation's configuration.
    ``sizes`` (static capacities) lets runs of the same size share one compilation.
    """
    _, chunk_tokens, _ = system_values(law, system)
    _check_policy(policy)
    check_number("rate_per_s", rate_per_s, low=0)
    check_number("alpha", alpha, low=0, high=0.5, low_open=True, high_open=True)
    res = simulate(
        Workload(law, Poisson(float(rate_per_s)), initial_queue=int(initial_queue)),
        system,
        policy,
        num_steps=int(num_steps),
        num_trajectories=int(num_trajectories),
        seed=int(seed),
        warmup_frac=warmup_steps(law, chunk_tokens, num_steps, warmup_frac)[1],
        sizes=sizes,
        progress=progress,
    )
    out = assess_drift(
        res, rate_per_s, mean_lifetime=mean_lifetime_steps(law, chunk_tokens), alpha=alpha
    )
    out.config = res.config
    return out


# ---------------------------------------------------------------------------------------------
# Crossing fit


def _fit_crossing(rates: np.ndarray, slopes: list[np.ndarray], seed: int, alpha: float):
    """λ* from the growth rates of backlogged runs; bootstrap CI over trajectories.

    ``rates`` (K,), ``slopes`` a list of K arrays: the trajectories' queue growth rates at
    each rate, corrected for their realized arrivals. While the queue never empties the
    admissions do not depend on the arrivals (FCFS takes i.i.d. requests from a non-empty
    queue), so growth = λ − D with D the departure rate of a backlogged system, the same at
    every λ: the regression growth = λ − λ* (unit coefficient) gives λ* = mean over
    trajectories of (λ − growth). The free line growth = a·(λ − λ*) is fitted as a check
    (``a``, ``a_ci``: a ≠ 1 would mean the departures depend on λ, or that queues touched
    zero) and its crossing is reported as ``lambda_star_free``.

    With the rate constant within a group the least-squares fit over trajectories equals the
    weighted fit of the group means (weights n_k); the bootstrap resamples trajectories
    within each rate (:data:`BOOTSTRAP_RESAMPLES` times, percentile interval at α, 1 − α).
    Returns a dict, or None without data.
    """
    rates = np.asarray(rates, np.float64)
    if len(rates) == 0:
        return None
    n = np.array([len(s) for s in slopes], np.float64)
    means = np.array([np.mean(s) for s in slopes])
    wsum = n.sum()

    def free(mk):  # mk: (..., K) group means -> (lambda*, a)
        xb = (n * rates).sum() / wsum
        yb = (mk * n).sum(axis=-1) / wsum
        sxx = (n * (rates - xb) ** 2).sum()
        sxy = ((mk - yb[..., None]) * (n * (rates - xb))).sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = sxy / sxx if sxx > 0 else np.full_like(yb, np.nan)
            lam = xb - yb / a
        return lam, a

    def unit(mk):
        return ((rates - mk) * n).sum(axis=-1) / wsum

    rng = np.random.default_rng(seed)
    boot = np.stack(
        [
            s[rng.integers(0, len(s), size=(BOOTSTRAP_RESAMPLES, len(s)))].mean(axis=1)
            for s in slopes
        ],
        axis=1,
    )  # (B, K)
    q = [100 * alpha, 100 * (1 - alpha)]
    lam = float(unit(means))
    lo, hi = (float(v) for v in np.percentile(unit(boot), q))
    a = alo = ahi = lam_free = math.nan
    if len(np.unique(rates)) >= 2:
        lam_free, a = (float(v) for v in free(means))
        _, a_b = free(boot)
        if np.isfinite(a_b).all():
            alo, ahi = (float(v) for v in np.percentile(a_b, q))
    return {
        "lambda_star": lam,
        "ci": (lo, hi),
        "a": a,
        "a_ci": (alo, ahi),
        "lambda_star_free": lam_free,
        "method": (
            f"regression growth = lambda - lambda* over {int(wsum)} trajectories at "
            f"{len(rates)} rates whose queue never emptied after warm-up (growth corrected "
            "for the realized arrivals); 95% percentile bootstrap over trajectories "
            f"({BOOTSTRAP_RESAMPLES} resamples)"
        ),
        "num_rates": len(rates),
        "num_trajectories": int(wsum),
        "rate_range": (float(rates.min()), float(rates.max())),
    }


def _bracket(rows: list[dict]) -> tuple[float, float]:
    """(largest rate judged stable below the first unstable one, smallest unstable rate)."""
    rows = sorted(rows, key=lambda r: r["rate"])
    unstable = [r["rate"] for r in rows if r["verdict"] == "unstable"]
    lam_u = min(unstable) if unstable else math.nan
    stable = [
        r["rate"] for r in rows if r["verdict"] == "stable" and (not unstable or r["rate"] < lam_u)
    ]
    return (max(stable) if stable else math.nan, lam_u)


def metastable_rates(rows: list[dict]) -> list[float]:
    """Rates at which the empty start is judged 'stable' and the loaded start 'unstable'.

    ``rows``: grid rows (dicts with rate, start, stage, verdict). Each verdict errs with
    probability at most α when the true drift is on the other side of τ, so with equal drifts
    from both starts a rate is listed with probability at most α.
    """
    by_rate: dict[tuple, dict] = {}
    for r in rows:
        by_rate.setdefault((r.get("stage"), round(float(r["rate"]), 12)), {})[r["start"]] = r
    return sorted(
        v["empty"]["rate"]
        for v in by_rate.values()
        if "empty" in v
        and "loaded" in v
        and v["empty"]["verdict"] == "stable"
        and v["loaded"]["verdict"] == "unstable"
    )


def relation_text(lam: float, mu: float, mu_stable: float, ci: tuple | None = None) -> str:
    """Where λ* (with its CI, if given) lies relative to μ(1−δ) and μ, in words."""
    if not math.isfinite(lam):
        return "lambda* could not be estimated"
    pm = 100 * (lam / mu - 1)
    ps = 100 * (lam / mu_stable - 1) if mu_stable > 0 else math.nan
    lo, hi = ci if ci is not None else (lam, lam)
    if lo > mu:
        where = (
            "above mu beyond its CI: this contradicts Theorem 4.1 (check the warm-up and the "
            "horizon)"
        )
    elif lam > mu:
        where = "at mu: the estimate is above mu, its CI is not (no policy exceeds mu, Thm 4.1)"
    elif lam >= mu_stable:
        where = "inside the delta band [mu(1-delta), mu], as Theorems 4.1 and 4.2 allow"
    elif hi >= mu_stable:
        where = "at mu(1-delta): the estimate is below it, its CI is not"
    else:
        where = (
            "below mu(1-delta): Theorem 4.2's guarantee does not hold for this policy "
            "(it is not work-conserving, or it throws work away)"
        )
    return f"lambda* is {pm:+.2f}% from mu and {ps:+.2f}% from mu(1-delta): {where}"


# ---------------------------------------------------------------------------------------------
# The boundary


@dataclasses.dataclass(repr=False)
class BoundaryResult(Displayable):
    """The critical rate λ* of one replica under one policy (module docstring).

    Attributes:
        lambda_star, ci_low, ci_high: λ* (loaded start) and its 95 % bootstrap CI, req/s.
        growth_coef, growth_coef_ci, lambda_star_free: the free line growth = a·(λ − λ*)
            through the same data (a check: a = 1 for a backlogged system).
        method: how λ* was fitted.
        mu, delta, mu_stable: closed form (exact g): μ, δ, μ(1−δ).
        mu_sim, mu_sim_ci: saturated throughput and its 95 % CI; saturation: its details.
        relation: where λ* lies relative to μ(1−δ) and μ, in words.
        lambda_star_empty, lambda_star_empty_ci: the same fit on the empty-start runs.
        bracket_empty, bracket_loaded: (largest stable rate, smallest unstable rate) by the
            drift test's verdicts.
        metastable: verdicts disagree between the starts at some rate (empty 'stable',
            loaded 'unstable'); metastable_rates lists them.
        grid: one dict per (rate, start, stage): rate, start, stage, slope, slope_ci_low,
            slope_ci_high, threshold, verdict, backlogged, throughput, n.
        initial_queue: n₀ of the loaded start.
        config, seed, kvstab_version, sim_semantics_version; wall_s (elapsed) and cpu_s
            (CPU time of this process, compilation included); flags, notes.
    """

    lambda_star: float
    ci_low: float
    ci_high: float
    growth_coef: float
    growth_coef_ci: tuple
    lambda_star_free: float
    method: str
    mu: float
    delta: float
    mu_stable: float
    mu_sim: float
    mu_sim_ci: tuple
    relation: str
    lambda_star_empty: float
    lambda_star_empty_ci: tuple
    bracket_empty: tuple
    bracket_loaded: tuple
    metastable: bool
    metastable_rates: list
    grid: list
    initial_queue: int
    saturation: dict
    config: dict
    seed: int
    kvstab_version: str
    sim_semantics_version: int
    wall_s: float
    cpu_s: float
    flags: list
    notes: list

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

    def summary(self) -> dict:
        """The headline numbers, flat (what ``repr`` and the HTML table show); the full
        account is :meth:`summary_text`."""
        return {
            "lambda* (req/s)": self.lambda_star,
            "95% CI": [self.ci_low, self.ci_high],
            "mu (req/s)": self.mu,
            "mu(1-delta) (req/s)": self.mu_stable,
            "mu_sim (req/s)": self.mu_sim,
            "mu_sim 95% CI": list(self.mu_sim_ci),
            "relation": self.relation,
            "metastable": bool(self.metastable),
            "precision": self.config.get("precision"),
            "flags": ", ".join(self.flags) or "none",
            "wall (s)": self.wall_s,
        }

    def _display_title(self) -> str:
        return f"BoundaryResult: {self.config.get('workload', '')}"

    def _display_rows(self) -> dict:
        return self.summary()

    def summary_text(self) -> str:
        c = self.config
        lines = [
            "kvstab boundary: critical arrival rate of one replica by simulation",
            f"  workload   {c['workload']}",
            f"  system     M = {c['kv_capacity_tokens']:,} KV tokens, chunk = "
            f"{c['chunk_tokens']}, batch time = {c['batch_time_s']:g} s; admission "
            f"{c['admission']}, overflow {c['overflow']}",
            f"  theory     mu = {self.mu:.4g} req/s, mu(1-delta) = {self.mu_stable:.4g} req/s "
            f"(delta = {self.delta:.4g})",
            f"  mu_sim     {self.mu_sim:.4g} req/s, 95% CI [{self.mu_sim_ci[0]:.4g}, "
            f"{self.mu_sim_ci[1]:.4g}] (saturated; {100 * (self.mu_sim / self.mu - 1):+.2f}% "
            "from mu)",
            f"  lambda*    {self.lambda_star:.4g} req/s, 95% CI [{self.ci_low:.4g}, "
            f"{self.ci_high:.4g}] (loaded start, n0 = {self.initial_queue})",
            f"             {self.relation}",
            f"  empty start: lambda* {_or_none(self.lambda_star_empty, 'not estimated')}"
            f"; {_bracket_words(self.bracket_empty)}",
            f"  loaded start: {_bracket_words(self.bracket_loaded)}",
        ]
        if self.metastable:
            rates = ", ".join(f"{r:.4g}" for r in self.metastable_rates)
            lines.append(
                f"  METASTABLE: stable from an empty start but unstable from a loaded one at "
                f"{rates} req/s; lambda* is the loaded-start rate"
            )
        else:
            lines.append("  no metastability seen (the starts agree at every rate)")
        grids = "2 grids" if c.get("refine") else "1 grid"
        lines.append(
            f"  precision  {c['precision']}: {c['grid_points']} rates x {c['replications']} "
            f"runs x {grids} x 2 starts + {c['saturation_trajectories']} saturated runs, "
            f"{c['num_steps']} steps each; seed {self.seed}; {self.wall_s:.1f} s "
            f"({self.cpu_s:.1f} s CPU)"
        )
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.flags:
            lines.append(f"  flags: {', '.join(self.flags)}")
        return "\n".join(lines)


def _or_none(x, words: str) -> str:
    """``x`` in req/s, or ``words`` when it is nan/None."""
    return f"{x:.4g} req/s" if x is not None and math.isfinite(x) else words


def _bracket_words(bracket) -> str:
    """A (largest stable, smallest unstable) verdict bracket in words, nan parts said so."""
    lo, hi = bracket
    parts = [
        f"verdicts stable up to {_or_none(lo, 'no rate judged stable')}"
        if lo is not None and math.isfinite(lo)
        else "no rate judged stable",
        f"unstable from {_or_none(hi, '')}"
        if hi is not None and math.isfinite(hi)
        else "no rate judged unstable",
    ]
    return ", ".join(parts)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def loaded_start_queue(mu: float, horizon_s: float, running: float) -> int:
    """n₀ of the loaded start: max(4 × running, 0.1·μ·H + 5·√(2·μ·H)).

    With μ ≥ λ* this keeps the queue non-empty over a horizon of H seconds for arrival rates
    down to about 0.9·λ* (drain 0.1·λ*·H, plus five standard deviations of the queue's
    random-walk fluctuation if its variance grows like 2λ per second; departures of a few
    long requests are burstier, hence five), and is several times the number of running
    requests (so that memory is saturated from the first step).
    """
    lam = max(float(mu), 1e-9)
    return int(
        math.ceil(max(4.0 * running, 0.1 * lam * horizon_s + 5.0 * math.sqrt(2 * lam * horizon_s)))
    )


def estimate_boundary(
    law,
    system: System = System(),
    policy: Policy = Policy(),
    *,
    precision: str = "default",
    replications: int | None = None,
    num_steps: int | None = None,
    grid_points: int | None = None,
    initial_queue: int | None = None,
    seed: int = 0,
    warmup_frac: float = WARMUP_FRAC,
    alpha: float = ALPHA,
    sizes: dict | None = None,
    progress: Callable[[float, float, str], None] | None = None,
) -> BoundaryResult:
    """Estimate the critical arrival rate λ* of one replica (module docstring).

    Five simulator calls share one compiled configuration: the saturated run (an arrival
    rate of 1e-9 req/s behind an initial queue longer than the run can serve: the same
    dynamics as ``saturated=True``, checked to stay backlogged), then the coarse and the fine
    grids, each from an empty and from a loaded start.

    Args:
        law: joint law of (s, o) (bounded: max(s+o) ≤ M).
        system: M, ŝ and the batch-time model of the replica (b̄: :func:`system_values`).
        policy: admission, overflow and order.
        precision: 'fast' (tests), 'default' or 'fine': presets of the grid size K, the
            replications R per rate and the steps T (:data:`PRECISIONS`).
        replications, num_steps, grid_points: override the preset.
        initial_queue: n₀ of the loaded start (default: :func:`loaded_start_queue` with μ).
        sizes: static capacities for the simulator (max_running, max_preempted, cal_len,
            num_requests); equal sizes let several estimates share one compilation.
        progress: callable(done, total, stage), work counted in trajectory·steps.
    """
    t0 = time.perf_counter()
    c0 = time.process_time()
    _check_policy(policy)
    if precision not in PRECISIONS:
        raise InputError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_value("seed", seed, low=0, high=MAX_SEED, integer=True)
    check_number("alpha", alpha, low=0, high=0.5, low_open=True, high_open=True)
    check_number("warmup_frac", warmup_frac, low=0, high=0.5, high_open=True)
    p = dict(PRECISIONS[precision])
    for name, v, low, high in (
        ("replications", replications, 2, INT32_MAX),
        ("num_steps", num_steps, 100, MAX_STEPS),
        ("grid_points", grid_points, 2, 1000),
    ):
        if v is not None:
            check_value(name, v, low=low, high=high, integer=True)
            p[name] = int(v)
    if initial_queue is not None:
        check_value("initial_queue", initial_queue, low=1, high=MAX_TOKENS, integer=True)
    check_sizes(sizes)
    M, chunk, b = system_values(law, system)  # after the cheap checks: it sums over the law
    K, R, T = p["grid_points"], p["replications"], p["num_steps"]
    N = K * R
    th = theory(law, system)
    mu, mu_stable = th["mu"], th["mu_stable"]
    life = mean_lifetime_steps(law, chunk)
    joint = _joint(law)

    work = N * T
    total = (5 if p["refine"] else 3) * work
    done = [0.0]

    def stage_progress(stage: str):
        if progress is None:
            return None

        def cb(d, tot, attempt):
            progress(min(done[0] + work * d / max(tot, 1), total), total, stage)

        return cb

    def finish_stage(stage: str):
        done[0] += work
        if progress is not None:
            progress(min(done[0], total), total, stage)

    _, frac, rule = warmup_steps(law, chunk, T, warmup_frac)
    common = {
        "system": system,
        "policy": policy,
        "warmup_frac": frac,
        "num_steps": T,
        "num_trajectories": N,
    }
    # Sizing from the closed form (μ ≥ λ* by Theorem 4.1): horizon, loaded start, buffers.
    horizon_est = T * b
    running_est = mu * b * life  # Little's law with the largest possible throughput
    n0 = (
        int(initial_queue)
        if initial_queue is not None
        else loaded_start_queue(mu, horizon_est, running_est)
    )
    rate_cap = 1.1 * 1.15 * mu
    arrivals_expected = rate_cap * horizon_est
    sz = dict(sizes or {})
    sz.setdefault(
        "num_requests",
        max(
            request_buffer_size(arrivals_expected, n0),
            _backlog_requests(mu, horizon_est),
        ),
    )
    notes: list[str] = []
    flags: set[str] = set()

    # 1. Saturated throughput, in the grids' compiled configuration.
    stage = "saturated run (mu_sim)"
    sat_res, sz = _backlogged_run(
        law, common=common, sizes=sz, seed=int(seed), progress=stage_progress(stage)
    )
    finish_stage(stage)
    flags.update(_flags_of(sat_res))
    sat = _saturation_from(sat_res, rule)
    mu_sim = sat.mu_sim

    lo = min(0.8 * mu_stable, 0.85 * mu_sim)
    hi = max(1.15 * mu, 1.15 * mu_sim)
    coarse = np.linspace(lo, hi, K)
    rows: list[dict] = []
    row_slopes: list[np.ndarray] = []  # per-trajectory slopes of each row of ``rows``
    seeds = iter(range(int(seed) + 1, int(seed) + 5))

    def run_grid(grid: np.ndarray, start: str, stage_name: str):
        nonlocal sz
        label = f"{stage_name} grid, {start} start"
        res = simulate(
            Workload(
                law, Poisson(np.repeat(grid, R)), initial_queue=n0 if start == "loaded" else 0
            ),
            seed=next(seeds),
            sizes=sz,
            progress=stage_progress(label),
            **common,
        )
        sz = dict(res.config["sizes"])
        finish_stage(label)
        flags.update(_flags_of(res))
        for k, lam in enumerate(grid):
            idx = np.arange(k * R, (k + 1) * R)
            d = assess_drift(res, float(lam), mean_lifetime=life, rows=idx, alpha=alpha)
            rows.append(
                {
                    "rate": float(lam),
                    "start": start,
                    "stage": stage_name,
                    "slope": d.slope,
                    "slope_ci_low": d.slope_ci[0],
                    "slope_ci_high": d.slope_ci[1],
                    "threshold": d.threshold,
                    "verdict": d.verdict,
                    "backlogged": d.backlogged,
                    "min_queue": d.min_queue,
                    "throughput": d.throughput,
                    "final_queue": d.final_queue,
                    "n": d.num_trajectories,
                }
            )
            # Growth corrected for the realized arrivals (a control variate with mean zero):
            # while backlogged, queue = n0 + arrivals - admissions, so this is exactly
            # λ - (admission rate) and is free of the Poisson noise of the arrivals.
            row_slopes.append(d.per_trajectory_slope - (d.per_trajectory_arrival_rate - lam))

    def crossing(start: str, fit_seed: int):
        sel = [i for i, r in enumerate(rows) if r["start"] == start and r["backlogged"]]
        if not sel:
            return None
        rates = np.array([rows[i]["rate"] for i in sel])
        return _fit_crossing(rates, [row_slopes[i] for i in sel], fit_seed, alpha)

    run_grid(coarse, "empty", "coarse")
    run_grid(coarse, "loaded", "coarse")
    first = crossing("loaded", int(seed)) or crossing("empty", int(seed))
    if first is None:
        center = mu_sim
        notes.append("no backlogged rate on the coarse grid: the fine grid is centred on mu_sim")
    else:
        center = first["lambda_star"]
    center = float(np.clip(center, lo, hi))
    fine = np.linspace(0.94 * center, 1.06 * center, K)
    if p["refine"]:
        run_grid(fine, "empty", "fine")
        run_grid(fine, "loaded", "fine")

    fit_l = crossing("loaded", int(seed) + 7)
    fit_e = crossing("empty", int(seed) + 8)
    if fit_l is None:
        notes.append(
            "no rate kept every loaded-start trajectory backlogged: lambda* is not "
            "estimated (raise the initial queue or the horizon)"
        )
        fit_l = {
            "lambda_star": math.nan,
            "ci": (math.nan, math.nan),
            "a": math.nan,
            "a_ci": (math.nan, math.nan),
            "lambda_star_free": math.nan,
            "method": "none",
        }
    elif (
        all(math.isfinite(v) for v in fit_l["a_ci"])
        and not (fit_l["a_ci"][0] <= 1.0 <= fit_l["a_ci"][1])
        and abs(fit_l["a"] - 1.0) > 0.1
    ):
        notes.append(
            f"the free line growth = a*(lambda - lambda*) has a = {fit_l['a']:.3g} (CI "
            f"{fit_l['a_ci'][0]:.3g}..{fit_l['a_ci'][1]:.3g}), not 1, and crosses zero at "
            f"{fit_l['lambda_star_free']:.4g} req/s: departures seem to depend on the arrival "
            "rate (or queues came close to empty); compare with mu_sim"
        )
    empty_rows = [r for r in rows if r["start"] == "empty"]
    loaded_rows = [r for r in rows if r["start"] == "loaded"]
    meta = metastable_rates(rows)
    lam_e = fit_e["lambda_star"] if fit_e else math.nan
    lam_e_ci = fit_e["ci"] if fit_e else (math.nan, math.nan)
    lam = fit_l["lambda_star"]
    bracket_e = _bracket(empty_rows)
    if meta:
        notes.append(
            f"metastable: from an empty start the queue stays bounded up to "
            f"{max(meta):.4g} req/s, from a loaded start it grows above "
            f"{lam:.4g} req/s; lambda* is the loaded-start rate"
        )
    if math.isfinite(lam) and math.isfinite(sat.ci_low):
        if not (fit_l["ci"][0] <= sat.ci_high and sat.ci_low <= fit_l["ci"][1]):
            notes.append(f"lambda* ({lam:.4g}) and mu_sim ({mu_sim:.4g}) disagree beyond their CIs")
    t_min = min_steps(law, chunk, warmup_frac)
    if T < t_min:
        flags.add("run_too_short")
        notes.append(
            f"{T} steps is too short for this workload: the warm-up and the measurement "
            f"window need at least {t_min} steps (num_steps >= {t_min}); lambda* is unreliable"
        )
    if not (math.isfinite(lam) and lam > 0):
        flags.add("lambda_star_not_positive")
        notes.append(
            f"lambda* = {lam:.4g} req/s is not a positive rate: the drift fit failed "
            f"(lengthen the run to at least {t_min} steps, or widen the grid)"
        )
    if not sat.warmup_check["ok"]:
        notes.append(
            "mu_sim changed beyond its CI (paired test) when the warm-up was doubled "
            f"({mu_sim:.4g} -> {sat.warmup_check['mu_sim']:.4g}): lengthen the run"
        )
    config = {
        "workload": joint.spec,
        "kv_capacity_tokens": M,
        "chunk_tokens": chunk,
        "batch_time_s": b,
        "admission": policy.admission.name,
        "overflow": policy.overflow.name,
        "precision": precision,
        "grid_points": K,
        "replications": R,
        "num_steps": int(sat.num_steps),
        "saturation_trajectories": N,
        "coarse_grid": [float(lo), float(hi)],
        "fine_grid": [float(fine[0]), float(fine[-1])] if p["refine"] else None,
        "refine": bool(p["refine"]),
        "initial_queue": n0,
        "warmup_frac": warmup_frac,
        "warmup_rule": rule,
        "warmup_fraction_used": frac,
        "alpha": alpha,
        "rel_threshold": REL_THRESHOLD,
        "abs_threshold_requests": ABS_THRESHOLD_REQUESTS,
        "min_window_lifetimes": MIN_WINDOW_LIFETIMES,
        "mean_lifetime_steps": life,
        "drift_test": TEST_DESCRIPTION,
        # the other components, in components_from_names' words (empty for the defaults)
        "sim_options": _jsonable(_other_components(system, policy)),
        "sizes": sz,
    }
    return BoundaryResult(
        lambda_star=float(lam),
        ci_low=float(fit_l["ci"][0]),
        ci_high=float(fit_l["ci"][1]),
        growth_coef=float(fit_l["a"]),
        growth_coef_ci=tuple(fit_l["a_ci"]),
        lambda_star_free=float(fit_l["lambda_star_free"]),
        method=fit_l["method"],
        mu=float(mu),
        delta=float(th["delta"]),
        mu_stable=float(mu_stable),
        mu_sim=float(mu_sim),
        mu_sim_ci=(float(sat.ci_low), float(sat.ci_high)),
        relation=relation_text(lam, mu, mu_stable, fit_l["ci"]),
        lambda_star_empty=float(lam_e),
        lambda_star_empty_ci=tuple(lam_e_ci),
        bracket_empty=bracket_e,
        bracket_loaded=_bracket(loaded_rows),
        metastable=bool(meta),
        metastable_rates=meta,
        grid=rows,
        initial_queue=n0,
        saturation={k: v for k, v in sat.to_dict().items() if k != "config"},
        config=config,
        seed=int(seed),
        kvstab_version=__version__,
        sim_semantics_version=SIM_SEMANTICS_VERSION,
        wall_s=time.perf_counter() - t0,
        cpu_s=time.process_time() - c0,
        flags=sorted(flags),
        notes=notes,
    )
