"""One step of every trajectory, in the order of docs/semantics.md "One step k".

:func:`batch_step` is the whole step; read it first. For each trajectory:

1. **arrive**: requests with arrival ≤ t_k join the queue (:func:`arrive`; under a dynamic
   router, :func:`route` sends each to a replica first);
2. **plan growth**: the running requests' growth this step, U + growth (:func:`growth`);
3. **preempt** while U + growth > M, newest first (:func:`preempt_window`), victims to the
   head of the queue where ``policy.overflow`` says they resume;
4. **admit** in ``policy.order`` while ``policy.admission`` says the candidate fits
   (:func:`admit_window` in queue order, :func:`admit_one` otherwise), head-of-line blocking;
5.–7. **execute, time, complete** (:func:`execute`): KV_k, b_k from ``batch_time``, the
   clock, completions.

The policies are components (:mod:`kvstab.sim.components`) whose ``jax_*`` hooks are called
here at trace time: no branch on a policy at run time.

How a step stays O(1) per trajectory (the speed tricks):

* a **calendar** (ring of ``cal_len`` steps) of difference arrays: when a request enters the
  batch its whole future is known (chunked prefill, then one token per step, then it frees
  s+o), so the step at which its per-step growth changes and the step at which it completes
  are written once (:func:`life_events`); each step reads one calendar row. Preempting a
  request erases its future entries. So the planned growth of step 2 is three counters
  (full chunks, last-chunk remainders, decodes), updated from the calendar.
* a **ring of running requests in admission order** (``max_running`` slots): the newest is at
  the tail, so the preemption victim is found in O(1) (completed entries are trimmed lazily).
* the **waiting queue** as a stack of preempted requests (top = head of the queue) in front of
  a window over the arrival buffer (fresh requests, in arrival order).

Steps 3 and 4 are loops whose bodies handle one window of one trajectory; they run over the
batch through :func:`kvstab.sim.engine.run_loop`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kvstab.request import mem_array
from kvstab.sim.engine import (
    AUX,
    LoopArrays,
    LoopContext,
    LoopScalars,
    Writes,
    drop,
    pack_scalars,
    run_loop,
    scalars_of,
    unpack_scalars,
)
from kvstab.sim.state import (
    CAL_DDEC,
    CAL_DFULL,
    CAL_FREE,
    CAL_NCOMP,
    CAL_ONCE,
    CAL_RES,
    REC_ADMIT,
    REC_FIRST_ADMIT,
    REC_NPRE,
    REC_TOK_FINAL,
    RING_A0,
    RING_ID,
    Flag,
    Requests,
    SimParams,
    State,
    StaticConfig,
    StepOut,
)


def ceil_div(a, b):
    """ceil(a / b) for a >= 0, b >= 1 (truncating division: no floor sign fix-ups)."""
    return jax.lax.div(a + b - 1, jnp.asarray(b, jnp.result_type(a)))


def lengths(s, o, chunk):
    """Chunks C, lifetime L = C + o, last-chunk remainder r (docs/semantics.md)."""
    c = ceil_div(s, chunk)
    return c, c + o, s - (c - 1) * chunk


def batch_step(st: State, xi, req: Requests, params: SimParams, cfg: StaticConfig):
    """One step of every trajectory (docs/semantics.md steps 1–7). Returns (state, StepOut).

    The per-trajectory pieces are vmapped; the preemption and admission loops run at the
    batch level (:func:`kvstab.sim.engine.run_loop`)."""
    vm = lambda f, *axes: jax.vmap(f, in_axes=axes)  # noqa: E731
    policy = cfg.policy

    # 1. Arrive.
    bufs = None
    if cfg.dynamic:
        # Route, then read each replica's own buffer. The buffers stay out of the loops'
        # carries: the loops only read them.
        st = route(st, req, params, cfg)
        bufs = (st.buf_so, st.buf_src)
        req = Requests(None, st.buf_so)
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
    st = vm(lambda s, w, p: arrive(s, w, p, cfg), 0, 0, 0)(st, req, params)

    # 2. Plan growth: the counters nfull, once, ndec (growth()) were set from the calendar
    # at the end of the previous step.
    big = LoopArrays(st.cal, st.ring, st.ring_end, st.stack, st.rec)
    sc = pack_scalars(st, params.kv_capacity_tokens)
    overflowing = jax.vmap(lambda r: is_overflowing(scalars_of(r), cfg))

    # 3. Preempt.
    n_pre = jnp.int32(0)
    adm = policy.admission
    if adm.can_overflow:
        fast = policy.victim.newest and not adm.ratio
        preempt = preempt_window if fast else preempt_chosen
        pre = lambda s, g, x: preempt(s, g, x, cfg)  # noqa: E731
        sc, _, big, n_pre = run_loop(pre, sc, overflowing(sc), big, req.so, cfg)
    if adm.ratio:  # the new-token ratio after step 3, then step 4's budget A
        s_ = jax.vmap(scalars_of)(sc)
        retracted = s_.preempted > st.preempted
        ratio = adm.next_ratio(st.ratio, retracted, s_.n_running, s_.peak_sum, jnp)
        budget = adm.budget(ratio, s_.cap, s_.used, growth(s_, cfg.chunk_tokens), s_.peak_sum, jnp)
        sc = sc.at[:, AUX].set(budget)
        st = st._replace(ratio=ratio)

    # 4. Admit.
    admit = admit_window if policy.order.in_queue_order else admit_one
    go = jnp.ones(sc.shape[0], jnp.bool_)
    sc, go, big, n_adm = run_loop(lambda s, g, x: admit(s, g, x, cfg), sc, go, big, req.so, cfg)
    still = overflowing(sc) | go
    hit = (n_pre >= cfg.max_loop) | (n_adm >= cfg.max_loop)
    st = unpack_scalars(st, sc)._replace(
        cal=big.cal, ring=big.ring, ring_end=big.ring_end, stack=big.stack, rec=big.rec
    )
    st = st._replace(flags=st.flags | jnp.where(hit & still, Flag.LOOP_LIMIT, 0))

    # 5.-7. Execute, batch time, complete.
    xi_axis = None if xi is None else 0
    row = jax.lax.dynamic_index_in_dim(st.cal, i, axis=1, keepdims=False)
    st, out = vm(lambda s, r, x, p: execute(s, r, x, p, cfg), 0, 0, xi_axis, 0)(st, row, xi, params)
    if bufs is not None:
        st = st._replace(buf_so=bufs[0], buf_src=bufs[1])
    return st, out


# ---------------------------------------------------------------------------------------------
# 1. Arrive


def arrive(st: State, req: Requests, params: SimParams, cfg: StaticConfig) -> State:
    """Step 1: arrived requests join the queue (the window over the arrival buffer)."""
    R = req.so.shape[0]
    if cfg.dynamic:  # the router already appended this step's arrivals (st.p_arr)
        return refill_window(st)
    if cfg.saturated:
        p_arr = jnp.int32(R)
    else:
        p_arr, exhausted = arrivals_by(req.arrival_epoch, params.arrival_rate_per_s, st.t)
        if not cfg.stream_ends:
            st = st._replace(flags=st.flags | jnp.where(exhausted, Flag.ARRIVALS_EXHAUSTED, 0))
    return refill_window(st._replace(p_arr=p_arr))


def arrivals_by(epoch, lam, t):
    """Requests of one buffer arrived by clock t (arrival = epoch / λ <= t), and whether t
    has passed its last arrival. The one definition for every path, evaluated once per step:
    re-evaluating epoch / λ <= t elsewhere could round differently in another fusion."""
    arrival_s = epoch / lam
    count = jnp.searchsorted(arrival_s, t, side="right", method="scan_unrolled")
    return count.astype(jnp.int32), t > arrival_s[-1]


def refill_window(st: State) -> State:
    """Fill empty window slots with the next arrived fresh requests, in arrival order."""
    empty = st.win_id < 0
    rank = jnp.cumsum(empty.astype(jnp.int32)) - 1
    new_id = st.p_adm + rank
    fill = empty & (new_id < st.p_arr)
    return st._replace(
        win_id=jnp.where(fill, new_id, st.win_id),
        p_adm=st.p_adm + jnp.sum(fill).astype(jnp.int32),
    )


def waiting(st: State):
    """Waiting requests: preempted (stack), in the window, and arrived beyond it."""
    return st.top + jnp.sum(st.win_id >= 0, axis=-1) + (st.p_arr - st.p_adm)


def route(st: State, stream: Requests, params: SimParams, cfg: StaticConfig) -> State:
    """Step 1 of every replica under a dynamic router (docs/semantics.md "Replicas and
    routing"), at batch level over the (traj, replica) rows.

    Each trajectory's new arrivals (arrival <= t_k, in id order) are routed one at a time to
    the replica with the smallest ``router.jax_key``, ties to the lowest index, and appended
    to its queue before the next is routed. ``route_window`` arrivals per loop iteration,
    sequentially unrolled.
    """
    router = cfg.router
    G, A, rb = cfg.num_replicas, cfg.route_window, cfg.replica_requests
    n, total = stream.so.shape[:2]
    rows = n * G
    grid = lambda x: x.reshape(n, G)  # noqa: E731
    lam = grid(params.arrival_rate_per_s)[:, 0]
    t = grid(st.t)[:, 0]
    key0 = grid(router.jax_key(waiting(st), st.n_running, st.used, st.wait_tok))
    lanes = jnp.arange(G, dtype=jnp.int32)[None, :]
    first_row = jnp.arange(n, dtype=jnp.int32) * G
    ahead = jnp.arange(A, dtype=jnp.int32)[None, :]
    # How many requests have arrived, decided once per step: re-evaluating epoch/λ <= t
    # inside the loop could round differently in another fusion and never terminate.
    arrived, exhausted = jax.vmap(arrivals_by)(stream.arrival_epoch, lam, t)

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
            key = key + hit * router.jax_key_step(s[:, j : j + 1])
            cnt = cnt + hit * room[:, None]
            full = full | (due[:, j] & ~room)
            dst_rows.append(drop(due[:, j] & room, first_row + d, rows))
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
    flag = jnp.where(full, Flag.REPLICA_BUFFER_FULL, 0)
    if not cfg.stream_ends:  # the clock passed the stream's last buffered arrival
        flag = flag | jnp.where(exhausted, Flag.ARRIVALS_EXHAUSTED, 0)
    per_row = lambda x: jnp.repeat(x, G)  # noqa: E731
    wait_tok = st.wait_tok
    if router.tracks_waiting_tokens:
        wait_tok = st.wait_tok + (key - key0).reshape(rows)
    return st._replace(
        p_arr=cnt.reshape(rows),
        r_ptr=per_row(ptr),
        buf_so=bso,
        buf_src=bsrc,
        wait_tok=wait_tok,
        flags=st.flags | per_row(flag),
    )


# ---------------------------------------------------------------------------------------------
# 2. Plan growth


def growth(st, chunk: int):
    """Planned KV growth of the running requests in this step (``st``: a State or the
    loops' LoopScalars)."""
    return chunk * st.nfull + st.once + st.ndec


def is_overflowing(sc: LoopScalars, cfg: StaticConfig):
    """U + growth > M: step 3 must preempt."""
    return sc.used + growth(sc, cfg.chunk_tokens) > sc.cap


def keeps_preempting(sc: LoopScalars, cfg: StaticConfig):
    """Once step 3 has started: U + growth > M, or, for admission ``conservative``,
    U + growth + h·n > M (retraction leaves h tokens of headroom per running request)."""
    adm = cfg.policy.admission
    if adm.ratio:
        head = adm.retract_steps * sc.n_running
        return sc.used + growth(sc, cfg.chunk_tokens) + head > sc.cap
    return is_overflowing(sc, cfg)


# ---------------------------------------------------------------------------------------------
# 3. Preempt


def preempt_window(sc: LoopScalars, go, x: LoopContext, cfg: StaticConfig):
    """Step 3 for up to ``preempt_window`` tail entries at once (victim ``newest``).

    Walking from the newest ring entry down, an entry is consumed while the step still
    overflows before reaching it (exclusive prefix sum of the memory the alive ones free,
    after this step's growth); consumed alive entries are preempted (saved at
    ``policy.overflow.saved_position``), consumed completed ones trimmed. Identical to
    one-at-a-time (docs/semantics.md step 3). Returns the scalars, whether the step still
    overflows, and the writes.
    """
    P, K, chunk, k = cfg.preempt_window, cfg.max_running, cfg.chunk_tokens, sc.k
    excess = sc.used + growth(sc, chunk) - sc.cap
    j = jnp.arange(P, dtype=jnp.int32)
    slot = (sc.tail - 1 - j) % K
    ent = x.big.ring[x.tid, slot]
    rid, a0 = ent[:, RING_ID], ent[:, RING_A0]
    alive = x.big.ring_end[x.tid, slot] >= k
    s, o = x.lens(rid)
    c = ceil_div(s, chunk)
    p = k - a0
    freed = jnp.where(alive, mem_array(p + 1, s, c, chunk), 0)  # held after this step's growth
    before = jnp.cumsum(freed) - freed
    consumed = go & (excess > 0) & (before < excess)
    sc, w = preempt(sc, consumed & alive, slot, rid, a0, s, o, x, cfg)
    sc = sc._replace(tail=sc.tail - jnp.sum(consumed.astype(jnp.int32)))
    return sc, go & is_overflowing(sc, cfg), w


def preempt_chosen(sc: LoopScalars, go, x: LoopContext, cfg: StaticConfig):
    """Step 3, one victim per iteration, for a victim rule other than ``newest``: over every
    alive ring entry, the smallest ``policy.victim.jax_key(p, mem(p))``, ties to the newest
    admitted (the entry nearest the ring's tail). Its slot is left as a hole (ring_end -1),
    which a later admission reuses. Returns the scalars, whether the step still overflows,
    and the writes."""
    K, chunk, k = cfg.max_running, cfg.chunk_tokens, sc.k
    slots = jnp.arange(K, dtype=jnp.int32)
    ent = x.big.ring[x.tid]
    alive = x.big.ring_end[x.tid] >= k
    s, o = x.lens(ent[:, RING_ID])
    p = k - ent[:, RING_A0]
    key = cfg.policy.victim.jax_key(p, mem_array(p, s, ceil_div(s, chunk), chunk))
    big = jnp.iinfo(jnp.int32).max
    key = jnp.where(alive, key, big)
    age = (sc.tail - 1 - slots) % K  # 0: the newest admitted
    best = jnp.argmin(jnp.where(alive & (key == jnp.min(key)), age, big)).astype(jnp.int32)
    do = go & keeps_preempting(sc, cfg) & alive[best]
    one = lambda a: a[best][None]  # noqa: E731
    sc, w = preempt(sc, do[None], best[None], one(ent[:, RING_ID]), one(ent[:, RING_A0]),
                    one(s), one(o), x, cfg)  # fmt: skip
    return sc, go & keeps_preempting(sc, cfg), w


def preempt(sc: LoopScalars, victim, slot, rid, a0, s, o, x: LoopContext, cfg: StaticConfig):
    """Preempt the ring entries ``slot`` (vectors; requests ``rid`` with virtual starts
    ``a0``) where ``victim``, in vector order: each saved at
    ``policy.overflow.saved_position`` and pushed on the queue-head stack, its future erased
    from the calendar, its footprint and growth taken from the counters. Returns the scalars
    and the writes."""
    K, S, chunk, k = cfg.max_running, cfg.max_preempted, cfg.chunk_tokens, sc.k
    c, _, r = lengths(s, o, chunk)
    p = k - a0
    vi = victim.astype(jnp.int32)
    n_vict = jnp.sum(vi)
    rank = jnp.cumsum(vi) - vi
    pos_stack = sc.top + rank
    fits = pos_stack < S
    saved = cfg.policy.overflow.saved_position(p)
    w = Writes(
        cal=life_events(victim, a0, p, s, o, cfg, -1),
        ring_end=(drop(victim, slot, K), jnp.full_like(slot, -1)),
        stack=(drop(victim & fits, pos_stack, S), jnp.stack([rid, saved], axis=-1)),
    )
    tracks = cfg.router is not None and cfg.router.tracks_waiting_tokens
    sc = sc._replace(
        used=sc.used - jnp.sum(vi * mem_array(p, s, c, chunk)),
        nfull=sc.nfull - jnp.sum(vi * (p < c - 1)),
        once=sc.once - jnp.sum(vi * jnp.where(p == c - 1, r, 0)),
        ndec=sc.ndec - jnp.sum(vi * (p >= c)),
        peak_sum=sc.peak_sum - jnp.sum(vi * cfg.policy.admission.reservation(s, o, p, c)),
        n_running=sc.n_running - n_vict,
        top=jnp.minimum(sc.top + n_vict, S),
        preempted=sc.preempted + n_vict,
        wait_tok=sc.wait_tok + jnp.sum(vi * s) if tracks else sc.wait_tok,
        flags=sc.flags | jnp.where(jnp.any(victim & ~fits), Flag.STACK_FULL, 0),
    )
    if cfg.num_records:
        nrec = x.big.rec.shape[1]
        ri = drop(victim & (rid < cfg.num_records), rid, nrec)
        old = x.big.rec[x.tid, jnp.minimum(ri, nrec - 1)]
        tok_final = jnp.where((p > c) & (old[:, REC_TOK_FINAL] < 0), a0 + c, old[:, REC_TOK_FINAL])
        neg = -jnp.ones_like(p)
        new = jnp.stack(
            [old[:, REC_FIRST_ADMIT], old[:, REC_ADMIT], tok_final, neg, neg, old[:, REC_NPRE] + 1],
            axis=-1,
        )
        w = w._replace(rec=(ri, new))
    return sc, w


# ---------------------------------------------------------------------------------------------
# 4. Admit


def admit_window(sc: LoopScalars, go, x: LoopContext, cfg: StaticConfig):
    """Step 4 for an order in queue order (FCFS), up to ``admit_window`` candidates at once.

    Candidates in queue order: the preempted stack from its top, then the fresh requests
    (window slot, then the arrival buffer). The admitted ones are the longest prefix whose
    cumulative need fits the admission rule's budget (needs are positive, so this is one at a
    time with head-of-line blocking) and finds free ring slots. Returns the scalars, whether
    all candidates were admitted (then the next iteration looks further), and the writes.
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
    c = ceil_div(s, chunk)
    need, budget = cfg.policy.admission.jax_need_budget(
        sc, growth(sc, chunk), s, o, mem_array(cpos + 1, s, c, chunk)
    )
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
    sc, w = enter(sc, admit, cid, cpos, slot, s, o, x, cfg)
    sc = sc._replace(
        top=sc.top - n_stack,
        win_id=sc.win_id.at[0].set(win),
        p_adm=p_adm + refill.astype(jnp.int32),
        flags=sc.flags | jnp.where(go & blocked_by_ring, Flag.RING_FULL, 0),
    )
    return sc, go & (n_adm == A), w


def candidate(sc: LoopScalars, x: LoopContext, cfg: StaticConfig):
    """Step 4: the order policy's next candidate (exists, from the stack, window slot, id,
    saved position). A preempted request at the head of the queue always goes first."""
    from_stack = sc.top > 0
    srow = x.big.stack[x.tid, jnp.maximum(sc.top - 1, 0)]
    wid = sc.win_id
    valid = wid >= 0
    s, o = x.lens(jnp.maximum(wid, 0))
    widx = cfg.policy.order.jax_pick(s, o, wid, valid, cfg.chunk_tokens)
    cid = jnp.where(from_stack, srow[0], wid[widx])
    cpos = jnp.where(from_stack, srow[1], 0)
    exists = from_stack | valid[widx]
    return exists, from_stack, widx, jnp.maximum(cid, 0), cpos


def admit_one(sc: LoopScalars, go, x: LoopContext, cfg: StaticConfig):
    """Step 4, one candidate of any order (SPF): admit it if it fits (and ``go``) and pop it
    from the queue: the stack top, or window slot ``widx``, refilled from the arrivals.
    Returns the scalars, whether it was admitted, and the writes."""
    chunk, K = cfg.chunk_tokens, cfg.max_running
    exists, from_stack, widx, cid, cpos = candidate(sc, x, cfg)
    s, o = x.lens(cid)
    c = ceil_div(s, chunk)
    need, budget = cfg.policy.admission.jax_need_budget(
        sc, growth(sc, chunk), s, o, mem_array(cpos + 1, s, c, chunk)
    )
    ok = need <= budget
    slot = sc.tail % K
    slot_free = x.big.ring_end[x.tid, slot] < sc.k
    want = go & exists & ok
    do = want & slot_free
    sc = sc._replace(flags=sc.flags | jnp.where(want & ~slot_free, Flag.RING_FULL, 0))
    sc, w = enter(sc, do[None], cid[None], cpos[None], slot[None], s[None], o[None], x, cfg)
    from_win = do & ~from_stack
    refill = from_win & (sc.p_adm < sc.p_arr)
    W = sc.win_id.shape[0]
    win = sc.win_id.at[drop(from_win, widx, W)].set(jnp.where(refill, sc.p_adm, -1), mode="drop")
    sc = sc._replace(
        top=sc.top - (do & from_stack).astype(jnp.int32),
        win_id=win,
        p_adm=sc.p_adm + refill.astype(jnp.int32),
    )
    return sc, go & do, w


def enter(sc: LoopScalars, admit, cid, cpos, slot, s, o, x: LoopContext, cfg: StaticConfig):
    """Requests ``cid`` (a vector; prompts ``s``, outputs ``o``) enter the batch at saved
    positions ``cpos`` in ring slots ``slot``, where ``admit``: their futures go into the
    calendar, their footprint and this step's growth into the counters, their ids into the
    ring (docs/semantics.md step 4). Returns the scalars and the writes."""
    chunk, K, k = cfg.chunk_tokens, cfg.max_running, sc.k
    c, life, r = lengths(s, o, chunk)
    a0 = k - cpos
    end = a0 + life - 1  # completion step
    ai = admit.astype(jnp.int32)
    n = jnp.sum(ai)
    islot = drop(admit, slot, K)
    w = Writes(
        cal=life_events(admit, a0, cpos, s, o, cfg, 1),
        ring=(islot, jnp.stack([cid, a0], axis=-1)),
        ring_end=(islot, end),
    )
    tracks = cfg.router is not None and cfg.router.tracks_waiting_tokens
    sc = sc._replace(
        used=sc.used + jnp.sum(ai * mem_array(cpos, s, c, chunk)),
        nfull=sc.nfull + jnp.sum(ai * (cpos < c - 1)),
        once=sc.once + jnp.sum(ai * jnp.where(cpos == c - 1, r, 0)),
        ndec=sc.ndec + jnp.sum(ai * (cpos >= c)),
        peak_sum=sc.peak_sum + jnp.sum(ai * cfg.policy.admission.reservation(s, o, cpos, c)),
        aux=sc.aux - jnp.sum(ai * (s + cfg.policy.admission.max_tokens))
        if cfg.policy.admission.ratio
        else sc.aux,
        tail=sc.tail + n,
        n_running=sc.n_running + n,
        wait_tok=sc.wait_tok - jnp.sum(ai * s) if tracks else sc.wait_tok,
    )
    if cfg.num_records:
        nrec = x.big.rec.shape[1]
        ri = drop(admit & (cid < cfg.num_records), cid, nrec)
        old = x.big.rec[x.tid, jnp.minimum(ri, nrec - 1)]
        first = jnp.where(old[:, REC_FIRST_ADMIT] < 0, k, old[:, REC_FIRST_ADMIT])
        new = jnp.stack(
            [first, jnp.full_like(first, k), old[:, REC_TOK_FINAL], a0 + c, end, old[:, REC_NPRE]],
            axis=-1,
        )
        w = w._replace(rec=(ri, new))
    return sc, w


def life_events(do, a0, pos, s, o, cfg: StaticConfig, sign):
    """Calendar rows and deltas (shapes (n, 3), (n, 3, 5)) that requests entering at
    positions ``pos`` add (sign +1), or that preempting them at positions ``pos`` removes
    (sign -1); vectors over a window, rows out of range where not applicable.

    Entering in full-chunk prefill, a request's nfull contribution ends after step a0+C-2
    (its last-chunk remainder r is due in step a0+C-1); it decodes from step a0+C (unless
    already decoding) and step a0+C+o-1 ends it, freeing s+o. Each row is read at the end of
    its step and sets up the next one.
    """
    m = cfg.cal_len - 1
    c, life, r = lengths(s, o, cfg.chunk_tokens)
    rows = jnp.stack([(a0 + c - 2) & m, (a0 + c - 1) & m, (a0 + life - 1) & m], axis=-1)
    live = jnp.stack([do & (pos < c - 1), do & (pos < c), do], axis=-1)
    z, one = jnp.zeros_like(s), jnp.ones_like(s)
    cols = [[z, z, -one, z, r], [z, z, z, one, z], [s + o, one, z, -one, z]]
    if cfg.cal_cols > CAL_RES:  # the reservation freed at completion
        done = cfg.policy.admission.reservation(s, o, c + o, c)
        for c_, v in zip(cols, (z, z, done), strict=True):
            c_.append(v)
    deltas = sign * jnp.stack([jnp.stack(c_, axis=-1) for c_ in cols], axis=-2)
    return drop(live, rows, cfg.cal_len), deltas


# ---------------------------------------------------------------------------------------------
# 5.-7. Execute, batch time, complete


def execute(st: State, row, xi, params: SimParams, cfg: StaticConfig):
    """Steps 5–7: execute, batch time, completions (``row``: this step's calendar row, read by
    :func:`batch_step`), and the next step's growth counters."""
    M = params.kv_capacity_tokens
    prefill_tokens = cfg.chunk_tokens * st.nfull + st.once
    decode_tokens = st.ndec
    kv = st.used + prefill_tokens + decode_tokens
    queue_len = waiting(st)
    over = (kv > M) | (kv < 0)
    b = cfg.batch_time.step_time_s(
        params.batch_time_s, params.linear_coefs, prefill_tokens, decode_tokens, kv, xi
    )
    free, ncomp = row[CAL_FREE], row[CAL_NCOMP]
    # Kahan summation: a float32 running sum of a fixed b̄ would drift by ~0.3 % at t ~ 5000 s.
    y = b - st.t_comp
    t_next = st.t + y
    backlog_out = cfg.saturated & (queue_len == 0)
    st = st._replace(
        used=kv - free,
        peak_sum=st.peak_sum
        - (row[CAL_RES] if cfg.cal_cols > CAL_RES else free)
        - (decode_tokens if cfg.policy.admission.ratio else 0),
        n_running=st.n_running - ncomp,
        completed=st.completed + ncomp,
        nfull=st.nfull + row[CAL_DFULL],
        ndec=st.ndec + row[CAL_DDEC],
        once=row[CAL_ONCE],
        max_kv=jnp.maximum(st.max_kv, kv),
        flags=st.flags
        | jnp.where(over, Flag.KV_OVER_CAPACITY, 0)
        | jnp.where(backlog_out, Flag.BACKLOG_EXHAUSTED, 0),
        t=t_next,
        t_comp=(t_next - st.t) - y,
        k=st.k + 1,
    )
    out = StepOut(
        kv, queue_len, st.n_running, st.completed, st.preempted, b, prefill_tokens, decode_tokens
    )
    return st, out
