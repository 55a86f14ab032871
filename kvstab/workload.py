"""Sampled workloads: key -> arrival epochs and (s, o) lengths for many trajectories.

Randomness lives here. Given a sampled workload the simulator is deterministic, so the JAX
simulator and the reference can be compared exactly, and sweeps over λ use common random
numbers: arrival *epochs* are sampled for a unit-rate process and the simulator divides them
by the (traced) rate λ.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kvstab.errors import InputError, check_number
from kvstab.laws import JointLaw

ARRIVALS = ("poisson", "deterministic", "saturated", "replay")
# Router names: kvstab.sim.components.ROUTERS (static routers split the stream here).


def _static_routers() -> tuple:
    # Local: kvstab.sim.components imports this module (BATCH_TIME_LAWS), a cycle at top.
    from kvstab.sim.components import STATIC_ROUTERS

    return STATIC_ROUTERS


class RequestArrays(NamedTuple):
    """Sampled per-trajectory request buffers (the workload *spec* is
    :class:`kvstab.sim.Workload`). Shapes (traj, req); epochs are in units of 1/λ.

    Attributes:
        arrival_epoch: (traj, req) float32, non-decreasing; arrival time = epoch / λ.
        prompt: (traj, req) int32 prompt lengths s.
        output: (traj, req) int32 output lengths o.
    """

    arrival_epoch: jax.Array
    prompt: jax.Array
    output: jax.Array

    @property
    def num_trajectories(self) -> int:
        return int(self.prompt.shape[0])

    @property
    def num_requests(self) -> int:
        return int(self.prompt.shape[1])


def sample_workload(
    key: jax.Array,
    law: JointLaw,
    *,
    num_trajectories: int,
    num_requests: int,
    arrivals: str = "poisson",
    initial_queue: int = 0,
    num_replicas: int = 1,
    router: str = "round_robin",
) -> RequestArrays:
    """Sample request buffers for ``num_trajectories × num_replicas`` replica trajectories.

    Args:
        key: PRNG key.
        law: joint law of (s, o).
        num_trajectories: independent trajectories (traj).
        num_requests: buffer length per replica (req). An endless stream that runs past it is
            flagged by the simulator (never silently cut).
        arrivals: ``poisson`` (unit-rate exponential gaps), ``deterministic`` (epoch i + 1),
            ``saturated`` (all at epoch 0; the simulator treats them as an endless backlog).
        initial_queue: requests already waiting at t = 0 (epoch 0) before the stream starts.
        num_replicas: G replicas behind a router; rows are ordered (traj, replica).
        router: ``round_robin`` (request i -> replica i mod G, as in the paper's 8-GPU runs) or
            ``random`` (independent uniform choice).

    Returns:
        RequestArrays with leading dimension ``num_trajectories * num_replicas``.
    """
    check_number("num_trajectories", num_trajectories, low=1, integer=True)
    check_number("num_requests", num_requests, low=1, integer=True)
    check_number("initial_queue", initial_queue, low=0, integer=True)
    check_number("num_replicas", num_replicas, low=1, integer=True)
    if arrivals not in ARRIVALS[:3]:
        raise InputError(
            "arrivals", f"must be one of poisson, deterministic, saturated, got {arrivals!r}"
        )
    if router not in _static_routers():
        raise InputError(
            "router",
            f"sample_workload splits by {' or '.join(_static_routers())}, got {router!r} "
            "(dynamic routers route in the simulator: sample one stream with num_replicas=1)",
        )
    n, r, g = int(num_trajectories), int(num_requests), int(num_replicas)
    # Random routing gives each replica a binomial share: draw extra so every buffer fills.
    total = r * g if (g == 1 or router == "round_robin") else int(r * g * 1.25 + 64 * g)
    key_gaps, key_len, key_route = jax.random.split(key, 3)
    s, o = law.sample(key_len, (n, total))
    if arrivals == "poisson":
        epoch = jnp.cumsum(jax.random.exponential(key_gaps, (n, total)), axis=1)
    elif arrivals == "deterministic":
        epoch = jnp.broadcast_to(jnp.arange(1, total + 1, dtype=jnp.float32), (n, total))
    else:
        epoch = jnp.zeros((n, total), jnp.float32)
    if initial_queue:
        q = min(int(initial_queue), total)
        shifted = jnp.concatenate([jnp.zeros((n, q), epoch.dtype), epoch[:, : total - q]], axis=1)
        epoch = shifted
    stream = RequestArrays(epoch.astype(jnp.float32), s.astype(jnp.int32), o.astype(jnp.int32))
    if g == 1:
        return stream
    return split_stream(stream, g, router, key_route, per_replica=r)


def split_stream(
    stream: RequestArrays,
    num_replicas: int,
    router: str,
    key: jax.Array | None,
    *,
    per_replica: int | None,
) -> RequestArrays:
    """Split each trajectory's request stream over G replicas by a static router.

    ``round_robin``: request i goes to replica i mod G. ``random``: an independent uniform
    replica per request (a stable partition, so each replica keeps arrival order). Rows are
    ordered (traj, replica). Dynamic routers (jsq, least_kv) route inside the simulator.

    Args:
        per_replica: each replica gets the first ``per_replica`` requests routed to it (an
            endless stream's prefix). None: every request of a finite stream (trace replay)
            is kept, and shorter shares are padded with requests that never arrive
            (arrival epoch +inf, s = o = 1), so nothing is dropped.
    """
    if router not in _static_routers():
        raise InputError(
            "router", f"split_stream takes {' or '.join(_static_routers())}, got {router!r}"
        )
    n, total = stream.prompt.shape
    g = int(num_replicas)
    rep = (
        jnp.broadcast_to(jnp.arange(total) % g, (n, total))
        if router == "round_robin"
        else jax.random.randint(key, (n, total), 0, g)
    )
    # stable partition of each trajectory's stream by replica: replica k's requests in order
    order = jnp.argsort(rep * total + jnp.arange(total)[None, :], axis=1)
    counts = jax.vmap(lambda x: jnp.bincount(x, length=g))(rep)
    if per_replica is None:
        width = int(jnp.max(counts))
    else:
        width = int(per_replica)
        short = int(jnp.min(counts))
        if short < width:
            raise InputError(
                "num_requests",
                f"{router} routing left a replica {short} of the {width} requests it needs; "
                "raise num_requests",
            )
    starts = jnp.concatenate(
        [jnp.zeros((n, 1), counts.dtype), jnp.cumsum(counts, axis=1)[:, :-1]], axis=1
    )
    j = jnp.arange(width)[None, None, :]
    real = j < counts[:, :, None]  # (n, g, width); all True with per_replica
    idx = jnp.minimum(starts[:, :, None] + j, total - 1)
    take = jnp.take_along_axis(order[:, None, :].repeat(g, 1), idx, axis=2)

    def pick(x, pad):
        got = jnp.take_along_axis(x[:, None, :].repeat(g, 1), take, axis=2)
        return jnp.where(real, got, pad).reshape(n * g, width)

    return RequestArrays(
        pick(stream.arrival_epoch, jnp.inf), pick(stream.prompt, 1), pick(stream.output, 1)
    )


def replay_workload(arrival_s, prompt, output) -> RequestArrays:
    """One trajectory replaying a given list of (arrival time, s, o); use with rate λ = 1."""
    a = np.asarray(arrival_s, np.float64)
    s = np.asarray(prompt)
    o = np.asarray(output)
    if not (a.shape == s.shape == o.shape) or a.ndim != 1 or a.size == 0:
        raise InputError("replay", "arrival_s, prompt and output must be equally long 1-D arrays")
    if np.any(~np.isfinite(a)):
        raise InputError(
            "arrival_s", f"must be finite (row {int(np.flatnonzero(~np.isfinite(a))[0])})"
        )
    bad = np.flatnonzero(np.diff(a) < 0)
    if bad.size:
        raise InputError(
            "arrival_s",
            f"must be non-decreasing; row {int(bad[0]) + 1} is earlier than row {int(bad[0])}",
        )
    return RequestArrays(
        jnp.asarray(a - a[0] if a[0] < 0 else a, jnp.float32)[None, :],
        jnp.asarray(s, jnp.int32)[None, :],
        jnp.asarray(o, jnp.int32)[None, :],
    )


BATCH_TIME_LAWS = ("lognormal", "two_point")


def batch_time_factors(
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    law: str = "lognormal",
    sigma: float = 0.25,
    slow_fraction: float = 0.3,
    slow_factor: float = 3.0,
) -> jax.Array:
    """i.i.d. multiplicative batch-time factors ξ (median 1 for the body): b_k = b̄·ξ_k.

    ``lognormal``: ξ = exp(σZ), a right tail that grows with σ.
    ``two_point``: with probability ``slow_fraction`` a batch is ``slow_factor`` times slower
    (times a lognormal jitter σ), like the paper's 8:1 appendix (≈70 % similar, 30 % slower).
    """
    check_number("sigma", sigma, low=0)
    if law not in BATCH_TIME_LAWS:
        raise InputError(
            "batch_time_law", f"must be one of {', '.join(BATCH_TIME_LAWS)}, got {law!r}"
        )
    key_z, key_u = jax.random.split(key)
    xi = jnp.exp(sigma * jax.random.normal(key_z, shape))
    if law == "two_point":
        check_number("slow_fraction", slow_fraction, low=0, high=1)
        check_number("slow_factor", slow_factor, low=0, low_open=True)
        slow = jax.random.uniform(key_u, shape) < slow_fraction
        xi = jnp.where(slow, slow_factor * xi, xi)
    return xi.astype(jnp.float32)
