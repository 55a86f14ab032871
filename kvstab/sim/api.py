"""The driver: :func:`simulate` runs many trajectories of a system under a workload.

It validates the input (the components validate themselves), sizes the buffers on the host
(:mod:`kvstab.sim.sizing`), samples the workload (:mod:`kvstab.workload`; randomness lives
there), runs the compiled rollout (:mod:`kvstab.sim.rollout`) in segments with progress,
re-runs with larger buffers when a cap was hit, and returns a :class:`SimResult`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kvstab import SIM_SEMANTICS_VERSION, __version__, metrics
from kvstab.display import Displayable
from kvstab.errors import InputError
from kvstab.metrics import warmup_blocks
from kvstab.paper import BATCH_TIME_S
from kvstab.sim.components import (
    Cluster,
    ConstantBatchTime,
    LinearBatchTime,
    Outputs,
    Policy,
    Replay,
    Saturated,
    System,
    Workload,
)
from kvstab.sim.rollout import batch_rollout, place_on_devices
from kvstab.sim.sizing import allocate_sizes, calendar_fits, grow_sizes
from kvstab.sim.state import (
    REC_ADMIT,
    REC_FINISH,
    REC_FIRST_ADMIT,
    REC_NPRE,
    REC_TOK_FINAL,
    REC_TOK_LAST,
    Flag,
    SimParams,
    StaticConfig,
    StepOut,
)
from kvstab.validate import MAX_SEED, check_memory, check_simulate_args, check_value
from kvstab.workload import replay_workload, sample_workload, split_stream


@dataclasses.dataclass(repr=False)
class SimResult(Displayable):
    """What :func:`simulate` returns. Arrays are numpy; (traj, block) time series are summed
    over replicas (clock: replica 0's).

    Attributes:
        config: everything needed to reproduce the run (workload, system, policies, sizes,
            seed, kvstab version, SIM_SEMANTICS_VERSION), in the command line's words.
        clock_s: (traj, block) clock at each block's end.
        queue: (traj, block) mean waiting queue over the block.
        queue_end: (traj, block) queue at the block's last step.
        running: (traj, block) mean running requests.
        kv_tokens: (traj, block) mean KV tokens in use (per replica mean of the sum).
        max_kv_tokens: (traj, replica) max KV in use over the run.
        completed, preempted, arrived: (traj, block) cumulative counts.
        flags: (traj,) names of raised flags (see :class:`Flag`), empty when clean.
        records: per-request times (seconds; nan where it did not happen), (traj·replica, req).
        steps: per-step arrays when requested.
        warmup_blocks: leading blocks excluded from steady-state statistics.
        wall_s: seconds spent simulating (all attempts), compile included.
        request_lengths: ``prompt_tokens`` and ``output_tokens`` of the recorded requests,
            shaped like ``records`` (TPOT needs o; :mod:`kvstab.latency`).
    """

    config: dict
    clock_s: np.ndarray
    queue: np.ndarray
    queue_end: np.ndarray
    running: np.ndarray
    kv_tokens: np.ndarray
    max_kv_tokens: np.ndarray
    completed: np.ndarray
    preempted: np.ndarray
    arrived: np.ndarray
    flags: list
    records: dict | None
    steps: dict | None
    warmup_blocks: int
    wall_s: float
    attempts: int = 1
    request_lengths: dict | None = None

    @property
    def num_trajectories(self) -> int:
        return int(self.clock_s.shape[0])

    def throughput_per_traj(self) -> np.ndarray:
        """Completions per second after warm-up, per trajectory (summed over replicas)."""
        return metrics.throughput_per_traj(self.completed, self.clock_s, self.warmup_blocks)

    def queue_slope_per_traj(self) -> np.ndarray:
        """Growth rate of the waiting queue after warm-up, requests/s, per trajectory."""
        w = self.warmup_blocks
        return metrics.slope_per_traj(self.queue_end[:, w:], self.clock_s[:, w:])

    def summary(self) -> dict:
        """The numbers ``kvstab simulate --json`` prints."""
        w = self.warmup_blocks
        thr = self.throughput_per_traj()
        if thr.size >= 2:
            m, lo, hi = metrics.mean_ci(thr)
            ci_method = "t interval over trajectories"
        else:
            dc = np.diff(self.completed[0, w - 1 :] if w > 0 else np.r_[0, self.completed[0]])
            dt = np.diff(self.clock_s[0, w - 1 :] if w > 0 else np.r_[0, self.clock_s[0]])
            m, lo, hi = metrics.batch_means_ci(dc / dt)
            m = float(thr[0])
            ci_method = "batch means over one trajectory"
        slope = self.queue_slope_per_traj()
        s_m, s_lo, s_hi = (
            metrics.mean_ci(slope) if slope.size >= 2 else (float(slope[0]), math.nan, math.nan)
        )
        comp = self.completed[:, -1].sum()
        out = {
            "throughput_per_s": m,
            "throughput_ci": [lo, hi],
            "throughput_ci_method": ci_method,
            "mean_kv_tokens": float(self.kv_tokens[:, w:].mean()),
            "max_kv_tokens": int(self.max_kv_tokens.max()),
            "preemptions_per_completion": float(self.preempted[:, -1].sum() / comp)
            if comp
            else math.nan,
            "mean_queue": float(self.queue[:, w:].mean()),
            "final_queue": float(self.queue_end[:, -1].mean()),
            "queue_slope_per_s": s_m,
            "queue_slope_ci": [s_lo, s_hi],
            "completed": int(comp),
            "arrived": int(self.arrived[:, -1].sum()),
            "simulated_s": float(self.clock_s[:, -1].mean()),
            "warmup_s": float(self.clock_s[:, w - 1].mean()) if w > 0 else 0.0,
            "flags": sorted({f for fl in self.flags for f in fl}),
            "wall_s": self.wall_s,
        }
        if self.records is not None:
            r = self.records
            out["wait_s"] = metrics.quantiles(r["wait_s"])
            out["ttft_s"] = metrics.quantiles(r["ttft_s"])
            out["latency_s"] = metrics.quantiles(r["latency_s"])
        return out

    def to_dict(self) -> dict:
        """``summary()`` and ``config`` as JSON-ready data (no per-block arrays)."""
        from kvstab.results import to_jsonable

        return to_jsonable({"summary": self.summary(), "config": self.config})

    def _display_title(self) -> str:
        c = self.config
        load = (
            "saturated (endless backlog)"
            if c.get("saturated")
            else f"{c.get('arrival_rate_per_s')} req/s"
        )
        return f"SimResult: {c.get('workload')}, {load}"

    def _display_rows(self) -> dict:
        s = self.summary()
        rows = {
            "trajectories x steps": f"{self.num_trajectories} x {self.config.get('num_steps')}",
            "throughput (req/s)": s["throughput_per_s"],
            "throughput 95% CI": s["throughput_ci"],
        }
        if not self.config.get("saturated"):  # a backlog's length is not a queue
            rows["mean queue"] = s["mean_queue"]
            rows["queue growth (req/s)"] = s["queue_slope_per_s"]
        rows["preemptions / completion"] = s["preemptions_per_completion"]
        rows["mean KV tokens"] = s["mean_kv_tokens"]
        for name in ("wait_s", "ttft_s"):
            if name in s:
                rows[f"{name[:-2]} p50 / p99 (s)"] = [s[name]["p50"], s[name]["p99"]]
        rows["flags"] = ", ".join(s["flags"]) or "none"
        rows["wall (s)"] = s["wall_s"]
        return rows


def _per_traj(field: str, value, n: int, dtype) -> np.ndarray:
    a = np.asarray(value, dtype)
    if a.size not in (1, n):
        raise InputError(field, f"must be a scalar or one value per trajectory ({n}), got {a.size}")
    return np.broadcast_to(a.reshape(-1) if a.size > 1 else a.reshape(()), (n,))


def _segments(num_steps: int, outputs: Outputs):
    """(block_steps, num_blocks, num_segments, T): T >= num_steps in whole blocks, the blocks
    in equal segments (about 256 blocks, 10 segments for progress)."""
    T_req = int(num_steps)
    block_steps = outputs.block_steps
    if block_steps is None:
        block_steps = max(1, 2 ** int(math.floor(math.log2(max(T_req / 256, 1)))))
    nb = -(-T_req // block_steps)
    num_segments = outputs.num_segments
    if num_segments is None:
        num_segments = max(d for d in range(1, 11) if nb % d == 0) if nb >= 10 else 1
        if nb >= 10 and num_segments < 5:  # round the block count up to a multiple of 10
            nb, num_segments = -(-nb // 10) * 10, 10
    nb = -(-nb // num_segments) * num_segments
    return block_steps, nb, num_segments, nb * block_steps


def simulate(
    workload: Workload,
    system: System = System(),
    policy: Policy = Policy(),
    *,
    num_steps: int = 20000,
    num_trajectories: int = 64,
    seed: int = 0,
    cluster: Cluster = Cluster(),
    outputs: Outputs = Outputs(),
    warmup_frac: float = 0.25,
    progress: Callable | None = None,
    sizes: dict | None = None,
    max_attempts: int = 5,
) -> SimResult:
    """Simulate ``num_trajectories`` independent trajectories and summarise them.

    Args:
        workload: lengths law, arrivals (λ into the whole cluster; scalar or one per
            trajectory: a sweep in one compiled call) and initial queue.
        system: M (scalar or per trajectory), ŝ, batch-time model (b̄ scalar or per
            trajectory).
        policy: admission, overflow, order.
        num_steps: batch steps T (rounded up to whole blocks and segments).
        num_trajectories: N.
        seed: PRNG seed; the whole run is a deterministic function of it and the sizes.
            A sequence of k seeds splits the trajectories into k equal consecutive groups,
            group j sampled exactly as a run with ``seed=seed[j]`` and
            ``num_trajectories // k`` trajectories (and the same sizes) would be: many
            independent runs in one compiled call (:func:`kvstab.sweep.sweep`'s points).
        cluster: G replicas and the router (docs/semantics.md "Replicas and routing"). A
            saturated run needs no router: every replica has its own backlog.
        outputs: per-request records, per-step arrays, resolution.
        warmup_frac: fraction of the run excluded from steady-state statistics.
        progress: callable(done_steps, total_steps, attempt) called between segments.
        sizes: override static capacities (max_running, max_preempted, num_requests,
            cal_len, replica_requests); see :mod:`kvstab.sim.sizing`.
        max_attempts: runs with enlarged capacities before the flags are returned.

    Returns:
        SimResult. Raises InputError on bad input; if a static cap is still hit after
        ``max_attempts`` runs, the flags are returned in the result (never hidden).
    """
    wall0 = time.perf_counter()
    group_seeds = None
    if np.ndim(seed) > 0:  # one seed per group of trajectories (see the docstring)
        group_seeds = [int(x) for x in np.ravel(seed)] if np.size(seed) else []
        for x in group_seeds:
            check_value("seed", x, low=0, high=MAX_SEED, integer=True)
        if (
            not group_seeds
            or not isinstance(num_trajectories, (int, np.integer))
            or (num_trajectories % len(group_seeds))
        ):
            raise InputError(
                "seed",
                f"{len(group_seeds)} seeds must divide num_trajectories = {num_trajectories} "
                "into equal groups",
            )
        seed = group_seeds[0]
    check_simulate_args(
        workload, system, policy, cluster, outputs, num_steps=num_steps,
        num_trajectories=num_trajectories, seed=seed, warmup_frac=warmup_frac,
        progress=progress, sizes=sizes, max_attempts=max_attempts,
    )  # fmt: skip
    arrivals, bt, router = workload.arrivals, system.batch_time, cluster.router
    chunk = int(system.chunk_tokens)
    saturated = isinstance(arrivals, Saturated)
    replay = arrivals if isinstance(arrivals, Replay) else None
    n = int(num_trajectories)
    g = int(cluster.num_replicas)
    rows = n * g
    dynamic = router.dynamic and g > 1 and not saturated
    if dynamic and not isinstance(bt, ConstantBatchTime):
        raise InputError(
            "router",
            f"{router.name} routes on the replicas' states at shared step boundaries, so it "
            f"needs a constant batch time, got {bt.name!r} (round_robin and random work with "
            "every batch-time model)",
        )
    M_arr = _per_traj("kv_capacity_tokens", system.kv_capacity_tokens, n, np.int64)
    M_max = int(M_arr.max())
    joint = workload.lengths if replay is None else None
    if joint is not None and joint.max_total is not None and joint.max_total > M_arr.min():
        raise InputError(
            "workload",
            f"max(s+o) = {joint.max_total} exceeds kv_capacity_tokens M = {int(M_arr.min())}; "
            "such a request can never be served",
        )
    if joint is not None:
        policy.admission.check_workload(joint.max_prompt, joint.max_output, M_arr)
    elif len(replay.prompt):
        policy.admission.check_workload(
            int(np.max(replay.prompt)), int(np.max(replay.output)), M_arr
        )
    # A batch time without b̄ (linear) ignores b_arr: the paper's b̄ is a placeholder.
    b_arr = _per_traj("batch_time_s", getattr(bt, "batch_time_s", BATCH_TIME_S), n, np.float64)
    lam_arr = _per_traj(
        "arrival_rate_per_s", 1.0 if arrivals.rate_per_s is None else arrivals.rate_per_s, n,
        np.float64,
    )  # fmt: skip

    # Static sizes: from the law (or the replayed trace), enlarged when a cap is hit.
    block_steps, nb, num_segments, T = _segments(num_steps, outputs)
    seg_steps = T // num_segments
    key = jax.random.PRNGKey(int(seed))
    key_wl, key_bt = jax.random.split(key)
    probe_s, probe_o = (
        (np.asarray(replay.prompt), np.asarray(replay.output))
        if replay is not None
        else tuple(np.asarray(x) for x in joint.sample(jax.random.PRNGKey(int(seed) + 1), (4096,)))
    )
    if isinstance(bt, LinearBatchTime):
        b_mean = bt.mean_s(
            chunk_tokens=chunk,
            kv_capacity_tokens=M_arr.max(),
            mean_total_tokens=np.mean(probe_s + probe_o),
        )
    else:
        b_mean = bt.mean_s()
    mean_arrivals = None
    if not saturated and replay is None:
        mean_arrivals = float(np.max(arrivals.rate_per_s)) / g * T * b_mean
    sz = allocate_sizes(
        probe_s,
        probe_o,
        kv_capacity_tokens=M_max,
        chunk_tokens=chunk,
        num_steps=T,
        mean_arrivals=mean_arrivals,
        initial_queue=workload.initial_queue,
        law=joint,
        given=dict(sizes or {}, **({"num_requests": replay.num_requests} if replay else {})),
    )
    if dynamic:  # per-replica buffers; the stream feeding them holds G times as many
        if replay is not None:
            sz.setdefault(
                "replica_requests", min(sz["num_requests"], int(1.3 * sz["num_requests"] / g) + 64)
            )
        sz.setdefault("replica_requests", sz["num_requests"])
    check_memory(  # before sampling or compiling: an estimate, with what to change
        rows, sz, num_trajectories=n, num_blocks=nb, num_steps=T,
        num_records=outputs.num_records, window=policy.order.window,
        record_steps=outputs.record_steps or bool(outputs.num_records), dynamic=dynamic,
        buffer_fields={"num_requests": "initial_queue"
                       if 2 * workload.initial_queue > sz["num_requests"] else "num_steps"},
    )  # fmt: skip

    params = SimParams(
        jnp.asarray(np.repeat(M_arr, g), jnp.int32),
        jnp.ones(rows, jnp.float32)
        if replay is not None
        else jnp.asarray(np.repeat(lam_arr, g), jnp.float32),
        jnp.asarray(np.repeat(b_arr, g), jnp.float32),
        jnp.asarray(np.broadcast_to(np.asarray(bt.coefs, np.float64), (rows, 4)), jnp.float32),
    )
    need_clock = bool(outputs.num_records) and not isinstance(bt, ConstantBatchTime)
    group_keys = (
        None
        if group_seeds is None
        else [jax.random.split(jax.random.PRNGKey(x)) for x in group_seeds]
    )

    def by_group(sample, which: int):
        """``sample(key, n)`` for the whole run, or per seed group, concatenated."""
        if group_keys is None:
            return sample((key_wl, key_bt)[which], n)
        parts = [sample(k[which], n // len(group_keys)) for k in group_keys]
        return jax.tree_util.tree_map(lambda *x: jnp.concatenate(x, axis=0), *parts)

    attempt = 0
    while True:
        attempt += 1

        def sample(key_wl, n, sz=sz):
            if replay is not None:
                # one copy of the trace per trajectory; replicas share it through the router
                wl = replay_workload(replay.arrival_s, replay.prompt, replay.output)
                if n > 1:
                    wl = jax.tree_util.tree_map(lambda x: jnp.repeat(x, n, axis=0), wl)
                if g > 1 and not dynamic:
                    wl = split_stream(wl, g, router.name, key_wl, per_replica=None)
                return wl
            if dynamic:
                return sample_workload(
                    key_wl,
                    joint,
                    num_trajectories=n,
                    num_requests=g * sz["num_requests"],
                    arrivals=arrivals.name,
                    initial_queue=workload.initial_queue,
                )
            return sample_workload(
                key_wl,
                joint,
                num_trajectories=n,
                num_requests=sz["num_requests"],
                arrivals=arrivals.name,
                initial_queue=workload.initial_queue,
                num_replicas=g,
                router=router.name if not saturated else "round_robin",
            )

        wl = by_group(sample, 0)
        if replay is not None:
            bad = np.flatnonzero(np.asarray(wl.prompt + wl.output).max(axis=0) > M_max)
            if len(bad):
                raise InputError("replay", f"request {int(bad[0])} has s+o > M = {M_max}")
        sz = calendar_fits(sz, wl.prompt, wl.output, chunk)
        cfg = StaticConfig(
            chunk_tokens=chunk,
            num_steps=seg_steps,
            block_steps=block_steps,
            policy=policy,
            batch_time=type(bt),
            saturated=saturated,
            stream_ends=replay is not None,
            max_running=sz["max_running"],
            max_preempted=sz["max_preempted"],
            cal_len=sz["cal_len"],
            num_records=min(
                int(outputs.num_records), sz["replica_requests"] if dynamic else wl.num_requests
            ),
            # records in seconds under a non-constant batch time need each step's duration
            record_steps=bool(outputs.record_steps) or need_clock,
            router=router if dynamic else None,
            num_replicas=g if dynamic else 1,
            replica_requests=sz["replica_requests"] if dynamic else 0,
        )
        cfg.validate()
        xi_all = by_group(lambda k, nn: bt.factors(k, (nn * g, T)), 1) if bt.needs_factors else None
        # Split the inputs over the devices once (not again for every segment).
        wl_d, params_d, xi_all = place_on_devices((wl, params, xi_all), wl.prompt.shape[0])
        state = None
        blocks, steps = [], []

        pending = None  # the segment dispatched last; collected once the next is queued
        for seg in range(num_segments + 1):
            if seg < num_segments:
                lo, hi = seg * seg_steps, (seg + 1) * seg_steps
                xi = None if xi_all is None else xi_all[:, lo:hi]
                out = batch_rollout(wl_d, params_d, xi, cfg, state)
                state = out.final
            if pending is not None:  # waits for segment seg-1: the devices never idle
                blocks.append(jax.tree_util.tree_map(np.asarray, pending.blocks))
                if cfg.record_steps:
                    steps.append(jax.tree_util.tree_map(np.asarray, pending.steps))
                if progress is not None:
                    progress(seg * seg_steps, T, attempt)
            pending = out if seg < num_segments else None
        flags = np.asarray(state.flags)
        all_bits = int(np.bitwise_or.reduce(flags))
        if all_bits & Flag.KV_OVER_CAPACITY:
            raise RuntimeError(
                "simulator invariant KV <= M broken; please report this with the seed"
            )
        new = grow_sizes(
            sz, all_bits, dynamic=dynamic, replay=replay is not None,
            stream_length=wl.prompt.shape[1],
        )  # fmt: skip
        if new == sz or attempt >= max_attempts:
            break  # clean, or out of attempts: the flags stay in the result
        sz = new

    cat = lambda name: np.concatenate([getattr(b, name) for b in blocks], axis=1)  # noqa: E731
    per_traj = lambda x: x.reshape(n, g, -1)  # noqa: E731
    summed = lambda name: per_traj(cat(name)).sum(axis=1)  # noqa: E731
    clock = per_traj(cat("clock_s"))[:, 0, :]
    records = lengths = None
    if cfg.num_records:
        records = _records_in_seconds(
            state, wl, params, cfg, clock_fn=None if not need_clock else steps, T=T
        )
        lengths = _record_lengths(state, wl, cfg)
    step_arrays = None
    if outputs.record_steps:
        step_arrays = {
            f: np.concatenate([getattr(s, f) for s in steps], axis=1) for f in StepOut._fields
        }
    config = {
        "kvstab_version": __version__,
        "sim_semantics_version": SIM_SEMANTICS_VERSION,
        "workload": joint.spec
        if joint is not None
        else f"replay of {replay.num_requests} requests",
        "kv_capacity_tokens": M_arr.tolist() if M_arr.size > 1 and np.ptp(M_arr) else int(M_arr[0]),
        "chunk_tokens": chunk,
        **_batch_time_words(bt),
        "arrival_rate_per_s": _words(arrivals.rate_per_s),
        "saturated": saturated,
        "arrivals": arrivals.name,
        "num_steps": T,
        "num_trajectories": n,
        "seed": int(seed) if group_seeds is None else group_seeds,
        "num_replicas": g,
        "router": router.name,
        "routing": "at run time on the replicas' states"
        if dynamic
        else (
            "none (one replica)"
            if g == 1
            else (
                "none: every saturated replica has its own backlog"
                if saturated
                else "a static split of the stream"
            )
        ),
        **policy.names(),
        "initial_queue": int(workload.initial_queue),
        "warmup_frac": warmup_frac,
        "block_steps": block_steps,
        "sizes": dict(sz),
        "attempts": attempt,
    }
    return SimResult(
        config=config,
        clock_s=clock,
        queue=summed("mean_queue"),
        queue_end=summed("queue_end").astype(np.float64),
        running=summed("mean_running"),
        kv_tokens=per_traj(cat("mean_kv")).mean(axis=1),
        max_kv_tokens=per_traj(cat("max_kv")).max(axis=2),
        completed=summed("completed"),
        preempted=summed("preempted"),
        arrived=summed("arrived"),
        flags=[Flag.names(int(b)) for b in np.bitwise_or.reduce(flags.reshape(n, g), axis=1)],
        records=records,
        steps=step_arrays,
        warmup_blocks=warmup_blocks(nb, warmup_frac),
        wall_s=time.perf_counter() - wall0,
        attempts=attempt,
        request_lengths=lengths,
    )


def _words(x):
    """A scalar or per-trajectory value as JSON (None stays None)."""
    if x is None:
        return None
    return np.ravel(x).tolist() if np.size(x) > 1 else float(np.ravel(x)[0])


def _batch_time_words(bt) -> dict:
    """The batch-time component in the results file's words."""
    out = {"batch_time_model": bt.name, "batch_time_s": _words(getattr(bt, "batch_time_s", None))}
    out["linear_coefs"] = list(map(float, bt.coefs))
    for field, name in (("law", "batch_time_law"), ("sigma", "batch_time_sigma")):
        if hasattr(bt, field):
            out[name] = getattr(bt, field)
    for field in ("slow_fraction", "slow_factor"):
        if hasattr(bt, field):
            out[field] = getattr(bt, field)
    return out


def step_records(state, num_records: int, num_steps: int) -> dict:
    """Per-request records in steps from a final state, (traj, req); -1 where it did not
    happen by the end of the run (tentative steps past the horizon are cleared)."""
    rec = np.asarray(state.rec)[:, :num_records].astype(np.int64)
    tok_final, tok_last = rec[..., REC_TOK_FINAL], rec[..., REC_TOK_LAST]
    finish = rec[..., REC_FINISH]
    last = num_steps - 1
    return {
        "first_admit_step": rec[..., REC_FIRST_ADMIT],
        "admit_step": rec[..., REC_ADMIT],
        "first_token_step": np.where(
            tok_final >= 0, tok_final, np.where((tok_last >= 0) & (tok_last <= last), tok_last, -1)
        ),
        "finish_step": np.where((finish >= 0) & (finish <= last), finish, -1),
        "num_preempted": rec[..., REC_NPRE],
    }


def _record_lengths(state, wl, cfg: StaticConfig) -> dict:
    """Prompt and output lengths of the recorded requests, (traj·replica, req); 0 where a
    dynamic router's replica buffer slot was never filled."""
    rr = cfg.num_records
    prompt, output = np.asarray(wl.prompt), np.asarray(wl.output)
    if cfg.dynamic:  # replica buffers hold stream indices; a trajectory's G rows share one
        src = np.asarray(state.buf_src)[:, :rr]
        idx = np.maximum(src, 0)

        def lookup(x):
            stream = np.repeat(x, cfg.num_replicas, axis=0)
            return np.where(src >= 0, np.take_along_axis(stream, idx, axis=1), 0)

        prompt, output = lookup(prompt), lookup(output)
    return {
        "prompt_tokens": prompt[:, :rr].astype(np.int64),
        "output_tokens": output[:, :rr].astype(np.int64),
    }


def _records_in_seconds(state, wl, params, cfg: StaticConfig, clock_fn, T):
    """Per-request step records -> seconds (nan where an event did not happen)."""
    rr = cfg.num_records
    rec = step_records(state, rr, T)
    if clock_fn is None:
        b = np.asarray(params.batch_time_s, np.float64)[:, None]

        def start(k):  # clock at a step's start (constant b̄: exact by Kahan summation)
            return np.where(k >= 0, k * b, np.nan)
    else:
        bt = np.concatenate([s.batch_time_s for s in clock_fn], axis=1).astype(np.float64)
        clock = np.concatenate([np.zeros((bt.shape[0], 1)), np.cumsum(bt, axis=1)], axis=1)

        def start(k):
            return np.where(k >= 0, np.take_along_axis(clock, np.maximum(k, 0), axis=1), np.nan)

    lam = np.asarray(params.arrival_rate_per_s, np.float64)[:, None]
    epoch = np.asarray(wl.arrival_epoch, np.float64)
    if cfg.dynamic:  # replica buffers hold stream indices; a trajectory's G rows share one
        src = np.asarray(state.buf_src)[:, :rr]
        stream = np.repeat(epoch, cfg.num_replicas, axis=0)
        epoch = np.where(src >= 0, np.take_along_axis(stream, np.maximum(src, 0), axis=1), np.nan)
    arr = epoch[:, :rr] / lam
    if cfg.saturated:
        arr = np.zeros_like(arr)
    tok, fin = rec["first_token_step"], rec["finish_step"]
    admit_s = start(rec["first_admit_step"])
    tok_s = start(np.where(tok >= 0, tok + 1, -1))
    fin_s = start(np.where(fin >= 0, fin + 1, -1))
    return {
        "arrival_s": arr,
        "first_admit_s": admit_s,
        "first_token_s": tok_s,
        "finish_s": fin_s,
        "wait_s": admit_s - arr,
        "ttft_s": tok_s - arr,
        "latency_s": fin_s - arr,
        "preemptions": rec["num_preempted"],
        "first_admit_step": rec["first_admit_step"],
        "first_token_step": tok,
        "finish_step": fin,
    }
