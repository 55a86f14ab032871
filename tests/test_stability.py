"""Stability by simulation (kvstab.stability): the drift test's error rates on synthetic queues
with a known truth, μ_sim and λ* against the closed form on the paper's Table 1 workloads,
Theorems 4.1 and 4.2 by simulation under every policy, short runs, metastability.

Sizes are kept small and the static simulator configurations few (runs of equal size share
one compilation); the larger versions are marked slow (``pytest -m slow``).
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from kvstab import (
    SIM_SEMANTICS_VERSION,
    Independent,
    JointEmpirical,
    LogNormal,
    Uniform,
    __version__,
    stability,
)
from kvstab.errors import InputError
from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS
from kvstab.sim import ConstantBatchTime, Policy, System

# ---------------------------------------------------------------------------------------------
# Workloads (PAPER.md §4, Table 1): M = 131,000, chunk 512.

M_PAPER = KV_CAPACITY_TOKENS
TABLE1 = {
    "1:1": (Independent(Uniform(10, 1600), Uniform(10, 1600)), BATCH_TIME_S),
    "2:1": (Independent(Uniform(10, 2133), Uniform(10, 1066)), 0.0430),
    "1:2": (Independent(Uniform(10, 1066), Uniform(10, 2133)), 0.0337),
}
ONE_TO_ONE, B_ONE_TO_ONE = TABLE1["1:1"]

# One static configuration for the three Table 1 estimates (fast preset: 64 trajectories of
# 24576 steps): the largest buffer any of them needs, the longest lifetime's calendar.
SIZES_TABLE1 = {"max_running": 1024, "max_preempted": 1024, "cal_len": 4096, "num_requests": 7700}
# One configuration per policy for the theorem checks (1:1 workload).
N_THM, T_THM = 16, 16384
SIZES_THM = {"max_running": 1024, "max_preempted": 1024, "cal_len": 2048, "num_requests": 3800}
POLICIES = [
    ("current", "recompute"),
    ("current", "swap"),
    ("reserve", "recompute"),
    ("reserve", "swap"),
]


def _system(M=M_PAPER, b=B_ONE_TO_ONE):
    return System(M, CHUNK_TOKENS, ConstantBatchTime(b))


def _theory(law, b, M=M_PAPER):
    return stability.theory(law, _system(M, b))


def _within(x, ref, rel):
    return abs(x / ref - 1) <= rel


# ---------------------------------------------------------------------------------------------
# The drift test on synthetic queues (no simulation): known truth, measured error rates.


def _fake_result(queue: np.ndarray, block_s: float, warmup_blocks: int, arrival_rate=1.0):
    """A SimResult stand-in: queue (traj, block) sampled at block ends every block_s seconds."""
    n, nb = queue.shape
    clock = np.broadcast_to(block_s * np.arange(1, nb + 1), (n, nb)).astype(np.float64)
    return types.SimpleNamespace(
        num_trajectories=n,
        warmup_blocks=warmup_blocks,
        clock_s=clock,
        queue_end=queue.astype(np.float64),
        queue=queue.astype(np.float64),
        running=np.full((n, nb), 10.0),
        completed=np.cumsum(np.ones((n, nb)), axis=1),
        arrived=np.floor(arrival_rate * clock),
        flags=[[] for _ in range(n)],
        config={"block_steps": 64},
    )


def _random_walk(rng, n, nb, block_s, drift, sigma, start=200.0):
    steps = drift * block_s + sigma * math.sqrt(block_s) * rng.standard_normal((n, nb))
    return start + np.cumsum(steps, axis=1)


def _ar1(rng, n, nb, mean, sd, phi=0.8):
    q = np.empty((n, nb))
    x = rng.standard_normal(n) * sd
    for k in range(nb):
        x = phi * x + math.sqrt(1 - phi**2) * sd * rng.standard_normal(n)
        q[:, k] = x
    return np.maximum(mean + q, 0.0)


BLOCK_S = 64 * BATCH_TIME_S  # 64 steps of 37.2 ms
LIFETIME = 10.0  # steps: the 75-block windows below span hundreds of lifetimes


def test_drift_growing_queue_is_unstable_with_its_growth_rate():
    rng = np.random.default_rng(1)
    res = _fake_result(_random_walk(rng, 16, 100, BLOCK_S, drift=0.5, sigma=2.0), BLOCK_S, 25)
    d = stability.assess_drift(res, 4.0, mean_lifetime=LIFETIME)
    assert d.verdict == "unstable"
    assert d.growth_ci[0] < 0.5 < d.growth_ci[1]
    assert d.p_positive < 1e-6
    assert d.threshold == pytest.approx(0.04)  # 1 % of λ = 4 req/s


def test_drift_bounded_noisy_queue_is_stable():
    rng = np.random.default_rng(2)
    res = _fake_result(_ar1(rng, 16, 100, mean=20.0, sd=6.0), BLOCK_S, 25)
    d = stability.assess_drift(res, 3.0, mean_lifetime=LIFETIME)
    assert d.verdict == "stable", d.reason
    assert d.growth_rate is None and d.half_ok


def test_drift_queue_doubling_between_halves_is_not_stable():
    # A queue growing like sqrt(t) (critical): the slope can sit under tau, but the second
    # half of the window holds clearly more than the first.
    t = BLOCK_S * np.arange(1, 201)
    q = np.broadcast_to(0.02 * t + 15.0 * (t / t[-1]) ** 4, (12, 200)).copy()
    q += np.random.default_rng(3).normal(0, 0.1, q.shape)
    d = stability.assess_drift(_fake_result(q, BLOCK_S, 50), 20.0, mean_lifetime=LIFETIME)
    assert d.verdict == "inconclusive" and not d.half_ok


def test_drift_too_short_window_is_inconclusive():
    rng = np.random.default_rng(4)
    res = _fake_result(_random_walk(rng, 16, 100, BLOCK_S, drift=2.0, sigma=1.0), BLOCK_S, 25)
    # 75 blocks x 64 steps = 4800 steps = 4.8 lifetimes of 1000 steps (< 5)
    d = stability.assess_drift(res, 10.0, mean_lifetime=1000.0)
    assert d.verdict == "inconclusive" and "too short" in d.reason
    one = stability.assess_drift(res, 10.0, mean_lifetime=LIFETIME, rows=np.array([0]))
    assert one.verdict == "inconclusive"


@pytest.mark.parametrize("which", ["unstable", "stable"])
def test_drift_error_rates_at_the_threshold(which):
    """With the true drift exactly at tau, each verdict is wrong at most alpha = 2.5 % of
    the time (Gaussian random walks: the t test is exact)."""
    rng = np.random.default_rng(5 if which == "unstable" else 6)
    lam = 10.0
    tau = 0.01 * lam
    reps, wrong = 1000, 0
    for _ in range(reps):
        q = _random_walk(rng, 8, 100, BLOCK_S, drift=tau, sigma=1.5)
        d = stability.assess_drift(_fake_result(q, BLOCK_S, 25), lam, mean_lifetime=LIFETIME)
        assert d.threshold == pytest.approx(tau)
        wrong += d.verdict == which
    rate = wrong / reps
    assert rate <= stability.ALPHA + 4 * math.sqrt(stability.ALPHA * (1 - stability.ALPHA) / reps)
    assert rate >= 0.005  # the test is not needlessly conservative either


def test_fit_crossing_recovers_the_rate_with_a_calibrated_ci():
    rng = np.random.default_rng(7)
    lam_star = 3.2
    rates = np.linspace(2.9, 3.6, 8)
    covered = covered_a = 0
    reps = 200
    for rep in range(reps):
        slopes = [lam - lam_star + rng.normal(0, 0.05, 8) for lam in rates]
        fit = stability._fit_crossing(rates, slopes, seed=rep, alpha=0.025)
        covered += fit["ci"][0] < lam_star < fit["ci"][1]
        covered_a += fit["a_ci"][0] < 1.0 < fit["a_ci"][1]
        assert fit["lambda_star_free"] == pytest.approx(lam_star, abs=0.05)
    # nominal 95 %; a percentile bootstrap of 64 samples covers a little less
    assert covered / reps >= 0.88 and covered_a / reps >= 0.88
    assert fit["ci"][1] - fit["ci"][0] < 0.05
    # A single rate far above the crossing still gives λ* (no free line then).
    one = stability._fit_crossing(
        rates[-1:], [rates[-1] - lam_star + rng.normal(0, 0.05, 32)], seed=0, alpha=0.025
    )
    assert one["lambda_star"] == pytest.approx(lam_star, abs=0.04) and math.isnan(one["a"])


def test_metastable_rates_and_bracket():
    def row(rate, start, verdict):
        return {"rate": rate, "start": start, "stage": "coarse", "verdict": verdict}

    rows = [
        row(3.0, "empty", "stable"),
        row(3.0, "loaded", "stable"),
        row(3.2, "empty", "stable"),
        row(3.2, "loaded", "unstable"),
        row(3.4, "empty", "inconclusive"),
        row(3.4, "loaded", "unstable"),
        row(3.6, "empty", "unstable"),
        row(3.6, "loaded", "unstable"),
    ]
    assert stability.metastable_rates(rows) == [3.2]
    assert stability._bracket([r for r in rows if r["start"] == "empty"]) == (3.2, 3.6)
    assert stability._bracket([r for r in rows if r["start"] == "loaded"]) == (3.0, 3.2)
    assert "inside the delta band" in stability.relation_text(3.2, 3.26, 3.18)
    assert "below mu(1-delta)" in stability.relation_text(2.3, 3.26, 3.18)


def test_input_errors_name_the_field():
    with pytest.raises(InputError) as e:
        stability.estimate_boundary(ONE_TO_ONE, precision="huge")
    assert e.value.field == "precision"
    with pytest.raises(InputError) as e:
        stability.drift_test(ONE_TO_ONE, -1.0)
    assert e.value.field == "rate_per_s"
    with pytest.raises(InputError) as e:
        stability.saturated_throughput(ONE_TO_ONE, num_trajectories=1)
    assert e.value.field == "num_trajectories"
    with pytest.raises(TypeError):  # the run's kind is the function's: no saturated= option
        stability.drift_test(ONE_TO_ONE, 1.0, saturated=True)
    with pytest.raises(InputError) as e:
        stability.saturated_throughput(ONE_TO_ONE, policy="greedy")
    assert e.value.field == "policy"
    with pytest.raises(InputError) as e:
        stability.saturated_throughput(ONE_TO_ONE, Policy.from_names(admission="greedy"))
    assert e.value.field == "admission"
    with pytest.raises(InputError) as e:
        stability.estimate_boundary(ONE_TO_ONE, System(kv_capacity_tokens=[8000, 9000]))
    assert e.value.field == "kv_capacity_tokens"


# ---------------------------------------------------------------------------------------------
# Done-when: Table 1's μ_sim (CI) and λ* within 3 % of μ_theory (exact g).


def _check_table1(name, res, ci_of_lambda: bool):
    law, b = TABLE1[name]
    mu = _theory(law, b)["mu"]
    assert res.mu == pytest.approx(mu)
    lo, hi = res.mu_sim_ci
    assert _within(lo, mu, 0.03) and _within(hi, mu, 0.03), (name, res.mu_sim_ci, mu)
    assert _within(res.lambda_star, mu, 0.03), (name, res.lambda_star, mu)
    if ci_of_lambda:
        assert _within(res.ci_low, mu, 0.03) and _within(res.ci_high, mu, 0.03)
    # λ* (queue growth from a loaded start) and μ_sim (saturated) measure the same rate.
    assert res.ci_low <= hi and lo <= res.ci_high, (res.lambda_star, res.ci_low, res.ci_high)
    assert res.saturation["warmup_check"]["ok"]
    assert not res.metastable
    assert res.lambda_star < mu  # Theorem 4.1
    assert not res.flags
    assert res.sim_semantics_version == SIM_SEMANTICS_VERSION and res.kvstab_version == __version__


@pytest.mark.parametrize("name", list(TABLE1))
def test_table1_mu_sim_and_lambda_star_within_3_percent(name):
    law, b = TABLE1[name]
    res = stability.estimate_boundary(
        law,
        _system(b=b),
        precision="fast",
        seed=11,
        sizes=SIZES_TABLE1,
    )
    _check_table1(name, res, ci_of_lambda=False)
    assert res.config["precision"] == "fast" and res.config["sizes"] == SIZES_TABLE1
    d = res.to_dict()
    for key in ("lambda_star", "ci_low", "ci_high", "mu", "mu_stable", "mu_sim", "mu_sim_ci"):
        assert d[key] is not None
    rows = [r for r in res.grid if r["start"] == "loaded"]
    assert len(rows) == res.config["grid_points"]
    # the verdicts move from stable to unstable along the grid
    assert rows[0]["verdict"] == "stable" and rows[-1]["verdict"] == "unstable"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TABLE1))
def test_table1_default_precision_lambda_star_ci_within_3_percent(name):
    law, b = TABLE1[name]
    res = stability.estimate_boundary(law, _system(b=b), precision="default", seed=12)
    _check_table1(name, res, ci_of_lambda=True)


# ---------------------------------------------------------------------------------------------
# Theorems 4.1 / 4.2 by simulation under every policy (1:1 workload).


def _mu_sim(admission, overflow, n, T, sizes, seed):
    return stability.saturated_throughput(
        ONE_TO_ONE,
        _system(),
        Policy.from_names(admission, overflow),
        num_trajectories=n,
        num_steps=T,
        seed=seed,
        sizes=sizes,
    )


def _drift(rate, admission, overflow, n, T, sizes, seed, law=ONE_TO_ONE, M=M_PAPER, b=B_ONE_TO_ONE):
    return stability.drift_test(
        law,
        rate,
        _system(M, b),
        Policy.from_names(admission, overflow),
        num_trajectories=n,
        num_steps=T,
        seed=seed,
        sizes=sizes,
    )


def _se(x):
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / math.sqrt(x.size))


def _check_growth(d, sat, rate):
    """The queue grows at λ − μ_sim within 4 standard errors (growth and μ_sim independent)."""
    assert d.verdict == "unstable", d.reason
    expected = rate - sat.mu_sim
    se = math.hypot(d.slope_se, _se(sat.per_trajectory))
    assert abs(d.growth_rate - expected) <= 4 * se, (d.growth_rate, expected, se)
    assert d.growth_ci[0] > 0


def _theorem_checks(admission, overflow, n, T, sizes, seed):
    th = _theory(ONE_TO_ONE, B_ONE_TO_ONE)
    mu, mu_stable = th["mu"], th["mu_stable"]
    sat = _mu_sim(admission, overflow, n, T, sizes, seed)
    assert sat.warmup_check["ok"]
    assert sat.ci_low < mu  # Theorem 4.1: no policy serves more than μ
    if admission == "current":
        assert _within(sat.mu_sim, mu, 0.03)
    else:  # reserve admission holds peak footprints: far from work-conserving
        assert 0.65 * mu < sat.mu_sim < 0.75 * mu
        assert sat.preemptions_per_completion == 0
    # Theorem 4.1: above μ the queue grows, at λ − μ_sim.
    rate = 1.1 * mu
    _check_growth(_drift(rate, admission, overflow, n, T, sizes, seed + 1), sat, rate)
    # Theorem 4.2 at 0.9 μ(1−δ): stable under current admission (work-conserving; with swap
    # nothing is thrown away, and recompute loses little here). Reserve admission is not
    # work-conserving: μ_sim ≈ 0.71 μ < 0.9 μ(1−δ), so there the queue grows.
    rate = 0.9 * mu_stable
    d = _drift(rate, admission, overflow, n, T, sizes, seed + 2)
    if admission == "current":
        assert d.verdict == "stable", d.reason
    else:
        _check_growth(d, sat, rate)
    return sat


@pytest.mark.parametrize("admission,overflow", POLICIES)
def test_theorems_by_simulation_every_policy(admission, overflow):
    _theorem_checks(admission, overflow, N_THM, T_THM, SIZES_THM, seed=21)


@pytest.mark.slow
@pytest.mark.parametrize("admission,overflow", POLICIES)
def test_theorems_by_simulation_every_policy_large(admission, overflow):
    _theorem_checks(admission, overflow, 48, 32768, None, seed=31)


def test_short_run_is_inconclusive():
    mu = _theory(ONE_TO_ONE, B_ONE_TO_ONE)["mu"]
    d = stability.drift_test(
        ONE_TO_ONE,
        1.5 * mu,
        _system(),
        num_trajectories=4,
        num_steps=512,
        seed=3,
    )
    assert d.verdict == "inconclusive"
    assert "too short" in d.reason
    assert d.window_lifetimes < stability.MIN_WINDOW_LIFETIMES


# ---------------------------------------------------------------------------------------------
# Metastability: nearly equal requests under recompute (cf. Ao, Dong, Luo & Simchi-Levi on
# limit cycles of greedy admission with evict-and-restart).


def test_metastability_nearly_homogeneous_requests_under_recompute():
    """From an empty start arrivals are staggered and few requests are ever preempted; a
    loaded start admits a cohort that keeps evicting and restarting (about 6 preemptions per
    completion): the loaded system serves only ~1.31 req/s (30 % under μ), while the empty
    one keeps up with 1.42 req/s. λ* is the loaded-start rate."""
    law = Independent(Uniform(400, 600), Uniform(1400, 1600))
    res = stability.estimate_boundary(law, precision="fast", grid_points=8, replications=4, seed=1)
    assert res.metastable and res.metastable_rates
    assert res.lambda_star < min(res.metastable_rates)
    assert res.ci_high < res.bracket_empty[0]  # the empty start is stable above λ*
    assert res.lambda_star < 0.75 * res.mu  # far below Theorem 4.2's μ(1−δ) ...
    assert res.saturation["preemptions_per_completion"] > 3  # ... through thrashing
    assert any("metastable" in note for note in res.notes)
    # The backlogged throughput is a limit cycle, not a steady state: the warm-up check
    # catches it (doubling the warm-up moves μ_sim far beyond its CI).
    assert not res.saturation["warmup_check"]["ok"]


# ---------------------------------------------------------------------------------------------
# Where the theory is stretched (slow): small M (δ = 0.4), a heavy-tailed log-normal, a
# correlated joint empirical law. Swap (work-conserving, nothing lost) must land in the δ band;
# recompute may fall below μ(1−δ) (it throws work away); every λ* stays below μ.


def _correlated_joint(seed=12345, rho=0.8, n=4000):
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    s = np.clip(np.round(np.exp(np.log(400) + z[:, 0])), 1, 6000).astype(int)
    o = np.clip(np.round(np.exp(np.log(200) + z[:, 1])), 1, 3000).astype(int)
    return JointEmpirical(s, o)


STRETCHED = {
    "small_M": (ONE_TO_ONE, 8000),
    "lognormal": (Independent(LogNormal(300, 1.2, 8000), LogNormal(150, 1.2, 4000)), M_PAPER),
    "correlated": (_correlated_joint(), M_PAPER),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(STRETCHED))
def test_stretched_cases_swap_in_band_recompute_below_mu(case):
    law, M = STRETCHED[case]
    out = {}
    for overflow in ("swap", "recompute"):
        res = stability.estimate_boundary(
            law,
            _system(M),
            Policy.from_names(overflow=overflow),
            precision="fast",
            seed=41,
        )
        assert res.ci_low < res.mu  # Theorem 4.1 under every policy
        assert not res.flags
        out[overflow] = res
    swap, rec = out["swap"], out["recompute"]
    # Theorem 4.2: the work-conserving policy that loses nothing is stable below μ(1−δ).
    assert swap.ci_high >= swap.mu_stable
    # Recompute throws work away: its boundary is no higher than swap's.
    assert rec.lambda_star <= swap.ci_high
