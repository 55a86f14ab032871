"""One answer from the whole package: :func:`report` (``kvstab report``).

For one replica (the paper's 1:1 workload on an A100-class replica by default) and an arrival
rate λ it puts side by side:

1. the closed form (:func:`kvstab.analytic.capacity`): μ, μ(1−δ) and the verdict at λ;
2. a simulation at λ (:func:`kvstab.sim.simulate` with per-request records): mean queue,
   waiting time and TTFT p50/p99 with 95 % CIs over trajectories, preemptions per
   completion;
3. the simulated critical rate λ* with its CI (:func:`kvstab.stability.estimate_boundary`,
   at a small preset sized to finish in well under a minute on 2 CPU cores);
4. the number of replicas: by the utilisation rule G = ⌈λ/(ρμ)⌉ and, when an SLO is given,
   by the SLO when one is given (:func:`gpus_for_slo`, simulating G and G − 1).

The verdict is phrased by :func:`verdict_phrase` so that the replica count and the
stability statement never read as a contradiction.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

from kvstab import SIM_SEMANTICS_VERSION, __version__, analytic, metrics, paper
from kvstab.display import Displayable, fmt
from kvstab.errors import check_number
from kvstab.laws import Independent, parse_law

# Sizes of the default report: small enough for < 60 s end to end on 2 quiet CPU cores.
SIM_TRAJECTORIES = 16
SIM_STEPS = 8192
BOUNDARY = dict(precision="fast", grid_points=6, replications=4, num_steps=8192)
PERCENTILES = (50, 99)


@dataclasses.dataclass(repr=False)
class Report(Displayable):
    """What :func:`report` returns (and ``kvstab report`` prints).

    Attributes:
        config: workload, system, rate, sizes, seed, kvstab and simulator semantics versions.
        capacity: the closed form (:class:`kvstab.analytic.CapacityReport`).
        simulation: numbers of the simulation at λ: ``mean_queue`` / ``wait_s`` / ``ttft_s``
            as ``{"mean", "ci"}`` or ``{"p50": {...}, "p99": {...}}``, ``throughput_per_s``,
            ``preemptions_per_completion``, ``completed``, ``flags``, ``wall_s``.
        boundary: the simulated λ* (:class:`kvstab.stability.BoundaryResult`) or None.
        gpus_rho: replicas by ρ: ⌈λ/(ρ·μ)⌉.
        gpus_slo: replicas meeting the SLO (None without an SLO, or when none up to the
            search limit meets it).
        verdict: the verdict sentence (:func:`verdict_phrase`).
        wall_s: seconds for the whole report.
        sim_result: the :class:`kvstab.sim.SimResult` (for plots; not serialised).
    """

    config: dict
    capacity: analytic.CapacityReport
    simulation: dict
    boundary: object | None
    gpus_rho: int
    gpus_slo: int | None
    verdict: str
    wall_s: float
    sim_result: object = dataclasses.field(default=None, compare=False)

    # -- the shared result interface -------------------------------------------------------
    def summary(self) -> dict:
        """The headline numbers, flat (what ``repr`` and the HTML table show)."""
        c, s = self.capacity, self.simulation
        out = {
            "rate (req/s)": self.config["rate_per_s"],
            "mu (req/s)": c.mu,
            "mu(1-delta) (req/s)": c.mu_stable,
            "closed-form verdict": c.verdict,
            "sim mean queue": _with_ci(s["mean_queue"]),
            "sim wait p50 (s)": _with_ci(s["wait_s"]["p50"]),
            "sim wait p99 (s)": _with_ci(s["wait_s"]["p99"]),
            "sim TTFT p50 (s)": _with_ci(s["ttft_s"]["p50"]),
            "sim TTFT p99 (s)": _with_ci(s["ttft_s"]["p99"]),
            "preemptions / completion": s["preemptions_per_completion"],
        }
        if self.boundary is not None:
            b = self.boundary
            out["simulated lambda* (req/s)"] = _with_ci(
                {"mean": b.lambda_star, "ci": [b.ci_low, b.ci_high]}
            )
        out["replicas (utilisation rule)"] = self.gpus_rho
        if self.gpus_slo is not None:
            out["replicas (SLO)"] = self.gpus_slo
        out["verdict"] = self.verdict
        return out

    def to_dict(self) -> dict:
        """Everything as JSON-ready data (the ``--json`` output)."""
        from kvstab.results import to_jsonable

        return to_jsonable(
            {
                "config": self.config,
                "capacity": self.capacity.to_dict(),
                "simulation": self.simulation,
                "boundary": None if self.boundary is None else _boundary_dict(self.boundary),
                "gpus_rho": self.gpus_rho,
                "gpus_slo": self.gpus_slo,
                "verdict": self.verdict,
                "wall_s": self.wall_s,
            }
        )

    def _display_title(self) -> str:
        return f"kvstab report: {self.config['workload']} at {fmt(self.config['rate_per_s'])} req/s"

    def _display_rows(self) -> dict:
        return self.summary()

    def text(self) -> str:
        """The plain-words report ``kvstab report`` prints."""
        return report_text(self)


def _with_ci(d: dict) -> str:
    lo, hi = d["ci"]
    return f"{fmt(d['mean'])} (95% CI {fmt(lo)} .. {fmt(hi)})"


def _boundary_dict(b) -> dict:
    d = b.to_dict()
    d.pop("grid", None)  # the per-rate grid is long; the plot shows it
    return d


# ---------------------------------------------------------------------------------------------
# Words


def verdict_phrase(
    rate_per_s: float, mu: float, mu_stable: float, gpus: int, utilization: float
) -> str:
    """The closed-form verdict and the replica count in one sentence that cannot contradict
    itself: which regime λ is in (Theorems 4.1/4.2) and how many replicas the utilisation
    rule asks for, with the reason for any difference."""
    pct = f"{100 * utilization:g} %"
    rule = f"for <= {pct} utilisation use {gpus}" + (" (the same)" if gpus == 1 else "")
    if rate_per_s < mu_stable:
        return (
            f"One replica is enough to be stable (lambda = {rate_per_s:g} < "
            f"mu(1-delta) = {mu_stable:.4g} req/s); {rule}."
        )
    if rate_per_s <= mu:
        return (
            f"One replica is between the bounds (mu(1-delta) = {mu_stable:.4g} <= lambda = "
            f"{rate_per_s:g} <= mu = {mu:.4g} req/s): stability is not guaranteed and depends "
            f"on the policy (see the simulated lambda*); {rule}."
        )
    need = analytic.gpus_needed(rate_per_s, mu, 1.0)
    return (
        f"One replica is unstable (lambda = {rate_per_s:g} > mu = {mu:.4g} req/s: the queue "
        f"grows without bound); at least {need} replicas are needed for stability, "
        f"{rule}."
    )


def lambda_star_phrase(rate_per_s: float, lam: float, lo: float, hi: float) -> str:
    """Where λ lies relative to the simulated λ* and its CI, in words."""
    if not math.isfinite(lam):
        return "the simulated lambda* could not be estimated at this size"
    at = f"lambda = {rate_per_s:g} req/s is"
    if rate_per_s < lo:
        return f"{at} below the simulated lambda*: stable in simulation"
    if rate_per_s > hi:
        return f"{at} above the simulated lambda*: unstable in simulation"
    return f"{at} within the CI of the simulated lambda*: too close to call"


def report_text(r: Report) -> str:
    c, s, cfg = r.capacity, r.simulation, r.config
    lines = [
        "kvstab report: one replica, closed form and simulation (Nie, Si & Zhou, arXiv 2605.04595)",
        f"  workload     {cfg['workload']}",
        f"  system       M = {c.kv_capacity_tokens:,} KV tokens, chunk = {c.chunk_tokens}, "
        f"batch time = {c.batch_time_s:g} s; arrivals Poisson, {cfg['rate_per_s']:g} req/s",
        "closed form",
        f"  mu           {c.mu:.4g} req/s   no policy is stable above this rate (Theorem 4.1)",
        f"  mu(1-delta)  {c.mu_stable:.4g} req/s   every work-conserving policy is stable below "
        f"(Theorem 4.2; delta = {c.delta:.3g})",
        f"simulation at {cfg['rate_per_s']:g} req/s ({cfg['sim_trajectories']} trajectories x "
        f"{cfg['sim_steps']} steps, first {100 * cfg['warmup_frac']:g} % warm-up; "
        f"{s['wall_s']:.1f} s)",
        f"  throughput   {s['throughput_per_s']:.4g} req/s",
        f"  mean queue   {_with_ci(s['mean_queue'])} requests waiting",
        f"  waiting      p50 {_with_ci(s['wait_s']['p50'])} s",
        f"               p99 {_with_ci(s['wait_s']['p99'])} s",
        f"  TTFT         p50 {_with_ci(s['ttft_s']['p50'])} s",
        f"               p99 {_with_ci(s['ttft_s']['p99'])} s",
        f"  preemptions  {s['preemptions_per_completion']:.3g} per completed request",
        "               (CIs: 95 % t intervals over trajectories of each trajectory's mean or "
        "percentile, cut at 0)",
    ]
    if s.get("not_admitted"):
        n, tot = s["not_admitted"], max(s.get("arrived_after_warmup", 0), 1)
        lines.append(
            f"  still queued {n} of {tot} requests ({100 * n / tot:.1f} %) that arrived after "
            "the warm-up were still waiting at the end; the percentiles are of the others"
            + (" (so they are too low: the queue grows)" if n > 0.05 * tot else "")
        )
    if s["flags"]:
        lines.append(f"  FLAGS        {', '.join(s['flags'])}: treat these numbers with care")
    if r.boundary is not None:
        b = r.boundary
        lines += [
            f"critical rate by simulation ({cfg['boundary']['grid_points']} rates x "
            f"{cfg['boundary']['replications']} runs x 2 starts, "
            f"{cfg['boundary']['num_steps']} steps; {b.wall_s:.1f} s)",
            f"  lambda*      {b.lambda_star:.4g} req/s (95% CI {b.ci_low:.4g} .. "
            f"{b.ci_high:.4g}); mu_sim = {b.mu_sim:.4g} req/s saturated",
            "  so           "
            + lambda_star_phrase(cfg["rate_per_s"], b.lambda_star, b.ci_low, b.ci_high),
        ]
    lines.append("verdict")
    lines.append(f"  {r.verdict}")
    if r.gpus_slo is not None:
        lines.append(f"  for the SLO ({cfg['slo']}) use {r.gpus_slo} replica(s)")
    elif cfg.get("slo"):
        lines.append(f"  no replica count up to the search limit meets the SLO ({cfg['slo']})")
    else:
        lines.append('  (add --slo "ttft_p99<=2s" to size the replicas by a latency target)')
    lines.append(f"done in {r.wall_s:.1f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Numbers


def latency_percentiles(res, warmup_s: float, percentiles=PERCENTILES) -> dict:
    """Waiting time and TTFT percentiles with 95 % CIs from a run's per-request records.

    HOOK(kvstab.latency): the lead will replace the body with kvstab.latency's estimator.
    Now: per trajectory, the percentile over the requests that arrived after the warm-up
    and were admitted (resp. got a first token); then :func:`kvstab.metrics.mean_ci` of
    those per-trajectory percentiles across the independent trajectories.
    """
    rec = res.records
    arr = np.asarray(rec["arrival_s"])
    out = {}
    for name in ("wait_s", "ttft_s"):
        x = np.asarray(rec[name], np.float64)
        per = {f"p{p}": [] for p in percentiles}
        for i in range(x.shape[0]):
            xi = x[i][np.isfinite(x[i]) & (arr[i] >= warmup_s)]
            if xi.size == 0:
                continue
            for p in percentiles:
                per[f"p{p}"].append(float(np.percentile(xi, p)))
        out[name] = {k: _ci_dict(v) for k, v in per.items()}
    # requests that arrived after the warm-up and before the end of the run but were not
    # admitted by then (the records also hold requests whose arrival lies past the end)
    end_s = np.asarray(res.clock_s)[:, -1][:, None]
    late = np.isfinite(arr) & (arr >= warmup_s) & (arr < end_s)
    out["not_admitted"] = int((late & ~np.isfinite(np.asarray(rec["wait_s"]))).sum())
    out["arrived_after_warmup"] = int(late.sum())
    return out


def _ci_dict(x) -> dict:
    if len(x) == 0:
        return {"mean": math.nan, "ci": [math.nan, math.nan]}
    m, lo, hi = metrics.mean_ci(np.asarray(x))
    # Queues, waits and TTFTs are >= 0: a t interval reaching below 0 is shown from 0.
    return {"mean": m, "ci": [max(lo, 0.0), hi]}


def gpus_for_slo(joint, system_words: dict, rate_per_s: float, slo, *, seed: int = 0):
    """Replicas (round robin) needed to meet a latency SLO at ``rate_per_s``, checked by
    simulating G and G − 1 (:func:`kvstab.slo.size_for_slo`); None without an SLO, or when
    no G up to its limit meets it."""
    if slo is None:
        return None
    from kvstab.slo import size_for_slo

    res = size_for_slo(
        slo,
        joint,
        rate_per_s=rate_per_s,
        kv_capacity_tokens=system_words["kv"],
        chunk_tokens=system_words["chunk"],
        batch_time_s=system_words["batch_time"],
        seed=seed,
    )
    return res["replicas"]


def report(
    workload=None,
    *,
    rate_per_s: float = 3.0,
    kv_capacity_tokens: int = paper.KV_CAPACITY_TOKENS,
    chunk_tokens: int = paper.CHUNK_TOKENS,
    batch_time_s: float = paper.BATCH_TIME_S,
    utilization: float = 0.9,
    trajectories: int = SIM_TRAJECTORIES,
    steps: int = SIM_STEPS,
    boundary: bool = True,
    boundary_grid_points: int = BOUNDARY["grid_points"],
    boundary_replications: int = BOUNDARY["replications"],
    boundary_steps: int = BOUNDARY["num_steps"],
    warmup_frac: float = 0.25,
    seed: int = 0,
    slo=None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """The closed form, a simulation at ``rate_per_s``, the simulated λ* and the replica
    count for one replica (defaults: the paper's 1:1 workload, M, ŝ and b̄).

    Args:
        workload: a joint law of (s, o) (default: the paper's 1:1 workload).
        rate_per_s: arrival rate λ (req/s, > 0).
        trajectories, steps: size of the simulation at λ.
        boundary: estimate λ* (the slowest part); boundary_*: its size
            (:func:`kvstab.stability.estimate_boundary`, precision 'fast' overridden).
        slo: a latency SLO (e.g. "ttft_p99<=2s", :func:`kvstab.slo.parse_slo`): adds the
            replicas that meet it (several more simulations: minutes, not seconds).
        progress: callable(message) told which phase starts.

    Raises:
        InputError: naming the field for a bad value.
    """
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    from kvstab.sim import ConstantBatchTime, Outputs, Poisson, System, Workload, simulate
    from kvstab.stability import estimate_boundary

    if workload is None:
        w = paper.WORKLOADS["1:1"]
        workload = Independent(parse_law(w["prompt"], "prompt"), parse_law(w["output"], "output"))
    check_number("rate_per_s", rate_per_s, low=0, low_open=True)
    check_number("trajectories", trajectories, low=2, integer=True)
    check_number("steps", steps, low=256, integer=True)
    check_number("seed", seed, low=0, integer=True)
    if slo is not None:  # parsed first: a bad SLO fails before any simulation
        from kvstab.slo import as_slo

        slo_text = slo if isinstance(slo, str) else str(slo)
        slo = as_slo(slo)
    for name, v in (
        ("boundary_grid_points", boundary_grid_points),
        ("boundary_replications", boundary_replications),
    ):
        check_number(name, v, low=2, integer=True)
    check_number("boundary_steps", boundary_steps, low=100, integer=True)
    cap = analytic.capacity(
        workload,
        kv_capacity_tokens=kv_capacity_tokens,
        chunk_tokens=chunk_tokens,
        batch_time_s=batch_time_s,
        rate_per_s=rate_per_s,
        utilization=utilization,
    )
    system = System(kv_capacity_tokens, chunk_tokens, ConstantBatchTime(batch_time_s))

    say(f"simulating {trajectories} trajectories x {steps} steps at {rate_per_s:g} req/s")
    horizon_s = steps * batch_time_s
    num_records = int(
        math.ceil(rate_per_s * horizon_s * 1.1 + 10 * math.sqrt(rate_per_s * horizon_s) + 16)
    )
    res = simulate(
        Workload(workload, Poisson(rate_per_s)),
        system,
        num_steps=steps,
        num_trajectories=trajectories,
        seed=seed,
        warmup_frac=warmup_frac,
        outputs=Outputs(num_records=num_records),
    )
    summ = res.summary()
    w = res.warmup_blocks
    warmup_s = float(res.clock_s[:, w - 1].mean()) if w > 0 else 0.0
    sim = {
        "throughput_per_s": summ["throughput_per_s"],
        "throughput_ci": summ["throughput_ci"],
        "mean_queue": _ci_dict(res.queue[:, w:].mean(axis=1)),
        **latency_percentiles(res, warmup_s),
        "preemptions_per_completion": summ["preemptions_per_completion"],
        "completed": summ["completed"],
        "flags": summ["flags"],
        "warmup_s": warmup_s,
        "wall_s": res.wall_s,
    }

    bres = None
    if boundary:
        say(
            f"estimating lambda* ({boundary_grid_points} rates x {boundary_replications} runs, "
            f"{boundary_steps} steps)"
        )
        bres = estimate_boundary(
            workload,
            system,
            precision=BOUNDARY["precision"],
            grid_points=boundary_grid_points,
            replications=boundary_replications,
            num_steps=boundary_steps,
            seed=seed,
        )
    gpus = cap.gpus
    words = dict(kv=kv_capacity_tokens, chunk=chunk_tokens, batch_time=batch_time_s)
    gpus_slo = gpus_for_slo(workload, words, rate_per_s, slo, seed=seed)
    config = {
        "workload": cap.workload,
        "kv_capacity_tokens": int(kv_capacity_tokens),
        "chunk_tokens": int(chunk_tokens),
        "batch_time_s": float(batch_time_s),
        "rate_per_s": float(rate_per_s),
        "utilization": float(utilization),
        "sim_trajectories": int(trajectories),
        "sim_steps": int(res.config["num_steps"]),
        "warmup_frac": float(warmup_frac),
        "num_records": num_records,
        "boundary": None
        if not boundary
        else {
            "precision": BOUNDARY["precision"],
            "grid_points": int(boundary_grid_points),
            "replications": int(boundary_replications),
            "num_steps": int(boundary_steps),
        },
        "slo": None if slo is None else slo_text,
        "seed": int(seed),
        "kvstab_version": __version__,
        "sim_semantics_version": SIM_SEMANTICS_VERSION,
    }
    return Report(
        config=config,
        capacity=cap,
        simulation=sim,
        boundary=bres,
        gpus_rho=gpus,
        gpus_slo=gpus_slo,
        verdict=verdict_phrase(rate_per_s, cap.mu, cap.mu_stable, gpus, utilization),
        wall_s=time.perf_counter() - t0,
        sim_result=res,
    )


# ---------------------------------------------------------------------------------------------
# The one-page figure


def plot_report(r: Report, path=None):
    """One page: queue over time, the waiting-time CDF, λ* vs μ and μ(1−δ)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kvstab.plotting import COLORS, DPI

    fig = Figure(figsize=(12.0, 4.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax_q, ax_w, ax_l = fig.subplots(1, 3)
    res = r.sim_result
    c = r.capacity
    lam = r.config["rate_per_s"]
    if res is not None:
        t = res.clock_s.mean(axis=0)
        for i in range(res.queue.shape[0]):
            ax_q.plot(t, res.queue[i], color="0.75", linewidth=0.7)
        ax_q.plot(
            t,
            res.queue.mean(axis=0),
            color=COLORS["empty"],
            linewidth=1.6,
            label="mean over trajectories",
        )
        ax_q.axvline(r.simulation["warmup_s"], color="0.4", linestyle=":", label="end of warm-up")
        ax_q.set_xlabel("time (s)")
        ax_q.set_ylabel("requests waiting")
        ax_q.set_title(f"queue at {lam:g} req/s")
        ax_q.legend(loc="upper left")
        rec = res.records
        wait = np.asarray(rec["wait_s"], np.float64)
        keep = np.isfinite(wait) & (np.asarray(rec["arrival_s"]) >= r.simulation["warmup_s"])
        wv = np.sort(wait[keep])
        if wv.size:
            ax_w.plot(wv, np.arange(1, wv.size + 1) / wv.size, color=COLORS["loaded"])
            ax_w.set_xscale("symlog", linthresh=0.1, linscale=0.6)
            ax_w.set_xticks([t for t in (0, 0.05, 0.1, 1, 10, 100, 1000) if t <= max(wv[-1], 0.1)])
            ax_w.set_xticklabels([f"{t:g}" for t in ax_w.get_xticks()])
            ax_w.set_xlim(left=0)
        ax_w.set_xlabel("waiting time (s; linear below 0.1 s, log above)")
        ax_w.set_ylabel("fraction of requests")
        ax_w.set_title("waiting-time CDF (after warm-up)")
    ax_l.axvline(
        c.mu_stable, color=COLORS["mu_stable"], label=f"μ(1−δ) = {c.mu_stable:.4g} (Thm 4.2)"
    )
    ax_l.axvline(c.mu, color=COLORS["mu"], label=f"μ = {c.mu:.4g} (Thm 4.1)")
    ax_l.axvline(lam, color="black", linestyle="--", label=f"your rate λ = {lam:g}")
    if r.boundary is not None and math.isfinite(r.boundary.lambda_star):
        b = r.boundary
        ax_l.errorbar(
            [b.lambda_star],
            [0.5],
            xerr=[[b.lambda_star - b.ci_low], [b.ci_high - b.lambda_star]],
            fmt="o",
            color=COLORS["lambda_star"],
            capsize=4,
            label=f"simulated λ* = {b.lambda_star:.4g} (95% CI)",
        )
    ax_l.set_yticks([])
    ax_l.set_ylim(0, 1)
    ax_l.set_xlabel("arrival rate (req/s)")
    ax_l.set_title("critical rate: simulation vs closed form")
    ax_l.legend(loc="lower left")
    if path is not None:
        fig.savefig(path)
    return fig
