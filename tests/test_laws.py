"""Length and joint laws: law strings, validation, and contract checks over every law."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvstab import request
from kvstab.errors import InputError
from kvstab.fit import CopulaLogNormal, DiscreteLogNormalMixture
from kvstab.laws import (
    Constant,
    Empirical,
    Geometric,
    Independent,
    JointEmpirical,
    JointLaw,
    LengthLaw,
    LogNormal,
    Uniform,
    parse_law,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("uniform:10:1600", Uniform(10, 1600)),
        ("const:500", Constant(500)),
        ("geometric:200", Geometric(200.0)),
        ("geometric:200:4000", Geometric(200.0, 4000)),
        ("lognormal:300:0.8", LogNormal(300.0, 0.8)),
        ("lognormal:300:1.5:8000", LogNormal(300.0, 1.5, 8000)),
    ],
)
def test_parse_round_trip(text, expected):
    law = parse_law(text, "prompt")
    assert law.spec == expected.spec
    assert parse_law(law.spec).spec == law.spec


def test_parse_empirical():
    law = parse_law("empirical:5,7,7,9")
    assert isinstance(law, Empirical)
    assert law.values == (5, 7, 9)
    assert law.weights == pytest.approx((0.25, 0.5, 0.25))


@pytest.mark.parametrize(
    "text,words",
    [
        ("bogus", "cannot parse"),
        ("uniform:10", "cannot parse"),
        ("uniform:20:10", "high"),
        ("uniform:0:10", "low"),
        ("uniform:1.5:10", "integer"),
        ("const:nan", "finite"),
        ("geometric:0.5", "mean"),
        ("lognormal:300:-1", "sigma"),
        ("lognormal:300:3", "cap"),
        ("empirical:1,0,3", "integers >= 1"),
        ("empirical:a,b", "cannot parse"),
    ],
)
def test_bad_law_strings_name_the_field(text, words):
    with pytest.raises(InputError, match=words) as exc:
        parse_law(text, "output")
    assert exc.value.field == "output"


# ---------------------------------------------------------------------------------------
# Contract checks run over every registered law. A new law is one entry in LENGTH_LAWS or
# JOINT_LAWS; every check below then runs on it. Monte Carlo checks use a fixed key and
# tolerances of 5 standard errors estimated from the same sample.

LENGTH_LAWS = {
    "constant": Constant(37),
    "uniform": Uniform(10, 1600),
    "geometric": Geometric(200.0),
    "geometric_capped": Geometric(200.0, 300),
    "lognormal": LogNormal(300.0, 0.8),
    "lognormal_capped": LogNormal(300.0, 1.5, 4000),
    "empirical": Empirical([5, 7, 7, 9, 120, 3000]),
    "discrete_lognormal_mixture": DiscreteLogNormalMixture([3.0, 5.0], [0.4, 0.3], [0.3, 0.7], 400),
}
JOINT_LAWS = {
    "independent": Independent(Uniform(10, 1600), Geometric(200.0, 1000)),
    "joint_empirical": JointEmpirical([10, 500, 500, 2000, 30], [300, 20, 21, 5, 800]),
    "copula_lognormal": CopulaLogNormal(
        DiscreteLogNormalMixture([3.5], [0.6], [1.0], 120),
        DiscreteLogNormalMixture([3.0], [0.8], [1.0], 130),
        0.6,
    ),
}
ALL_LAWS = {**LENGTH_LAWS, **JOINT_LAWS}
NUM_MC = 20_000  # Monte Carlo draws per check
CHUNK = 64  # ŝ for E[g]


def _as_joint(law):
    """Length laws enter the joint checks as Independent(law, law): E[g] then exercises both
    the prefill area (prompt) and the decode terms (output) of the same law."""
    return law if isinstance(law, JointLaw) else Independent(law, law)


def _within_se(sample: np.ndarray, expected: float, k: float = 5.0) -> None:
    sample = np.asarray(sample, np.float64)
    se = sample.std(ddof=1) / math.sqrt(sample.size)
    assert abs(sample.mean() - expected) <= k * se + 1e-9 * abs(expected), (
        sample.mean(),
        expected,
        se,
    )


@pytest.mark.parametrize("law", LENGTH_LAWS.values(), ids=LENGTH_LAWS.keys())
def test_length_law_support_pmf_and_mean(law):
    x = np.asarray(law.sample(jax.random.key(11), (NUM_MC,)))
    assert x.dtype == np.int32 and x.shape == (NUM_MC,)
    assert x.min() >= law.min_value >= 1
    if law.max_value is not None:
        assert x.max() <= law.max_value
    values, probs = (np.asarray(a, np.float64) for a in law.table())
    assert values.min() >= law.min_value
    if law.max_value is not None:
        assert values.max() <= law.max_value
    assert np.all(probs >= 0)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)  # float32 tables of up to 10⁵ points
    if x.std() > 0:
        _within_se(x, float(law.mean()))
    else:
        assert float(law.mean()) == x[0]


@pytest.mark.parametrize("law", ALL_LAWS.values(), ids=ALL_LAWS.keys())
def test_joint_support_and_mean_g_by_monte_carlo(law):
    joint = _as_joint(law)
    s, o = (np.asarray(a) for a in joint.sample(jax.random.key(12), (NUM_MC,)))
    assert s.dtype == np.int32 and o.dtype == np.int32
    assert s.min() >= 1 and o.min() >= 1
    if joint.max_prompt is not None:
        assert s.max() <= joint.max_prompt
    if joint.max_total is not None:
        assert (s.astype(np.int64) + o).max() <= joint.max_total
    g = np.asarray(request.g(s, o, CHUNK), np.float64)
    _within_se(g, float(joint.mean_g(CHUNK)))


def test_copula_pmf_sums_to_one():
    law = JOINT_LAWS["copula_lognormal"]
    s, o = np.meshgrid(np.arange(1, law.prompt.cap + 1), np.arange(1, law.output.cap + 1))
    assert float(jnp.sum(jnp.exp(law.log_prob(s.ravel(), o.ravel())))) == pytest.approx(
        1.0, abs=2e-5
    )


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True)
    )


@pytest.mark.parametrize("law", ALL_LAWS.values(), ids=ALL_LAWS.keys())
def test_law_is_a_hashable_pytree_that_jits(law):
    leaves, treedef = jax.tree_util.tree_flatten(law)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(back) is type(law) and back.spec == law.spec
    assert jax.tree_util.tree_structure(back) == treedef and _leaves_equal(back, law)
    if type(law).__eq__ is not object.__eq__:  # value equality where the class defines it
        assert back == law
    hash(law)
    hash(treedef)  # static aux data must be hashable for jit
    joint = _as_joint(law)
    eager = float(joint.mean_g(CHUNK))
    assert float(jax.jit(lambda j: j.mean_g(CHUNK))(joint)) == pytest.approx(eager, rel=1e-5)
    if isinstance(law, LengthLaw):
        assert float(jax.jit(lambda m: m.mean())(law)) == pytest.approx(float(law.mean()), rel=1e-5)
