"""How the preemption and admission loops run fast over a batch of trajectories.

Nothing here is part of the model: this module only decides *how* the per-trajectory loop
bodies of :mod:`kvstab.sim.step` (one window of preemptions, or of admissions) are run for
many trajectories at once, and the results do not depend on it.

A trajectory's loop state is one packed int32 row of scalars (:class:`LoopScalars`); its
arrays (calendar, ring, stack, records: :class:`LoopArrays`) stay at batch level: a loop
body reads them at (its row, index) through a :class:`LoopContext` and returns its writes
(:class:`Writes`), which :func:`scatter_writes` applies for all rows at once. So an iteration
can run over the whole batch, or, once few trajectories still need one, over a compacted
list of just those (:func:`run_loop`): most steps need one or two iterations in nearly every
trajectory and a few more in a handful. A vmapped ``while_loop`` would instead select
between old and new carries, copying every calendar each iteration.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kvstab.sim.state import State, StaticConfig


class LoopScalars(NamedTuple):
    """One trajectory's scalars in the loops (fields as in :class:`State`; ``cap`` = M)."""

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
    aux: Any  # a rule's per-step scalar (conservative admission: its remaining budget A)
    win_id: Any  # (W,)


_SCALARS = LoopScalars._fields[:-1]


def pack_scalars(st: State, cap) -> jax.Array:
    """(rows, F) int32: every row's :class:`LoopScalars`, packed."""
    zero = jnp.zeros_like(st.used)
    cols = [
        cap if f == "cap" else (zero if getattr(st, f, None) is None else getattr(st, f))
        for f in _SCALARS
    ]
    return jnp.concatenate([jnp.stack(cols, axis=1), st.win_id], axis=1)


AUX = _SCALARS.index("aux")


def scalars_of(row) -> LoopScalars:
    n = len(_SCALARS)
    return LoopScalars(*(row[j] for j in range(n)), row[n:])


def row_of(sc: LoopScalars):
    return jnp.concatenate([jnp.stack(sc[:-1]), sc.win_id])


def unpack_scalars(st: State, packed) -> State:
    n = len(_SCALARS)
    upd = {f: packed[:, j] for j, f in enumerate(_SCALARS) if f not in ("cap", "k", "aux")}
    if st.wait_tok is None:
        del upd["wait_tok"]
    return st._replace(win_id=packed[:, n:], **upd)


class LoopArrays(NamedTuple):
    """The arrays the loops read and write, batch level (rows, ...)."""

    cal: jax.Array
    ring: jax.Array
    ring_end: jax.Array
    stack: jax.Array
    rec: jax.Array


class Writes(NamedTuple):
    """A loop body's writes to :class:`LoopArrays`: (index, value) pairs over a window,
    index out of range where nothing is written; None where the body writes nothing.
    ``cal`` is added, the others set."""

    cal: Any = None
    ring: Any = None
    ring_end: Any = None
    stack: Any = None
    rec: Any = None


class LoopContext(NamedTuple):
    """What a loop body reads besides its scalars: the batch arrays, the request buffers
    (rows, req, 2), and its own row index ``tid`` (the only per-trajectory field)."""

    big: LoopArrays
    so: jax.Array
    tid: Any

    def lens(self, idx):
        """(s, o) of this trajectory's requests ``idx``."""
        row = self.so[self.tid, idx]
        return row[..., 0], row[..., 1]


def drop(do, idx, size):
    """Index for a masked scatter: out of range (dropped with mode='drop') when not ``do``."""
    return jnp.where(do, idx, size)


def scatter_writes(big: LoopArrays, tid, w: Writes) -> LoopArrays:
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

    return LoopArrays(
        put(big.cal, w.cal, True),
        put(big.ring, w.ring, False),
        put(big.ring_end, w.ring_end, False),
        put(big.stack, w.stack, False),
        put(big.rec, w.rec, False),
    )


def compact_rows(cfg: StaticConfig, rows: int) -> int:
    """How many trajectories a compacted loop iteration runs (``rows`` = no compaction).

    Automatic: 1/16 of the rows from 512 rows (per device) up. Compaction traces each loop
    body a second time (about 1.5 s more compile on a CPU), which pays only for batches
    large enough that the run, not the compile, dominates."""
    if cfg.compact_rows:
        return min(cfg.compact_rows, rows)
    return -(-rows // 16 // 8) * 8 if rows >= 512 else rows


def first_active_rows(go, cap: int):
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


def run_loop(body, sc, go, big: LoopArrays, so, cfg: StaticConfig):
    """Run ``body`` (one window of one trajectory: (scalars, go, ctx) -> (scalars, go,
    writes)) until no row has ``go``: over the whole batch while more than
    :func:`compact_rows` rows do, then over compacted lists of them. Rows without ``go`` are
    untouched, so both kinds of iteration give the same results.

    Returns (packed scalars, go, arrays, iterations)."""
    rows = sc.shape[0]
    cap = compact_rows(cfg, rows)
    ctx_axes = LoopContext(None, None, 0)

    def one_row(row, go, x):
        sc, go, w = body(scalars_of(row), go, x)
        return row_of(sc), go, w

    def run(packed, g, tid, big):
        return jax.vmap(one_row, in_axes=(0, 0, ctx_axes))(packed, g, LoopContext(big, so, tid))

    def full(c):
        sc, go, big, n = c
        tid = jnp.arange(rows, dtype=jnp.int32)
        sc, go, w = run(sc, go, tid, big)
        return sc, go, scatter_writes(big, tid, w), n + 1

    def compacted(c):
        sc, go, big, n = c
        tid = first_active_rows(go, cap)
        t = jnp.minimum(tid, rows - 1)
        new, g, w = run(sc[t], go[t] & (tid < rows), t, big)
        sc = sc.at[tid].set(new, mode="drop")
        go = go.at[tid].set(g, mode="drop")
        return sc, go, scatter_writes(big, tid, w), n + 1

    c = (sc, go, big, jnp.int32(0))
    many = cap if cap < rows else 0  # run the whole batch while more than this many need it
    c = jax.lax.while_loop(lambda c: (jnp.sum(c[1]) > many) & (c[3] < cfg.max_loop), full, c)
    if cap < rows:
        c = jax.lax.while_loop(lambda c: jnp.any(c[1]) & (c[3] < cfg.max_loop), compacted, c)
    return c
