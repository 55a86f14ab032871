"""Tests of the plain-Python reference simulator (the executable spec, docs/semantics.md).

Expected trajectories in the scenario tests were worked out by hand, step by step, from
docs/semantics.md; the comments show the working so that a failure can be checked by a reader.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kvstab import reference
from kvstab.analytic import g_exact
from kvstab.errors import InputError
from kvstab.reference import ReferenceResult, growth, lifetime, mem, num_chunks
from kvstab.sim import System, batch_time_from_name, policy_from_names


def simulate(
    arrival_s,
    prompt,
    output,
    *,
    kv_capacity_tokens,
    chunk_tokens,
    batch_time="constant",
    batch_time_s=0.0372,
    linear_coefs=(0.0, 0.0, 0.0, 0.0),
    admission="current",
    overflow="recompute",
    order="fcfs",
    spf_window=32,
    **kw,
) -> ReferenceResult:
    """The reference with its components named in the command line's words."""
    bt = batch_time_from_name(batch_time, batch_time_s=batch_time_s, linear_coefs=linear_coefs)
    return reference.simulate(
        arrival_s,
        prompt,
        output,
        system=System(kv_capacity_tokens, chunk_tokens, bt),
        policy=policy_from_names(admission, overflow, order, spf_window),
        **kw,
    )


def run(arrival, prompt, output, **kw) -> ReferenceResult:
    kw.setdefault("batch_time_s", 1.0)
    return simulate(np.asarray(arrival, float), np.asarray(prompt), np.asarray(output), **kw)


# ---------------------------------------------------------------------------------------------
# Request life
# ---------------------------------------------------------------------------------------------


def test_mem_curve_by_hand():
    # s = 10, ŝ = 4: chunks 4, 8, 10 then decode 11, 12, 13.
    assert [mem(p, 10, 4) for p in range(7)] == [0, 4, 8, 10, 11, 12, 13]
    assert [growth(p, 10, 4) for p in range(6)] == [4, 4, 2, 1, 1, 1]
    assert num_chunks(10, 4) == 3 and lifetime(10, 3, 4) == 6
    assert [mem(p, 3, 8) for p in range(4)] == [0, 3, 4, 5]


def test_single_request_by_hand():
    r = run([0.0], [10], [3], kv_capacity_tokens=13, chunk_tokens=4, num_steps=8, stream_ends=True)
    assert r.kv_tokens.tolist() == [4, 8, 10, 11, 12, 13, 0, 0]
    assert r.prefill_tokens.tolist() == [4, 4, 2, 0, 0, 0, 0, 0]
    assert r.decode_tokens.tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert r.running.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert r.completions_cum.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert r.first_token_step.tolist() == [3]
    assert r.finish_step.tolist() == [5]


@pytest.mark.parametrize(
    "s,o,chunk",
    [
        (10, 5, 4),
        (3, 7, 8),
        (16, 4, 4),
        (1, 1, 1),
        (17, 3, 5),
        (100, 20, 512),
        (33, 1, 32),
        (64, 9, 7),
    ],
)
def test_single_request_matches_g_exact(s, o, chunk):
    lag = 3  # arrives during step 2, joins at step 3
    life = math.ceil(s / chunk) + o
    steps = lag + life + 2
    r = run(
        [2.5],
        [s],
        [o],
        kv_capacity_tokens=s + o,
        chunk_tokens=chunk,
        num_steps=steps,
        stream_ends=True,
    )
    kv = r.kv_tokens
    assert kv[:lag].tolist() == [0] * lag
    assert kv[lag : lag + life].tolist() == [mem(p, s, chunk) for p in range(1, life + 1)]
    assert kv[lag + life :].tolist() == [0] * (steps - lag - life)
    assert kv.sum() == pytest.approx(float(g_exact(s, o, chunk)), abs=0)
    assert r.first_admit_step[0] == r.admit_step[0] == lag
    assert r.first_token_step[0] == lag + math.ceil(s / chunk)
    assert r.finish_step[0] - r.admit_step[0] + 1 == life
    assert r.prefill_tokens.sum() == s and r.decode_tokens.sum() == o
    assert r.num_completed == 1 and r.num_preemptions == 0


# ---------------------------------------------------------------------------------------------
# Hand-worked preemption scenarios
# ---------------------------------------------------------------------------------------------

# Two identical requests, M = 20, ŝ = 4, s = o = 6: C = 2, L = 8, mem = 4,6,7,8,9,10,11,12.
TWO = dict(arrival=[0.0, 0.0], prompt=[6, 6], output=[6, 6])


def test_two_requests_recompute_by_hand():
    # k0: admit A (need 4), B (need 4): KV 8.  k1: growth 2+2: 12.  k2..k5: +2 each: 14..20.
    # k6: growth 2 -> 22 > 20: preempt B (p=6, mem 10, growth 1): U=10, growth 1; B -> queue
    #     with p=0; B need mem(1)=4: 10+1+4 = 15 <= 20 -> readmitted at once. KV 15.
    # k7: A 11->12, B 4->6: 18; A completes (frees 12): U = 6.
    # k8..k13: B 7..12; B completes at k13.
    r = run(
        **TWO,
        kv_capacity_tokens=20,
        chunk_tokens=4,
        num_steps=15,
        stream_ends=True,
        overflow="recompute",
    )
    assert r.kv_tokens.tolist() == [8, 12, 14, 16, 18, 20, 15, 18, 7, 8, 9, 10, 11, 12, 0]
    assert r.preemptions_cum.tolist() == [0] * 6 + [1] * 9
    assert r.num_preempted.tolist() == [0, 1]
    assert r.first_admit_step.tolist() == [0, 0]
    assert r.admit_step.tolist() == [0, 6]
    assert r.first_token_step.tolist() == [2, 2]  # B's first token (k2) kept
    assert r.finish_step.tolist() == [7, 13]
    assert r.queue_len.tolist() == [0] * 15


def test_two_requests_swap_by_hand():
    # Same until k6: B preempted keeping p=6 (need mem(7) = 11): 10+1+11 = 22 > 20, waits.
    # k6: KV 11.  k7: A 12, B need 11: 12+11 > 20, waits; A completes: U = 0.
    # k8: B readmitted (U 10, growth 1): KV 11.  k9: 12, B completes.
    r = run(
        **TWO,
        kv_capacity_tokens=20,
        chunk_tokens=4,
        num_steps=11,
        stream_ends=True,
        overflow="swap",
    )
    assert r.kv_tokens.tolist() == [8, 12, 14, 16, 18, 20, 11, 12, 11, 12, 0]
    assert r.queue_len.tolist() == [0] * 6 + [1, 1] + [0] * 3
    assert r.num_preempted.tolist() == [0, 1]
    assert r.admit_step.tolist() == [0, 8]
    assert r.finish_step.tolist() == [7, 9]
    assert r.first_token_step.tolist() == [2, 2]


# Five requests, M = 23, ŝ = 8, all at t = 0, in id order:
#   0 "D": s=6,  o=4  C=1 L=5  mem 6,7,8,9,10
#   1 "A": s=16, o=2  C=2 L=4  mem 8,16,17,18
#   2 "B": s=1,  o=6  C=1 L=7  mem 1..7
#   3 "C": s=1,  o=6  (same as B)
#   4 "E": s=8,  o=2  C=1 L=3  mem 8,9,10
FIVE = dict(arrival=[0.0] * 5, prompt=[6, 16, 1, 1, 8], output=[4, 2, 6, 6, 2])


def test_five_requests_recompute_by_hand():
    # k0: admit D(6) A(8) B(1) C(1) = 16; E needs 8: 24 > 23, waits.  KV 16, queue [E].
    # k1: growth D1 A8 B1 C1 = 11: 27 > 23. Victim C (U 15, g 10: 25), victim B (U 14, g 9: 23).
    #     queue [B, C, E] (oldest admitted first, ahead of E). B needs 1: 24 > 23. KV 23.
    # k2: growth D1 A1 = 2: 25 > 23. Victim A (mem 16): U 7, g 1. queue [A, B, C, E].
    #     admit A(8)->16, B->17, C->18, E: 26 > 23. KV 18.
    # k3: growth D1 A8 B1 C1 = 11: 29. Victims C, B, A (U 8, g 1); queue [A, B, C, E];
    #     admit A, B, C again -> 19.  k4: same -> 20; D completes (frees 10): U 10.
    # k5: A8 B1 C1: 20; E waits (28). B, C first decode.  k6: A1 B1 C1: 23; A first decode.
    # k7: 26 > 23: victim C (U 20, g 2); C need 1 -> 23, readmitted. A completes: U 5.
    # k8: B1 C1 + E need 8 -> 15.  k9: 18 (E first token).  k10: 21; B and E complete: U 4.
    # k11..k13: C 5, 6, 7; C completes at k13.
    r = run(
        **FIVE,
        kv_capacity_tokens=23,
        chunk_tokens=8,
        num_steps=15,
        stream_ends=True,
        overflow="recompute",
    )
    assert r.kv_tokens.tolist() == [16, 23, 18, 19, 20, 20, 23, 23, 15, 18, 21, 5, 6, 7, 0]
    assert r.queue_len.tolist() == [1, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert r.preemptions_cum.tolist() == [0, 2, 3, 6, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10]
    assert r.num_preempted.tolist() == [0, 3, 3, 4, 0]
    assert r.first_admit_step.tolist() == [0, 0, 0, 0, 8]
    assert r.admit_step.tolist() == [0, 4, 4, 7, 8]
    assert r.first_token_step.tolist() == [1, 6, 5, 5, 9]
    assert r.finish_step.tolist() == [4, 7, 10, 13, 10]
    assert r.prefill_tokens.tolist()[:3] == [16, 8, 10]
    assert r.decode_tokens.tolist()[:3] == [0, 1, 1]
    assert r.completions_cum[-1] == 5 and r.final_queue == 0 and r.final_running == 0


def test_five_requests_swap_by_hand():
    # k0: as recompute: KV 16, queue [E].
    # k1: victims C, B keep p=1; queue [B1, C1, E]; B needs mem(2)=2: 25 > 23. KV 23.
    # k2: victim A keeps p=2 (needs mem(3)=17): U 7, g 1: 25 > 23 -> blocks everyone. KV 8.
    # k3: 9, k4: 10; D completes at k4: U 0.
    # k5: admit A (16, g1) -> 17, B (need 2) -> 19, C -> 21; E (8) -> 29 waits. KV 21.
    # k6: 24 > 23: victim C (p=2): U 19, g 2 -> 21; C needs 3: 24 waits. A completes: U 3.
    # k7: B 1 + C(need 3) + E(need 8) -> 15.  k8: 18.  k9: 21, E completes (U 11).
    # k10: 13, B completes (U 6).  k11: 7, C completes.
    r = run(
        **FIVE,
        kv_capacity_tokens=23,
        chunk_tokens=8,
        num_steps=13,
        stream_ends=True,
        overflow="swap",
    )
    assert r.kv_tokens.tolist() == [16, 23, 8, 9, 10, 21, 21, 15, 18, 21, 13, 7, 0]
    assert r.queue_len.tolist() == [1, 3, 4, 4, 4, 1, 2, 0, 0, 0, 0, 0, 0]
    assert r.preemptions_cum.tolist() == [0, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4]
    assert r.num_preempted.tolist() == [0, 1, 1, 2, 0]
    assert r.first_admit_step.tolist() == [0, 0, 0, 0, 7]
    assert r.admit_step.tolist() == [0, 5, 5, 7, 7]
    assert r.first_token_step.tolist() == [1, 5, 5, 5, 8]
    assert r.finish_step.tolist() == [4, 6, 10, 11, 9]
    # Swap loses no work: every token is prefilled / decoded exactly once.
    assert r.prefill_tokens.sum() == sum(FIVE["prompt"])
    assert r.decode_tokens.sum() == sum(FIVE["output"])
    assert r.kv_tokens.sum() == sum(
        float(g_exact(s, o, 8)) for s, o in zip(FIVE["prompt"], FIVE["output"], strict=True)
    )


def test_five_requests_reserve_by_hand():
    # Peak footprints s+o: D 10, A 18, B 7, C 7, E 10; M = 23.
    # k0: D (10); A: 28 > 23 waits.  D completes at k4.  k5: A (18); B: 25 waits.
    # A (L=4) completes at k8.  k9: B (7), C (14); E: 24 waits.  B, C (L=7) complete at k15.
    # k16: E; completes at k18.
    r = run(
        **FIVE,
        kv_capacity_tokens=23,
        chunk_tokens=8,
        num_steps=20,
        stream_ends=True,
        admission="reserve",
    )
    assert r.admit_step.tolist() == [0, 5, 9, 9, 16]
    assert r.finish_step.tolist() == [4, 8, 15, 15, 18]
    assert r.num_preemptions == 0
    assert r.kv_tokens[:5].tolist() == [6, 7, 8, 9, 10]


def test_victims_go_ahead_of_waiting_entries_fcfs():
    # In FIVE/recompute, at k1 the victims B, C go ahead of the waiting E: E is admitted last.
    r = run(**FIVE, kv_capacity_tokens=23, chunk_tokens=8, num_steps=15, stream_ends=True)
    assert r.first_admit_step[4] > max(r.admit_step[:4])


# ---------------------------------------------------------------------------------------------
# Order policy spf
# ---------------------------------------------------------------------------------------------


def test_spf_admits_shortest_prompt_in_window():
    # M = 10, ŝ = 4, prompts 8, 6, 2, 1 (needs 4, 4, 2, 1), o = 1.
    # spf W=3: window (8, 6, 2) -> id2 (2); window (8, 6, 1) -> id3 (3); window (8, 6) -> id1
    #          (7); id0 needs 4: 11 > 10.  fcfs (and W=1): id0 (4), id1 (8), id2 (10), id3: 11.
    kw = dict(kv_capacity_tokens=10, chunk_tokens=4, num_steps=6, stream_ends=True)
    args = ([0.0] * 4, [8, 6, 2, 1], [1] * 4)
    spf = run(*args, order="spf", spf_window=3, **kw)
    assert spf.first_admit_step.tolist()[1:] == [0, 0, 0] and spf.first_admit_step[0] > 0
    assert spf.kv_tokens[0] == 7
    for r in (run(*args, order="fcfs", **kw), run(*args, order="spf", spf_window=1, **kw)):
        assert r.first_admit_step.tolist()[:3] == [0, 0, 0] and r.first_admit_step[3] > 0
        assert r.kv_tokens[0] == 10


def test_spf_ties_go_to_earlier_position():
    # M = 5, ŝ = 8, prompts 4, 3, 3, o = 1: spf picks id1 (3, earlier of the tie), then id2
    # would need 3: 6 > 5, so id2 waits.
    r = run(
        [0.0] * 3,
        [4, 3, 3],
        [1] * 3,
        kv_capacity_tokens=5,
        chunk_tokens=8,
        num_steps=8,
        stream_ends=True,
        order="spf",
    )
    assert r.first_admit_step[1] == 0
    assert r.first_admit_step[0] > 0 and r.first_admit_step[2] > 0


def test_spf_preempted_head_has_priority():
    # TWO/swap plus request 2 (s=1, o=1) arriving at 5.5 s: it joins at k6, but B, preempted at
    # k6, goes ahead of it and blocks (needs 11) until k8. spf must not skip B for the short
    # prompt: request 2 is admitted at k8 together with B.
    args = ([0.0, 0.0, 5.5], [6, 6, 1], [6, 6, 1])
    kw = dict(
        kv_capacity_tokens=20, chunk_tokens=4, num_steps=12, stream_ends=True, overflow="swap"
    )
    for order in ("fcfs", "spf"):
        r = run(*args, order=order, **kw)
        assert r.admit_step.tolist() == [0, 8, 8]
        assert r.finish_step.tolist() == [7, 9, 9]
        assert r.kv_tokens[6:10].tolist() == [11, 12, 12, 14]


# ---------------------------------------------------------------------------------------------
# Arrivals, clock, batch time, flags
# ---------------------------------------------------------------------------------------------


def test_arrivals_join_at_next_step_start():
    # b = 0.5: t = 0, 0.5, 1.0, ...  arrival 0.5 joins at k1 (t_1 = 0.5 <= 0.5);
    # arrival 0.6 joins at k2.
    r = run(
        [0.0, 0.5, 0.6],
        [2, 2, 2],
        [1, 1, 1],
        kv_capacity_tokens=100,
        chunk_tokens=4,
        num_steps=5,
        stream_ends=True,
        batch_time_s=0.5,
    )
    assert r.first_admit_step.tolist() == [0, 1, 2]
    assert r.queue_len.tolist() == [0] * 5
    assert r.clock_s.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_arrivals_exhausted_flag():
    kw = dict(kv_capacity_tokens=100, chunk_tokens=4, batch_time_s=0.5)
    # t_2 = 1.0 is not > 1.0: with T = 3 the flag stays off; with T = 4, t_3 = 1.5 > 1.0.
    assert not run([0.0, 1.0], [2, 2], [1, 1], num_steps=3, **kw).flags["arrivals_exhausted"]
    assert run([0.0, 1.0], [2, 2], [1, 1], num_steps=4, **kw).flags["arrivals_exhausted"]
    r = run([0.0, 1.0], [2, 2], [1, 1], num_steps=4, stream_ends=True, **kw)
    assert not r.flags["arrivals_exhausted"]
    r = run([0.0, 1.0], [2, 2], [1, 1], num_steps=4, saturated=True, **kw)
    assert not r.flags["arrivals_exhausted"]


def test_saturated_and_backlog_flag():
    kw = dict(kv_capacity_tokens=20, chunk_tokens=4, saturated=True)
    r = run([0.0] * 3, [4, 4, 4], [2, 2, 2], num_steps=10, **kw)
    assert r.num_arrived == 3 and r.flags["backlog_exhausted"]
    r = run([0.0] * 30, [4] * 30, [8] * 30, num_steps=3, **kw)
    assert r.num_arrived == 30 and not r.flags["backlog_exhausted"]
    # Arrival times are ignored in saturated mode.
    r = run(np.arange(30.0) * 100, [4] * 30, [8] * 30, num_steps=3, **kw)
    assert r.num_arrived == 30 and r.queue_len[0] == 30 - 5


def test_linear_and_random_batch_time():
    rng = np.random.default_rng(1)
    n = 40
    arrival = np.cumsum(rng.exponential(0.05, n))
    s = rng.integers(1, 30, n)
    o = rng.integers(1, 30, n)
    coefs = (0.01, 1e-4, 2e-4, 3e-6)
    r = run(
        arrival,
        s,
        o,
        kv_capacity_tokens=80,
        chunk_tokens=8,
        num_steps=60,
        batch_time="linear",
        linear_coefs=coefs,
    )
    c0, cp, cd, ckv = coefs
    for k in range(60):
        expect = (
            c0
            + cp * float(r.prefill_tokens[k])
            + cd * float(r.decode_tokens[k])
            + ckv * float(r.kv_tokens[k])
        )
        assert r.batch_time_s[k] == expect
    t = 0.0
    for k in range(60):
        assert r.clock_s[k] == t
        t = t + r.batch_time_s[k]
    assert r.clock_s[60] == t

    xi = rng.lognormal(0, 1, 70)
    r = run(
        arrival,
        s,
        o,
        kv_capacity_tokens=80,
        chunk_tokens=8,
        num_steps=60,
        batch_time="random",
        batch_time_s=0.04,
        batch_time_factors=xi,
    )
    assert np.array_equal(r.batch_time_s, 0.04 * xi[:60])


# ---------------------------------------------------------------------------------------------
# Random small workloads: invariants
# ---------------------------------------------------------------------------------------------

OPTIONS = list(itertools.product(("current", "reserve"), ("recompute", "swap"), ("fcfs", "spf")))


def _random_workload(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(8, 60))
    chunk = int(rng.integers(1, 12))
    n = int(rng.integers(1, 25))
    s = rng.integers(1, m, n)
    o = np.array([rng.integers(1, m - si + 1) for si in s])
    arrival = np.cumsum(rng.exponential(rng.uniform(0.1, 3.0), n))
    return rng, m, chunk, arrival, s, o


@pytest.mark.parametrize("seed", range(40))
def test_invariants_on_random_workloads(seed):
    rng, m, chunk, arrival, s, o = _random_workload(seed)
    admission, overflow, order = OPTIONS[seed % len(OPTIONS)]
    steps = int(rng.integers(5, 120))
    r = run(
        arrival,
        s,
        o,
        kv_capacity_tokens=m,
        chunk_tokens=chunk,
        num_steps=steps,
        admission=admission,
        overflow=overflow,
        order=order,
        spf_window=int(rng.integers(1, 5)),
        stream_ends=bool(seed % 2),
        saturated=seed % 5 == 0,
    )
    kv = r.kv_tokens
    assert kv.dtype == np.int64 and kv.shape == (steps,)
    assert np.all(kv >= 0) and np.all(kv <= m)
    # Conservation.
    assert r.num_arrived == r.num_completed + r.final_queue + r.final_running
    assert r.completions_cum[-1] == r.num_completed == int((r.finish_step >= 0).sum())
    assert r.preemptions_cum[-1] == r.num_preemptions == int(r.num_preempted.sum())
    assert r.queue_len[-1] == r.final_queue and r.running[-1] == r.final_running
    assert np.all(np.diff(r.completions_cum) >= 0) and np.all(np.diff(r.preemptions_cum) >= 0)
    if admission == "reserve":
        assert r.num_preemptions == 0
    # Clock.
    assert r.clock_s[0] == 0.0 and np.allclose(np.diff(r.clock_s), r.batch_time_s)
    # Per request.
    chunks = -(-s // chunk)
    life = chunks + o
    admitted = r.first_admit_step >= 0
    assert np.all(r.admit_step[admitted] >= r.first_admit_step[admitted])
    assert np.all(r.admit_step[~admitted] == -1)
    done = r.finish_step >= 0
    assert np.all(admitted[done])
    assert np.all(r.finish_step[done] - r.admit_step[done] + 1 >= 1)
    assert np.all(r.finish_step[done] - r.first_admit_step[done] + 1 >= life[done])
    assert np.all(r.first_token_step[done] >= 0)
    clean = done & (r.num_preempted == 0)
    assert np.all(r.finish_step[clean] - r.admit_step[clean] + 1 == life[clean])
    assert np.all(r.first_token_step[clean] == r.admit_step[clean] + chunks[clean])
    if not r.flags["arrivals_exhausted"] and not (seed % 5 == 0):
        # Nobody is admitted before the step at whose start it has arrived.
        for i in np.flatnonzero(admitted):
            join = int(np.argmax(r.clock_s[:steps] >= arrival[i]))
            assert r.first_admit_step[i] >= join


@pytest.mark.parametrize("seed", range(40, 70))
def test_drained_runs_account_for_all_work(seed):
    rng, m, chunk, arrival, s, o = _random_workload(seed)
    admission, overflow, order = OPTIONS[seed % len(OPTIONS)]
    steps = int(sum(-(-s // chunk) + o)) + 2  # enough to serve everyone one after another
    r = run(
        arrival / 50.0,
        s,
        o,
        kv_capacity_tokens=m,
        chunk_tokens=chunk,
        num_steps=steps,
        admission=admission,
        overflow=overflow,
        order=order,
        stream_ends=True,
    )
    assert r.num_completed == len(s) and r.final_queue == 0 and r.final_running == 0
    g_total = sum(float(g_exact(int(si), int(oi), chunk)) for si, oi in zip(s, o, strict=True))
    if overflow == "swap" or r.num_preemptions == 0:
        assert r.kv_tokens.sum() == g_total
        assert r.prefill_tokens.sum() == s.sum() and r.decode_tokens.sum() == o.sum()
    else:  # recompute redoes lost work
        assert r.kv_tokens.sum() >= g_total
        assert r.decode_tokens.sum() >= o.sum()


# ---------------------------------------------------------------------------------------------
# Saturated throughput vs the critical rate M / E[g] per step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overflow", ["recompute", "swap"])
def test_saturated_completion_rate_near_m_over_eg(overflow):
    m, chunk, lo, hi = 1000, 16, 5, 60
    grid = np.arange(lo, hi + 1)
    eg = float(np.mean(np.asarray(g_exact(grid[:, None], grid[None, :], chunk))))
    rng = np.random.default_rng(7)
    n, steps, warm = 3000, 3000, 500
    s = rng.integers(lo, hi + 1, n)
    o = rng.integers(lo, hi + 1, n)
    r = simulate(
        None,
        s,
        o,
        kv_capacity_tokens=m,
        chunk_tokens=chunk,
        num_steps=steps,
        saturated=True,
        overflow=overflow,
    )
    assert not r.flags["backlog_exhausted"]
    rate = (r.completions_cum[-1] - r.completions_cum[warm - 1]) / (steps - warm)
    assert rate == pytest.approx(m / eg, rel=0.15)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

GOOD = dict(arrival_s=[0.0, 1.0, 2.0], prompt=[3, 4, 5], output=[2, 2, 2])
SYS = dict(kv_capacity_tokens=20, chunk_tokens=4, num_steps=5)


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(kv_capacity_tokens=0), "kv_capacity_tokens"),
        (dict(kv_capacity_tokens=-5), "kv_capacity_tokens"),
        (dict(kv_capacity_tokens=10.5), "kv_capacity_tokens"),
        (dict(chunk_tokens=0), "chunk_tokens"),
        (dict(num_steps=0), "num_steps"),
        (dict(spf_window=0), "spf_window"),
        (dict(admission="greedy"), "admission"),
        (dict(overflow="drop"), "overflow"),
        (dict(order="lifo"), "order"),
        (dict(batch_time="normal"), "batch_time_model"),
        (dict(batch_time_s=float("nan")), "batch_time_s"),
        (dict(batch_time_s=0.0), "batch_time_s"),
        (dict(output=[2, 2]), "output"),
        (dict(arrival_s=[0.0, 1.0]), "arrival_s"),
        (dict(arrival_s=[0.0, 2.0, 1.0]), r"arrival_s.*arrival_s\[2\]"),
        (dict(arrival_s=[0.0, float("nan"), 2.0]), r"arrival_s.*arrival_s\[1\]"),
        (dict(arrival_s=[0.0, 1.0, float("inf")]), "arrival_s"),
        (dict(prompt=[3, 0, 5]), r"prompt.*prompt\[1\]"),
        (dict(output=[2, 2, -1]), r"output.*output\[2\]"),
        (dict(prompt=[3, float("inf"), 5]), "prompt"),
        (dict(prompt=[3, 2.5, 5]), "prompt"),
        (dict(prompt=[3, 19, 5]), r"prompt.*request 1"),
        (dict(batch_time="random"), "batch_time_factors"),
        (dict(batch_time="random", batch_time_factors=[1.0, 1.0]), "batch_time_factors"),
        (
            dict(batch_time="random", batch_time_factors=[1.0, 1.0, -1, 1.0, 1.0]),
            "batch_time_factors",
        ),
        (dict(batch_time="linear"), "linear_coefs"),
        (dict(batch_time="linear", linear_coefs=(0.01, float("nan"), 0, 0)), "linear_coefs"),
        (dict(batch_time="linear", linear_coefs=(0.01, 0.0)), "linear_coefs"),
    ],
)
def test_validation_names_field(change, field):
    kw = {**GOOD, **SYS, **change}
    with pytest.raises(InputError, match=f"^{field}") as info:
        simulate(kw.pop("arrival_s"), kw.pop("prompt"), kw.pop("output"), **kw)
    assert info.value.field == field.split(".*")[0]
    assert isinstance(info.value, ValueError)


def test_valid_input_runs():
    r = simulate(GOOD["arrival_s"], GOOD["prompt"], GOOD["output"], **SYS)
    assert r.kv_tokens.shape == (5,) and r.clock_s.shape == (6,)
    assert r.first_admit_step.dtype == np.int64
