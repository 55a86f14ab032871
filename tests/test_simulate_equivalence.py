"""The JAX simulator against the plain-Python reference: identical integer results.

Workloads use dyadic arrival times and batch times so that the float32 clock of the JAX
simulator and the float64 clock of the reference are exactly equal (arrivals compare them).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvstab import reference
from kvstab.simulate import SimConfig, SimParams, batch_rollout, step_records
from kvstab.workload import Workload


def small_workload(seed, n_req, s_max, o_max, rate_steps, burst=0):
    """Dyadic arrival times (multiples of 1/64 s), integer lengths."""
    rng = np.random.default_rng(seed)
    gaps = rng.integers(0, rate_steps, n_req) / 64.0  # 0 gaps: several arrivals at once
    arr = np.cumsum(gaps)
    arr[:burst] = 0.0
    s = rng.integers(1, s_max + 1, n_req)
    o = rng.integers(1, o_max + 1, n_req)
    return arr, s, o


def run_both(
    arr,
    s,
    o,
    *,
    M,
    chunk,
    T,
    admission="current",
    overflow="recompute",
    order="fcfs",
    spf_window=4,
    saturated=False,
    stream_ends=True,
    batch_time="constant",
    b=1 / 32,
    coefs=(1 / 64, 1 / 1024, 1 / 2048, 0.0),
    xi=None,
    caps=64,
):
    ref = reference.simulate(
        arr,
        s,
        o,
        kv_capacity_tokens=M,
        chunk_tokens=chunk,
        num_steps=T,
        stream_ends=stream_ends,
        saturated=saturated,
        admission=admission,
        overflow=overflow,
        order=order,
        spf_window=spf_window,
        batch_time=batch_time,
        batch_time_s=b,
        linear_coefs=coefs,
        batch_time_factors=xi,
    )
    life = int(np.max(-(-s // chunk) + o))
    cal = 1 << int(np.ceil(np.log2(life + 2)))
    cfg = SimConfig(
        chunk_tokens=chunk,
        num_steps=T,
        block_steps=1,
        admission=admission,
        overflow=overflow,
        order=order,
        spf_window=spf_window,
        batch_time_model=batch_time,
        saturated=saturated,
        stream_ends=stream_ends,
        max_running=caps,
        max_preempted=caps,
        cal_len=max(cal, 4),
        num_records=len(s),
        record_steps=True,
    )
    wl = Workload(
        jnp.asarray(arr, jnp.float32)[None],
        jnp.asarray(s, jnp.int32)[None],
        jnp.asarray(o, jnp.int32)[None],
    )
    params = SimParams(
        jnp.asarray([M], jnp.int32),
        jnp.ones(1),
        jnp.asarray([b], jnp.float32),
        jnp.asarray([coefs], jnp.float32),
    )
    xi_arr = None if xi is None else jnp.asarray(xi, jnp.float32)[None]
    out = batch_rollout(wl, params, xi_arr, cfg)
    return ref, out


def assert_same(ref, out, T):
    st, f = out.steps, out.final
    np.testing.assert_array_equal(np.asarray(st.kv_tokens[0]), ref.kv_tokens)
    np.testing.assert_array_equal(np.asarray(st.queue_len[0]), ref.queue_len)
    np.testing.assert_array_equal(np.asarray(st.running[0]), ref.running)
    np.testing.assert_array_equal(np.asarray(st.completed[0]), ref.completions_cum)
    np.testing.assert_array_equal(np.asarray(st.preempted[0]), ref.preemptions_cum)
    np.testing.assert_array_equal(np.asarray(st.prefill_tokens[0]), ref.prefill_tokens)
    np.testing.assert_array_equal(np.asarray(st.decode_tokens[0]), ref.decode_tokens)
    np.testing.assert_allclose(np.asarray(st.batch_time_s[0]), ref.batch_time_s, rtol=1e-6)
    assert int(f.p_arr[0]) == ref.num_arrived
    assert int(f.flags[0]) & 0b110011 == 0  # no cap flags, no invariant break
    rec = {k: v[0] for k, v in step_records(f, len(ref.finish_step), T).items()}
    for name in (
        "first_admit_step",
        "admit_step",
        "first_token_step",
        "finish_step",
        "num_preempted",
    ):
        np.testing.assert_array_equal(rec[name], getattr(ref, name), err_msg=name)


POLICIES = list(itertools.product(["current", "reserve"], ["recompute", "swap"], ["fcfs", "spf"]))


@pytest.mark.parametrize("admission,overflow,order", POLICIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_small_systems_match_reference(admission, overflow, order, seed):
    arr, s, o = small_workload(seed, 60, s_max=24, o_max=30, rate_steps=12, burst=10)
    ref, out = run_both(
        arr, s, o, M=120, chunk=8, T=160, admission=admission, overflow=overflow, order=order
    )
    if admission == "current":
        assert ref.num_preemptions > 0  # the test exercises preemption
    assert_same(ref, out, 160)


@pytest.mark.parametrize("overflow", ["recompute", "swap"])
def test_startup_burst_hundreds_of_admissions_and_multi_preemption_steps(overflow):
    # 400 requests waiting at t=0, tiny first chunks: hundreds admitted in step 0, then
    # growth forces many preemptions in one step.
    rng = np.random.default_rng(7)
    n = 400
    arr = np.zeros(n)
    s = rng.integers(1, 40, n)
    o = rng.integers(1, 60, n)
    ref, out = run_both(
        arr, s, o, M=1200, chunk=4, T=120, overflow=overflow, stream_ends=True, caps=512
    )
    adm0 = int(np.sum(ref.first_admit_step == 0))
    assert adm0 >= 200
    per_step = np.diff(np.concatenate([[0], ref.preemptions_cum]))
    assert per_step.max() >= 5
    assert_same(ref, out, 120)
    # with too few running slots the cap is hit: flagged, never silent
    _, small = run_both(arr, s, o, M=1200, chunk=4, T=120, overflow=overflow, caps=64)
    assert int(small.final.flags[0]) & 1


@pytest.mark.parametrize("batch_time", ["linear", "random"])
def test_batch_time_models_match_reference(batch_time):
    arr, s, o = small_workload(3, 50, s_max=20, o_max=20, rate_steps=20)
    xi = None
    if batch_time == "random":
        xi = np.random.default_rng(0).integers(1, 5, 200) / 4.0  # dyadic factors
    ref, out = run_both(arr, s, o, M=100, chunk=8, T=200, batch_time=batch_time, xi=xi)
    assert_same(ref, out, 200)


def test_saturated_and_empty_system():
    arr, s, o = small_workload(4, 300, s_max=30, o_max=30, rate_steps=1)
    ref, out = run_both(arr, s, o, M=150, chunk=8, T=100, saturated=True, stream_ends=False)
    assert_same(ref, out, 100)
    # an empty system: arrivals only after the horizon
    arr2 = np.full(5, 1000.0)
    ref, out = run_both(arr2, s[:5], o[:5], M=150, chunk=8, T=50)
    assert ref.num_arrived == 0 and int(out.final.completed[0]) == 0
    assert_same(ref, out, 50)
