"""Latency SLOs: parse one, check a run against it, find the goodput and the replica count
that meet it (docs/slo.md).

* :func:`parse_slo` ``"ttft_p99<=2s,tpot_p99<=100ms"`` -> :class:`Slo`;
* :meth:`Slo.check` a :class:`kvstab.sim.SimResult` -> met / missed / inconclusive, each
  objective with its percentile and 95 % interval (:mod:`kvstab.latency`);
* :func:`goodput`: the largest λ per replica meeting the SLO, from one compiled simulate call
  over a λ grid and one over a finer grid around the crossing;
* :func:`size_for_slo`: the fewest replicas G meeting the SLO at a total rate λ, checked by
  simulating G and G − 1, beside the closed form ⌈λ/μ⌉ and the ρ rule ⌈λ/(ρμ)⌉.

Verdicts: an objective is *met* when the whole interval of its percentile is at or below the
threshold, *missed* when the whole interval is above it, else *inconclusive* (more or longer
trajectories would decide it). An SLO is met when every objective is met, missed when any is
missed, else inconclusive.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import numpy as np

from kvstab import latency
from kvstab.errors import InputError, check_number

FIELD = "slo"  # the command line's --slo
_FORMS = (
    "comma-separated METRIC_QUANTILE<=VALUE[UNIT] with METRIC in wait, ttft, tpot, e2e; "
    "QUANTILE in p50, p90, p99, p999; UNIT s or ms (default s), "
    'e.g. "ttft_p99<=2s,tpot_p99<=100ms"'
)
_ITEM = re.compile(
    r"^\s*(?P<metric>[a-z0-9]+)_(?P<q>p[0-9]+)\s*<=?\s*(?P<value>[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)"
    r"\s*(?P<unit>s|ms)?\s*$",
    re.IGNORECASE,
)
MET, MISSED, INCONCLUSIVE = "met", "missed", "inconclusive"


@dataclasses.dataclass(frozen=True)
class Objective:
    """One target: the ``quantile`` of ``metric`` at most ``threshold_s`` seconds."""

    metric: str
    quantile: str
    threshold_s: float

    @property
    def name(self) -> str:
        return f"{self.metric}_{self.quantile}"

    def __str__(self) -> str:
        return f"{self.name}<={self.threshold_s:g}s"


@dataclasses.dataclass(frozen=True)
class Slo:
    """A latency SLO: one or more objectives, all of which must hold."""

    objectives: tuple

    def __str__(self) -> str:
        return ",".join(str(o) for o in self.objectives)

    def check(self, result, *, cooldown_frac: float = 0.25, rows=None, seed: int = 0) -> dict:
        """Check a run (a :class:`SimResult` with records) against the SLO.

        Args:
            result: the run, or a :class:`kvstab.latency.Latencies`.
            cooldown_frac: see :func:`kvstab.latency.request_latencies`.
            rows: only these trajectories (e.g. one λ of a sweep).
            seed: the bootstrap's seed.

        Returns:
            ``{"verdict", "objectives": [{objective, percentile..., verdict}],
            "worst_ratio"}``; ``worst_ratio`` is the largest estimate/threshold (< 1: met
            on the point estimates).
        """
        lat = (
            result
            if isinstance(result, latency.Latencies)
            else latency.latencies_of(result, cooldown_frac=cooldown_frac)
        )
        if rows is not None:
            lat = lat.select(rows)
        return check_latencies(self, lat, seed=seed)


def check_latencies(slo: Slo, lat: latency.Latencies, *, seed: int = 0) -> dict:
    """:meth:`Slo.check` on latencies already computed."""
    items = []
    for ob in slo.objectives:
        p = latency.percentile(lat, ob.metric, ob.quantile, seed=seed)
        if not (p.high <= ob.threshold_s or p.low > ob.threshold_s):
            v = INCONCLUSIVE
        else:
            v = MET if p.high <= ob.threshold_s else MISSED
        if math.isnan(p.estimate):
            v = INCONCLUSIVE
        items.append({"objective": str(ob), **p.to_dict(), "threshold_s": ob.threshold_s,
                      "verdict": v})  # fmt: skip
    verdicts = [i["verdict"] for i in items]
    verdict = MISSED if MISSED in verdicts else (MET if all(v == MET for v in verdicts)
                                                 else INCONCLUSIVE)  # fmt: skip
    ratios = [i["estimate"] / i["threshold_s"] for i in items]
    return {"verdict": verdict, "objectives": items, "worst_ratio": float(max(ratios))}


def parse_slo(text: str) -> Slo:
    """``"ttft_p99<=2s,tpot_p99<=0.1s"`` -> :class:`Slo` (InputError naming --slo otherwise)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(FIELD, f"empty; give {_FORMS}")
    out, seen = [], set()
    for part in text.split(","):
        m = _ITEM.match(part)
        if m is None:
            raise InputError(FIELD, f"cannot read {part.strip()!r}; give {_FORMS}")
        metric, q = m["metric"].lower(), m["q"].lower()
        if metric not in latency.METRICS:
            raise InputError(FIELD, f"unknown metric {metric!r} in {part.strip()!r}; give {_FORMS}")
        if q not in latency.QUANTILES:
            raise InputError(FIELD, f"unknown quantile {q!r} in {part.strip()!r}; give {_FORMS}")
        value = float(m["value"]) * (1e-3 if (m["unit"] or "s").lower() == "ms" else 1.0)
        if not value > 0 or not math.isfinite(value):
            raise InputError(FIELD, f"the threshold in {part.strip()!r} must be > 0")
        if (metric, q) in seen:
            raise InputError(FIELD, f"{metric}_{q} is given twice")
        seen.add((metric, q))
        out.append(Objective(metric, q, value))
    return Slo(tuple(out))


def as_slo(slo) -> Slo:
    return slo if isinstance(slo, Slo) else parse_slo(slo)


# ---------------------------------------------------------------------------------------------
# Goodput


def _sweep(simulate_kw: dict, law, rates, reps, seed, cooldown_frac, slo):
    """One simulate call, ``reps`` trajectories at each rate; a check per rate."""
    from kvstab.sim import Poisson, Workload, simulate

    rates = np.asarray(rates, np.float64)
    res = simulate(
        Workload(law, Poisson(np.repeat(rates, reps))),
        num_trajectories=len(rates) * reps,
        seed=seed,
        **simulate_kw,
    )
    lat = latency.latencies_of(res, cooldown_frac=cooldown_frac)
    checks = [
        check_latencies(slo, lat.select(np.arange(i * reps, (i + 1) * reps)), seed=seed)
        for i in range(len(rates))
    ]
    return res, checks


def _crossing(rates, checks):
    """(estimate, low, high) of the largest rate meeting the SLO on a grid.

    estimate: where the worst estimate/threshold ratio crosses 1 (linear interpolation
    between the last grid rate below 1 and the next); low: the largest rate such that it and
    every smaller rate are *met*; high: the smallest rate that is *missed* (nan if none).
    """
    ratio = np.array([c["worst_ratio"] for c in checks])
    verdict = [c["verdict"] for c in checks]
    low = math.nan
    for r, v in zip(rates, verdict, strict=True):
        if v != MET:
            break
        low = float(r)
    missed = [float(r) for r, v in zip(rates, verdict, strict=True) if v == MISSED]
    high = min(missed) if missed else math.nan
    above = np.flatnonzero(~(ratio <= 1.0))  # nan/inf count as above
    if above.size == 0:
        est = float(rates[-1])
    elif above[0] == 0:
        est = math.nan
    else:
        i = int(above[0])
        r0, r1, y0, y1 = rates[i - 1], rates[i], ratio[i - 1], ratio[i]
        est = float(r0 + (1.0 - y0) * (r1 - r0) / (y1 - y0)) if np.isfinite(y1) else float(r0)
    return est, low, high


def goodput(
    slo,
    law,
    *,
    kv_capacity_tokens: int,
    chunk_tokens: int = 512,
    batch_time_s: float = 0.0372,
    rates=None,
    num_points: int = 8,
    refine_points: int = 6,
    reps: int = 16,
    num_steps: int = 4096,
    seed: int = 0,
    cooldown_frac: float = 0.25,
    warmup_frac: float = 0.25,
    progress: Callable | None = None,
) -> dict:
    """The largest arrival rate per replica meeting ``slo`` (one replica, Poisson arrivals).

    A first simulate call runs ``reps`` trajectories at each of ``num_points`` rates (default
    0.2μ .. 1.1μ, μ the closed form); a second one ``refine_points`` rates between the last
    rate met and the first missed. The goodput is where the worst estimate/threshold ratio
    crosses 1 on the fine grid; its interval is [largest rate met with every smaller one,
    smallest rate missed] (the verdicts use the 95 % percentile intervals).

    Returns:
        dict with ``goodput_per_s``, ``goodput_ci``, ``mu``, ``grid`` (rate, verdict, ratio,
        per objective estimates) of both calls, ``note`` when the crossing is not bracketed.
    """
    from kvstab import analytic
    from kvstab.sim import ConstantBatchTime, System

    slo = as_slo(slo)
    for f, v, lo in (("num_points", num_points, 2), ("refine_points", refine_points, 0),
                     ("reps", reps, 2), ("num_steps", num_steps, 1)):  # fmt: skip
        check_number(f, v, low=lo, integer=True)
    check_number("cooldown_frac", cooldown_frac, low=0, high=1, high_open=True)
    mu = float(analytic.mu_for(law, kv_capacity_tokens, batch_time_s, chunk_tokens))
    grid = (
        np.linspace(0.2 * mu, 1.1 * mu, int(num_points))
        if rates is None
        else np.sort(np.asarray(rates, np.float64))
    )
    if grid.size < 2 or not np.all(grid > 0):
        raise InputError("rates", "give at least two rates > 0")
    kw = dict(
        system=System(kv_capacity_tokens, chunk_tokens, ConstantBatchTime(batch_time_s)),
        num_steps=num_steps,
        warmup_frac=warmup_frac,
        outputs=_records(),
        progress=progress,
    )
    rows = []
    _, checks = _sweep(kw, law, grid, reps, seed, cooldown_frac, slo)
    rows += _grid_rows(grid, checks, "coarse")
    est, low, high = _crossing(grid, checks)
    note = None
    if refine_points and np.isfinite(est):
        a = low if np.isfinite(low) else grid[0] / 2
        b = high if np.isfinite(high) else grid[-1]
        if b > a:
            fine = np.linspace(a, b, int(refine_points) + 2)[1:-1]
            _, fchecks = _sweep(kw, law, fine, reps, seed + 1, cooldown_frac, slo)
            rows += _grid_rows(fine, fchecks, "fine")
            both = sorted(zip(np.r_[grid, fine], checks + fchecks, strict=True), key=lambda x: x[0])
            est, low, high = _crossing(np.array([r for r, _ in both]), [c for _, c in both])
    if not np.isfinite(est):
        note = f"the SLO is not met even at the smallest rate tried ({grid[0]:.4g} req/s)"
    elif not np.isfinite(high):
        note = "no rate tried was missed with confidence: the interval is open above"
    return {
        "slo": str(slo),
        "goodput_per_s": est,
        "goodput_ci": [low, high],
        "ci_method": "bracket: largest rate met (with all smaller) .. smallest rate missed, "
        "verdicts from " + latency.CI_METHOD,
        "mu": mu,
        "grid": rows,
        "note": note,
    }


def _records():
    from kvstab.sim import Outputs

    return Outputs(num_records=1 << 30)  # every request of the buffers


def _grid_rows(rates, checks, stage):
    return [
        {
            "rate_per_s": float(r),
            "stage": stage,
            "verdict": c["verdict"],
            "worst_ratio": c["worst_ratio"],
            "objectives": {
                o["objective"]: [o["estimate"], o["low"], o["high"]] for o in c["objectives"]
            },
        }
        for r, c in zip(rates, checks, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Sizing


def simulate_cluster_check(
    slo,
    law,
    *,
    rate_per_s: float,
    num_replicas: int,
    router: str = "round_robin",
    kv_capacity_tokens: int,
    chunk_tokens: int = 512,
    batch_time_s: float = 0.0372,
    num_trajectories: int = 16,
    num_steps: int = 4096,
    seed: int = 0,
    cooldown_frac: float = 0.25,
    warmup_frac: float = 0.25,
    progress: Callable | None = None,
) -> dict:
    """Simulate G replicas at total rate λ and check the SLO (one independent run)."""
    from kvstab.sim import (
        Cluster,
        ConstantBatchTime,
        Poisson,
        System,
        Workload,
        router_from_name,
        simulate,
    )

    slo = as_slo(slo)
    res = simulate(
        Workload(law, Poisson(rate_per_s)),
        System(kv_capacity_tokens, chunk_tokens, ConstantBatchTime(batch_time_s)),
        num_steps=num_steps,
        num_trajectories=num_trajectories,
        seed=seed,
        cluster=Cluster(int(num_replicas), router_from_name(router)),
        outputs=_records(),
        warmup_frac=warmup_frac,
        progress=progress,
    )
    out = slo.check(res, cooldown_frac=cooldown_frac, seed=seed)
    out["num_replicas"] = int(num_replicas)
    out["flags"] = sorted({f for fl in res.flags for f in fl})
    out["wall_s"] = res.wall_s
    return out


def size_for_slo(
    slo,
    law,
    *,
    rate_per_s: float,
    kv_capacity_tokens: int,
    chunk_tokens: int = 512,
    batch_time_s: float = 0.0372,
    router: str = "round_robin",
    utilization: float = 0.9,
    max_replicas: int | None = None,
    num_trajectories: int = 16,
    num_steps: int = 4096,
    seed: int = 0,
    cooldown_frac: float = 0.25,
    warmup_frac: float = 0.25,
    progress: Callable | None = None,
    done: dict | None = None,
    on_check: Callable | None = None,
) -> dict:
    """The fewest replicas G meeting ``slo`` at total rate λ under ``router``.

    Starts at the closed form's G = ⌈λ/μ⌉ (fewer replicas are unstable: the queue grows
    without bound) and adds one replica at a time until the SLO is *met* (its intervals
    below the thresholds), up to ``max_replicas`` (default max(2·⌈λ/(ρμ)⌉, ⌈λ/μ⌉ + 4)).
    The answer G is confirmed by the run at G − 1 (missed or inconclusive: not met) unless
    G − 1 is below the closed form's stability bound. ``progress``: G -> a
    ``progress(done, total, attempt)`` callback for that G's simulate call (or None).
    ``done``: {G: check} of an earlier run with the same arguments (resuming: those G are
    not simulated again); ``on_check(G, check)`` is called after each new G.

    Returns:
        dict with ``replicas`` (None when unreachable), ``closed_form_replicas`` (⌈λ/μ⌉),
        ``rho_rule_replicas`` (⌈λ/(ρμ)⌉), ``checks`` (one per G simulated), ``best`` (the
        run closest to meeting the SLO), ``message``.
    """
    from kvstab import analytic

    slo = as_slo(slo)
    check_number("rate_per_s", rate_per_s, low=0, low_open=True)
    check_number("utilization", utilization, low=0, high=1, low_open=True)
    check_number("cooldown_frac", cooldown_frac, low=0, high=1, high_open=True)
    mu = float(analytic.mu_for(law, kv_capacity_tokens, batch_time_s, chunk_tokens))
    g_mu = analytic.gpus_needed(rate_per_s, mu, 1.0)
    g_rho = analytic.gpus_needed(rate_per_s, mu, utilization)
    limit = max(2 * g_rho, g_mu + 4) if max_replicas is None else int(max_replicas)
    check_number("max_replicas", limit, low=1, integer=True)
    kw = dict(
        rate_per_s=rate_per_s, router=router, kv_capacity_tokens=kv_capacity_tokens,
        chunk_tokens=chunk_tokens, batch_time_s=batch_time_s,
        num_trajectories=num_trajectories, num_steps=num_steps, seed=seed,
        cooldown_frac=cooldown_frac, warmup_frac=warmup_frac,
    )  # fmt: skip
    checks: dict[int, dict] = {int(g): c for g, c in (done or {}).items()}

    def run(g):
        if g not in checks:
            kw["progress"] = None if progress is None else progress(g)
            checks[g] = simulate_cluster_check(slo, law, num_replicas=g, **kw)
            if on_check is not None:
                on_check(g, checks[g])
        return checks[g]

    found = None
    for g in range(max(1, g_mu), limit + 1):
        if run(g)["verdict"] == MET:
            found = g
            break
    confirm = None
    if found is not None and found > 1:
        confirm = run(found - 1)["verdict"]
        if confirm == MET:  # the search started above a G that meets it: walk down
            while found > 1 and run(found - 1)["verdict"] == MET:
                found -= 1
            confirm = run(found - 1)["verdict"] if found > 1 else None
    # best: met first, then the smallest worst ratio; ties (e.g. all infinite) go to more G
    best_g = min(
        checks,
        key=lambda g: (checks[g]["verdict"] != MET, _num(checks[g]["worst_ratio"]), -g),
    )
    if found is not None:
        message = f"{found} replica(s) meet {slo} at {rate_per_s:g} req/s" + (
            f"; {found - 1} do not ({confirm})" if confirm else ""
        )
    else:
        message = (
            f"unreachable: no G up to {limit} meets {slo}; best G = {best_g} "
            f"({checks[best_g]['verdict']}, worst estimate/threshold = "
            f"{_num(checks[best_g]['worst_ratio']):.3g})"
        )
    return {
        "slo": str(slo),
        "rate_per_s": float(rate_per_s),
        "router": router,
        "replicas": found,
        "replicas_minus_one_verdict": confirm,
        "closed_form_replicas": g_mu,
        "rho_rule_replicas": g_rho,
        "utilization": utilization,
        "mu_per_replica": mu,
        "max_replicas": limit,
        "checks": [checks[g] for g in sorted(checks)],
        "best": {"replicas": best_g, **{k: checks[best_g][k] for k in ("verdict", "worst_ratio")}},
        "ci_method": latency.CI_METHOD,
        "message": message,
    }


def _num(x) -> float:
    """A number read back from JSON (None stands for inf / nan there)."""
    return math.inf if x is None else float(x)
