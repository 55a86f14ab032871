"""The simulator's components: what is simulated, as small objects (docs/semantics.md).

Every choice the model leaves open is one small frozen dataclass, and the same object drives
both simulators: the JAX one (:mod:`kvstab.sim.step`, through the ``jax_*`` hooks, called
at trace time, so choosing a component costs nothing at run time) and the plain-Python
reference (:mod:`kvstab.reference`, through the hooks without the prefix). A new policy is
one new class with its two hooks, not a branch in many places.

* **Admission** (step 4): :class:`CurrentAdmission` (admit if the KV in use after this
  step's growth still fits M) or :class:`ReserveAdmission` (reserve every request's peak
  s + o; overflow can then never happen).
* **Overflow** (step 3): :class:`Recompute` (a victim restarts from position 0) or
  :class:`Swap` (it keeps its position, its KV parked in host memory).
* **Order** (step 4): :class:`FCFS` or :class:`SPF` (shortest prompt first within a window).
* **Batch time** (step 6): :class:`ConstantBatchTime`, :class:`LinearBatchTime`,
  :class:`RandomBatchTime`; :meth:`BatchTime.step_time_s` is the model's one definition.
* **Router** (G replicas): :class:`RoundRobin`, :class:`RandomRouter` (static splits),
  :class:`JSQ`, :class:`LeastKV` (routing at run time on the replicas' states).
* **Arrivals**: :class:`Poisson`, :class:`Deterministic`, :class:`Saturated`, :class:`Replay`.

Bundles: :class:`Policy` (admission, overflow, order), :class:`System` (M, ŝ, batch time),
:class:`Workload` (length law, arrivals, initial queue), :class:`Cluster` (replicas, router),
:class:`Outputs` (records, per-step arrays, resolution). Values that a sweep or a fit varies
(λ, M, b̄) may be per-trajectory arrays: they are traced, so a sweep does not recompile.

Strings only at the edge: :func:`policy_from_names`, :func:`router_from_name` and
:func:`batch_time_from_name` turn the command line's words into components.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from kvstab.errors import InputError, check_number
from kvstab.laws import as_joint
from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS
from kvstab.workload import BATCH_TIME_LAWS, batch_time_factors, replay_workload


def _one_of(field: str, value: Any, allowed: tuple) -> None:
    if not isinstance(value, allowed):
        names = ", ".join(c.__name__ for c in allowed)
        raise InputError(field, f"must be one of {names}, got {value!r}")


def _each(field: str, value: Any, **limits) -> None:
    """check_number on a scalar or on every element of an array."""
    for v in np.ravel(np.asarray(value, dtype=object)):
        check_number(field, v, **limits)


# ---------------------------------------------------------------------------------------------
# Admission (docs/semantics.md step 4)
# ---------------------------------------------------------------------------------------------


class Admission:
    """Whether the next candidate fits. Hooks: ``fits`` (reference), ``jax_need_budget``.

    ``reservation(s, o, p, c)`` is what a running request at position p (c = its number of
    chunks) counts in the reserved sum R (the simulator's ``peak_sum``): s + o unless the
    rule reserves something else, in which case ``own_reservation`` is True and the
    simulator's calendar keeps a column for what a completion releases.

    ``ratio``: the rule carries SGLang's new-token ratio (:class:`ConservativeAdmission`);
    then step 3 retracts with headroom and step 4 has a budget fixed at its start."""

    name: ClassVar[str]
    can_overflow: ClassVar[bool]  # False: step 3 (preemption) can never trigger
    own_reservation: ClassVar[bool] = False
    ratio: ClassVar[bool] = False

    def reservation(self, s, o, p=None, c=None):
        return s + o

    def check_workload(self, prompt_max: int | None, output_max: int | None, m) -> None:
        """Refuse a workload the rule cannot serve (maxima None: unbounded or unknown)."""


@dataclasses.dataclass(frozen=True)
class CurrentAdmission(Admission):
    """Admit iff U + growth + mem(p+1) ≤ M: the KV in use after this step must fit."""

    name: ClassVar[str] = "current"
    can_overflow: ClassVar[bool] = True

    def fits(self, sim, i: int, p: int, planned_growth: int) -> bool:
        return sim.used + planned_growth + sim.mem_of(i, p + 1) <= sim.m

    def jax_need_budget(self, sc, growth, s, o, mem_next):
        """(need, budget) with admit iff need ≤ budget (cumulated over a window)."""
        return mem_next, sc.cap - sc.used - growth


@dataclasses.dataclass(frozen=True)
class ReserveAdmission(Admission):
    """Admit iff Σ_running (s+o) + (s+o) ≤ M: an oracle reservation of every peak."""

    name: ClassVar[str] = "reserve"
    can_overflow: ClassVar[bool] = False

    def fits(self, sim, i: int, p: int, planned_growth: int) -> bool:
        reserved = sum(sim.s[j] + sim.o[j] for j, _ in sim.running)
        return reserved + sim.s[i] + sim.o[i] <= sim.m

    def jax_need_budget(self, sc, growth, s, o, mem_next):
        return s + o, sc.cap - sc.peak_sum


@dataclasses.dataclass(frozen=True)
class WatermarkAdmission(Admission):
    """vLLM's watermark: admit iff U + growth + mem(p+1) ≤ M − W, W = ⌊w·M⌋ in float32, so
    that at least a fraction w of M stays free after an admission (room for running requests
    to grow). Running requests may grow into the watermark; overflow is handled as by
    ``current``."""

    watermark: float = 0.01
    name: ClassVar[str] = "watermark"
    can_overflow: ClassVar[bool] = True

    def __post_init__(self):
        check_number("watermark", self.watermark, low=0.0, high=1.0, high_open=True)

    def watermark_tokens(self, m: int) -> int:
        """W = ⌊float32(w)·float32(M)⌋: the one definition both simulators evaluate."""
        return int(np.floor(np.float32(self.watermark) * np.float32(m)))

    def fits(self, sim, i: int, p: int, planned_growth: int) -> bool:
        room = sim.m - self.watermark_tokens(sim.m)
        return sim.used + planned_growth + sim.mem_of(i, p + 1) <= room

    def jax_need_budget(self, sc, growth, s, o, mem_next):
        w = jnp.floor(jnp.float32(self.watermark) * sc.cap.astype(jnp.float32))
        return mem_next, sc.cap - sc.used - growth - w.astype(sc.cap.dtype)


@dataclasses.dataclass(frozen=True)
class CapAdmission(Admission):
    """Reservation by an output cap (TensorRT-LLM's GUARANTEED_NO_EVICT capacity scheduler):
    admit iff Σ_running (s + cap) + s_e + cap ≤ M, where cap = ``max_tokens`` is the
    largest output the scheduler knows a request may produce (its max_tokens), not its true
    o. Every output must be ≤ cap, so overflow never happens."""

    max_tokens: int = 2048
    name: ClassVar[str] = "cap"
    can_overflow: ClassVar[bool] = False
    own_reservation: ClassVar[bool] = True

    def __post_init__(self):
        check_number("max_tokens", self.max_tokens, low=1, high=2**31 - 1, integer=True)

    def reservation(self, s, o, p=None, c=None):
        return s + self.max_tokens

    def check_workload(self, prompt_max, output_max, m) -> None:
        cap = self.max_tokens
        if output_max is None:
            raise InputError(
                "max_tokens",
                "cap admission needs outputs bounded by the cap, but the output law is "
                "unbounded: give it a cap (e.g. lognormal:...:cap=N) no larger than max_tokens",
            )
        if output_max > cap:
            raise InputError(
                "max_tokens",
                f"must be >= the longest output ({output_max} tokens), got {cap}: a request "
                "would outgrow its reservation",
            )
        if prompt_max is not None and np.all(np.asarray(m) >= 1):
            m_min = int(np.min(m))
            if prompt_max + cap > m_min:
                raise InputError(
                    "max_tokens",
                    f"prompt + max_tokens must fit M = {m_min}; the longest prompt "
                    f"({prompt_max}) + {cap} = {prompt_max + cap} never would",
                )

    def fits(self, sim, i: int, p: int, planned_growth: int) -> bool:
        reserved = sum(sim.s[j] + self.max_tokens for j, _ in sim.running)
        return reserved + sim.s[i] + self.max_tokens <= sim.m

    def jax_need_budget(self, sc, growth, s, o, mem_next):
        return s + self.max_tokens, sc.cap - sc.peak_sum


@dataclasses.dataclass(frozen=True)
class ConservativeAdmission(CapAdmission):
    """SGLang's conservative admission with retraction (docs/semantics.md, admission
    ``conservative``). A new-token ratio r (float32; starts at ``init_ratio``, falls by
    ``(init_ratio − min_ratio)/decay_steps`` per step without overflow down to
    ``min_ratio = init_ratio·min_ratio_factor``) scales the decode tokens the running
    requests may still produce, D = Σ_running (N − generated), N = ``max_tokens``. Step 4
    has the budget A = M − U − growth − ⌈r·D⌉, fixed at its start; a candidate is admitted
    while the sum of s + N over this step's admissions, its own included, is ≤ A. On
    overflow, step 3 retracts (victim rule) until U + growth + h·n ≤ M (h =
    ``retract_steps`` tokens of headroom per running request, n of them), then sets
    r = min(1, (Σ generated + h·n)/(n·N + 1))."""

    init_ratio: float = 0.7
    min_ratio_factor: float = 0.14
    decay_steps: int = 600
    retract_steps: int = 20
    name: ClassVar[str] = "conservative"
    can_overflow: ClassVar[bool] = True
    own_reservation: ClassVar[bool] = True
    ratio: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        check_number("init_ratio", self.init_ratio, low=0.0, high=1.0, low_open=True)
        check_number("min_ratio_factor", self.min_ratio_factor, low=0.0, high=1.0)
        check_number("decay_steps", self.decay_steps, low=1, high=2**31 - 1, integer=True)
        check_number("retract_steps", self.retract_steps, low=0, high=2**20, integer=True)

    # The float32 constants both simulators use.
    @property
    def r0(self):
        return np.float32(self.init_ratio)

    @property
    def r_min(self):
        return np.float32(self.init_ratio * self.min_ratio_factor)

    @property
    def r_decay(self):
        return np.float32(
            (self.init_ratio - self.init_ratio * self.min_ratio_factor) / self.decay_steps
        )

    def reservation(self, s, o, p=None, c=None):
        """N − generated tokens (generated = max(0, p − C)); at completion (p = C + o) N − o."""
        if isinstance(p, (int, np.integer)):
            return self.max_tokens - max(p - c, 0)
        return self.max_tokens - jnp.maximum(p - c, 0)

    def next_ratio(self, r, retracted: bool, n: int, reserved: int, xp=np):
        """r after step 3: the retraction estimate, or one decay step (float32)."""
        f = np.float32 if xp is np else jnp.float32
        if xp is np:
            if retracted:
                est = f(n * self.max_tokens - reserved + self.retract_steps * n) / f(
                    n * self.max_tokens + 1
                )
                return min(f(1.0), est)
            return max(f(r) - self.r_decay, self.r_min)
        nN = n * self.max_tokens
        est = (nN - reserved + self.retract_steps * n).astype(f) / (nN + 1).astype(f)
        return jnp.where(
            retracted, jnp.minimum(f(1.0), est), jnp.maximum(r - self.r_decay, self.r_min)
        )

    def budget(self, r, m, used, growth, reserved, xp=np):
        """A = M − U − growth − ⌈r·D⌉ (r·D rounded to float32, then ceiled)."""
        if xp is np:
            return m - used - growth - int(np.ceil(np.float32(r) * np.float32(reserved)))
        off = jnp.ceil(r * reserved.astype(jnp.float32)).astype(jnp.int32)
        return m - used - growth - off

    def fits(self, sim, i: int, p: int, planned_growth: int) -> bool:
        return sim.admit_budget >= sim.s[i] + self.max_tokens

    def jax_need_budget(self, sc, growth, s, o, mem_next):
        return s + self.max_tokens, sc.aux


# ---------------------------------------------------------------------------------------------
# Overflow (docs/semantics.md step 3)
# ---------------------------------------------------------------------------------------------


class Overflow:
    """Where a preempted request resumes: ``saved_position(p)`` (ints or arrays alike)."""

    name: ClassVar[str]


@dataclasses.dataclass(frozen=True)
class Recompute(Overflow):
    """The victim's KV is dropped: it restarts from position 0 (vLLM's default)."""

    name: ClassVar[str] = "recompute"

    def saved_position(self, p):
        return p * 0  # 0, as an int or as an array like p


@dataclasses.dataclass(frozen=True)
class Swap(Overflow):
    """The victim's KV goes to host memory: it resumes at its position p."""

    name: ClassVar[str] = "swap"

    def saved_position(self, p):
        return p


# ---------------------------------------------------------------------------------------------
# Victim choice (docs/semantics.md step 3)
# ---------------------------------------------------------------------------------------------


class Victim:
    """Which running request step 3 preempts next. ``newest``: the newest admitted (the
    simulator's fast path walks the running ring from its tail). The others minimise a key
    over every running request, ties to the newest admitted: ``key(p, held)`` (reference,
    ints) and ``jax_key`` (arrays), p the position and held = mem(p) its KV at the start of
    the step."""

    name: ClassVar[str]
    newest: ClassVar[bool] = False

    def key(self, p, held):
        raise NotImplementedError

    def jax_key(self, p, held):
        return self.key(p, held)


@dataclasses.dataclass(frozen=True)
class NewestVictim(Victim):
    """The newest admitted request (vLLM's ``running.pop()``)."""

    name: ClassVar[str] = "newest"
    newest: ClassVar[bool] = True

    def key(self, p, held):
        return 0  # unused: every running request ties, and the newest wins ties


@dataclasses.dataclass(frozen=True)
class LeastProgressVictim(Victim):
    """The request with the fewest executed steps p (least work lost; SGLang retracts the
    requests with the fewest decoded tokens first), ties to the newest."""

    name: ClassVar[str] = "least_progress"

    def key(self, p, held):
        return p


@dataclasses.dataclass(frozen=True)
class LargestKVVictim(Victim):
    """The request holding the most KV, mem(p) (frees the most memory per preemption), ties
    to the newest."""

    name: ClassVar[str] = "largest_kv"

    def key(self, p, held):
        return -held


# ---------------------------------------------------------------------------------------------
# Order (docs/semantics.md step 4)
# ---------------------------------------------------------------------------------------------


class Order:
    """Which waiting request is the next candidate. Hooks: ``pick`` (reference, an index in
    ``queue``), ``jax_pick`` (a slot of the window holding ``window`` fresh requests).
    ``in_queue_order``: candidates come in queue order, so a run of admissions can be
    decided at once by prefix sums (the simulator's fast path)."""

    name: ClassVar[str]
    in_queue_order: ClassVar[bool]

    @property
    def window(self) -> int:
        return 1


@dataclasses.dataclass(frozen=True)
class FCFS(Order):
    """First come, first served: the head of the queue."""

    name: ClassVar[str] = "fcfs"
    in_queue_order: ClassVar[bool] = True

    def pick(self, sim) -> int:
        return 0

    def jax_pick(self, s, o, ids, valid, chunk):
        return jnp.int32(0)


class _WindowOrder(Order):
    """Smallest key first among the first ``window`` never-admitted waiting requests, ties to
    the earlier one; a preempted request at the head goes first. ``key(s, o, chunk)``
    (reference, Python numbers) and ``jax_key`` (arrays) give a request's key."""

    in_queue_order: ClassVar[bool] = False

    def __post_init__(self):
        check_number(f"{self.name}_window", self.window, low=1, high=1 << 16, integer=True)

    def pick(self, sim) -> int:
        if sim.ever_admitted(sim.queue[0][0]):
            return 0
        best = best_key = None
        seen = 0
        for idx, (i, _p) in enumerate(sim.queue):
            if sim.ever_admitted(i):
                continue  # cannot happen (preempted entries sit at the head); kept literal
            k = self.key(sim.s[i], sim.o[i], sim.chunk)
            if best is None or k < best_key:
                best, best_key = idx, k
            seen += 1
            if seen == self.window:
                break
        return best

    def jax_pick(self, s, o, ids, valid, chunk):
        """Window slot of the smallest key, ties to the smallest id (= earliest in the
        queue; a refilled slot may hold a later id than the slots after it)."""
        key = self.jax_key(s, o, chunk)
        big = jnp.array(jnp.inf if key.dtype.kind == "f" else jnp.iinfo(key.dtype).max, key.dtype)
        sw = jnp.where(valid, key, big)
        idmax = jnp.iinfo(jnp.int32).max
        return jnp.argmin(jnp.where(sw == jnp.min(sw), ids, idmax)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SPF(_WindowOrder):
    """Shortest prompt first among the first ``window`` never-admitted waiting requests,
    ties to the earlier one; a preempted request at the head goes first."""

    window: int = 32  # type: ignore[assignment]
    name: ClassVar[str] = "spf"

    def key(self, s, o, chunk):
        return s

    def jax_key(self, s, o, chunk):
        return s


def volume_f32(s, o, chunk, xp=np):
    """A request's KV memory-time volume g(s, o) = ŝ·C(C−1)/2 + s + s·o + o(o+1)/2
    (token·steps, kvstab.request.g_exact), evaluated in float32 in this exact order of
    operations, so that the reference (numpy, ``xp=np``) and the JAX simulator
    (``xp=jnp``) compute the very same number (docs/semantics.md "Orders")."""
    c = -(-s // chunk)
    if xp is np:
        f = np.float32
        s_, o_, c_ = f(s), f(o), f(c)
        t1, t2, t3 = o_ * s_, o_ * f(o + 1), f(c - 1) * c_
        t5 = t3 * f(chunk * 0.5)
        return ((t1 + t2 * f(0.5)) + t5) + s_
    s_, o_, c_ = (x.astype(jnp.float32) for x in (s, o, c))
    # The barriers keep XLA from fusing a product into the following sum (an FMA rounds
    # once where numpy rounds twice).
    t1, t2, t3 = jax.lax.optimization_barrier(
        (o_ * s_, o_ * (o + 1).astype(jnp.float32), (c - 1).astype(jnp.float32) * c_)
    )
    t5 = jax.lax.optimization_barrier(t3 * jnp.float32(chunk * 0.5))
    return ((t1 + t2 * jnp.float32(0.5)) + t5) + s_


@dataclasses.dataclass(frozen=True)
class SVF(_WindowOrder):
    """Smallest volume first (Kong, Qi, Ye, Zhou): the smallest KV memory-time volume
    g(s, o) (float32, :func:`volume_f32`) among the first ``window`` never-admitted waiting
    requests, ties to the earlier one. It knows each request's true o (an oracle); without
    it, ordering by E[g | s] is ``spf`` for any law with o independent of s, since E[g | s]
    then increases strictly with s."""

    window: int = 32  # type: ignore[assignment]
    name: ClassVar[str] = "svf"

    def key(self, s, o, chunk):
        return volume_f32(s, o, chunk)

    def jax_key(self, s, o, chunk):
        return volume_f32(s, o, chunk, jnp)


# ---------------------------------------------------------------------------------------------
# Batch time (docs/semantics.md step 6)
# ---------------------------------------------------------------------------------------------


class BatchTime:
    """The duration b_k of step k. :meth:`step_time_s` is the model's one definition, used by
    the JAX simulator (traced per-trajectory parameters), the reference (Python floats) and
    :mod:`kvstab.calibrate` (differentiated). ``mean_s`` is a rough mean for sizing buffers."""

    name: ClassVar[str]
    needs_factors: ClassVar[bool] = False  # takes i.i.d. factors ξ_k (sampled with the workload)

    @staticmethod
    def step_time_s(batch_time_s, coefs, prefill, decode, kv, factor):
        raise NotImplementedError

    def time_s(self, prefill, decode, kv, factor=None):
        """b_k of this model's own parameters (the reference's hook)."""
        return self.step_time_s(self.mean_time_s, self.coefs, prefill, decode, kv, factor)

    @property
    def mean_time_s(self):
        return getattr(self, "batch_time_s", 0.0)

    @property
    def coefs(self) -> tuple:
        return (0.0, 0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class ConstantBatchTime(BatchTime):
    """b_k = b̄ (a scalar, or one per trajectory)."""

    batch_time_s: Any = BATCH_TIME_S
    name: ClassVar[str] = "constant"

    def __post_init__(self):
        _each("batch_time_s", self.batch_time_s, low=0, low_open=True)

    @staticmethod
    def step_time_s(batch_time_s, coefs, prefill, decode, kv, factor):
        return batch_time_s

    def mean_s(self, **_) -> float:
        return float(np.mean(self.batch_time_s))


@dataclasses.dataclass(frozen=True)
class LinearBatchTime(BatchTime):
    """b_k = c₀ + c_p·P_k + c_d·D_k + c_kv·KV_k (prefill, decode and KV tokens of the step)."""

    c0_s: float = 0.02
    c_prefill_s: float = 0.0
    c_decode_s: float = 0.0
    c_kv_s: float = 0.0
    name: ClassVar[str] = "linear"

    def __post_init__(self):
        check_number("linear_coefs", self.c0_s, low=0, low_open=True)
        for c in self.coefs[1:]:
            check_number("linear_coefs", c, low=0)

    @property
    def coefs(self) -> tuple:
        return (self.c0_s, self.c_prefill_s, self.c_decode_s, self.c_kv_s)

    @staticmethod
    def step_time_s(batch_time_s, coefs, prefill, decode, kv, factor):
        """Left to right, so that float64 (reference) and float32 (JAX) agree with the spec."""
        c0, cp, cd, ckv = (coefs[j] for j in range(4))
        return ((c0 + cp * prefill) + cd * decode) + ckv * kv

    def mean_s(self, *, chunk_tokens, kv_capacity_tokens, mean_total_tokens) -> float:
        """A full batch's time: one chunk of prefill, M/E[s+o] decodes, M tokens held."""
        c = np.asarray(self.coefs, np.float64)
        return float(
            c[0]
            + c[1] * chunk_tokens
            + c[2] * kv_capacity_tokens / mean_total_tokens
            + c[3] * kv_capacity_tokens
        )


@dataclasses.dataclass(frozen=True, eq=False)
class RandomBatchTime(BatchTime):
    """b_k = b̄·ξ_k, ξ_k i.i.d.: ``lognormal`` exp(σZ), or ``two_point`` (a fraction
    ``slow_fraction`` of the batches ``slow_factor`` times slower, times exp(σZ))."""

    batch_time_s: Any = BATCH_TIME_S
    law: str = "lognormal"
    sigma: float = 0.25
    slow_fraction: float = 0.3
    slow_factor: float = 3.0
    name: ClassVar[str] = "random"
    needs_factors: ClassVar[bool] = True

    def __post_init__(self):
        _each("batch_time_s", self.batch_time_s, low=0, low_open=True)
        if self.law not in BATCH_TIME_LAWS:
            raise InputError(
                "batch_time_law", f"must be one of {', '.join(BATCH_TIME_LAWS)}, got {self.law!r}"
            )
        check_number("sigma", self.sigma, low=0)
        check_number("slow_fraction", self.slow_fraction, low=0, high=1)
        check_number("slow_factor", self.slow_factor, low=0, low_open=True)

    @staticmethod
    def step_time_s(batch_time_s, coefs, prefill, decode, kv, factor):
        return batch_time_s * factor

    def factors(self, key, shape):
        """ξ of shape ``shape`` (float32), :func:`kvstab.workload.batch_time_factors`."""
        return batch_time_factors(
            key,
            shape,
            law=self.law,
            sigma=self.sigma,
            slow_fraction=self.slow_fraction,
            slow_factor=self.slow_factor,
        )

    def mean_s(self, **_) -> float:
        b = float(np.mean(self.batch_time_s))
        if self.law == "two_point":
            b *= 1.0 + self.slow_fraction * (self.slow_factor - 1.0)
        return b * float(np.exp(self.sigma**2 / 2))


# ---------------------------------------------------------------------------------------------
# Routers (docs/semantics.md "Replicas and routing")
# ---------------------------------------------------------------------------------------------


class Router:
    """How G replicas share one stream. ``dynamic``: routes at run time on the replicas'
    states (then the replicas need a constant batch time); otherwise the stream is split
    before the run. Dynamic hooks: ``key`` (reference), ``jax_key`` / ``jax_key_step``."""

    name: ClassVar[str]
    dynamic: ClassVar[bool]
    tracks_waiting_tokens: ClassVar[bool] = False  # the key needs Σ s over waiting requests


@dataclasses.dataclass(frozen=True)
class RoundRobin(Router):
    """Request i goes to replica i mod G (the paper's 8-GPU runs)."""

    name: ClassVar[str] = "round_robin"
    dynamic: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class RandomRouter(Router):
    """Each request to an independent uniform replica."""

    name: ClassVar[str] = "random"
    dynamic: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class JSQ(Router):
    """Join the shortest queue: key = waiting + running requests."""

    name: ClassVar[str] = "jsq"
    dynamic: ClassVar[bool] = True

    def key(self, sim) -> int:
        return len(sim.queue) + len(sim.running)

    def jax_key(self, waiting, running, used, waiting_tokens):
        return waiting + running

    def jax_key_step(self, prompt):
        """How much routing one request of prompt s raises its replica's key."""
        return 1


@dataclasses.dataclass(frozen=True)
class LeastKV(Router):
    """Least KV: key = U + Σ s over waiting requests (fresh or preempted)."""

    name: ClassVar[str] = "least_kv"
    dynamic: ClassVar[bool] = True
    tracks_waiting_tokens: ClassVar[bool] = True

    def key(self, sim) -> int:
        return sim.used + sum(sim.s[i] for i, _ in sim.queue)

    def jax_key(self, waiting, running, used, waiting_tokens):
        return used + waiting_tokens

    def jax_key_step(self, prompt):
        return prompt


# ---------------------------------------------------------------------------------------------
# Arrivals and the workload
# ---------------------------------------------------------------------------------------------


class Arrivals:
    """The arrival process of the stream (into the whole cluster)."""

    name: ClassVar[str]
    rate_per_s: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class _RateArrivals(Arrivals):
    rate_per_s: Any = 1.0

    def __post_init__(self):
        if self.rate_per_s is None:
            raise InputError("arrival_rate_per_s", "give a rate >= 0 (or Saturated(), Replay)")
        _each("arrival_rate_per_s", self.rate_per_s, low=0)


@dataclasses.dataclass(frozen=True, eq=False)
class Poisson(_RateArrivals):
    """Poisson arrivals at rate λ (scalar, or one per trajectory: a sweep in one call)."""

    name: ClassVar[str] = "poisson"


@dataclasses.dataclass(frozen=True, eq=False)
class Deterministic(_RateArrivals):
    """Evenly spaced arrivals at rate λ (scalar or one per trajectory)."""

    name: ClassVar[str] = "deterministic"


@dataclasses.dataclass(frozen=True)
class Saturated(Arrivals):
    """An endless backlog: every buffered request waits at t = 0 (for μ_sim)."""

    name: ClassVar[str] = "saturated"


@dataclasses.dataclass(frozen=True, eq=False)
class Replay(Arrivals):
    """One trace replayed: arrival times (s), prompt and output lengths."""

    arrival_s: Any = None
    prompt: Any = None
    output: Any = None
    name: ClassVar[str] = "replay"

    def __post_init__(self):
        replay_workload(self.arrival_s, self.prompt, self.output)  # validates

    @property
    def num_requests(self) -> int:
        return int(np.asarray(self.arrival_s).size)


@dataclasses.dataclass(frozen=True, eq=False)
class Workload:
    """What arrives: a joint law of (s, o) (:mod:`kvstab.laws`; None for a replay), the
    arrival process, and ``initial_queue`` requests already waiting at t = 0."""

    lengths: Any = None
    arrivals: Arrivals | None = None
    initial_queue: int = 0

    def __post_init__(self):
        if self.arrivals is None:
            raise InputError(
                "arrivals", "give Poisson(rate), Deterministic(rate), Saturated() or Replay(...)"
            )
        _one_of("arrivals", self.arrivals, (Arrivals,))
        check_number("initial_queue", self.initial_queue, low=0, integer=True)
        if self.lengths is None and not isinstance(self.arrivals, Replay):
            raise InputError("workload", "give a length law (or arrivals=Replay(...))")
        if self.lengths is not None:
            object.__setattr__(self, "lengths", as_joint(self.lengths))


# ---------------------------------------------------------------------------------------------
# Bundles
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Policy:
    """The scheduler: admission rule, overflow handling, order of the waiting queue, and
    which running request overflow preempts."""

    admission: Admission = CurrentAdmission()
    overflow: Overflow = Recompute()
    order: Order = FCFS()
    victim: Victim = NewestVictim()

    def __post_init__(self):
        _one_of("admission", self.admission, (Admission,))
        _one_of("overflow", self.overflow, (Overflow,))
        _one_of("order", self.order, (Order,))
        _one_of("victim", self.victim, (Victim,))

    def names(self) -> dict:
        """The policy in the command line's words (results files). Parameters of the newer
        rules appear only when they are used, so older results files read the same."""
        out = {
            "admission": self.admission.name,
            "overflow": self.overflow.name,
            "order": self.order.name,
            "spf_window": getattr(self.order, "window", 1),
        }
        if not self.victim.newest:
            out["victim"] = self.victim.name
        for field in ("watermark", "max_tokens"):
            if hasattr(self.admission, field):
                out[field] = getattr(self.admission, field)
        return out

    @classmethod
    def from_names(
        cls,
        admission: str = "current",
        overflow: str = "recompute",
        order: str = "fcfs",
        spf_window: int = 32,
        victim: str = "newest",
        watermark: float = 0.01,
        max_tokens: int | None = None,
    ) -> Policy:
        return policy_from_names(
            admission, overflow, order, spf_window, victim, watermark, max_tokens
        )


@dataclasses.dataclass(frozen=True, eq=False)
class System:
    """One replica: KV capacity M (tokens; scalar or per trajectory), chunk ŝ, batch time."""

    kv_capacity_tokens: Any = KV_CAPACITY_TOKENS
    chunk_tokens: int = CHUNK_TOKENS
    batch_time: BatchTime = ConstantBatchTime(BATCH_TIME_S)

    def __post_init__(self):
        _each("kv_capacity_tokens", self.kv_capacity_tokens, low=1, integer=True)
        check_number("chunk_tokens", self.chunk_tokens, low=1, integer=True)
        _one_of("batch_time", self.batch_time, (BatchTime,))


@dataclasses.dataclass(frozen=True)
class Cluster:
    """G replicas behind a router (λ is the rate into the whole cluster)."""

    num_replicas: int = 1
    router: Router = RoundRobin()

    def __post_init__(self):
        check_number("num_replicas", self.num_replicas, low=1, integer=True)
        _one_of("router", self.router, (Router,))


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What a run returns beyond the per-block series: per-request records for the first
    ``num_records`` ids of each replica, per-step arrays (``record_steps``), and the
    resolution (``block_steps``, ``num_segments``; None: automatic)."""

    num_records: int = 0
    record_steps: bool = False
    block_steps: int | None = None
    num_segments: int | None = None

    def __post_init__(self):
        check_number("num_records", self.num_records, low=0, integer=True)
        if self.block_steps is not None:
            check_number("block_steps", self.block_steps, low=1, integer=True)
        if self.num_segments is not None:
            check_number("num_segments", self.num_segments, low=1, integer=True)


# ---------------------------------------------------------------------------------------------
# The command line's words -> components
# ---------------------------------------------------------------------------------------------

ADMISSIONS = {
    c.name: c
    for c in (
        CurrentAdmission,
        ReserveAdmission,
        WatermarkAdmission,
        CapAdmission,
        ConservativeAdmission,
    )
}
OVERFLOWS = {c.name: c for c in (Recompute, Swap)}
ORDERS = {c.name: c for c in (FCFS, SPF, SVF)}
VICTIMS = {c.name: c for c in (NewestVictim, LeastProgressVictim, LargestKVVictim)}
BATCH_TIMES = {c.name: c for c in (ConstantBatchTime, LinearBatchTime, RandomBatchTime)}
ROUTER_CLASSES = {c.name: c for c in (RoundRobin, RandomRouter, JSQ, LeastKV)}
ARRIVAL_CLASSES = {c.name: c for c in (Poisson, Deterministic, Saturated, Replay)}
# The package's one list of router names (static ones split the stream before the run).
ROUTERS = tuple(ROUTER_CLASSES)
STATIC_ROUTERS = tuple(n for n, c in ROUTER_CLASSES.items() if not c.dynamic)
DYNAMIC_ROUTERS = tuple(n for n, c in ROUTER_CLASSES.items() if c.dynamic)


def _lookup(field: str, name: Any, table: dict):
    if not isinstance(name, str) or name not in table:
        raise InputError(field, f"must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def policy_from_names(
    admission: str = "current",
    overflow: str = "recompute",
    order: str = "fcfs",
    spf_window: int = 32,
    victim: str = "newest",
    watermark: float = 0.01,
    max_tokens: int | None = None,
) -> Policy:
    """``Policy.from_names(admission="watermark", overflow="swap", order="spf", spf_window=8,
    victim="largest_kv", watermark=0.02)``; ``max_tokens`` is required by ``cap``."""
    order_cls = _lookup("order", order, ORDERS)
    adm_cls = _lookup("admission", admission, ADMISSIONS)
    check_number("spf_window", spf_window, low=1, integer=True)
    if adm_cls is WatermarkAdmission:
        adm = WatermarkAdmission(watermark)
    elif adm_cls in (CapAdmission, ConservativeAdmission):
        if max_tokens is None:
            raise InputError(
                "max_tokens", f"{admission} admission needs max_tokens, an integer >= 1"
            )
        adm = adm_cls(max_tokens)
    else:
        adm = adm_cls()
    return Policy(
        adm,
        _lookup("overflow", overflow, OVERFLOWS)(),
        order_cls(int(spf_window)) if issubclass(order_cls, _WindowOrder) else order_cls(),
        _lookup("victim", victim, VICTIMS)(),
    )


def router_from_name(name: str) -> Router:
    return _lookup("router", name, ROUTER_CLASSES)()


def batch_time_from_name(
    model: str = "constant",
    *,
    batch_time_s: Any = BATCH_TIME_S,
    linear_coefs: Any = (0.0, 0.0, 0.0, 0.0),
    law: str = "lognormal",
    sigma: float = 0.25,
    slow_fraction: float = 0.3,
    slow_factor: float = 3.0,
) -> BatchTime:
    """The batch-time component of a model name and the command line's parameters."""
    cls = _lookup("batch_time_model", model, BATCH_TIMES)
    if cls is LinearBatchTime:
        c = np.asarray(linear_coefs, np.float64)
        if c.shape != (4,) or not np.all(np.isfinite(c)) or c[0] <= 0 or np.any(c[1:] < 0):
            raise InputError("linear_coefs", "need 4 finite numbers c0 > 0, c_p, c_d, c_kv >= 0")
        return LinearBatchTime(*(float(x) for x in c))
    if cls is RandomBatchTime:
        return RandomBatchTime(batch_time_s, law, sigma, slow_fraction, slow_factor)
    return ConstantBatchTime(batch_time_s)


def arrivals_from_name(name: str, rate_per_s: Any = None) -> Arrivals:
    """``poisson`` / ``deterministic`` (with a rate) or ``saturated``."""
    cls = _lookup(
        "arrivals", name, {k: ARRIVAL_CLASSES[k] for k in ARRIVAL_CLASSES if k != "replay"}
    )
    return cls() if cls is Saturated else cls(rate_per_s)


def components_from_names(
    *,
    kv_capacity_tokens: Any = KV_CAPACITY_TOKENS,
    chunk_tokens: int = CHUNK_TOKENS,
    batch_time_model: str = "constant",
    batch_time_s: Any = BATCH_TIME_S,
    linear_coefs: Any = (0.0, 0.0, 0.0, 0.0),
    batch_time_law: str = "lognormal",
    batch_time_sigma: float = 0.25,
    slow_fraction: float = 0.3,
    slow_factor: float = 3.0,
    admission: str = "current",
    overflow: str = "recompute",
    order: str = "fcfs",
    spf_window: int = 32,
    victim: str = "newest",
    watermark: float = 0.01,
    max_tokens: int | None = None,
    num_replicas: int = 1,
    router: str = "round_robin",
    num_records: int = 0,
    record_steps: bool = False,
    block_steps: int | None = None,
    num_segments: int | None = None,
) -> dict:
    """The command line's (and results files') words -> ``system``, ``policy``, ``cluster``,
    ``outputs`` components, as keyword arguments of :func:`kvstab.sim.simulate`."""
    bt = batch_time_from_name(
        batch_time_model,
        batch_time_s=batch_time_s,
        linear_coefs=linear_coefs,
        law=batch_time_law,
        sigma=batch_time_sigma,
        slow_fraction=slow_fraction,
        slow_factor=slow_factor,
    )
    return {
        "system": System(kv_capacity_tokens, chunk_tokens, bt),
        "policy": policy_from_names(
            admission, overflow, order, spf_window, victim, watermark, max_tokens
        ),
        "cluster": Cluster(num_replicas, router_from_name(router)),
        "outputs": Outputs(num_records, record_steps, block_steps, num_segments),
    }


def workload_from_names(
    law: Any = None,
    *,
    arrivals: str = "poisson",
    arrival_rate_per_s: Any = None,
    saturated: bool = False,
    replay: tuple | None = None,
    initial_queue: int = 0,
) -> Workload:
    """The command line's words -> a :class:`Workload` (``replay`` = (arrival_s, prompt,
    output) of a trace; ``saturated``: an endless backlog)."""
    if replay is not None:
        process: Arrivals = Replay(*replay)
    elif saturated:
        process = Saturated()
    else:
        process = arrivals_from_name(arrivals, arrival_rate_per_s)
    return Workload(law, process, initial_queue)
