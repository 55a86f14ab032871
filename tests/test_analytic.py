"""Closed forms (PAPER.md §2–3): exact sums, the paper's Table 1, gradients, sizing."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvstab import analytic
from kvstab.errors import InputError
from kvstab.laws import (
    Constant,
    Empirical,
    Geometric,
    Independent,
    JointEmpirical,
    LogNormal,
    Uniform,
)
from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS

M, CHUNK = KV_CAPACITY_TOKENS, CHUNK_TOKENS  # the paper's system


def brute_g(s, o, chunk):
    """Area under one request's memory curve, step by step (PAPER.md §2)."""
    area, held = 0, 0
    while held < s:
        held = min(held + chunk, s)
        area += held
    for d in range(1, o + 1):
        area += s + d
    return area


@pytest.mark.parametrize("chunk", [1, 3, 7, 512])
def test_exact_g_matches_step_by_step_area(chunk):
    for s, o in itertools.product([1, 2, 5, 7, 8, 513, 1024, 1600], [1, 2, 9, 100]):
        assert float(analytic.g_exact(s, o, chunk)) == pytest.approx(brute_g(s, o, chunk), rel=1e-6)


def test_exact_and_paper_g_agree_when_chunk_divides_s():
    for chunk in (1, 4, 512):
        for mult, o in itertools.product([1, 2, 3, 5], [1, 7, 300]):
            s = mult * chunk
            assert float(analytic.g_exact(s, o, chunk)) == pytest.approx(
                float(analytic.g_paper(s, o, chunk)), rel=1e-7
            )
    # ...and differ when it does not
    assert float(analytic.g_exact(10, 5, 4)) != pytest.approx(float(analytic.g_paper(10, 5, 4)))


@pytest.mark.parametrize("form", ["exact", "paper"])
def test_mean_g_exact_sum_equals_enumeration(form):
    prompt, output, chunk = Uniform(3, 17), Uniform(1, 9), 4
    joint = Independent(prompt, output)
    pairs = [(s, o) for s in range(3, 18) for o in range(1, 10)]
    brute = np.mean([float(analytic.g(s, o, chunk, form)) for s, o in pairs])
    if form == "exact":
        assert brute == pytest.approx(np.mean([brute_g(s, o, chunk) for s, o in pairs]))
    assert float(analytic.mean_g(joint, chunk, form)) == pytest.approx(brute, rel=1e-6)


def test_mean_g_empirical_and_joint():
    s = np.array([5, 9, 9, 30])
    o = np.array([2, 4, 1, 8])
    brute = np.mean([brute_g(a, b, 8) for a, b in zip(s, o, strict=True)])
    assert float(analytic.mean_g(JointEmpirical(s, o), 8)) == pytest.approx(brute, rel=1e-6)
    # the independent product of the empirical marginals is a different law
    ind = Independent(Empirical(s), Empirical(o))
    brute_ind = np.mean([brute_g(a, b, 8) for a in s for b in o])
    assert float(analytic.mean_g(ind, 8)) == pytest.approx(brute_ind, rel=1e-6)


def test_geometric_and_lognormal_sums_match_monte_carlo_free_references():
    # Geometric mean m on {1,2,..}: E[o] = m, E[o^2] = m(2m-1). Decode part only (s = 1).
    m = 40.0
    law = Geometric(m)
    assert float(law.mean()) == pytest.approx(m, rel=1e-5)
    assert float(law.expect(lambda x: x * x)) == pytest.approx(m * (2 * m - 1), rel=1e-5)
    # Capped geometric: mass beyond the cap sits at the cap.
    capped = Geometric(m, cap=50)
    p = 1 / m
    exact = sum(k * p * (1 - p) ** (k - 1) for k in range(1, 50)) + 50 * (1 - p) ** 49
    assert float(capped.mean()) == pytest.approx(exact, rel=1e-5)
    # Log-normal: probabilities sum to one; mean close to the continuous mean exp(mu+s^2/2).
    ln = LogNormal(300.0, 0.8)
    _, probs = ln.table()
    assert float(jnp.sum(probs)) == pytest.approx(1.0, abs=1e-5)
    assert float(ln.mean()) == pytest.approx(300 * math.exp(0.32), rel=2e-3)


def test_law_samples_follow_their_tables():
    key = jax.random.PRNGKey(0)
    for law in (
        Uniform(10, 20),
        Geometric(12.0, cap=60),
        LogNormal(30.0, 0.5, cap=100),
        Empirical([3, 3, 8, 20]),
        Constant(7),
    ):
        x = np.asarray(law.sample(key, (40000,)))
        assert x.dtype == np.int32
        assert x.min() >= 1
        if law.max_value is not None:
            assert x.max() <= law.max_value
        se = x.std() / math.sqrt(x.size) + 1e-9
        assert abs(x.mean() - float(law.mean())) < 5 * se


@pytest.mark.parametrize(
    "s_hi,o_hi,b,mu_paper",
    [(1600, 1600, 0.0372, 3.263), (2133, 1066, 0.0430, 3.956), (1066, 2133, 0.0337, 2.902)],
)
def test_paper_table1_mu_theory(s_hi, o_hi, b, mu_paper):
    rep = analytic.capacity(
        Uniform(10, s_hi),
        Uniform(10, o_hi),
        kv_capacity_tokens=M,
        chunk_tokens=CHUNK,
        batch_time_s=b,
        g_form="paper",
    )
    assert f"{rep.mu:.4g}" == f"{mu_paper:.4g}"
    assert rep.delta == pytest.approx(0.0244, abs=5e-5)
    assert rep.mu_stable == pytest.approx(rep.mu * (1 - rep.delta))


def test_grad_mu_against_finite_differences():
    # float64 so the finite differences themselves are accurate; the gradient code is the same.
    with jax.enable_x64(True):
        _check_grads()


def _check_grads():
    joint = Independent(Uniform(10, 1600), Geometric(300.0, cap=3000))

    def mu(kv, b, law):
        return analytic.mu_for(law, kv, b, CHUNK)

    gm, gb, glaw = jax.grad(mu, argnums=(0, 1, 2))(float(M), BATCH_TIME_S, joint)
    h = 1.0
    fd_m = (mu(float(M) + h, BATCH_TIME_S, joint) - mu(float(M) - h, BATCH_TIME_S, joint)) / (2 * h)
    assert float(gm) == pytest.approx(float(fd_m), rel=1e-3)
    hb = 1e-5
    fd_b = (mu(float(M), BATCH_TIME_S + hb, joint) - mu(float(M), BATCH_TIME_S - hb, joint)) / (
        2 * hb
    )
    assert float(gb) == pytest.approx(float(fd_b), rel=1e-3)
    hm = 0.5
    up = Independent(joint.prompt, Geometric(300.0 + hm, cap=3000))
    dn = Independent(joint.prompt, Geometric(300.0 - hm, cap=3000))
    fd_law = (mu(float(M), BATCH_TIME_S, up) - mu(float(M), BATCH_TIME_S, dn)) / (2 * hm)
    assert float(glaw.output.mean_value) == pytest.approx(float(fd_law), rel=1e-2)
    assert float(glaw.output.mean_value) < 0  # longer outputs, lower capacity

    ln = Independent(LogNormal(500.0, 0.6, cap=4000), Uniform(10, 500))
    g_ln = jax.grad(lambda law: mu(float(M), BATCH_TIME_S, law))(ln)
    for name, h in (("median", 1.0), ("sigma", 1e-3)):

        def at(v, name=name):
            kw = {"median": 500.0, "sigma": 0.6, name: v}
            return float(
                mu(
                    float(M),
                    BATCH_TIME_S,
                    Independent(LogNormal(kw["median"], kw["sigma"], cap=4000), ln.output),
                )
            )

        base = 500.0 if name == "median" else 0.6
        fd = (at(base + h) - at(base - h)) / (2 * h)
        assert float(getattr(g_ln.prompt, name)) == pytest.approx(fd, rel=2e-2)


def test_verdict_and_gpus():
    assert analytic.verdict(1.0, 3.0, 2.9) == "stable"
    assert analytic.verdict(2.95, 3.0, 2.9) == "in the delta band"
    assert analytic.verdict(3.1, 3.0, 2.9) == "unstable"
    assert analytic.gpus_needed(27.0, 3.0, 1.0) == 9
    assert analytic.gpus_needed(27.0, 3.0, 0.9) == 10
    assert analytic.gpus_needed(0.0, 3.0) == 0
    assert float(analytic.mixed_rate([3.956, 2.902], [0.5, 0.5])) == pytest.approx(3.348, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs,field,words",
    [
        (dict(kv_capacity_tokens=0), "kv_capacity_tokens", ">= 1"),
        (dict(kv_capacity_tokens=-5), "kv_capacity_tokens", ">= 1"),
        (dict(chunk_tokens=0), "chunk_tokens", ">= 1"),
        (dict(batch_time_s=0.0), "batch_time_s", ">= 1e-09"),
        (dict(batch_time_s=float("nan")), "batch_time_s", "finite"),
        (dict(rate_per_s=-1.0), "rate_per_s", ">= 0"),
        (dict(rate_per_s=float("nan")), "rate_per_s", "finite"),
        (dict(utilization=0.0), "utilization", r"\(0, 1\]"),
        (dict(utilization=1.5), "utilization", r"\(0, 1\]"),
        (dict(kv_capacity_tokens=3000), "workload", "exceeds"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(kwargs, field, words):
    base = dict(kv_capacity_tokens=M, chunk_tokens=CHUNK, batch_time_s=BATCH_TIME_S)
    base.update(kwargs)
    with pytest.raises(ValueError, match=words) as exc:
        analytic.capacity(Uniform(10, 1600), Uniform(10, 1600), **base)
    assert exc.value.field == field
    assert isinstance(exc.value, InputError)


def test_unbounded_law_requires_a_cap():
    with pytest.raises(InputError, match="cap"):
        analytic.capacity(
            Uniform(10, 100),
            Geometric(200.0),
            kv_capacity_tokens=M,
            chunk_tokens=CHUNK,
            batch_time_s=0.03,
        )
