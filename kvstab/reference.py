"""The executable specification: a slow, plain-Python, event-by-event simulator.

This module implements ``docs/semantics.md`` (SIM_SEMANTICS_VERSION = 3) literally, one step
and one request at a time, with no vectorization and no JAX. It exists to be read and to be
trusted: the fast JAX simulator (:mod:`kvstab.sim`) must give *identical* integer results
on the same sampled workload, and the tests check that. It takes the very same component
objects (:class:`kvstab.sim.System`, :class:`kvstab.sim.Policy`, a router) and calls their
plain-Python hooks (``fits``, ``saved_position``, ``pick``, ``time_s``, ``key``); a request's
life is :mod:`kvstab.request`.

Reading guide. :func:`simulate` validates its inputs, then runs :func:`_Simulator.step` once
per step k = 0 .. T-1. ``step`` does, in this order, exactly the seven numbered points of
docs/semantics.md "One step k":

1. arrivals join the end of ``queue``;
2. plan the running requests' growth;
3. overflow: preempt running requests (``policy.victim``: the newest by default) until
   U + growth <= M, each victim to the head of ``queue`` as it is taken;
4. admission in ``policy.order`` while ``policy.admission`` says the candidate fits,
   head-of-line blocking;
5. execute: every running request advances one position; KV_k = U + growth;
6. batch time b_k (``system.batch_time``), t_{k+1} = t_k + b_k;
7. completions.

Floating point, so that both simulators agree bit for bit (arrivals compare the clock with
``arrival_s``, so the clock must be the same double in both):

* the clock is a sequential float64 running sum, t_0 = 0.0 and t_{k+1} = t_k + b_k (not k·b̄,
  not a pairwise/parallel prefix sum);
* ``linear``: b_k = ((c0 + c_p·P_k) + c_d·D_k) + c_kv·KV_k, left to right in float64;
* ``random``: b_k = b̄ · ξ_k in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kvstab.errors import InputError, check_number
from kvstab.request import growth, is_prefill, lifetime, mem, num_chunks
from kvstab.sim.components import (
    BatchTime,
    ConstantBatchTime,
    Policy,
    RoundRobin,
    Router,
    System,
)

__all__ = [
    "ClusterResult",
    "ReferenceResult",
    "growth",
    "lifetime",
    "mem",
    "num_chunks",
    "simulate",
    "simulate_cluster",
]


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReferenceResult:
    """Everything the reference simulator records (docs/semantics.md "Outputs").

    Per step k = 0..T-1 (arrays of length T, except ``clock_s`` of length T+1):
    ``kv_tokens`` KV_k; ``queue_len`` |queue| after step k's admissions (arrivals during step k
    join only at step k+1); ``running`` after step k's completions; ``completions_cum`` and
    ``preemptions_cum`` cumulative at the end of step k; ``batch_time_s`` b_k; ``clock_s``
    t_0 .. t_T; ``prefill_tokens`` P_k; ``decode_tokens`` D_k.

    Per request i = 0..R-1 (−1 where it did not happen): ``first_admit_step``, ``admit_step``
    (last admission), ``first_token_step`` (first step that executed p = C → C+1, kept across
    preemptions), ``finish_step`` (the step whose end completes it; finish time t_{step+1}),
    ``num_preempted``.
    """

    kv_tokens: np.ndarray
    queue_len: np.ndarray
    running: np.ndarray
    completions_cum: np.ndarray
    preemptions_cum: np.ndarray
    batch_time_s: np.ndarray
    clock_s: np.ndarray
    prefill_tokens: np.ndarray
    decode_tokens: np.ndarray
    num_arrived: int
    num_completed: int
    num_preemptions: int
    final_queue: int
    final_running: int
    first_admit_step: np.ndarray
    admit_step: np.ndarray
    first_token_step: np.ndarray
    finish_step: np.ndarray
    num_preempted: np.ndarray
    flags: dict


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


def _as_1d(field: str, values: Any) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise InputError(field, f"must be a 1-D array, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iuf":
        raise InputError(field, f"must be numeric, got dtype {a.dtype}")
    return a


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _as_length_array(field: str, values: Any) -> list[int]:
    """Integer token counts >= 1, as Python ints."""
    a = _as_1d(field, values)
    if a.size == 0:
        return []
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            i = _first_bad(bad)
            raise InputError(field, f"must be finite integers >= 1; {field}[{i}] = {a[i]}")
        bad = a != np.floor(a)
        if bad.any():
            i = _first_bad(bad)
            raise InputError(field, f"must be integers >= 1; {field}[{i}] = {a[i]}")
    bad = a < 1
    if bad.any():
        i = _first_bad(bad)
        raise InputError(field, f"must be integers >= 1; {field}[{i}] = {a[i]}")
    return [int(x) for x in a]


def _validate(arrival_s, prompt, output, system, policy, num_steps, saturated, factors_in):
    """Check every input; return (arrival, s, o, factors) as Python lists of float/int."""
    for field, value, kind in (("system", system, System), ("policy", policy, Policy)):
        if not isinstance(value, kind):
            raise InputError(field, f"must be a {kind.__name__}, got {value!r}")
    kv_capacity_tokens = system.kv_capacity_tokens
    if np.ndim(kv_capacity_tokens) != 0:
        raise InputError("kv_capacity_tokens", "must be one integer >= 1 (one replica)")
    if np.ndim(getattr(system.batch_time, "batch_time_s", 0.0)) != 0:
        raise InputError("batch_time_s", "must be one number > 0 (one replica)")
    check_number("num_steps", num_steps, low=1, integer=True)
    try:
        float(num_steps)
    except Exception as exc:
        raise InputError("num_steps", f"must be an integer >= 1, got {num_steps!r}") from exc
    m = int(kv_capacity_tokens)
    steps = int(num_steps)

    s = _as_length_array("prompt", prompt)
    o = _as_length_array("output", output)
    if len(o) != len(s):
        raise InputError("output", f"must have the same length as prompt ({len(s)}), got {len(o)}")
    if arrival_s is None and saturated:
        arrival = [0.0] * len(s)
    else:
        a = _as_1d("arrival_s", arrival_s)
        if a.size != len(s):
            raise InputError(
                "arrival_s", f"must have the same length as prompt ({len(s)}), got {a.size}"
            )
        a = a.astype(np.float64)
        bad = ~np.isfinite(a)
        if bad.any():
            i = _first_bad(bad)
            raise InputError("arrival_s", f"must be finite; arrival_s[{i}] = {a[i]}")
        if a.size > 1:
            bad = a[1:] < a[:-1]
            if bad.any():
                i = _first_bad(bad) + 1
                raise InputError(
                    "arrival_s",
                    f"must be non-decreasing; arrival_s[{i}] = {a[i]} < arrival_s[{i - 1}] = "
                    f"{a[i - 1]}",
                )
        arrival = [float(x) for x in a]
    for i, (si, oi) in enumerate(zip(s, o, strict=True)):
        if si + oi > m:
            raise InputError(
                "prompt",
                f"every request needs prompt + output <= kv_capacity_tokens M = {m}; request {i} "
                f"has prompt + output = {si} + {oi} = {si + oi} (it could never run)",
            )

    if s:
        policy.admission.check_workload(max(s), max(o), m)
    factors = None
    if system.batch_time.needs_factors:
        if factors_in is None:
            raise InputError(
                "batch_time_factors",
                f"required for a random batch time: an array of length >= num_steps = {steps}",
            )
        f = _as_1d("batch_time_factors", factors_in).astype(np.float64)
        if f.size < steps:
            raise InputError(
                "batch_time_factors", f"must have length >= num_steps = {steps}, got {f.size}"
            )
        f = f[:steps]
        bad = ~(np.isfinite(f) & (f > 0))
        if bad.any():
            i = _first_bad(bad)
            raise InputError(
                "batch_time_factors", f"must be finite and > 0; batch_time_factors[{i}] = {f[i]}"
            )
        factors = [float(x) for x in f]
    return arrival, s, o, factors


# ---------------------------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------------------------


class _Simulator:
    """State of docs/semantics.md "State", advanced one step at a time by :meth:`step`."""

    def __init__(self, arrival, s, o, *, system, policy, stream_ends, saturated, factors):
        self.arrival = arrival
        self.s = s
        self.o = o
        self.r = len(s)
        self.m = int(system.kv_capacity_tokens)
        self.chunk = int(system.chunk_tokens)
        self.batch_time: BatchTime = system.batch_time
        self.policy: Policy = policy
        self.stream_ends = stream_ends
        self.saturated = saturated
        self.factors = factors

        self.clock = 0.0  # t_k
        self.next_arrival = 0  # id of the next request that has not yet joined
        self.queue: list[tuple[int, int]] = []  # waiting entries (id, saved position p)
        self.running: list[list[int]] = []  # [id, p], oldest admission first
        self.used = 0  # U: KV tokens held at the start of the step
        self.completed = 0
        self.preemptions = 0

        self.first_admit = [-1] * self.r
        self.last_admit = [-1] * self.r
        self.first_token = [-1] * self.r
        self.finish = [-1] * self.r
        self.num_preempted = [0] * self.r
        self.arrivals_exhausted = False
        self.backlog_exhausted = False
        adm = policy.admission
        self.ratio = adm.r0 if adm.ratio else None  # SGLang's new-token ratio (float32)
        self.admit_budget = 0  # admission ``conservative``: what step 4 may still admit

    # --- small helpers on request ids -------------------------------------------------------

    def add_request(self, arrival: float, s: int, o: int) -> int:
        """Append a request to this replica's buffer (a router's doing); returns its id."""
        self.arrival.append(arrival)
        self.s.append(s)
        self.o.append(o)
        for values, empty in (
            (self.first_admit, -1),
            (self.last_admit, -1),
            (self.first_token, -1),
            (self.finish, -1),
            (self.num_preempted, 0),
        ):
            values.append(empty)
        self.r += 1
        return self.r - 1

    def mem_of(self, i: int, p: int) -> int:
        return mem(p, self.s[i], self.chunk)

    def growth_of(self, i: int, p: int) -> int:
        return growth(p, self.s[i], self.chunk)

    def ever_admitted(self, i: int) -> bool:
        return self.first_admit[i] >= 0

    # --- step 1 ------------------------------------------------------------------------------

    def arrivals(self, k: int) -> None:
        """Step 1: append every request with arrival_s <= t_k that has not joined (id order).

        Saturated mode: all requests join at step 0. Also sets ``arrivals_exhausted`` when the
        buffer is a prefix of an endless stream and the clock has passed its last arrival:
        t_k > arrival_s[R-1] (strictly greater) at the start of some step k.
        """
        if self.saturated:
            if k == 0:
                self.queue.extend((i, 0) for i in range(self.r))
                self.next_arrival = self.r
            return
        if not self.stream_ends and (self.r == 0 or self.clock > self.arrival[-1]):
            self.arrivals_exhausted = True
        while self.next_arrival < self.r and self.arrival[self.next_arrival] <= self.clock:
            self.queue.append((self.next_arrival, 0))
            self.next_arrival += 1

    # --- step 3 ------------------------------------------------------------------------------

    def preempt_overflow(self, planned_growth: int) -> int:
        """Step 3: while U + growth > M, preempt a running request: ``policy.victim`` says
        which (newest: the newest admitted; otherwise the smallest ``victim.key``, ties to
        the newest).

        Each victim is saved at ``policy.overflow.saved_position(p)`` (recompute: 0; swap: p)
        and put at the head of ``queue`` as it is taken, so the last one taken heads the
        queue (for ``newest``: this step's victims in ``running`` order, oldest admitted
        first), ahead of everything already waiting. Returns the reduced growth.
        """
        victims = []  # as they are taken
        victim = self.policy.victim
        adm = self.policy.admission
        head = adm.retract_steps if adm.ratio else 0  # retraction's headroom per request
        triggered = self.used + planned_growth > self.m
        while triggered and self.used + planned_growth + head * len(self.running) > self.m:
            if victim.newest:
                j = len(self.running) - 1
            else:  # the smallest key, ties to the newest admitted
                keys = [victim.key(p, self.mem_of(i, p)) for i, p in self.running]
                best = min(keys)
                j = max(n for n, key in enumerate(keys) if key == best)
            i, p = self.running.pop(j)
            self.used -= self.mem_of(i, p)
            planned_growth -= self.growth_of(i, p)
            self.num_preempted[i] += 1
            self.preemptions += 1
            victims.append((i, self.policy.overflow.saved_position(p)))
        if victims and not self.policy.admission.can_overflow:
            raise AssertionError("reserve admission can never overflow")  # pragma: no cover
        victims.reverse()  # each victim is put at the head as it is taken
        self.queue[0:0] = victims
        if adm.ratio:
            self.ratio = adm.next_ratio(
                self.ratio, bool(victims), len(self.running), self.reserved_decode()
            )
        return planned_growth

    def reserved_decode(self) -> int:
        """D = Σ_running (N − generated) of admission ``conservative``."""
        n_cap = self.policy.admission.max_tokens
        return sum(n_cap - max(p - num_chunks(self.s[i], self.chunk), 0) for i, p in self.running)

    # --- step 4 ------------------------------------------------------------------------------

    def pick_candidate(self) -> int:
        """Step 4, order policy: the index in ``queue`` of the next candidate
        (``policy.order.pick``: fcfs the head; spf the head if it was admitted before,
        otherwise the smallest prompt among the first W never-admitted entries)."""
        return self.policy.order.pick(self)

    def admit(self, k: int, planned_growth: int) -> int:
        """Step 4: admit candidates while they fit; stop at the first that does not.

        ``policy.admission.fits``: current: U + growth + mem(p+1) <= M. reserve: Σ_running
        (s+o) + (s+o) of the candidate <= M. Returns the increased growth.
        """
        adm = self.policy.admission
        if adm.ratio:  # the budget A, fixed at the start of step 4
            self.admit_budget = adm.budget(
                self.ratio, self.m, self.used, planned_growth, self.reserved_decode()
            )
        while self.queue:
            idx = self.pick_candidate()
            i, p = self.queue[idx]
            if not adm.fits(self, i, p, planned_growth):
                break  # head-of-line blocking in the policy's order
            if adm.ratio:
                self.admit_budget -= self.s[i] + adm.max_tokens
            del self.queue[idx]
            self.running.append([i, p])
            self.used += self.mem_of(i, p)
            planned_growth += self.growth_of(i, p)
            if self.first_admit[i] < 0:
                self.first_admit[i] = k
            self.last_admit[i] = k
        return planned_growth

    # --- step 6 ------------------------------------------------------------------------------

    def batch_time_of(self, k: int, prefill: int, decode: int, kv: int) -> float:
        """Step 6: b_k of the batch-time component (float64, evaluated left to right)."""
        factor = self.factors[k] if self.factors is not None else None
        return float(self.batch_time.time_s(prefill, decode, kv, factor))

    # --- one step ------------------------------------------------------------------------------

    def step(self, k: int) -> dict:
        """Steps 1-7 of docs/semantics.md for step k; returns this step's per-step record."""
        # 1. Arrivals.
        self.arrivals(k)

        # 2. Plan growth.
        planned_growth = sum(self.growth_of(i, p) for i, p in self.running)

        # 3. Overflow.
        planned_growth = self.preempt_overflow(planned_growth)

        # 4. Admission.
        planned_growth = self.admit(k, planned_growth)
        queue_len = len(self.queue)
        if self.saturated and queue_len == 0:
            self.backlog_exhausted = True

        # 5. Execute.
        kv = self.used + planned_growth
        if not 0 <= kv <= self.m:
            raise AssertionError(f"step {k}: KV_k = {kv} outside [0, M = {self.m}]")
        prefill = 0
        decode = 0
        for entry in self.running:
            i, p = entry
            if is_prefill(p, self.s[i], self.chunk):
                prefill += self.growth_of(i, p)
            else:
                decode += 1
                if p == num_chunks(self.s[i], self.chunk) and self.first_token[i] < 0:
                    self.first_token[i] = k
            entry[1] = p + 1
        self.used = kv

        # 6. Batch time.
        b = self.batch_time_of(k, prefill, decode, kv)
        self.clock = self.clock + b

        # 7. Completion.
        still_running = []
        for entry in self.running:
            i, p = entry
            if p == lifetime(self.s[i], self.o[i], self.chunk):
                self.used -= self.s[i] + self.o[i]
                self.finish[i] = k
                self.completed += 1
            else:
                still_running.append(entry)
        self.running = still_running

        return {
            "kv": kv,
            "queue_len": queue_len,
            "running": len(self.running),
            "completions_cum": self.completed,
            "preemptions_cum": self.preemptions,
            "batch_time": b,
            "prefill": prefill,
            "decode": decode,
        }


def simulate(
    arrival_s,
    prompt,
    output,
    *,
    system: System = System(),
    policy: Policy = Policy(),
    num_steps: int,
    stream_ends: bool = False,
    saturated: bool = False,
    batch_time_factors=None,
) -> ReferenceResult:
    """Run the reference simulator for ``num_steps`` steps (docs/semantics.md).

    Args:
        arrival_s: (R,) non-decreasing finite arrival times, seconds (ignored when
            ``saturated``; may then be None).
        prompt, output: (R,) integers s_i >= 1, o_i >= 1 with s_i + o_i <= M.
        system: one replica (:class:`kvstab.sim.System`; M and b̄ scalars), the same object
            the JAX simulator takes.
        policy: admission, overflow, order (:class:`kvstab.sim.Policy`).
        num_steps: T >= 1.
        stream_ends: True if the arrays are the whole stream (trace replay).
        saturated: every request counts as arrived at t = 0.
        batch_time_factors: ξ_k, length >= T, finite and > 0, for a random batch time
            (b_k = b̄·ξ_k; sampled by :func:`kvstab.workload.batch_time_factors`).

    Flags:
        arrivals_exhausted: not ``stream_ends``, not ``saturated``, and at the start of some
            step k the clock t_k > arrival_s[R-1] (strictly; with R = 0 at once): the buffer
            may be missing arrivals that an endless stream would have delivered.
        backlog_exhausted: ``saturated`` and ``queue`` was empty after some step's admissions
            (every request admitted at least once and nothing waiting).

    Raises:
        InputError: naming the field and its allowed range.
        AssertionError: if the invariant 0 <= KV_k <= M fails (a bug, never expected).
    """
    arrival, s, o, factors = _validate(
        arrival_s, prompt, output, system, policy, num_steps, saturated, batch_time_factors
    )
    sim = _Simulator(
        arrival,
        s,
        o,
        system=system,
        policy=policy,
        stream_ends=bool(stream_ends),
        saturated=bool(saturated),
        factors=factors,
    )
    records = []
    clock = [sim.clock]
    for k in range(int(num_steps)):
        records.append(sim.step(k))
        clock.append(sim.clock)
    return _result(sim, records, clock)


def _result(sim: _Simulator, records: list[dict], clock: list[float]) -> ReferenceResult:
    """Collect a finished simulator's per-step records and per-request arrays."""

    def col(key, dtype=np.int64):
        return np.array([rec[key] for rec in records], dtype=dtype)

    def per_request(values):
        return np.array(values, dtype=np.int64).reshape(sim.r)

    return ReferenceResult(
        kv_tokens=col("kv"),
        queue_len=col("queue_len"),
        running=col("running"),
        completions_cum=col("completions_cum"),
        preemptions_cum=col("preemptions_cum"),
        batch_time_s=col("batch_time", np.float64),
        clock_s=np.array(clock, dtype=np.float64),
        prefill_tokens=col("prefill"),
        decode_tokens=col("decode"),
        num_arrived=sim.next_arrival,
        num_completed=sim.completed,
        num_preemptions=sim.preemptions,
        final_queue=len(sim.queue),
        final_running=len(sim.running),
        first_admit_step=per_request(sim.first_admit),
        admit_step=per_request(sim.last_admit),
        first_token_step=per_request(sim.first_token),
        finish_step=per_request(sim.finish),
        num_preempted=per_request(sim.num_preempted),
        flags={
            "arrivals_exhausted": bool(sim.arrivals_exhausted),
            "backlog_exhausted": bool(sim.backlog_exhausted),
        },
    )


# ---------------------------------------------------------------------------------------------
# Replicas behind a router (docs/semantics.md "Replicas and routing")
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ClusterResult:
    """G replicas: one :class:`ReferenceResult` each (request ids local to the replica, in
    the order the router sent them), ``routed[g]`` = the stream indices of replica g's
    requests in that order, and the cluster's flags."""

    replicas: list[ReferenceResult]
    routed: list[list[int]]
    flags: dict


def simulate_cluster(
    arrival_s,
    prompt,
    output,
    *,
    num_replicas: int,
    router: Router,
    system: System = System(),
    policy: Policy = Policy(),
    num_steps: int,
    stream_ends: bool = False,
    batch_time_factors=None,
) -> ClusterResult:
    """G replicas of :func:`simulate` fed from one request stream by a router.

    :class:`~kvstab.sim.RoundRobin`: request i goes to replica i mod G, a split fixed in
    advance; each replica then runs on its own (any batch-time model; random factors are
    shared). A dynamic router (:class:`~kvstab.sim.JSQ`, :class:`~kvstab.sim.LeastKV`) routes
    at run time on the replicas' states, so they run in lockstep and need a constant batch
    time (shared step boundaries). At each step k, before the replicas' own steps, every
    request of the stream with arrival_s <= t_k not yet routed is taken in id order, sent to
    the replica with the smallest ``router.key`` (ties to the lowest index) and appended to
    the end of its queue at once, so the next one sees it. (:class:`~kvstab.sim.RandomRouter`
    needs a key; the JAX simulator runs it.)

    Flags: ``arrivals_exhausted`` as in :func:`simulate`, on the cluster's stream.
    """
    check_number("num_replicas", num_replicas, low=1, integer=True)
    if not isinstance(router, Router):
        raise InputError("router", f"must be a Router component, got {router!r}")
    if not (router.dynamic or isinstance(router, RoundRobin)):
        raise InputError(
            "router", f"the reference runs round_robin, jsq, least_kv; got {router.name}"
        )
    g = int(num_replicas)
    s_all, o_all = np.asarray(prompt), np.asarray(output)
    a_all = np.asarray(arrival_s, dtype=np.float64)
    if not router.dynamic:
        runs = [
            simulate(
                a_all[r::g],
                s_all[r::g],
                o_all[r::g],
                system=system,
                policy=policy,
                num_steps=num_steps,
                stream_ends=stream_ends,
                batch_time_factors=batch_time_factors,
            )
            for r in range(g)
        ]
        exhausted = any(run.flags["arrivals_exhausted"] for run in runs)
        routed = [list(range(r, len(s_all), g)) for r in range(g)]
        return ClusterResult(runs, routed, {"arrivals_exhausted": exhausted})

    if not isinstance(system.batch_time, ConstantBatchTime):
        raise InputError(
            "batch_time",
            f"router {router.name!r} needs a constant batch time (replicas share step "
            f"boundaries), got {system.batch_time.name!r}",
        )
    arrival, s, o, _ = _validate(arrival_s, prompt, output, system, policy, num_steps, False, None)
    sims = [
        _Simulator(
            [],
            [],
            [],
            system=system,
            policy=policy,
            stream_ends=True,  # a replica's buffer is whatever the router sent it
            saturated=False,
            factors=None,
        )
        for _ in range(g)
    ]
    routed: list[list[int]] = [[] for _ in range(g)]
    records: list[list[dict]] = [[] for _ in range(g)]
    clocks = [[sim.clock] for sim in sims]
    next_id = 0
    exhausted = False
    for k in range(int(num_steps)):
        clock = sims[0].clock
        assert all(sim.clock == clock for sim in sims)  # lockstep: one shared clock
        if not stream_ends and (not arrival or clock > arrival[-1]):
            exhausted = True
        while next_id < len(s) and arrival[next_id] <= clock:
            keys = [router.key(sim) for sim in sims]
            dest = keys.index(min(keys))  # ties to the lowest index
            sims[dest].add_request(arrival[next_id], s[next_id], o[next_id])
            sims[dest].arrivals(k)  # joins the end of that replica's queue now
            routed[dest].append(next_id)
            next_id += 1
        for r, sim in enumerate(sims):
            records[r].append(sim.step(k))
            clocks[r].append(sim.clock)
    return ClusterResult(
        [_result(sim, records[r], clocks[r]) for r, sim in enumerate(sims)],
        routed,
        {"arrivals_exhausted": exhausted},
    )
