"""The vectorized JAX simulator of KV-limited batched decoding (docs/semantics.md).

Design (why it is fast): a step never loops over all running requests. Each trajectory keeps

* a **calendar** (ring of ``cal_len`` steps) of difference arrays: when a request enters the
  batch its whole future is known (chunked prefill, then one token per step, then it frees
  s+o), so the step at which its per-step growth changes and the step at which it completes
  are written once; each step reads one calendar entry. Preempting a request erases its
  future entries.
* a **ring of running requests in admission order** (``max_running`` slots): the newest is at
  the tail, so the preemption victim is found in O(1) (completed requests are trimmed lazily).
* the **waiting queue** as a stack of preempted requests (top = head of the queue) in front of
  a window over the arrival buffer (fresh requests, in arrival order).

So one step costs O(1) plus one short loop iteration per window of preemptions or admissions.
The loops run at batch level: an iteration covers the whole batch while many trajectories
still need one, then only a compacted list of those that do (:func:`_loop`), because in most
steps nearly every trajectory needs one iteration and only a handful need more. Static sizes
(ring, stack, calendar, request buffer) are fixed outside jit; hitting any of them sets a flag
and :func:`simulate` re-runs larger. Counts (arrivals, queue, completions) are exact.

Public entry points: :func:`simulate` (the driver, with validation and automatic re-runs),
:func:`batch_rollout` (jitted core: vmap over trajectories, ``lax.scan`` over steps).
λ, M and b̄ are traced per-trajectory arrays: sweeping them does not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kvstab import SIM_SEMANTICS_VERSION
from kvstab.errors import InputError, check_number
from kvstab.workload import Workload

ADMISSIONS = ("current", "reserve")
OVERFLOWS = ("recompute", "swap")
ORDERS = ("fcfs", "spf")
BATCH_TIME_MODELS = ("constant", "linear", "random")

# Flag bits: a set bit means a static cap was hit (results not to be trusted; re-run larger)
# or a stream ran out.
FLAG_RING_FULL = 1  # more concurrently running requests than max_running
FLAG_STACK_FULL = 2  # more waiting preempted requests than max_preempted
FLAG_ARRIVALS_EXHAUSTED = 4  # clock passed the last buffered arrival of an endless stream
FLAG_BACKLOG_EXHAUSTED = 8  # saturated run admitted every buffered request
FLAG_KV_OVER_M = 16  # invariant KV <= M broken (a bug; never expected)
FLAG_LOOP_LIMIT = 32  # a step needed more preemption/admission iterations than allowed
FLAG_REPLICA_FULL = 64  # a dynamic router sent a replica more requests than its buffer holds
FLAG_NAMES = {
    FLAG_RING_FULL: "ring_full",
    FLAG_STACK_FULL: "stack_full",
    FLAG_ARRIVALS_EXHAUSTED: "arrivals_exhausted",
    FLAG_BACKLOG_EXHAUSTED: "backlog_exhausted",
    FLAG_KV_OVER_M: "kv_over_capacity",
    FLAG_LOOP_LIMIT: "loop_limit",
    FLAG_REPLICA_FULL: "replica_buffer_full",
}
# Routers that need the replicas' run-time state (docs/semantics.md "Replicas and routing").
DYNAMIC_ROUTERS = ("jsq", "least_kv")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Static configuration: fixes shapes and code paths (changing it recompiles).

    Attributes:
        chunk_tokens: chunked-prefill size ŝ.
        num_steps: steps simulated (T); a multiple of ``block_steps``.
        block_steps: time-series resolution: outputs are reduced over blocks of this many steps.
        admission / overflow / order: policies (docs/semantics.md §4, §3).
        spf_window: W for ``order='spf'``.
        batch_time_model: ``constant``, ``linear`` or ``random``.
        saturated: endless backlog (every buffered request waiting at t = 0).
        stream_ends: the arrival buffer is the whole stream (trace replay), not a prefix.
        max_running: ring size K (concurrent running requests).
        max_preempted: stack size S (waiting preempted requests).
        cal_len: calendar ring length (power of two > longest lifetime).
        num_records: per-request records are kept for request ids < num_records.
        max_loop: cap on preemption + admission iterations in one step.
        compact_rows: once at most this many trajectories still need a preemption or
            admission iteration in a step, iterations run over just those (0: automatic,
            1/16 of the rows per device from 512 rows up). A pure speed knob, like the
            windows below.
        record_steps: also emit per-step arrays (KV, queue, batch time, ...) of shape (traj, T).
        preempt_window, admit_window: preemptions / FCFS admissions handled per loop iteration
            (prefix sums over that many ring entries / queue-head candidates). Pure speed
            knobs: the loops repeat until done, results do not depend on them.
        router: ``none`` (every row has its own arrival stream: one replica, or replicas
            behind a static router that split the stream beforehand) or a dynamic router
            (``jsq``, ``least_kv``): rows are then (traj, replica) groups of ``num_replicas``
            fed at run time from one stream per trajectory.
        num_replicas: G, the replicas per trajectory (dynamic routers only).
        replica_requests: each replica's request buffer (dynamic routers only).
        route_window: arrivals routed per loop iteration (a speed knob).
    """

    chunk_tokens: int = 512
    num_steps: int = 4096
    block_steps: int = 64
    admission: str = "current"
    overflow: str = "recompute"
    order: str = "fcfs"
    spf_window: int = 32
    batch_time_model: str = "constant"
    saturated: bool = False
    stream_ends: bool = False
    max_running: int = 512
    max_preempted: int = 512
    cal_len: int = 4096
    num_records: int = 0
    max_loop: int = 1 << 20
    compact_rows: int = 0
    record_steps: bool = False
    preempt_window: int = 2
    admit_window: int = 4
    router: str = "none"
    num_replicas: int = 1
    replica_requests: int = 0
    route_window: int = 4

    def validate(self) -> None:
        check_number("chunk_tokens", self.chunk_tokens, low=1, integer=True)
        check_number("num_steps", self.num_steps, low=1, integer=True)
        check_number("block_steps", self.block_steps, low=1, integer=True)
        if self.num_steps % self.block_steps:
            raise InputError(
                "num_steps",
                f"must be a multiple of block_steps={self.block_steps}, got {self.num_steps}",
            )
        for name, value, allowed in (
            ("admission", self.admission, ADMISSIONS),
            ("overflow", self.overflow, OVERFLOWS),
            ("order", self.order, ORDERS),
            ("batch_time_model", self.batch_time_model, BATCH_TIME_MODELS),
        ):
            if value not in allowed:
                raise InputError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        check_number("spf_window", self.spf_window, low=1, integer=True)
        for name in ("max_running", "max_preempted", "cal_len"):
            check_number(name, getattr(self, name), low=2, integer=True)
        if self.cal_len & (self.cal_len - 1):
            raise InputError("cal_len", f"must be a power of two, got {self.cal_len}")
        check_number("num_records", self.num_records, low=0, integer=True)
        check_number("compact_rows", self.compact_rows, low=0, integer=True)
        if self.router not in ("none",) + DYNAMIC_ROUTERS:
            raise InputError(
                "router", f"must be none, {', '.join(DYNAMIC_ROUTERS)}, got {self.router!r}"
            )
        if self.dynamic:
            check_number("num_replicas", self.num_replicas, low=1, integer=True)
            check_number("replica_requests", self.replica_requests, low=1, integer=True)
            check_number("route_window", self.route_window, low=1, integer=True)
            if self.batch_time_model != "constant":
                raise InputError(
                    "router",
                    f"{self.router} needs batch_time_model='constant' (replicas routed at run "
                    f"time must share step boundaries), got {self.batch_time_model!r}",
                )
            if self.saturated:
                raise InputError(
                    "router", f"{self.router} routes arrivals; a saturated run has none"
                )

    @property
    def dynamic(self) -> bool:
        return self.router in DYNAMIC_ROUTERS

    @property
    def window(self) -> int:
        return self.spf_window if self.order == "spf" else 1


class SimParams(NamedTuple):
    """Traced per-trajectory parameters (arrays of shape (traj,) under :func:`batch_rollout`).

    Attributes:
        kv_capacity_tokens: M, int32.
        arrival_rate_per_s: λ; arrival time = epoch / λ (replay: 1.0), float32.
        batch_time_s: b̄ for ``constant`` and ``random`` (b_k = b̄·ξ_k), float32.
        linear_coefs: (4,) float32 (c₀ s, c_p s/token, c_d s/token, c_kv s/token) for ``linear``.
    """

    kv_capacity_tokens: jax.Array
    arrival_rate_per_s: jax.Array
    batch_time_s: jax.Array
    linear_coefs: jax.Array


# Column layouts of the packed arrays. Packing matters: on CPU a vmapped scatter costs
# ~100 us per op at N=2048 whatever its size, so one row update beats five element updates.
# Columns of the calendar row of step j, read at the end of step j: tokens freed and requests
# completed by step j, and the next step's change of nfull, change of ndec, last-chunk
# remainders.
CAL_FREE, CAL_NCOMP, CAL_DFULL, CAL_DDEC, CAL_ONCE = range(5)
RING_ID, RING_A0 = range(2)  # columns of ring
REC_FIRST_ADMIT, REC_ADMIT, REC_TOK_FINAL, REC_TOK_LAST, REC_FINISH, REC_NPRE = range(6)


class _Req(NamedTuple):
    """The request buffers as the step reads them: (s, o) packed, so that one gather
    fetches both (on CPU every gather or scatter op has a fixed cost)."""

    arrival_epoch: Any  # (req,) float32 (None where not needed)
    so: jax.Array  # (req, 2) int32: prompt s, output o


class _State(NamedTuple):
    t: jax.Array  # clock at the start of step k, s (float32, Kahan-compensated)
    t_comp: jax.Array  # Kahan compensation of the clock sum
    k: jax.Array  # step index
    used: jax.Array  # U: KV held at the start of the step
    nfull: jax.Array  # requests doing a full ŝ chunk this step
    ndec: jax.Array  # requests decoding this step
    once: jax.Array  # this step's last-chunk remainders
    peak_sum: jax.Array  # Σ (s+o) over running (reserve admission)
    # (L, 5) calendar by step mod L (columns CAL_*), every row read at its step's end, after
    # the loops that write it: one scatter per loop iteration, and no read before a write in
    # the step (that would make XLA copy the whole array every step).
    cal: jax.Array
    # (K, 2) running requests by admission sequence mod K: id, virtual start a0
    # (position p = k - a0).
    ring: jax.Array
    # (K,) completion step of each ring entry; -1 once preempted. Kept apart from ``ring``:
    # it is read and written in the same loop iteration, which on a packed array costs a copy.
    ring_end: jax.Array
    tail: jax.Array  # admission sequence number of the next admission
    n_running: jax.Array
    stack: jax.Array  # (S, 2) preempted waiting requests (id, saved position); top = head
    top: jax.Array
    win_id: jax.Array  # (W,) fresh waiting requests in the window, -1 = empty
    p_adm: jax.Array  # next fresh request id not yet in the window
    p_arr: jax.Array  # requests arrived so far
    completed: jax.Array
    preempted: jax.Array
    max_kv: jax.Array
    flags: jax.Array
    # (Rr, 6) per-request records for ids < num_records (Rr = 1 and untouched when off):
    # first admission, last admission, first-token step confirmed by a later preemption,
    # first-token step of the latest admission (tentative), finish step of the latest
    # admission (tentative; -1 if preempted), preemptions.
    rec: jax.Array
    # Dynamic routers only (None otherwise): this replica's request buffer, filled by the
    # router ((prompt, output) pairs, index in the trajectory's stream; -1 = empty), the stream
    # pointer (next unrouted request; equal in every replica of a trajectory) and Σ s over
    # waiting requests (the least_kv key's second term).
    buf_so: Any = None
    buf_src: Any = None
    r_ptr: Any = None
    wait_tok: Any = None


class BlockOut(NamedTuple):
    """Per-block outputs, shape (traj, block) under :func:`batch_rollout`."""

    mean_kv: jax.Array  # mean KV tokens in use over the block's steps
    max_kv: jax.Array
    mean_queue: jax.Array  # mean waiting queue (after admissions)
    mean_running: jax.Array
    queue_end: jax.Array  # queue at the block's last step
    completed: jax.Array  # cumulative completions at the block's end
    preempted: jax.Array  # cumulative
    arrived: jax.Array  # cumulative
    clock_s: jax.Array  # clock at the block's end


class StepOut(NamedTuple):
    """Per-step outputs (only with ``record_steps``), shape (traj, step)."""

    kv_tokens: jax.Array
    queue_len: jax.Array
    running: jax.Array
    completed: jax.Array
    preempted: jax.Array
    batch_time_s: jax.Array
    prefill_tokens: jax.Array
    decode_tokens: jax.Array


def _ceil_div(a, b):
    """ceil(a / b) for a >= 0, b >= 1 (truncating division: no floor sign fix-ups)."""
    return jax.lax.div(a + b - 1, jnp.asarray(b, jnp.result_type(a)))


def _lengths(s, o, chunk):
    c = _ceil_div(s, chunk)
    return c, c + o, s - (c - 1) * chunk  # chunks C, lifetime L, last-chunk remainder r


def _mem(p, s, c, chunk):
    """Memory held after p steps of life (docs/semantics.md)."""
    return jnp.where(p <= c, jnp.minimum(p * chunk, s), s + p - c)


def _init_state(cfg: SimConfig, num_requests: int) -> _State:
    z = jnp.int32(0)
    rr = max(cfg.num_records, 1)
    ring = jnp.zeros((cfg.max_running, 2), jnp.int32)
    rec = jnp.full((rr, 6), -1, jnp.int32).at[:, REC_NPRE].set(0)
    st = _State(
        t=jnp.float32(0.0),
        t_comp=jnp.float32(0.0),
        k=z,
        used=z,
        nfull=z,
        ndec=z,
        once=z,
        peak_sum=z,
        cal=jnp.zeros((cfg.cal_len, 5), jnp.int32),
        ring=ring,
        ring_end=jnp.full((cfg.max_running,), -1, jnp.int32),
        tail=z,
        n_running=z,
        stack=jnp.zeros((cfg.max_preempted, 2), jnp.int32),
        top=z,
        win_id=jnp.full((cfg.window,), -1, jnp.int32),
        p_adm=z,
        p_arr=z,
        completed=z,
        preempted=z,
        max_kv=z,
        flags=z,
        rec=rec,
    )
    if cfg.dynamic:
        rb = cfg.replica_requests
        st = st._replace(
            buf_so=jnp.ones((rb, 2), jnp.int32),
            buf_src=jnp.full((rb,), -1, jnp.int32),
            r_ptr=z,
            wait_tok=z,
        )
    return st


def _growth(st: _State, chunk: int):
    """Planned KV growth of the running requests in this step."""
    return chunk * st.nfull + st.once + st.ndec


def _begin(st: _State, wl: _Req, params: SimParams, cfg: SimConfig) -> _State:
    """docs/semantics.md step 1 (arrivals). The step's growth counters were set at the end of
    the previous step, from its calendar row."""
    R = wl.so.shape[0]
    if cfg.dynamic:  # the router already appended this step's arrivals (st.p_arr)
        return _refill_window(st)
    if cfg.saturated:
        p_arr = jnp.int32(R)
    else:
        p_arr, exhausted = _arrivals(wl.arrival_epoch, params.arrival_rate_per_s, st.t)
        if not cfg.stream_ends:
            st = st._replace(flags=st.flags | jnp.where(exhausted, FLAG_ARRIVALS_EXHAUSTED, 0))
    return _refill_window(st._replace(p_arr=p_arr))


def _arrivals(epoch, lam, t):
    """Requests of one buffer arrived by clock t (arrival = epoch / λ <= t), and whether t
    has passed its last arrival. The one definition for every path, evaluated once per step:
    re-evaluating epoch / λ <= t elsewhere could round differently in another fusion."""
    arrival_s = epoch / lam
    count = jnp.searchsorted(arrival_s, t, side="right", method="scan_unrolled")
    return count.astype(jnp.int32), t > arrival_s[-1]


def _overflowing(st, cfg: SimConfig):
    """The step overflows M (``st``: a :class:`_State` with ``cap`` = M, or a :class:`_Sc`)."""
    return st.used + _growth(st, cfg.chunk_tokens) > st.cap


# ---------------------------------------------------------------------------------------------
# Steps 3 and 4: the preemption and admission loops.
#
# Both loops run at batch level. A trajectory's loop state is one packed int32 row of scalars
# (:class:`_Sc`); its arrays (calendar, ring, stack, records: :class:`_Big`) stay at batch level:
# a loop body reads them at (trajectory, index) and returns its writes (:class:`_Writes`), which
# the driver scatters. So an iteration can run over the whole batch, or, once few trajectories
# still need one, over a compacted list of just those (:func:`_loop`): most steps need one or
# two iterations in nearly every trajectory and a few more in a handful.


class _Sc(NamedTuple):
    """One trajectory's scalars in the loops (fields as in :class:`_State`; ``cap`` = M)."""

    used: Any
    nfull: Any
    ndec: Any
    once: Any
    peak_sum: Any
    tail: Any
    n_running: Any
    top: Any
    p_adm: Any
    p_arr: Any
    preempted: Any
    flags: Any
    wait_tok: Any  # 0 unless a dynamic router keeps it
    k: Any
    cap: Any
    win_id: Any  # (W,)


_SC_SCALARS = _Sc._fields[:-1]


def _pack(st: _State, cap) -> jax.Array:
    """(rows, F) int32: every row's :class:`_Sc`, packed."""
    zero = jnp.zeros_like(st.used)
    cols = [
        cap if f == "cap" else (zero if getattr(st, f) is None else getattr(st, f))
        for f in _SC_SCALARS
    ]
    return jnp.concatenate([jnp.stack(cols, axis=1), st.win_id], axis=1)


def _sc(row) -> _Sc:
    n = len(_SC_SCALARS)
    return _Sc(*(row[j] for j in range(n)), row[n:])


def _sc_row(sc: _Sc):
    return jnp.concatenate([jnp.stack(sc[:-1]), sc.win_id])


def _unpack(st: _State, packed) -> _State:
    n = len(_SC_SCALARS)
    upd = {f: packed[:, j] for j, f in enumerate(_SC_SCALARS) if f not in ("cap", "k")}
    if st.wait_tok is None:
        del upd["wait_tok"]
    return st._replace(win_id=packed[:, n:], **upd)


class _Big(NamedTuple):
    """The arrays the loops read and write, batch level (rows, ...)."""

    cal: jax.Array
    ring: jax.Array
    ring_end: jax.Array
    stack: jax.Array
    rec: jax.Array


class _Writes(NamedTuple):
    """A loop body's writes to :class:`_Big`: (index, value) pairs over a window, index out of
    range where nothing is written; None where the body writes nothing. ``cal`` is added,
    the others set."""

    cal: Any = None
    ring: Any = None
    ring_end: Any = None
    stack: Any = None
    rec: Any = None


class _Ctx(NamedTuple):
    """What a loop body reads besides its scalars: the batch arrays, the request buffers
    (rows, req, 2), and its own row index ``tid`` (the only per-trajectory field)."""

    big: _Big
    so: jax.Array
    tid: Any

    def lens(self, idx):
        """(s, o) of this trajectory's requests ``idx``."""
        row = self.so[self.tid, idx]
        return row[..., 0], row[..., 1]


def _apply_writes(big: _Big, tid, w: _Writes) -> _Big:
    """Scatter the bodies' writes (leading dim: the rows ``tid`` ran; ``tid`` = rows means
    none) into the batch arrays."""
    rows = big.cal.shape[0]

    def put(arr, item, add):
        if item is None:
            return arr
        idx, val = item
        size = arr.shape[1]
        t = tid.reshape((-1,) + (1,) * (idx.ndim - 1))
        val = val.reshape(idx.shape + arr.shape[2:])
        if rows * size < 2**31:  # one flat index: cheaper on CPU than a (row, index) pair
            flat = jnp.where((idx < size) & (t < rows), t * size + idx, rows * size)
            a = arr.reshape((rows * size,) + arr.shape[2:])
            a = a.at[flat].add(val, mode="drop") if add else a.at[flat].set(val, mode="drop")
            return a.reshape(arr.shape)
        t = jnp.broadcast_to(t, idx.shape)
        return arr.at[t, idx].add(val, mode="drop") if add else arr.at[t, idx].set(val, mode="drop")

    return _Big(
        put(big.cal, w.cal, True),
        put(big.ring, w.ring, False),
        put(big.ring_end, w.ring_end, False),
        put(big.stack, w.stack, False),
        put(big.rec, w.rec, False),
    )


def compact_rows(cfg: SimConfig, rows: int) -> int:
    """How many trajectories a compacted loop iteration runs (``rows`` = no compaction).

    Automatic: 1/16 of the rows from 512 rows (per device) up. Compaction traces each loop
    body a second time (about 1.5 s more compile on a CPU), which pays only for batches
    large enough that the run, not the compile, dominates."""
    if cfg.compact_rows:
        return min(cfg.compact_rows, rows)
    return -(-rows // 16 // 8) * 8 if rows >= 512 else rows


def _first_active(go, cap: int):
    """Indices of the first ``cap`` True entries of ``go``, padded with len(go).

    Ranks come from prefix sums; XLA:CPU lowers a cumsum to quadratic work, so up to 4096
    rows they run in two levels (within blocks of 32, then over the blocks: few, small ops,
    which also keeps compile time down), beyond that as a logarithmic scan."""
    n = go.shape[0]
    g = go.astype(jnp.int32)
    if n <= 4096:
        nb = -(-n // 32)
        within = jnp.cumsum(jnp.pad(g, (0, nb * 32 - n)).reshape(nb, 32), axis=1)
        before = jnp.cumsum(within[:, -1]) - within[:, -1]
        rank = (within + before[:, None]).reshape(-1)[:n] - 1
    else:
        rank = jax.lax.associative_scan(jnp.add, g) - 1
    out = jnp.full((cap,), n, jnp.int32)
    return out.at[jnp.where(go, rank, cap)].set(jnp.arange(n, dtype=jnp.int32), mode="drop")


def _loop(body, sc, go, big: _Big, so, cfg: SimConfig):
    """Run ``body`` (one window of one trajectory: (sc, go, ctx) -> (sc, go, writes)) until no
    row has ``go``: over the whole batch while more than :func:`compact_rows` rows do, then
    over compacted lists of them. Rows without ``go`` are untouched, so both kinds of
    iteration give the same results. Returns (sc, go, big, iterations)."""
    rows = sc.shape[0]
    cap = compact_rows(cfg, rows)
    ctx_axes = _Ctx(None, None, 0)

    def run(packed, g, tid, big):
        return jax.vmap(lambda r, g_, x: _wrap(body, r, g_, x), in_axes=(0, 0, ctx_axes))(
            packed, g, _Ctx(big, so, tid)
        )

    def full(c):
        sc, go, big, n = c
        tid = jnp.arange(rows, dtype=jnp.int32)
        sc, go, w = run(sc, go, tid, big)
        return sc, go, _apply_writes(big, tid, w), n + 1

    def compacted(c):
        sc, go, big, n = c
        tid = _first_active(go, cap)
        t = jnp.minimum(tid, rows - 1)
        new, g, w = run(sc[t], go[t] & (tid < rows), t, big)
        sc = sc.at[tid].set(new, mode="drop")
        go = go.at[tid].set(g, mode="drop")
        return sc, go, _apply_writes(big, tid, w), n + 1

    c = (sc, go, big, jnp.int32(0))
    many = cap if cap < rows else 0  # run the whole batch while more than this many need it
    c = jax.lax.while_loop(lambda c: (jnp.sum(c[1]) > many) & (c[3] < cfg.max_loop), full, c)
    if cap < rows:
        c = jax.lax.while_loop(lambda c: jnp.any(c[1]) & (c[3] < cfg.max_loop), compacted, c)
    return c


def _wrap(body, row, go, x: _Ctx):
    sc, go, w = body(_sc(row), go, x)
    return _sc_row(sc), go, w


def _preempt_window(sc: _Sc, go, x: _Ctx, cfg: SimConfig):
    """Step 3 for up to ``preempt_window`` tail entries at once.

    Walking from the newest ring entry down, an entry is consumed while the step still
    overflows before reaching it (exclusive prefix sum of the memory the alive ones free,
    after this step's growth); consumed alive entries are preempted, consumed completed ones
    trimmed. Identical to one-at-a-time (docs/semantics.md step 3). Returns the scalars,
    whether the step still overflows, and the writes.
    """
    P, K, S, chunk, k = (
        cfg.preempt_window,
        cfg.max_running,
        cfg.max_preempted,
        cfg.chunk_tokens,
        sc.k,
    )
    excess = sc.used + _growth(sc, chunk) - sc.cap
    j = jnp.arange(P, dtype=jnp.int32)
    slot = (sc.tail - 1 - j) % K
    ent = x.big.ring[x.tid, slot]
    rid, a0 = ent[:, RING_ID], ent[:, RING_A0]
    alive = x.big.ring_end[x.tid, slot] >= k
    s, o = x.lens(rid)
    c, _, r = _lengths(s, o, chunk)
    p = k - a0
    freed = jnp.where(alive, _mem(p + 1, s, c, chunk), 0)  # held after this step's growth
    before = jnp.cumsum(freed) - freed
    consumed = go & (excess > 0) & (before < excess)
    victim = consumed & alive
    vi = victim.astype(jnp.int32)
    n_vict = jnp.sum(vi)
    rank = jnp.cumsum(vi) - vi
    pos_stack = sc.top + rank
    fits = pos_stack < S
    saved = p if cfg.overflow == "swap" else jnp.zeros_like(p)
    w = _Writes(
        cal=_life_events(victim, a0, p, s, o, cfg, -1),
        ring_end=(_drop(victim, slot, K), jnp.full_like(slot, -1)),
        stack=(_drop(victim & fits, pos_stack, S), jnp.stack([rid, saved], axis=-1)),
    )
    sc = sc._replace(
        used=sc.used - jnp.sum(vi * _mem(p, s, c, chunk)),
        nfull=sc.nfull - jnp.sum(vi * (p < c - 1)),
        once=sc.once - jnp.sum(vi * jnp.where(p == c - 1, r, 0)),
        ndec=sc.ndec - jnp.sum(vi * (p >= c)),
        peak_sum=sc.peak_sum - jnp.sum(vi * (s + o)),
        n_running=sc.n_running - n_vict,
        top=jnp.minimum(sc.top + n_vict, S),
        preempted=sc.preempted + n_vict,
        wait_tok=sc.wait_tok + jnp.sum(vi * s) if cfg.router == "least_kv" else sc.wait_tok,
        flags=sc.flags | jnp.where(jnp.any(victim & ~fits), FLAG_STACK_FULL, 0),
        tail=sc.tail - jnp.sum(consumed.astype(jnp.int32)),
    )
    if cfg.num_records:
        nrec = x.big.rec.shape[1]
        ri = _drop(victim & (rid < cfg.num_records), rid, nrec)
        old = x.big.rec[x.tid, jnp.minimum(ri, nrec - 1)]
        tok_final = jnp.where((p > c) & (old[:, REC_TOK_FINAL] < 0), a0 + c, old[:, REC_TOK_FINAL])
        neg = -jnp.ones_like(p)
        new = jnp.stack(
            [old[:, REC_FIRST_ADMIT], old[:, REC_ADMIT], tok_final, neg, neg, old[:, REC_NPRE] + 1],
            axis=-1,
        )
        w = w._replace(rec=(ri, new))
    return sc, go & _overflowing(sc, cfg), w


def _admit_window(sc: _Sc, go, x: _Ctx, cfg: SimConfig):
    """Step 4 (FCFS) for up to ``admit_window`` queue-head candidates at once.

    Candidates in queue order: the preempted stack from its top, then the fresh requests
    (window slot, then the arrival buffer). The admitted ones are the longest prefix whose
    cumulative need fits (needs are positive, so this is FCFS with head-of-line blocking)
    and finds free ring slots. Returns the scalars, whether all candidates were admitted
    (then the next iteration looks further), and the writes.
    """
    A, K, chunk, k = cfg.admit_window, cfg.max_running, cfg.chunk_tokens, sc.k
    j = jnp.arange(A, dtype=jnp.int32)
    from_stack = j < sc.top
    srow = x.big.stack[x.tid, jnp.clip(sc.top - 1 - j, 0, cfg.max_preempted - 1)]
    q = j - sc.top
    win0 = sc.win_id[0]
    fresh_id = jnp.where(q == 0, win0, sc.p_adm + q - 1)
    fresh_ok = (q >= 0) & (win0 >= 0) & ((q == 0) | (sc.p_adm + q - 1 < sc.p_arr))
    exists = go & (from_stack | fresh_ok)
    cid = jnp.maximum(jnp.where(from_stack, srow[:, 0], fresh_id), 0)
    cpos = jnp.where(from_stack, srow[:, 1], 0)
    s, o = x.lens(cid)
    c = _ceil_div(s, chunk)
    if cfg.admission == "current":
        need = _mem(cpos + 1, s, c, chunk)
        budget = sc.cap - sc.used - _growth(sc, chunk)
    else:
        need = s + o
        budget = sc.cap - sc.peak_sum
    fits = exists & (jnp.cumsum(need) <= budget)
    slot = (sc.tail + j) % K
    slot_free = x.big.ring_end[x.tid, slot] < k
    ok = fits & slot_free
    admit = jnp.cumprod(ok.astype(jnp.int32)).astype(jnp.bool_)
    n_adm = jnp.sum(admit.astype(jnp.int32))
    blocked_by_ring = jnp.any(fits & ~slot_free & (jnp.cumsum(~ok) == 1))
    n_stack = jnp.minimum(n_adm, sc.top)
    n_fresh = n_adm - n_stack
    p_adm = sc.p_adm + jnp.maximum(n_fresh - 1, 0)
    refill = (n_fresh > 0) & (p_adm < sc.p_arr)
    win = jnp.where(n_fresh > 0, jnp.where(refill, p_adm, -1), win0)
    sc, w = _enter(sc, admit, cid, cpos, slot, s, o, x, cfg)
    sc = sc._replace(
        top=sc.top - n_stack,
        win_id=sc.win_id.at[0].set(win),
        p_adm=p_adm + refill.astype(jnp.int32),
        flags=sc.flags | jnp.where(go & blocked_by_ring, FLAG_RING_FULL, 0),
    )
    return sc, go & (n_adm == A), w


def _candidate(sc: _Sc, x: _Ctx, cfg: SimConfig):
    """Step 4: the order policy's next candidate (id, saved position)."""
    from_stack = sc.top > 0
    srow = x.big.stack[x.tid, jnp.maximum(sc.top - 1, 0)]
    wid = sc.win_id
    valid = wid >= 0
    big = jnp.iinfo(jnp.int32).max
    if cfg.window == 1:
        widx = jnp.int32(0)
    else:
        # smallest prompt, ties to the earliest id (= earliest queue position)
        sw = jnp.where(valid, x.lens(jnp.maximum(wid, 0))[0], big)
        widx = jnp.argmin(jnp.where(sw == jnp.min(sw), wid, big)).astype(jnp.int32)
    cid = jnp.where(from_stack, srow[0], wid[widx])
    cpos = jnp.where(from_stack, srow[1], 0)
    exists = from_stack | valid[widx]
    return exists, from_stack, widx, jnp.maximum(cid, 0), cpos


def _admit_iter(sc: _Sc, go, x: _Ctx, cfg: SimConfig):
    """Step 4, one candidate (the ``spf`` path): admit it if it fits (and ``go``) and pop it
    from the queue: the stack top, or window slot ``widx``, refilled from the arrivals.
    Returns the scalars, whether it was admitted, and the writes."""
    chunk, K = cfg.chunk_tokens, cfg.max_running
    exists, from_stack, widx, cid, cpos = _candidate(sc, x, cfg)
    s, o = x.lens(cid)
    c = _ceil_div(s, chunk)
    if cfg.admission == "current":
        need = _mem(cpos + 1, s, c, chunk)
        ok = sc.used + _growth(sc, chunk) + need <= sc.cap
    else:
        ok = sc.peak_sum + s + o <= sc.cap
    slot = sc.tail % K
    slot_free = x.big.ring_end[x.tid, slot] < sc.k
    want = go & exists & ok
    do = want & slot_free
    sc = sc._replace(flags=sc.flags | jnp.where(want & ~slot_free, FLAG_RING_FULL, 0))
    sc, w = _enter(sc, do[None], cid[None], cpos[None], slot[None], s[None], o[None], x, cfg)
    from_win = do & ~from_stack
    refill = from_win & (sc.p_adm < sc.p_arr)
    W = sc.win_id.shape[0]
    win = sc.win_id.at[_drop(from_win, widx, W)].set(jnp.where(refill, sc.p_adm, -1), mode="drop")
    sc = sc._replace(
        top=sc.top - (do & from_stack).astype(jnp.int32),
        win_id=win,
        p_adm=sc.p_adm + refill.astype(jnp.int32),
    )
    return sc, go & do, w


def _finish(st: _State, row, xi, params: SimParams, cfg: SimConfig):
    """Steps 5–7: execute, batch time, completions (``row``: this step's calendar row, read by
    :func:`_batch_step`), and the next step's growth counters."""
    M = params.kv_capacity_tokens
    prefill_tokens = cfg.chunk_tokens * st.nfull + st.once
    decode_tokens = st.ndec
    kv = st.used + prefill_tokens + decode_tokens
    queue_len = _waiting(st)
    over = (kv > M) | (kv < 0)
    if cfg.batch_time_model == "constant":
        b = params.batch_time_s
    elif cfg.batch_time_model == "random":
        b = params.batch_time_s * xi
    else:
        c0, cp, cd, ckv = (params.linear_coefs[j] for j in range(4))
        b = ((c0 + cp * prefill_tokens) + cd * decode_tokens) + ckv * kv
    free, ncomp = row[CAL_FREE], row[CAL_NCOMP]
    # Kahan summation: a float32 running sum of a fixed b̄ would drift by ~0.3 % at t ~ 5000 s.
    y = b - st.t_comp
    t_next = st.t + y
    backlog_out = cfg.saturated & (queue_len == 0)
    st = st._replace(
        used=kv - free,
        peak_sum=st.peak_sum - free,
        n_running=st.n_running - ncomp,
        completed=st.completed + ncomp,
        nfull=st.nfull + row[CAL_DFULL],
        ndec=st.ndec + row[CAL_DDEC],
        once=row[CAL_ONCE],
        max_kv=jnp.maximum(st.max_kv, kv),
        flags=st.flags
        | jnp.where(over, FLAG_KV_OVER_M, 0)
        | jnp.where(backlog_out, FLAG_BACKLOG_EXHAUSTED, 0),
        t=t_next,
        t_comp=(t_next - st.t) - y,
        k=st.k + 1,
    )
    out = StepOut(
        kv, queue_len, st.n_running, st.completed, st.preempted, b, prefill_tokens, decode_tokens
    )
    return st, out


def _waiting(st: _State):
    """Waiting requests: preempted (stack), in the window, and arrived beyond it."""
    return st.top + jnp.sum(st.win_id >= 0, axis=-1) + (st.p_arr - st.p_adm)


def _route(st: _State, stream: _Req, params: SimParams, cfg: SimConfig) -> _State:
    """Step 1 of every replica under a dynamic router (docs/semantics.md "Replicas and
    routing"), at batch level over the (traj, replica) rows.

    Each trajectory's new arrivals (arrival <= t_k, in id order) are routed one at a time to
    the replica with the smallest key, ties to the lowest index, and appended to its queue
    before the next is routed: ``jsq`` key = waiting + running, ``least_kv`` key = U + Σ s
    of waiting requests. ``route_window`` arrivals per loop iteration, sequentially unrolled.
    """
    G, A, rb = cfg.num_replicas, cfg.route_window, cfg.replica_requests
    n, total = stream.so.shape[:2]
    rows = n * G
    grid = lambda x: x.reshape(n, G)  # noqa: E731
    lam = grid(params.arrival_rate_per_s)[:, 0]
    t = grid(st.t)[:, 0]
    if cfg.router == "jsq":
        key0 = grid(_waiting(st) + st.n_running)
    else:
        key0 = grid(st.used + st.wait_tok)
    lanes = jnp.arange(G, dtype=jnp.int32)[None, :]
    first_row = jnp.arange(n, dtype=jnp.int32) * G
    ahead = jnp.arange(A, dtype=jnp.int32)[None, :]
    # How many requests have arrived, decided once per step: re-evaluating epoch/λ <= t
    # inside the loop could round differently in another fusion and never terminate.
    arrived, exhausted = jax.vmap(_arrivals)(stream.arrival_epoch, lam, t)

    def cond(c):
        return jnp.any(c[2] < arrived)

    def body(c):
        key, cnt, ptr, bso, bsrc, full = c
        idx = ptr[:, None] + ahead
        due = idx < arrived[:, None]
        idx = jnp.minimum(idx, total - 1)
        so = jnp.take_along_axis(stream.so, idx[:, :, None], axis=1)  # (n, A, 2)
        s = so[:, :, 0]
        dst_rows, dst_cols = [], []
        for j in range(A):
            d = jnp.argmin(key, axis=1).astype(jnp.int32)  # first minimum: lowest index
            hit = (lanes == d[:, None]) & due[:, j : j + 1]
            pos = jnp.sum(jnp.where(hit, cnt, 0), axis=1)
            room = pos < rb
            key = key + hit * (1 if cfg.router == "jsq" else s[:, j : j + 1])
            cnt = cnt + hit * room[:, None]
            full = full | (due[:, j] & ~room)
            dst_rows.append(_drop(due[:, j] & room, first_row + d, rows))
            dst_cols.append(pos)
        r_, c_ = jnp.stack(dst_rows, axis=1), jnp.stack(dst_cols, axis=1)
        bso = bso.at[r_, c_].set(so, mode="drop")
        bsrc = bsrc.at[r_, c_].set(idx, mode="drop")
        ptr = ptr + jnp.sum(due, axis=1, dtype=jnp.int32)
        return key, cnt, ptr, bso, bsrc, full

    init = (
        key0,
        grid(st.p_arr),
        grid(st.r_ptr)[:, 0],
        st.buf_so,
        st.buf_src,
        jnp.zeros(n, jnp.bool_),
    )
    key, cnt, ptr, bso, bsrc, full = jax.lax.while_loop(cond, body, init)
    flag = jnp.where(full, FLAG_REPLICA_FULL, 0)
    if not cfg.stream_ends:  # the clock passed the stream's last buffered arrival
        flag = flag | jnp.where(exhausted, FLAG_ARRIVALS_EXHAUSTED, 0)
    per_row = lambda x: jnp.repeat(x, G)  # noqa: E731
    wait_tok = st.wait_tok + (key - key0).reshape(rows) if cfg.router == "least_kv" else st.wait_tok
    return st._replace(
        p_arr=cnt.reshape(rows),
        r_ptr=per_row(ptr),
        buf_so=bso,
        buf_src=bsrc,
        wait_tok=wait_tok,
        flags=st.flags | per_row(flag),
    )


def _batch_step(st: _State, xi, wl: _Req, params: SimParams, cfg: SimConfig):
    """One batch iteration of every trajectory (docs/semantics.md steps 1–7).

    The per-trajectory pieces are vmapped; the preemption and admission loops run at the batch
    level (``any`` over trajectories) with masked bodies. A vmapped ``while_loop`` would
    instead select between old and new carries, copying every calendar each iteration.
    """
    vm = lambda f, *axes: jax.vmap(f, in_axes=axes)  # noqa: E731
    bufs = None
    if cfg.dynamic:
        # Route, then read each replica's own buffer. The buffers stay out of the loops'
        # carries: the loops only read them.
        st = _route(st, wl, params, cfg)
        bufs = (st.buf_so, st.buf_src)
        wl = _Req(None, st.buf_so)
        st = st._replace(buf_so=None, buf_src=None)
    # Every trajectory is at the same step k, so the calendar slot is one index for all:
    # a dynamic slice across the batch, not a per-trajectory gather or scatter.
    # Step k-1's row was read at its end; clear it here, before the loops write (a clear
    # after them would follow a read and make XLA copy the calendar). No event lands in that
    # slot meanwhile: lifetimes are shorter than the calendar.
    L = cfg.cal_len
    k0 = st.k[0]
    i, prev = k0 & (L - 1), (k0 - 1) & (L - 1)
    st = st._replace(
        cal=jax.lax.dynamic_update_index_in_dim(st.cal, jnp.zeros_like(st.cal[:, 0]), prev, axis=1)
    )
    st = vm(lambda s, w, p: _begin(s, w, p, cfg), 0, 0, 0)(st, wl, params)

    big = _Big(st.cal, st.ring, st.ring_end, st.stack, st.rec)
    sc = _pack(st, params.kv_capacity_tokens)
    overflowing = jax.vmap(lambda r: _overflowing(_sc(r), cfg))
    n_pre = jnp.int32(0)
    if cfg.admission == "current":
        pre = lambda s, g, x: _preempt_window(s, g, x, cfg)  # noqa: E731
        sc, _, big, n_pre = _loop(pre, sc, overflowing(sc), big, wl.so, cfg)
    admit = _admit_window if cfg.order == "fcfs" else _admit_iter
    go = jnp.ones(sc.shape[0], jnp.bool_)
    sc, go, big, n_adm = _loop(lambda s, g, x: admit(s, g, x, cfg), sc, go, big, wl.so, cfg)
    still = overflowing(sc) | go
    hit = (n_pre >= cfg.max_loop) | (n_adm >= cfg.max_loop)
    st = _unpack(st, sc)._replace(
        cal=big.cal, ring=big.ring, ring_end=big.ring_end, stack=big.stack, rec=big.rec
    )
    st = st._replace(flags=st.flags | jnp.where(hit & still, FLAG_LOOP_LIMIT, 0))
    xi_axis = None if xi is None else 0
    row = jax.lax.dynamic_index_in_dim(st.cal, i, axis=1, keepdims=False)
    st, out = vm(lambda s, r, x, p: _finish(s, r, x, p, cfg), 0, 0, xi_axis, 0)(st, row, xi, params)
    if bufs is not None:
        st = st._replace(buf_so=bufs[0], buf_src=bufs[1])
    return st, out


def _refill_window(st: _State) -> _State:
    """Fill empty window slots with the next arrived fresh requests, in arrival order."""
    empty = st.win_id < 0
    rank = jnp.cumsum(empty.astype(jnp.int32)) - 1
    new_id = st.p_adm + rank
    fill = empty & (new_id < st.p_arr)
    return st._replace(
        win_id=jnp.where(fill, new_id, st.win_id),
        p_adm=st.p_adm + jnp.sum(fill).astype(jnp.int32),
    )


def _drop(do, idx, size):
    """Index for a masked scatter: out of range (dropped with mode='drop') when not ``do``."""
    return jnp.where(do, idx, size)


def _life_events(do, a0, pos, s, o, cfg: SimConfig, sign):
    """Calendar rows and deltas (shapes (n, 3), (n, 3, 5)) that requests entering at
    positions ``pos`` add (sign +1), or that preempting them at positions ``pos`` removes
    (sign -1); vectors over a window, rows out of range where not applicable.

    Entering in full-chunk prefill, a request's nfull contribution ends after step a0+C-2
    (its last-chunk remainder r is due in step a0+C-1); it decodes from step a0+C (unless
    already decoding) and step a0+C+o-1 ends it, freeing s+o. Each row is read at the end of
    its step and sets up the next one.
    """
    m = cfg.cal_len - 1
    c, life, r = _lengths(s, o, cfg.chunk_tokens)
    rows = jnp.stack([(a0 + c - 2) & m, (a0 + c - 1) & m, (a0 + life - 1) & m], axis=-1)
    live = jnp.stack([do & (pos < c - 1), do & (pos < c), do], axis=-1)
    z, one = jnp.zeros_like(s), jnp.ones_like(s)
    deltas = sign * jnp.stack(
        [
            jnp.stack([z, z, -one, z, r], axis=-1),
            jnp.stack([z, z, z, one, z], axis=-1),
            jnp.stack([s + o, one, z, -one, z], axis=-1),
        ],
        axis=-2,
    )
    return _drop(live, rows, cfg.cal_len), deltas


def _enter(sc: _Sc, admit, cid, cpos, slot, s, o, x: _Ctx, cfg: SimConfig):
    """Requests ``cid`` (a vector; prompts ``s``, outputs ``o``) enter the batch at saved
    positions ``cpos`` in ring slots ``slot``, where ``admit``: their futures go into the
    calendar, their footprint and this step's growth into the counters, their ids into the
    ring (docs/semantics.md step 4). Returns the scalars and the writes."""
    chunk, K, k = cfg.chunk_tokens, cfg.max_running, sc.k
    c, life, r = _lengths(s, o, chunk)
    a0 = k - cpos
    end = a0 + life - 1  # completion step
    ai = admit.astype(jnp.int32)
    n = jnp.sum(ai)
    islot = _drop(admit, slot, K)
    w = _Writes(
        cal=_life_events(admit, a0, cpos, s, o, cfg, 1),
        ring=(islot, jnp.stack([cid, a0], axis=-1)),
        ring_end=(islot, end),
    )
    sc = sc._replace(
        used=sc.used + jnp.sum(ai * _mem(cpos, s, c, chunk)),
        nfull=sc.nfull + jnp.sum(ai * (cpos < c - 1)),
        once=sc.once + jnp.sum(ai * jnp.where(cpos == c - 1, r, 0)),
        ndec=sc.ndec + jnp.sum(ai * (cpos >= c)),
        peak_sum=sc.peak_sum + jnp.sum(ai * (s + o)),
        tail=sc.tail + n,
        n_running=sc.n_running + n,
        wait_tok=sc.wait_tok - jnp.sum(ai * s) if cfg.router == "least_kv" else sc.wait_tok,
    )
    if cfg.num_records:
        nrec = x.big.rec.shape[1]
        ri = _drop(admit & (cid < cfg.num_records), cid, nrec)
        old = x.big.rec[x.tid, jnp.minimum(ri, nrec - 1)]
        first = jnp.where(old[:, REC_FIRST_ADMIT] < 0, k, old[:, REC_FIRST_ADMIT])
        new = jnp.stack(
            [first, jnp.full_like(first, k), old[:, REC_TOK_FINAL], a0 + c, end, old[:, REC_NPRE]],
            axis=-1,
        )
        w = w._replace(rec=(ri, new))
    return sc, w


def step_records(state: _State, num_records: int, num_steps: int) -> dict:
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


class RolloutOut(NamedTuple):
    """Everything one :func:`batch_rollout` call returns (leading dim traj)."""

    blocks: BlockOut
    steps: StepOut | None
    final: _State


def batch_rollout(
    wl: Workload,
    params: SimParams,
    xi: jax.Array | None,
    cfg: SimConfig,
    state: _State | None = None,
) -> RolloutOut:
    """Simulate every trajectory: ``lax.scan`` over blocks of ``lax.scan`` over steps.

    Jitted once per static ``cfg``; λ, M, b̄ (``params``) and the workload are traced, so a
    sweep over them does not recompile.

    Args:
        wl: request buffers, shapes (traj, req): one per row; under a dynamic router
            (``cfg.router``) one stream per trajectory, routed over ``cfg.num_replicas``
            rows each.
        params: per-row parameters, shapes (rows,) ((rows, 4) for linear_coefs); rows are
            trajectories, or (traj, replica) pairs under a dynamic router.
        xi: (traj, cfg.num_steps) batch-time factors for the ``random`` model, else None.
        cfg: static configuration.
        state: a previous call's ``final`` state to continue from (segmented runs); None
            starts an empty system at t = 0.

    Returns:
        RolloutOut with blocks (traj, block), steps (traj, T) if ``cfg.record_steps``, and the
        final state (traj, ...).
    """
    if state is None:
        state = init_state(cfg, wl.prompt.shape[0] * (cfg.num_replicas if cfg.dynamic else 1))
    ndev = jax.local_device_count()
    if ndev > 1 and wl.prompt.shape[0] % ndev == 0:
        return _sharded_rollout(cfg, ndev, xi is None)(wl, params, xi, state)
    return _batch_rollout_jit(wl, params, xi, state, cfg)


@functools.lru_cache(maxsize=64)
def _sharded_rollout(cfg: SimConfig, ndev: int, no_xi: bool):
    """The rollout with trajectories split over ``ndev`` local devices (shard_map).

    Each shard runs its own preemption/admission loops (no cross-device synchronisation), so
    on a CPU exposed as one device per core (``--xla_force_host_platform_device_count``)
    the cores work in parallel; on several GPUs each takes a share of the trajectories.
    """
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.local_devices()[:ndev]), ("traj",))
    spec = P("traj")
    if no_xi:
        f = jax.shard_map(
            lambda w, p, s: _batch_rollout_impl(w, p, None, s, cfg),
            mesh=mesh,
            in_specs=(spec, spec, spec),
            out_specs=spec,
            check_vma=False,  # every value is per shard; nothing is replicated
        )
        jf = jax.jit(f)
        return lambda w, p, xi, s: jf(w, p, s)
    f = jax.shard_map(
        lambda w, p, x, s: _batch_rollout_impl(w, p, x, s, cfg),
        mesh=mesh,
        in_specs=(spec, spec, spec, spec),
        out_specs=spec,
        check_vma=False,
    )
    return jax.jit(f)


def init_state(cfg: SimConfig, num_trajectories: int) -> _State:
    """An empty system at t = 0 for every trajectory."""
    return jax.vmap(lambda _: _init_state(cfg, 0))(jnp.arange(num_trajectories))


TRACE_COUNT = [0]  # times the rollout was traced (compiled); tests check sweeps add none


def _batch_rollout_impl(wl, params, xi, st0, cfg):
    TRACE_COUNT[0] += 1
    req = _Req(wl.arrival_epoch, jnp.stack([wl.prompt, wl.output], axis=-1))
    n = st0.k.shape[0]  # rows: trajectories, or (traj, replica) under a dynamic router
    nb = cfg.num_steps // cfg.block_steps
    xs = None if xi is None else jnp.swapaxes(xi, 0, 1).reshape(nb, cfg.block_steps, n)
    f32 = jnp.float32

    def one_step(carry, x):
        st, acc_kv, acc_q, acc_run, mx, _ = carry
        st, out = _batch_step(st, x, req, params, cfg)
        carry = (
            st,
            acc_kv + out.kv_tokens.astype(f32),
            acc_q + out.queue_len.astype(f32),
            acc_run + out.running.astype(f32),
            jnp.maximum(mx, out.kv_tokens),
            out.queue_len,
        )
        return carry, (out if cfg.record_steps else None)

    def one_block(st, x):
        zf, zi = jnp.zeros(n, f32), jnp.zeros(n, jnp.int32)
        (st, acc_kv, acc_q, acc_run, mx, qlast), recs = jax.lax.scan(
            one_step, (st, zf, zf, zf, zi, zi), x, length=cfg.block_steps
        )
        m = f32(cfg.block_steps)
        blk = BlockOut(
            acc_kv / m,
            mx,
            acc_q / m,
            acc_run / m,
            qlast,
            st.completed,
            st.preempted,
            st.p_arr,
            st.t,
        )
        return st, (blk, recs)

    st, (blocks, recs) = jax.lax.scan(one_block, st0, xs, length=nb)
    swap = lambda x: jnp.moveaxis(x, 0, 1)  # noqa: E731  (block, traj) -> (traj, block)
    blocks = jax.tree_util.tree_map(swap, blocks)
    steps = None
    if cfg.record_steps:
        steps = jax.tree_util.tree_map(
            lambda x: jnp.moveaxis(x.reshape((cfg.num_steps, n)), 0, 1), recs
        )
    return RolloutOut(blocks, steps, st)


_batch_rollout_jit = jax.jit(_batch_rollout_impl, static_argnums=(4,))


# ---------------------------------------------------------------------------------------------
# The driver: validation, sizing, automatic re-runs, segments with progress, metrics.


@dataclasses.dataclass
class SimResult:
    """What :func:`simulate` returns. Arrays are numpy; (traj, block) time series are summed
    over replicas (clock: replica 0's).

    Attributes:
        config: everything needed to reproduce the run (workload, system, policies, sizes,
            seed, kvstab version, SIM_SEMANTICS_VERSION).
        clock_s: (traj, block) clock at each block's end.
        queue: (traj, block) mean waiting queue over the block.
        queue_end: (traj, block) queue at the block's last step.
        running: (traj, block) mean running requests.
        kv_tokens: (traj, block) mean KV tokens in use (per replica mean of the sum).
        max_kv_tokens: (traj, replica) max KV in use over the run.
        completed, preempted, arrived: (traj, block) cumulative counts.
        flags: (traj,) names of raised flags (see FLAG_NAMES), empty when clean.
        records: per-request times (seconds; nan where it did not happen), (traj·replica, req).
        steps: per-step arrays when requested.
        warmup_blocks: leading blocks excluded from steady-state statistics.
        wall_s: seconds spent simulating (all attempts), compile included.
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

    @property
    def num_trajectories(self) -> int:
        return int(self.clock_s.shape[0])

    def throughput_per_traj(self) -> np.ndarray:
        """Completions per second after warm-up, per trajectory (summed over replicas)."""
        from kvstab import metrics

        return metrics.throughput_per_traj(self.completed, self.clock_s, self.warmup_blocks)

    def queue_slope_per_traj(self) -> np.ndarray:
        """Growth rate of the waiting queue after warm-up, requests/s, per trajectory."""
        from kvstab import metrics

        w = self.warmup_blocks
        return metrics.slope_per_traj(self.queue_end[:, w:], self.clock_s[:, w:])

    def summary(self) -> dict:
        """The numbers ``kvstab simulate --json`` prints."""
        from kvstab import metrics

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


def _next_pow2(x: float) -> int:
    return 1 << max(1, int(math.ceil(math.log2(max(x, 2)))))


def _flag_names(bits: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if bits & bit]


def simulate(
    law,
    *,
    kv_capacity_tokens: Any = 131000,
    chunk_tokens: int = 512,
    batch_time_s: Any = 0.0372,
    arrival_rate_per_s: Any = None,
    saturated: bool = False,
    arrivals: str = "poisson",
    num_steps: int = 20000,
    num_trajectories: int = 64,
    seed: int = 0,
    num_replicas: int = 1,
    router: str = "round_robin",
    admission: str = "current",
    overflow: str = "recompute",
    order: str = "fcfs",
    spf_window: int = 32,
    batch_time_model: str = "constant",
    linear_coefs: Any = (0.0, 0.0, 0.0, 0.0),
    batch_time_law: str = "lognormal",
    batch_time_sigma: float = 0.25,
    slow_fraction: float = 0.3,
    slow_factor: float = 3.0,
    initial_queue: int = 0,
    warmup_frac: float = 0.25,
    num_records: int = 0,
    record_steps: bool = False,
    replay: tuple | None = None,
    block_steps: int | None = None,
    num_segments: int | None = None,
    progress=None,
    max_attempts: int = 5,
    sizes: dict | None = None,
) -> SimResult:
    """Simulate ``num_trajectories`` independent trajectories and summarise them.

    Args:
        law: joint law of (s, o) (:mod:`kvstab.laws`).
        kv_capacity_tokens: M, scalar or one per trajectory (traced: no recompile).
        chunk_tokens: ŝ.
        batch_time_s: b̄, scalar or per trajectory.
        arrival_rate_per_s: λ, scalar or per trajectory (one value per trajectory gives a
            sweep in one compiled call). Required unless ``saturated`` or ``replay``.
        saturated: endless backlog, for the maximal throughput μ_sim.
        arrivals: ``poisson`` or ``deterministic`` spacing.
        num_steps: batch steps T (rounded up to whole blocks and segments).
        num_trajectories: N.
        seed: PRNG seed; the whole run is a deterministic function of it and the sizes.
        num_replicas, router: G replicas behind a router (docs/semantics.md "Replicas and
            routing"): ``round_robin`` (request i -> replica i mod G, the paper's 8-GPU
            runs) or ``random`` split the stream in advance; ``jsq`` (fewest requests
            waiting + running) and ``least_kv`` (fewest KV tokens held + prompt tokens
            waiting) route each arrival at run time and need ``batch_time_model='constant'``.
            λ is the rate into the whole cluster. A saturated run needs no router: every
            replica has its own backlog.
        admission, overflow, order, spf_window: policies (docs/semantics.md).
        batch_time_model: ``constant`` (b̄), ``linear`` (``linear_coefs`` = c₀, c_p, c_d,
            c_kv) or ``random`` (b̄·ξ, ξ from ``batch_time_law`` with ``batch_time_sigma``,
            ``slow_fraction``, ``slow_factor``).
        initial_queue: requests waiting at t = 0 (a loaded start).
        warmup_frac: fraction of the run excluded from steady-state statistics.
        num_records: keep per-request records for the first ids of each replica.
        record_steps: also return per-step arrays (memory N·T).
        replay: (arrival_s, prompt, output) arrays of one trace to replay (λ ignored).
        progress: callable(done_steps, total_steps, attempt) called between segments.
        sizes: override static capacities (max_running, max_preempted, num_requests, cal_len).

    Returns:
        SimResult. Raises InputError on bad input; if a static cap is still hit after
        ``max_attempts`` enlargements, the flags are returned in the result (never hidden).
    """
    from kvstab import __version__, analytic
    from kvstab.laws import as_joint
    from kvstab.metrics import warmup_blocks
    from kvstab.workload import (
        ROUTERS,
        batch_time_factors,
        replay_workload,
        sample_workload,
        split_stream,
    )

    wall0 = time.perf_counter()
    check_number("kv_capacity_tokens", np.min(kv_capacity_tokens), low=1, integer=True)
    check_number("chunk_tokens", chunk_tokens, low=1, integer=True)
    check_number("batch_time_s", np.min(batch_time_s), low=0, low_open=True)
    for v in np.ravel(batch_time_s):
        check_number("batch_time_s", v, low=0, low_open=True)
    check_number("num_steps", num_steps, low=1, integer=True)
    check_number("num_trajectories", num_trajectories, low=1, integer=True)
    check_number("warmup_frac", warmup_frac, low=0, high=1, high_open=True)
    check_number("seed", seed, low=0, integer=True)
    if replay is None and not saturated:
        if arrival_rate_per_s is None:
            raise InputError(
                "arrival_rate_per_s", "give a rate >= 0 (or saturated=True, or replay)"
            )
        for v in np.ravel(arrival_rate_per_s):
            check_number("arrival_rate_per_s", v, low=0)
    if arrivals not in ("poisson", "deterministic"):
        raise InputError("arrivals", f"must be poisson or deterministic, got {arrivals!r}")
    if batch_time_model == "linear":
        coefs = np.asarray(linear_coefs, np.float64)
        if (
            coefs.shape != (4,)
            or not np.all(np.isfinite(coefs))
            or coefs[0] <= 0
            or np.any(coefs[1:] < 0)
        ):
            raise InputError("linear_coefs", "need 4 finite numbers c0 > 0, c_p, c_d, c_kv >= 0")
    check_number("num_replicas", num_replicas, low=1, integer=True)
    if router not in ROUTERS:
        raise InputError("router", f"must be one of {', '.join(ROUTERS)}, got {router!r}")
    n = int(num_trajectories)
    g = int(num_replicas)
    rows = n * g
    dynamic = router in DYNAMIC_ROUTERS and g > 1 and not saturated
    if dynamic and batch_time_model != "constant":
        raise InputError(
            "router",
            f"{router} routes on the replicas' states at shared step boundaries, so it needs "
            f"batch_time_model='constant', got {batch_time_model!r} (round_robin and random "
            "work with every batch-time model)",
        )
    M_arr = np.broadcast_to(np.asarray(kv_capacity_tokens), (n,)).astype(np.int64)
    joint = as_joint(law) if replay is None else None
    if joint is not None and joint.max_total is not None and joint.max_total > M_arr.min():
        raise InputError(
            "workload",
            f"max(s+o) = {joint.max_total} exceeds kv_capacity_tokens M = {int(M_arr.min())}; "
            "such a request can never be served",
        )

    # Static sizes: from the law (or the replayed trace), enlarged when a cap is hit.
    sz = dict(sizes or {})
    T_req = int(num_steps)
    if block_steps is None:
        block_steps = max(1, 2 ** int(math.floor(math.log2(max(T_req / 256, 1)))))
    nb = -(-T_req // block_steps)
    if num_segments is None:
        num_segments = max(d for d in range(1, 11) if nb % d == 0) if nb >= 10 else 1
        if nb >= 10 and num_segments < 5:  # round the block count up to a multiple of 10
            nb, num_segments = -(-nb // 10) * 10, 10
    nb = -(-nb // num_segments) * num_segments
    T = nb * block_steps
    seg_steps = T // num_segments

    key = jax.random.PRNGKey(int(seed))
    key_wl, key_bt = jax.random.split(key)
    probe_s, probe_o = (
        (np.asarray(replay[1]), np.asarray(replay[2]))
        if replay is not None
        else tuple(np.asarray(x) for x in joint.sample(jax.random.PRNGKey(int(seed) + 1), (4096,)))
    )
    first = np.minimum(probe_s, chunk_tokens)
    eg_probe = float(np.mean(np.asarray(analytic.g_exact(probe_s, probe_o, chunk_tokens))))
    b_mean = float(np.mean(batch_time_s))
    if batch_time_model == "linear":
        c = np.asarray(linear_coefs, np.float64)
        b_mean = float(
            c[0]
            + c[1] * chunk_tokens
            + c[2] * M_arr.max() / np.mean(probe_s + probe_o)
            + c[3] * M_arr.max()
        )
    if batch_time_model == "random":
        b_mean *= (
            1.0 + slow_fraction * (slow_factor - 1.0) if batch_time_law == "two_point" else 1.0
        )
        b_mean *= math.exp(batch_time_sigma**2 / 2)
    M_max = int(M_arr.max())
    sz.setdefault("max_running", _next_pow2(2.2 * M_max / max(first.mean(), 1)))
    sz.setdefault("max_preempted", sz["max_running"])
    if replay is not None:
        sz["num_requests"] = int(np.asarray(replay[0]).size)
        if dynamic:
            sz.setdefault(
                "replica_requests", min(sz["num_requests"], int(1.3 * sz["num_requests"] / g) + 64)
            )
    elif saturated:
        sz.setdefault(
            "num_requests", int(1.25 * T * M_max / eg_probe + 2 * sz["max_running"] + 256)
        )
    else:
        lam = float(np.max(arrival_rate_per_s)) / g
        mean_arr = lam * T * b_mean
        sz.setdefault(
            "num_requests", int(1.15 * mean_arr + 6 * math.sqrt(mean_arr + 1) + initial_queue + 256)
        )
    max_life = int(np.max(-(-probe_s // chunk_tokens) + probe_o))
    if joint is not None and getattr(joint, "output", None) is not None:
        ms, mo = joint.prompt.max_value, joint.output.max_value
        if ms is not None and mo is not None:  # longest possible life of an independent law
            max_life = max(max_life, -(-ms // chunk_tokens) + mo)
    sz.setdefault("cal_len", _next_pow2(max_life + 2))
    if dynamic:  # per-replica buffers; the stream feeding them holds G times as many
        sz.setdefault("replica_requests", sz["num_requests"])

    params_base = dict(
        kv=jnp.asarray(np.repeat(M_arr, g), jnp.int32),
        lam=jnp.asarray(
            np.repeat(
                np.broadcast_to(
                    np.asarray(
                        1.0 if arrival_rate_per_s is None else arrival_rate_per_s, np.float64
                    ),
                    (n,),
                ),
                g,
            ),
            jnp.float32,
        ),
        b=jnp.asarray(
            np.repeat(np.broadcast_to(np.asarray(batch_time_s, np.float64), (n,)), g), jnp.float32
        ),
        coefs=jnp.asarray(
            np.broadcast_to(np.asarray(linear_coefs, np.float64), (rows, 4)), jnp.float32
        ),
    )
    if replay is not None:
        params_base["lam"] = jnp.ones(rows, jnp.float32)

    need_clock = bool(num_records) and batch_time_model != "constant"
    attempt = 0
    while True:
        attempt += 1
        if replay is not None:
            # one copy of the trace per trajectory; replicas share it through the router
            wl = replay_workload(*replay)
            if n > 1:
                wl = jax.tree_util.tree_map(lambda x: jnp.repeat(x, n, axis=0), wl)
            if g > 1 and not dynamic:
                wl = split_stream(wl, g, router, key_wl, per_replica=None)
        elif dynamic:
            wl = sample_workload(
                key_wl,
                joint,
                num_trajectories=n,
                num_requests=g * sz["num_requests"],
                arrivals=arrivals,
                initial_queue=initial_queue,
            )
        else:
            wl = sample_workload(
                key_wl,
                joint,
                num_trajectories=n,
                num_requests=sz["num_requests"],
                arrivals="saturated" if saturated else arrivals,
                initial_queue=initial_queue,
                num_replicas=g,
                router=router if not saturated else "round_robin",
            )
        bad = (
            np.flatnonzero(np.asarray(wl.prompt + wl.output).max(axis=0) > M_max)
            if replay is not None
            else []
        )
        if len(bad):
            raise InputError("replay", f"request {int(bad[0])} has s+o > M = {M_max}")
        life = int(np.max(np.asarray(-(-wl.prompt // chunk_tokens) + wl.output)))
        if life + 2 > sz["cal_len"]:
            sz["cal_len"] = _next_pow2(life + 2)
        cfg = SimConfig(
            chunk_tokens=int(chunk_tokens),
            num_steps=seg_steps,
            block_steps=block_steps,
            admission=admission,
            overflow=overflow,
            order=order,
            spf_window=spf_window,
            batch_time_model=batch_time_model,
            saturated=saturated,
            stream_ends=replay is not None,
            max_running=sz["max_running"],
            max_preempted=sz["max_preempted"],
            cal_len=sz["cal_len"],
            num_records=min(
                int(num_records), sz["replica_requests"] if dynamic else wl.num_requests
            ),
            # records in seconds under a non-constant batch time need each step's duration
            record_steps=bool(record_steps) or need_clock,
            router=router if dynamic else "none",
            num_replicas=g if dynamic else 1,
            replica_requests=sz["replica_requests"] if dynamic else 0,
        )
        cfg.validate()
        params = SimParams(
            params_base["kv"], params_base["lam"], params_base["b"], params_base["coefs"]
        )
        xi_all = None
        if batch_time_model == "random":
            xi_all = batch_time_factors(
                key_bt,
                (rows, T),
                law=batch_time_law,
                sigma=batch_time_sigma,
                slow_fraction=slow_fraction,
                slow_factor=slow_factor,
            )
        state = None
        blocks, steps = [], []
        for seg in range(num_segments):
            xi = None if xi_all is None else xi_all[:, seg * seg_steps : (seg + 1) * seg_steps]
            out = batch_rollout(wl, params, xi, cfg, state)
            state = out.final
            blocks.append(jax.tree_util.tree_map(np.asarray, out.blocks))
            if cfg.record_steps:
                steps.append(jax.tree_util.tree_map(np.asarray, out.steps))
            if progress is not None:
                progress((seg + 1) * seg_steps, T, attempt)
        flags = np.asarray(state.flags)
        all_bits = int(np.bitwise_or.reduce(flags))
        if all_bits & FLAG_KV_OVER_M:
            raise RuntimeError(
                "simulator invariant KV <= M broken; please report this with the seed"
            )
        new = dict(sz)
        if all_bits & (FLAG_RING_FULL | FLAG_STACK_FULL):
            # x4: a start-up burst can need many times the guess. Waiting preempted requests
            # never outnumber the peak running count, so the stack grows with the ring.
            new["max_running"] = sz["max_running"] * (4 if all_bits & FLAG_RING_FULL else 1)
            new["max_preempted"] = max(
                new["max_running"], sz["max_preempted"] * (4 if all_bits & FLAG_STACK_FULL else 1)
            )
        if all_bits & (FLAG_ARRIVALS_EXHAUSTED | FLAG_BACKLOG_EXHAUSTED) and replay is None:
            new["num_requests"] = int(sz["num_requests"] * 2)
            if dynamic:
                new["replica_requests"] = max(sz["replica_requests"], new["num_requests"])
        if all_bits & FLAG_REPLICA_FULL:
            new["replica_requests"] = min(
                2 * sz["replica_requests"], wl.prompt.shape[1]
            )  # never more than the whole stream
        if new == sz or attempt >= max_attempts:
            break  # clean, or out of attempts: the flags stay in the result
        sz = new

    cat = lambda name: np.concatenate([getattr(b, name) for b in blocks], axis=1)  # noqa: E731
    per_traj = lambda x: x.reshape(n, g, -1)  # noqa: E731
    summed = lambda name: per_traj(cat(name)).sum(axis=1)  # noqa: E731
    clock = per_traj(cat("clock_s"))[:, 0, :]
    records = None
    if cfg.num_records:
        records = _records_in_seconds(
            state, wl, params, cfg, clock_fn=None if batch_time_model == "constant" else steps, T=T
        )
    step_arrays = None
    if record_steps:
        step_arrays = {
            f: np.concatenate([getattr(s, f) for s in steps], axis=1) for f in StepOut._fields
        }
    config = {
        "kvstab_version": __version__,
        "sim_semantics_version": SIM_SEMANTICS_VERSION,
        "workload": joint.spec
        if joint is not None
        else f"replay of {np.asarray(replay[0]).size} requests",
        "kv_capacity_tokens": M_arr.tolist() if M_arr.size > 1 and np.ptp(M_arr) else int(M_arr[0]),
        "chunk_tokens": int(chunk_tokens),
        "batch_time_s": np.ravel(batch_time_s).tolist()
        if np.size(batch_time_s) > 1
        else float(np.ravel(batch_time_s)[0]),
        "arrival_rate_per_s": None
        if arrival_rate_per_s is None
        else (
            np.ravel(arrival_rate_per_s).tolist()
            if np.size(arrival_rate_per_s) > 1
            else float(np.ravel(arrival_rate_per_s)[0])
        ),
        "saturated": bool(saturated),
        "arrivals": "replay" if replay is not None else arrivals,
        "num_steps": T,
        "num_trajectories": n,
        "seed": int(seed),
        "num_replicas": g,
        "router": router,
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
        "admission": admission,
        "overflow": overflow,
        "order": order,
        "spf_window": spf_window,
        "batch_time_model": batch_time_model,
        "linear_coefs": list(map(float, np.ravel(linear_coefs))),
        "batch_time_law": batch_time_law,
        "batch_time_sigma": batch_time_sigma,
        "slow_fraction": slow_fraction,
        "slow_factor": slow_factor,
        "initial_queue": int(initial_queue),
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
        flags=[_flag_names(int(b)) for b in np.bitwise_or.reduce(flags.reshape(n, g), axis=1)],
        records=records,
        steps=step_arrays,
        warmup_blocks=warmup_blocks(nb, warmup_frac),
        wall_s=time.perf_counter() - wall0,
        attempts=attempt,
    )


def _records_in_seconds(state, wl, params, cfg, clock_fn, T):
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
