"""The policy library (docs/semantics.md steps 3-4, version 3): every rule against the
plain-Python reference (identical integers), its contract, its errors, and the presets."""

import numpy as np
import pytest
from test_simulate_equivalence import assert_same, run_both, small_workload

from kvstab import reference
from kvstab.errors import InputError
from kvstab.laws import Independent, parse_law
from kvstab.paper import law_for
from kvstab.policies import DESCRIPTIONS, policy_presets, preset
from kvstab.sim import Outputs, Poisson, System, Workload, simulate
from kvstab.sim import components as c

NEW = {
    "watermark": c.Policy(c.WatermarkAdmission(0.1), c.Recompute(), c.FCFS()),
    "cap": c.Policy(c.CapAdmission(40), c.Recompute(), c.FCFS()),
    "svf": c.Policy(c.CurrentAdmission(), c.Recompute(), c.SVF(4)),
    "least_progress": c.Policy(
        c.CurrentAdmission(), c.Recompute(), c.FCFS(), c.LeastProgressVictim()
    ),
    "largest_kv-swap": c.Policy(c.CurrentAdmission(), c.Swap(), c.FCFS(), c.LargestKVVictim()),
    "conservative": c.Policy(
        c.ConservativeAdmission(30, init_ratio=0.1, decay_steps=5, retract_steps=1),
        c.Recompute(),
        c.FCFS(),
    ),
}
MORE = {  # combinations: the slow pass
    "watermark-swap-spf": c.Policy(c.WatermarkAdmission(0.05), c.Swap(), c.SPF(4)),
    "cap-svf": c.Policy(c.CapAdmission(30), c.Recompute(), c.SVF(4)),
    "svf-swap-least_progress": c.Policy(
        c.CurrentAdmission(), c.Swap(), c.SVF(4), c.LeastProgressVictim()
    ),
    "largest_kv-svf": c.Policy(c.CurrentAdmission(), c.Recompute(), c.SVF(4), c.LargestKVVictim()),
    "least_progress-watermark-spf": c.Policy(
        c.WatermarkAdmission(0.02), c.Recompute(), c.SPF(4), c.LeastProgressVictim()
    ),
    "conservative-swap-least_progress": c.Policy(
        c.ConservativeAdmission(30, init_ratio=0.3, decay_steps=10, retract_steps=3),
        c.Swap(),
        c.FCFS(),
        c.LeastProgressVictim(),
    ),
    "conservative-svf-default-constants": c.Policy(
        c.ConservativeAdmission(30), c.Recompute(), c.SVF(4)
    ),
}


def _check(policy, seed, **kw):
    arr, s, o = small_workload(seed, 60, s_max=24, o_max=30, rate_steps=12, burst=10)
    ref, out = run_both(arr, s, o, M=120, chunk=8, T=160, policy=policy, **kw)
    assert_same(ref, out, 160)
    return ref


DEFAULT_RUN = ("largest_kv-swap", "conservative")  # the others: the slow pass


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT_RUN else pytest.param(n, marks=pytest.mark.slow) for n in NEW]
)
def test_new_policies_match_reference(name):
    ref = _check(NEW[name], seed=0)
    if NEW[name].admission.can_overflow:
        assert ref.num_preemptions > 0  # the test exercises the victim rule
    else:
        assert ref.num_preemptions == 0
    assert ref.num_completed > 10


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", list(NEW) + list(MORE))
def test_policy_combinations_match_reference(name, seed):
    _check({**NEW, **MORE}[name], seed=seed)


def test_victim_rules_pick_what_they_say():
    # Hand-built: three requests admitted in step 0 (ids 0,1,2: prompts 8, 16, 4, one chunk
    # each; long outputs): KV = 28 + 3k after step k, so step 10 is the first to overflow
    # M = 56 and needs exactly one victim: the newest (2); the least progressed (all tie at
    # p = 10, so the newest, 2); the one holding the most KV (1, with 16 + 9 tokens).
    arr = np.zeros(3)
    s, o = np.array([8, 16, 4]), np.array([40, 40, 40])
    picked = {}
    for v in (c.NewestVictim(), c.LeastProgressVictim(), c.LargestKVVictim()):
        pol = c.Policy(c.CurrentAdmission(), c.Swap(), c.FCFS(), v)
        ref = reference.simulate(
            arr, s, o, system=System(56, 16), policy=pol, num_steps=11, stream_ends=True
        )
        assert ref.num_preemptions == 1 and ref.preemptions_cum[9] == 0
        picked[v.name] = int(np.flatnonzero(ref.num_preempted)[0])
    assert picked == {"newest": 2, "least_progress": 2, "largest_kv": 1}


def test_svf_orders_by_volume_not_prompt():
    # Two waiting requests: a short prompt with a long output has the larger volume.
    key_a = c.volume_f32(4, 200, 8)  # s=4, o=200
    key_b = c.volume_f32(40, 2, 8)  # s=40, o=2
    assert key_b < key_a
    from kvstab.request import g_exact

    for s, o, ch in ((4, 200, 8), (40, 2, 8), (1600, 1600, 512), (100000, 30000, 1)):
        assert float(c.volume_f32(s, o, ch)) == pytest.approx(float(g_exact(s, o, ch)), rel=1e-6)


def test_watermark_keeps_room_free():
    pol = c.Policy(c.WatermarkAdmission(0.25), c.Recompute(), c.FCFS())
    assert pol.admission.watermark_tokens(131_000) == 32_750
    arr, s, o = small_workload(3, 60, s_max=24, o_max=30, rate_steps=2, burst=40)
    ref = reference.simulate(arr, s, o, system=System(120, 8), policy=pol, num_steps=60,
                             stream_ends=True)  # fmt: skip
    # at every admission the KV after the step's work fits M - W; growth may use the rest
    assert ref.kv_tokens.max() <= 120
    first = reference.simulate(arr, s, o, system=System(120, 8), num_steps=1, stream_ends=True)
    assert ref.kv_tokens[0] <= 120 - 30 < first.kv_tokens[0]


def test_cap_refuses_outputs_longer_than_the_cap():
    arr, s, o = small_workload(0, 20, s_max=24, o_max=30, rate_steps=12)
    with pytest.raises(InputError) as exc:
        reference.simulate(arr, s, o, system=System(120, 8), num_steps=10,
                           policy=c.Policy(c.CapAdmission(int(o.max()) - 1)))  # fmt: skip
    assert exc.value.field == "max_tokens" and "longest output" in str(exc.value)
    law = law_for("1:1")
    with pytest.raises(InputError, match="max_tokens"):
        simulate(Workload(law, Poisson(1.0)), policy=c.Policy(c.CapAdmission(1000)),
                 num_steps=64, num_trajectories=1)  # fmt: skip
    unbounded = Independent(
        parse_law("uniform:10:100", "prompt"), parse_law("geometric:50", "output")
    )
    with pytest.raises(InputError, match="unbounded"):
        simulate(Workload(unbounded, Poisson(1.0)), policy=c.Policy(c.CapAdmission(1000)),
                 num_steps=64, num_trajectories=1)  # fmt: skip


def test_public_simulate_runs_each_new_rule_without_recompiling_across_lambda_and_m(
    no_recompile,
):
    # One policy with every non-default part (watermark + svf + least_progress victim):
    # a sweep of λ and M per trajectory compiles once; KV <= M and conservation hold.
    law = Independent(parse_law("uniform:10:400", "prompt"), parse_law("uniform:10:400", "output"))
    pol = c.Policy(c.WatermarkAdmission(0.05), c.Swap(), c.SVF(8), c.LeastProgressVictim())
    sizes = dict(max_running=256, max_preempted=256, num_requests=4096, cal_len=1024)
    kw = dict(policy=pol, num_steps=512, num_trajectories=4, seed=1, sizes=sizes,
              outputs=Outputs(num_records=64))  # fmt: skip
    M1, M2 = np.array([8000, 12000, 16000, 20000]), np.array([9000, 11000, 15000, 30000])
    a = simulate(Workload(law, Poisson(np.array([2.0, 4.0, 6.0, 8.0]))), System(M1), **kw)
    with no_recompile():
        b = simulate(Workload(law, Poisson(np.array([3.0, 5.0, 7.0, 9.0]))), System(M2), **kw)
    for r, m in ((a, M1), (b, M2)):
        assert not any(r.flags), r.flags
        assert np.all(r.max_kv_tokens.max(axis=1) <= m)
        # conservation: what arrived and did not complete is waiting or running (>= 0)
        running_end = r.arrived - r.completed - r.queue_end
        assert np.all(running_end >= 0)
        assert r.completed[:, -1].min() > 0
    # the load differs, so the runs differ (the traced λ and M were used)
    assert not np.array_equal(a.completed, b.completed)


def test_conservative_ratio_decays_then_jumps_on_retraction():
    adm = c.ConservativeAdmission(30, init_ratio=0.5, min_ratio_factor=0.2, decay_steps=4)
    r = adm.r0
    for _ in range(6):  # four steps to the floor, then it stays there
        r = adm.next_ratio(r, False, 3, 50)
    assert r == adm.r_min == np.float32(0.1)
    # retraction: n = 2 running, D = 2*30 - 12 generated = 48, h = 20: (12 + 40) / 61
    assert adm.next_ratio(r, True, 2, 48) == np.float32(52) / np.float32(61)
    assert adm.next_ratio(r, True, 1, 1) == 1.0  # capped at 1
    # the budget fixed at step 4's start: M - U - growth - ceil(r·D)
    assert adm.budget(np.float32(0.5), 1000, 300, 10, 101) == 1000 - 300 - 10 - 51


def test_conservative_retraction_leaves_headroom():
    pol = c.Policy(c.ConservativeAdmission(30, init_ratio=0.05, decay_steps=5, retract_steps=4))
    arr, s, o = small_workload(5, 80, s_max=24, o_max=30, rate_steps=4, burst=30)
    ref = reference.simulate(arr, s, o, system=System(120, 8), policy=pol, num_steps=200,
                             stream_ends=True)  # fmt: skip
    hit = np.flatnonzero(np.diff(ref.preemptions_cum, prepend=0))
    assert len(hit) > 0  # the aggressive ratio does overflow
    # after a retraction step, each running request has 4 tokens of room (or none is left)
    k = hit[0]
    assert ref.kv_tokens[k] + 4 * ref.running[k] <= 120 or ref.running[k] == 0


def test_presets_are_named_described_and_valid():
    law = law_for("1:1")
    table = policy_presets(law)
    assert set(table) == set(DESCRIPTIONS)
    assert table["cap"].admission.max_tokens == 1600
    assert "cap" not in policy_presets(None) and "sglang" not in policy_presets(None)
    assert table["sglang"].admission.max_tokens == 1600
    assert preset("vllm") == c.Policy()
    with pytest.raises(InputError, match="policy"):
        preset("fastest")
