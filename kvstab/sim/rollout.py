"""The compiled core: ``lax.scan`` over blocks of ``lax.scan`` over steps of
:func:`kvstab.sim.step.batch_step`, jitted once per static configuration.

λ, M, b̄ (:class:`kvstab.sim.state.SimParams`) and the request buffers are traced, so a sweep
over them does not recompile (:func:`num_compilations` lets a test check it). With several
local devices the trajectories are split over them (``shard_map``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kvstab.sim.state import (
    BlockOut,
    Requests,
    SimParams,
    State,
    StaticConfig,
    StepOut,
    init_state,
)
from kvstab.sim.step import batch_step
from kvstab.workload import RequestArrays


class RolloutOut(NamedTuple):
    """Everything one :func:`batch_rollout` call returns (leading dim traj)."""

    blocks: BlockOut
    steps: StepOut | None
    final: State


def batch_rollout(
    wl: RequestArrays,
    params: SimParams,
    xi: jax.Array | None,
    cfg: StaticConfig,
    state: State | None = None,
) -> RolloutOut:
    """Simulate every row for ``cfg.num_steps`` steps.

    Args:
        wl: request buffers, shapes (traj, req): one per row; under a dynamic router
            (``cfg.router``) one stream per trajectory, routed over ``cfg.num_replicas``
            rows each.
        params: per-row parameters, shapes (rows,) ((rows, 4) for linear_coefs).
        xi: (traj, cfg.num_steps) batch-time factors for a random batch time, else None.
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
        # Place every input split over the devices first: a segment's start state (made on
        # one device) and the next segments' (already split) then share one compiled program.
        sharding = _traj_sharding(ndev)
        wl, params, xi, state = jax.device_put((wl, params, xi, state), sharding)
        return _sharded_rollout(cfg, ndev, xi is None)(wl, params, xi, state)
    return _rollout_jit(wl, params, xi, state, cfg)


def place_on_devices(tree, rows: int):
    """``tree`` split along its leading axis over the local devices when
    :func:`batch_rollout` would shard request buffers of ``rows`` rows (else as it is): a
    driver that calls the rollout several times (segments) moves its inputs once."""
    ndev = jax.local_device_count()
    if ndev > 1 and rows % ndev == 0:
        return jax.device_put(tree, _traj_sharding(ndev))
    return tree


def num_compilations() -> int:
    """How many times the rollout has been compiled in this process (one per static
    configuration and shapes; a sweep over λ, M or b̄ must add none)."""
    n = _rollout_jit._cache_size()
    for f in _SHARDED_JITS:
        n += f._cache_size()
    return n


_SHARDED_JITS: list = []


@functools.lru_cache(maxsize=8)
def _traj_sharding(ndev: int):
    """Arrays split along their leading (trajectory) axis over the first ``ndev`` devices."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    return NamedSharding(Mesh(np.array(jax.local_devices()[:ndev]), ("traj",)), P("traj"))


@functools.lru_cache(maxsize=64)
def _sharded_rollout(cfg: StaticConfig, ndev: int, no_xi: bool):
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
            lambda w, p, s: _rollout(w, p, None, s, cfg),
            mesh=mesh,
            in_specs=(spec, spec, spec),
            out_specs=spec,
            check_vma=False,  # every value is per shard; nothing is replicated
        )
        jf = jax.jit(f)
        _SHARDED_JITS.append(jf)
        return lambda w, p, xi, s: jf(w, p, s)
    f = jax.shard_map(
        lambda w, p, x, s: _rollout(w, p, x, s, cfg),
        mesh=mesh,
        in_specs=(spec, spec, spec, spec),
        out_specs=spec,
        check_vma=False,
    )
    jf = jax.jit(f)
    _SHARDED_JITS.append(jf)
    return jf


def _rollout(wl, params, xi, st0, cfg: StaticConfig) -> RolloutOut:
    req = Requests(wl.arrival_epoch, jnp.stack([wl.prompt, wl.output], axis=-1))
    n = st0.k.shape[0]  # rows: trajectories, or (traj, replica) under a dynamic router
    nb = cfg.num_steps // cfg.block_steps
    xs = None if xi is None else jnp.swapaxes(xi, 0, 1).reshape(nb, cfg.block_steps, n)
    f32 = jnp.float32

    def one_step(carry, x):
        st, acc_kv, acc_q, acc_run, mx, _ = carry
        st, out = batch_step(st, x, req, params, cfg)
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


_rollout_jit = jax.jit(_rollout, static_argnums=(4,))
