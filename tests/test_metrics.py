"""Summaries (kvstab.metrics): the one mean / Student-t interval of the package."""

import math

import numpy as np
import pytest
from scipy import stats

from kvstab import metrics


@pytest.mark.parametrize("dof", [1, 2, 5, 11, 17, 30, 31, 100, 10_000])
@pytest.mark.parametrize("p", [0.9, 0.975, 0.995])
def test_t_quantile_is_the_exact_student_quantile(p, dof):
    assert metrics.t_quantile(p, dof) == float(stats.t.ppf(p, dof))


def test_t_quantile_textbook_values_and_no_dof():
    assert metrics.t_quantile(0.975, 1) == pytest.approx(12.706, abs=5e-4)
    assert metrics.t_quantile(0.975, 10) == pytest.approx(2.228, abs=5e-4)
    assert metrics.t_quantile(0.975, 10**6) == pytest.approx(1.95996, abs=1e-5)
    assert metrics.t_quantile(0.975, 0) == math.inf


def test_mean_ci_formula_and_levels():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    m, lo, hi = metrics.mean_ci(x)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert m == pytest.approx(x.mean())
    assert (hi - m) == pytest.approx(stats.t.ppf(0.975, 4) * se, rel=1e-12)
    assert (m - lo) == pytest.approx(hi - m, rel=1e-12)
    assert metrics.standard_error(x) == pytest.approx(se, rel=1e-12)
    r = metrics.mean_ci(x, alpha=0.005)  # 99 %: wider
    assert r.low < lo and r.high > hi and r.mean == m
    one = metrics.mean_ci([3.0])
    assert one.mean == 3.0 and math.isnan(one.low) and math.isnan(one.high)
    assert math.isnan(metrics.standard_error([3.0]))


def test_mean_ci_covers_the_true_mean_at_its_level():
    # 4,000 samples of size 6 from N(1, 2²): coverage 0.95, binomial SE 0.0034.
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(4000):
        _, lo, hi = metrics.mean_ci(rng.normal(1.0, 2.0, 6))
        hits += lo <= 1.0 <= hi
    assert abs(hits / 4000 - 0.95) < 4 * math.sqrt(0.95 * 0.05 / 4000)
