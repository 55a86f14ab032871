"""Arrival-process fits (kvstab.fit.arrivals): recovery of known parameters, samplers,
the MMPP likelihood against its float64 twin, refusal of tied gaps.

Recovery tests draw data from known parameters with NumPy (not with the code under test) and
require every fitted parameter within 5 % (relative); sample sizes are stated in each test.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvstab import fit
from kvstab.errors import InputError
from kvstab.traces import Trace


def rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


def test_poisson_rate_recovery():
    rate, n = 3.7, 20_000  # 20,000 gaps: SE of the rate 0.7 %
    gaps = np.random.default_rng(1).exponential(1 / rate, n)
    f = fit.fit_poisson(gaps)
    assert f.rate_per_s == pytest.approx(n / gaps.sum())
    assert rel(f.rate_per_s, rate) < 0.05
    assert f.loglik == pytest.approx(np.sum(np.log(rate) - rate * gaps), rel=0.01)


def test_gamma_renewal_recovery():
    shape, beta, n = 0.4, 2.0, 20_000  # 20,000 gaps: SE of the shape about 0.4 %
    gaps = np.random.default_rng(2).gamma(shape, 1 / beta, n)
    seen = []
    f = fit.fit_gamma_renewal(gaps, progress=lambda *a: seen.append(a))
    assert rel(f.shape, shape) < 0.05 and rel(f.rate_param_per_s, beta) < 0.05
    assert f.rate_per_s == pytest.approx(n / gaps.sum(), rel=1e-4)
    assert seen and seen[-1][0] == "gamma_renewal" and f.converged
    assert f.loglik > fit.fit_poisson(gaps).loglik


def test_sample_arrivals_refit():
    key_p, key_g = jax.random.split(jax.random.key(4))
    n = 20_000  # arrivals
    p = fit.PoissonFit(rate_per_s=5.0, loglik=0.0, num_gaps=1)
    t = np.asarray(fit.sample_arrivals(p, key_p, n), np.float64)
    assert t.shape == (n,) and np.all(np.diff(t) >= 0)
    np.testing.assert_allclose(
        t, np.cumsum(np.asarray(fit.sample_gaps(p, key_p, n), np.float64)), rtol=1e-5
    )
    assert rel(fit.fit_poisson(fit.sample_gaps(p, key_p, n)).rate_per_s, 5.0) < 0.05
    g = fit.GammaRenewalFit(shape=0.5, rate_param_per_s=1.5, loglik=0.0, num_gaps=1)
    refit = fit.fit_gamma_renewal(np.asarray(fit.sample_gaps(g, key_g, n), np.float64))
    assert rel(refit.shape, 0.5) < 0.05 and rel(refit.rate_per_s, 3.0) < 0.05
    with pytest.raises(InputError):
        fit.sample_arrivals(p, key_p, 0)


def test_mmpp_likelihood_sampling_and_fit():
    model = fit.MMPP2Fit(rates_per_s=(1.0, 8.0), switch_per_s=(0.2, 0.8), loglik=0.0, num_gaps=1)
    n = 6000  # arrivals; long-run rate 2.4 req/s
    gaps = np.asarray(fit.sample_gaps(model, jax.random.key(5), n), np.float64)
    t = np.cumsum(gaps)
    assert rel(n / t[-1], model.rate_per_s) < 0.05
    # JAX forward algorithm (float32, scaled) vs the float64 NumPy twin on the first 500 gaps.
    x = gaps[:500]
    scale = x.mean()
    params = fit.arrivals._MMPPParams(
        jnp.log(jnp.array([1.0, 8.0]) * scale), jnp.log(jnp.array([0.2, 0.8]) * scale)
    )
    jax_ll = float(
        jnp.sum(fit.arrivals._mmpp_loglik_terms(params, jnp.asarray(x / scale)))
    ) - x.size * math.log(scale)
    assert jax_ll == pytest.approx(fit.mmpp2_loglik_reference((1.0, 8.0), (0.2, 0.8), x), rel=1e-4)
    fits = fit.fit_arrivals(gaps)
    assert fits.best == "mmpp2"
    m = fits.mmpp2
    assert rel(m.rate_per_s, n / t[-1]) < 0.05
    assert m.rates_per_s[0] < 2.0 < 5.0 < m.rates_per_s[1]
    d = fits.to_dict()
    json.dumps(d)
    assert set(d) >= {"poisson", "gamma_renewal", "mmpp2", "best_by_aic"}


def test_zero_gaps_are_refused_with_advice():
    tr = Trace([0.0, 0.0, 3.0, 3.0, 6.0], [1] * 5, [1] * 5)
    with pytest.raises(InputError, match="jitter_buckets"):
        fit.fit_arrivals(tr)
