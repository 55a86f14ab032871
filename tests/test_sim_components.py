"""The simulator's components: one contract for every class, the registry, the flags."""

import dataclasses

import pytest

from kvstab.errors import InputError
from kvstab.sim import components as c
from kvstab.sim.state import FLAG_NAMES, Flag, StaticConfig

POLICIES = [
    c.policy_from_names(a, o, r, 4, v, 0.02, 64)
    for a in c.ADMISSIONS
    for o in c.OVERFLOWS
    for r in c.ORDERS
    for v in c.VICTIMS
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: "-".join(map(str, p.names().values())))
def test_policies_are_static_and_hashable(policy):
    # a static argument of jit: hashable, equal by value, so equal policies share a compile
    cfg = StaticConfig(policy=policy)
    assert hash(cfg) == hash(dataclasses.replace(cfg, policy=c.Policy(**vars(policy))))
    assert c.policy_from_names(**policy.names()) == policy
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.order = c.FCFS()  # type: ignore[misc]


@pytest.mark.parametrize("cls", list(c.ADMISSIONS.values()))
def test_admission_has_both_hooks(cls):
    assert callable(cls().fits) and callable(cls().jax_need_budget)
    assert cls().reservation(3, 4, 0, 1) >= 1  # what a fresh request counts in R
    assert isinstance(cls.can_overflow, bool)


@pytest.mark.parametrize("cls", list(c.ORDERS.values()))
def test_order_has_both_hooks(cls):
    order = cls()
    assert callable(order.pick) and callable(order.jax_pick) and order.window >= 1


@pytest.mark.parametrize("name,cls", list(c.ROUTER_CLASSES.items()))
def test_routers_named_once(name, cls):
    router = c.router_from_name(name)
    assert isinstance(router, cls) and router.name == name
    assert (name in c.DYNAMIC_ROUTERS) == cls.dynamic
    if cls.dynamic:  # dynamic routers need a key in both simulators
        assert callable(router.key) and callable(router.jax_key)
    assert c.ROUTERS == c.STATIC_ROUTERS + c.DYNAMIC_ROUTERS


@pytest.mark.parametrize(
    "bt,args,expected",
    [
        (c.ConstantBatchTime(0.5), (100, 3, 1000, None), 0.5),
        (c.LinearBatchTime(0.01, 1e-4, 1e-3, 1e-6), (100, 3, 1000, None), 0.024),
        (c.RandomBatchTime(0.5), (100, 3, 1000, 2.0), 1.0),
    ],
)  # fmt: skip
def test_batch_time_is_one_formula(bt, args, expected):
    assert bt.time_s(*args) == pytest.approx(expected, rel=1e-12)
    assert type(bt).step_time_s(bt.mean_time_s, bt.coefs, *args) == bt.time_s(*args)


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: c.SPF(0), "spf_window"),
        (lambda: c.SVF(0), "svf_window"),
        (lambda: c.WatermarkAdmission(1.0), "watermark"),
        (lambda: c.WatermarkAdmission(-0.1), "watermark"),
        (lambda: c.WatermarkAdmission(float("nan")), "watermark"),
        (lambda: c.CapAdmission(0), "max_tokens"),
        (lambda: c.policy_from_names("cap"), "max_tokens"),
        (lambda: c.policy_from_names(victim="oldest"), "victim"),
        (lambda: c.Policy(victim="newest"), "victim"),
        (lambda: c.LinearBatchTime(-1.0), "linear_coefs"),
        (lambda: c.RandomBatchTime(sigma=-1.0), "sigma"),
        (lambda: c.RandomBatchTime(slow_fraction=2.0), "slow_fraction"),
        (lambda: c.System(kv_capacity_tokens=[100, 0]), "kv_capacity_tokens"),
        (lambda: c.System(batch_time="constant"), "batch_time"),
        (lambda: c.Policy(order="fcfs"), "order"),
        (lambda: c.Cluster(router="jsq"), "router"),
        (lambda: c.Outputs(num_records=-1), "num_records"),
        (lambda: c.Workload(None, c.Saturated()), "workload"),
        (lambda: c.Workload(None, "poisson"), "arrivals"),
        (lambda: c.policy_from_names(overflow="drop"), "overflow"),
        (lambda: c.batch_time_from_name("cubic"), "batch_time_model"),
        (lambda: c.arrivals_from_name("replay"), "arrivals"),
    ],
)
def test_components_validate_on_construction(make, field):
    with pytest.raises(InputError) as exc:
        make()
    assert exc.value.field == field


def test_flags_are_named_bits():
    assert Flag.names(Flag.RING_FULL | Flag.REPLICA_BUFFER_FULL) == [
        "ring_full",
        "replica_buffer_full",
    ]
    assert FLAG_NAMES[16] == "kv_over_capacity"
