"""Buffer sizes of the JAX simulator, in one place: allocate on the host, grow on a flag.

The rollout has fixed-capacity buffers (running ring K, preempted stack S, calendar length,
request buffer R, and under a dynamic router each replica's buffer). As JAX MD's neighbour
lists do, they are sized outside jit from a probe of the workload (:func:`allocate_sizes`),
the rollout sets a :class:`kvstab.sim.state.Flag` bit when one is too small, and the driver
re-runs with the sizes :func:`grow_sizes` returns. Equal sizes let calls share one compiled
program, so callers that run many simulations (a boundary estimate, a reproduction) size
once with :func:`allocate_sizes` and pass the result as ``sizes``.
"""

from __future__ import annotations

import math

import numpy as np

from kvstab import analytic
from kvstab.sim.state import Flag


def next_pow2(x: float) -> int:
    """The smallest power of two >= x (at least 2)."""
    return 1 << max(1, int(math.ceil(math.log2(max(x, 2)))))


def request_buffer_size(mean_arrivals: float, extra: int = 0) -> int:
    """Requests to buffer for a Poisson stream of mean ``mean_arrivals`` over the run: a 15 %
    margin and six standard deviations, plus ``extra`` (an initial queue) and 256."""
    return int(1.15 * mean_arrivals + 6 * math.sqrt(mean_arrivals + 1) + extra + 256)


def allocate_sizes(
    prompt,
    output,
    *,
    kv_capacity_tokens: int,
    chunk_tokens: int,
    num_steps: int,
    mean_arrivals: float | None = None,
    initial_queue: int = 0,
    law=None,
    given: dict | None = None,
) -> dict:
    """Static sizes for a run, from a probe sample of (s, o) (or the replayed trace).

    Args:
        prompt, output: (n,) a sample of the workload's lengths.
        kv_capacity_tokens: the largest M of the run.
        num_steps: T, the steps simulated.
        mean_arrivals: expected arrivals per replica over the run (λ·T·b̄/G); None for an
            endless backlog (saturated), which admits up to 1.25·T·M/E[g] requests.
        initial_queue: requests waiting at t = 0, added to the buffer.
        law: the length law, whose bounds (if any) set the longest lifetime.
        given: sizes fixed by the caller (kept as they are).

    Returns:
        dict with max_running (ring K: 2.2·M over the mean first chunk, a power of two),
        max_preempted (= K), num_requests, cal_len (power of two > longest lifetime).
    """
    s, o = np.asarray(prompt), np.asarray(output)
    sz = dict(given or {})
    first = np.minimum(s, chunk_tokens)
    sz.setdefault("max_running", next_pow2(2.2 * kv_capacity_tokens / max(first.mean(), 1)))
    sz.setdefault("max_preempted", sz["max_running"])
    if mean_arrivals is None:
        eg = float(np.mean(np.asarray(analytic.g_exact(s, o, chunk_tokens))))
        sz.setdefault(
            "num_requests",
            int(1.25 * num_steps * kv_capacity_tokens / eg + 2 * sz["max_running"] + 256),
        )
    else:
        sz.setdefault("num_requests", request_buffer_size(mean_arrivals, initial_queue))
    max_life = int(np.max(-(-s // chunk_tokens) + o))
    if law is not None and getattr(law, "output", None) is not None:
        ms, mo = law.prompt.max_value, law.output.max_value
        if ms is not None and mo is not None:  # longest possible life of an independent law
            max_life = max(max_life, -(-ms // chunk_tokens) + mo)
    sz.setdefault("cal_len", next_pow2(max_life + 2))
    return sz


def calendar_fits(sizes: dict, prompt, output, chunk_tokens: int) -> dict:
    """``sizes`` with a calendar longer than every lifetime of the sampled requests."""
    life = int(np.max(np.asarray(-(-prompt // chunk_tokens) + output)))
    if life + 2 > sizes["cal_len"]:
        sizes = dict(sizes, cal_len=next_pow2(life + 2))
    return sizes


def grow_sizes(
    sizes: dict, flag_bits: int, *, dynamic: bool, replay: bool, stream_length: int
) -> dict:
    """The sizes for a re-run after a run that raised ``flag_bits`` (equal to ``sizes``
    when nothing needs more room).

    A full ring grows x4 (a start-up burst can need many times the guess); waiting preempted
    requests never outnumber the peak running count, so the stack grows with the ring. An
    exhausted arrival buffer or backlog doubles (not for a replay: a trace ends). A full
    replica buffer doubles, up to the whole stream (``stream_length``).
    """
    new = dict(sizes)
    if flag_bits & (Flag.RING_FULL | Flag.STACK_FULL):
        new["max_running"] = sizes["max_running"] * (4 if flag_bits & Flag.RING_FULL else 1)
        new["max_preempted"] = max(
            new["max_running"],
            sizes["max_preempted"] * (4 if flag_bits & Flag.STACK_FULL else 1),
        )
    if flag_bits & (Flag.ARRIVALS_EXHAUSTED | Flag.BACKLOG_EXHAUSTED) and not replay:
        new["num_requests"] = int(sizes["num_requests"] * 2)
        if dynamic:
            new["replica_requests"] = max(sizes["replica_requests"], new["num_requests"])
    if flag_bits & Flag.REPLICA_BUFFER_FULL:
        new["replica_requests"] = min(2 * sizes["replica_requests"], stream_length)
    return new
