"""What the JAX simulator carries: static configuration, traced parameters, the state.

The model's state (docs/semantics.md "State") is a clock, the waiting queue, the running
list in admission order and U, the KV tokens held. :class:`State` holds exactly that for one
trajectory, in a form that makes a step cost O(1) (the module docstring of
:mod:`kvstab.sim.step` explains the calendar and the ring). Its fields are grouped by role,
as diffrax's solver state is: dynamics (what the next step depends on), buffers (the
queue, the running ring and the calendar, of fixed capacity), counters (exact totals and
flags), records (per-request steps) and the dynamic router's state.

Fixed capacities are set outside jit (:mod:`kvstab.sim.sizing`); hitting one sets a bit of
:class:`Flag` and the driver re-runs with more room.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kvstab.errors import InputError, check_number
from kvstab.paper import CHUNK_TOKENS
from kvstab.sim.components import BatchTime, ConstantBatchTime, Policy, Router


class Flag(enum.IntFlag):
    """A set bit: a static cap was hit (results not to be trusted; re-run larger), or a
    stream ran out. Names (lower case) are what results report."""

    RING_FULL = 1  # more concurrently running requests than max_running
    STACK_FULL = 2  # more waiting preempted requests than max_preempted
    ARRIVALS_EXHAUSTED = 4  # clock passed the last buffered arrival of an endless stream
    BACKLOG_EXHAUSTED = 8  # saturated run admitted every buffered request
    KV_OVER_CAPACITY = 16  # invariant KV <= M broken (a bug; never expected)
    LOOP_LIMIT = 32  # a step needed more preemption/admission iterations than allowed
    REPLICA_BUFFER_FULL = 64  # a dynamic router sent a replica more than its buffer holds

    @classmethod
    def names(cls, bits: int) -> list[str]:
        """The lower-case names of the set bits, in bit order."""
        return [f.name.lower() for f in cls if int(bits) & f.value]


FLAG_NAMES = {f.value: f.name.lower() for f in Flag}


@dataclasses.dataclass(frozen=True)
class StaticConfig:
    """Static configuration of a rollout: fixes code paths and shapes (changing it
    recompiles). Built by the driver (:func:`kvstab.sim.simulate`) from the components.

    Model: ``chunk_tokens`` ŝ; ``policy``; ``batch_time`` (the model's class: its
    parameters are traced, in :class:`SimParams`); ``saturated`` (every buffered request
    waits at t = 0); ``stream_ends`` (the buffer is the whole stream: a replay);
    ``router`` (a dynamic router, else None: every row has its own stream) with
    ``num_replicas`` rows per trajectory.

    Shapes: ``num_steps`` T (a multiple of ``block_steps``, the resolution of the block
    outputs); ``max_running`` K ring slots; ``max_preempted`` S stack entries; ``cal_len``
    (power of two > longest lifetime); ``num_records`` (per-request records for ids below);
    ``record_steps`` (per-step outputs); ``replica_requests`` (a dynamic router's per-replica
    buffer).

    Speed knobs (results do not depend on them): ``max_loop`` caps the loop iterations of a
    step (then a flag); ``compact_rows`` (0: automatic, :func:`kvstab.sim.engine.compact_rows`);
    ``preempt_window`` / ``admit_window`` / ``route_window``: preemptions, FCFS admissions,
    routed arrivals per loop iteration.
    """

    chunk_tokens: int = CHUNK_TOKENS
    num_steps: int = 4096
    block_steps: int = 64
    policy: Policy = Policy()
    batch_time: type[BatchTime] = ConstantBatchTime
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
    router: Router | None = None
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
        for name in ("max_running", "max_preempted", "cal_len"):
            check_number(name, getattr(self, name), low=2, integer=True)
        if self.cal_len & (self.cal_len - 1):
            raise InputError("cal_len", f"must be a power of two, got {self.cal_len}")
        check_number("num_records", self.num_records, low=0, integer=True)
        check_number("compact_rows", self.compact_rows, low=0, integer=True)
        if self.router is not None and not self.router.dynamic:
            raise InputError(
                "router", f"only a dynamic router runs inside the rollout, got {self.router.name}"
            )
        if self.dynamic:
            check_number("num_replicas", self.num_replicas, low=1, integer=True)
            check_number("replica_requests", self.replica_requests, low=1, integer=True)
            check_number("route_window", self.route_window, low=1, integer=True)
            if self.batch_time is not ConstantBatchTime:
                raise InputError(
                    "router",
                    f"{self.router.name} needs a constant batch time (replicas routed at run "
                    f"time must share step boundaries), got {self.batch_time.name!r}",
                )
            if self.saturated:
                raise InputError(
                    "router", f"{self.router.name} routes arrivals; a saturated run has none"
                )

    @property
    def dynamic(self) -> bool:
        return self.router is not None and self.router.dynamic

    @property
    def window(self) -> int:
        return self.policy.order.window

    @property
    def cal_cols(self) -> int:
        """Calendar columns: CAL_FREE..CAL_ONCE, plus CAL_RES (the reservation a completion
        frees) where the admission rule reserves something other than s + o."""
        return 6 if self.policy.admission.own_reservation else 5


class SimParams(NamedTuple):
    """Traced per-row parameters (shape (rows,); rows are trajectories, or (traj, replica)
    pairs under a dynamic router): sweeping them does not recompile.

    Attributes:
        kv_capacity_tokens: M, int32.
        arrival_rate_per_s: λ; arrival time = epoch / λ (replay: 1.0), float32.
        batch_time_s: b̄ of the constant and random models, float32.
        linear_coefs: (rows, 4) float32 (c₀ s, c_p, c_d, c_kv s/token) of the linear model.
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
CAL_FREE, CAL_NCOMP, CAL_DFULL, CAL_DDEC, CAL_ONCE, CAL_RES = range(6)  # CAL_RES: see cal_cols
RING_ID, RING_A0 = range(2)  # columns of ring
REC_FIRST_ADMIT, REC_ADMIT, REC_TOK_FINAL, REC_TOK_LAST, REC_FINISH, REC_NPRE = range(6)


class Requests(NamedTuple):
    """The request buffers as the step reads them: (s, o) packed, so that one gather
    fetches both (on CPU every gather or scatter op has a fixed cost)."""

    arrival_epoch: Any  # (req,) float32 (None where not needed)
    so: jax.Array  # (req, 2) int32: prompt s, output o


class State(NamedTuple):
    """One trajectory's state at the start of step k (leading dim traj under vmap)."""

    # --- dynamics: the clock and U, and this step's planned growth -----------------------
    t: jax.Array  # clock at the start of step k, s (float32, Kahan-compensated)
    t_comp: jax.Array  # Kahan compensation of the clock sum
    k: jax.Array  # step index
    used: jax.Array  # U: KV held at the start of the step
    nfull: jax.Array  # requests doing a full ŝ chunk this step
    ndec: jax.Array  # requests decoding this step
    once: jax.Array  # this step's last-chunk remainders
    peak_sum: jax.Array  # Σ (s+o) over running (reserve admission)
    # --- buffers: calendar, running ring, waiting queue (fixed capacities) ----------------
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
    # --- counters: exact totals and flags --------------------------------------------------
    p_arr: jax.Array  # requests arrived so far
    completed: jax.Array
    preempted: jax.Array
    max_kv: jax.Array
    flags: jax.Array  # Flag bits
    # --- records -----------------------------------------------------------------------------
    # (Rr, 6) per-request records for ids < num_records (Rr = 1 and untouched when off):
    # first admission, last admission, first-token step confirmed by a later preemption,
    # first-token step of the latest admission (tentative), finish step of the latest
    # admission (tentative; -1 if preempted), preemptions.
    rec: jax.Array
    # --- router (dynamic routers only; None otherwise) -------------------------------------
    # This replica's request buffer, filled by the router ((prompt, output) pairs, index in
    # the trajectory's stream; -1 = empty), the stream pointer (next unrouted request; equal
    # in every replica of a trajectory) and Σ s over waiting requests (the least_kv key).
    buf_so: Any = None
    buf_src: Any = None
    r_ptr: Any = None
    wait_tok: Any = None
    # --- admission ``conservative`` only (None otherwise): the new-token ratio r ----------
    ratio: Any = None


class BlockOut(NamedTuple):
    """Per-block outputs, shape (traj, block) under :func:`kvstab.sim.rollout.batch_rollout`."""

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


def _init_one(cfg: StaticConfig) -> State:
    z = jnp.int32(0)
    rr = max(cfg.num_records, 1)
    st = State(
        t=jnp.float32(0.0),
        t_comp=jnp.float32(0.0),
        k=z,
        used=z,
        nfull=z,
        ndec=z,
        once=z,
        peak_sum=z,
        cal=jnp.zeros((cfg.cal_len, cfg.cal_cols), jnp.int32),
        ring=jnp.zeros((cfg.max_running, 2), jnp.int32),
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
        rec=jnp.full((rr, 6), -1, jnp.int32).at[:, REC_NPRE].set(0),
    )
    if cfg.policy.admission.ratio:
        st = st._replace(ratio=jnp.float32(cfg.policy.admission.r0))
    if cfg.dynamic:
        rb = cfg.replica_requests
        st = st._replace(
            buf_so=jnp.ones((rb, 2), jnp.int32),
            buf_src=jnp.full((rb,), -1, jnp.int32),
            r_ptr=z,
            wait_tok=z,
        )
    return st


def init_state(cfg: StaticConfig, num_rows: int) -> State:
    """An empty system at t = 0 for every row."""
    return jax.vmap(lambda _: _init_one(cfg))(jnp.arange(num_rows))
