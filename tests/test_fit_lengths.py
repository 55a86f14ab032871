"""Length-law fits (kvstab.fit.lengths): the copula law against float64 twins, sampling,
gradients, recovery of known parameters and the 80/20 protocol on the Azure conversation trace.

The copula tests share one data size bucket (16,384 padded rows) so that the likelihood is
compiled once per session; the recovery data (``copula_data``) is a session fixture in
conftest.py, shared with the ``kvstab fit`` command-line test.
"""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvstab import analytic, fit
from kvstab.errors import InputError
from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS
from kvstab.traces import read_trace

ND = NormalDist()


def rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


def _phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def pmf_ref(law: fit.DiscreteLogNormalMixture) -> np.ndarray:
    """P(K = k), k = 1..cap, of the truncated discretized log-normal mixture (float64)."""
    k = np.arange(1, law.cap + 1, dtype=np.float64)
    p = np.zeros(law.cap)
    for m, s, w in zip(
        np.asarray(law.mu, float),
        np.asarray(law.sigma, float),
        np.asarray(law.weights, float),
        strict=True,
    ):
        hi = np.array([_phi((math.log(x + 0.5) - m) / s) for x in k])
        lo = np.array([_phi((math.log(x - 0.5) - m) / s) for x in k])
        p += w * (hi - lo)
    return p / p.sum()


def bvn_cdf_ref(h: np.ndarray, k: np.ndarray, rho: float) -> np.ndarray:
    """Φ₂(h, k; ρ) on a grid by Φ(h)Φ(k) + (2π)⁻¹∫₀^ρ exp(−(h²−2hkr+k²)/(2(1−r²)))/√(1−r²) dr
    (60-point Gauss-Legendre in r, float64); ±∞ as ±50."""
    h = np.clip(h, -50, 50)[:, None, None]
    k = np.clip(k, -50, 50)[None, :, None]
    x, w = np.polynomial.legendre.leggauss(60)
    r = (x + 1) / 2 * rho
    w = w / 2 * rho
    f = np.exp(-(h**2 - 2 * h * k * r + k**2) / (2 * (1 - r**2))) / np.sqrt(1 - r**2)
    ph = np.vectorize(_phi)(h[..., 0])
    pk = np.vectorize(_phi)(k[..., 0])
    return ph * pk + (f * w).sum(-1) / (2 * math.pi)


def joint_ref(law: fit.CopulaLogNormal) -> np.ndarray:
    """P(s = j, o = k) on the whole grid, by rectangle sums of Φ₂ (float64)."""

    def scores(p):
        f = np.concatenate([[0.0], np.cumsum(p)])
        return np.array(
            [-np.inf if v <= 0 else np.inf if v >= 1 - 1e-15 else ND.inv_cdf(v) for v in f]
        )

    c = bvn_cdf_ref(scores(pmf_ref(law.prompt)), scores(pmf_ref(law.output)), float(law.rho))
    return c[1:, 1:] - c[:-1, 1:] - c[1:, :-1] + c[:-1, :-1]


D = fit.DiscreteLogNormalMixture
# Grids of 120 x 130 and 40 x 400 cells: both in the 16,384 bucket of the log-probability
# kernel, and every cap in the 1,024 bucket of the table kernels (one compile each).
SMALL_LAWS = [
    fit.CopulaLogNormal(D([3.5], [0.6], [1.0], 120), D([3.0], [0.8], [1.0], 130), 0.6),
    # more output values than prompt values: the cross moment integrates over o
    fit.CopulaLogNormal(D([1.0], [0.5], [1.0], 40), D([4.0], [0.6], [1.0], 400), -0.8),
    # two-component mixtures (another shape, so other compiled kernels: marked slow)
    pytest.param(
        fit.CopulaLogNormal(
            D([3.0, 5.0], [0.4, 0.3], [0.3, 0.7], 400),
            D([0.5, 3.0], [0.5, 0.6], [0.5, 0.5], 150),
            0.3,
        ),
        marks=pytest.mark.slow,
    ),
]


# ---------------------------------------------------------------------------------------
# The copula law against its float64 twin


@pytest.mark.parametrize("law", SMALL_LAWS)
def test_copula_probabilities_and_mean_g_against_float64(law):
    p = joint_ref(law)
    assert p.sum() == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(np.asarray(law.prompt.table()[1]), p.sum(1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(law.output.table()[1]), p.sum(0), atol=1e-6)
    s = np.arange(1, law.prompt.cap + 1)
    o = np.arange(1, law.output.cap + 1)
    lp = np.asarray(law.log_prob(np.repeat(s, o.size), np.tile(o, s.size))).reshape(p.shape)
    cells = p > 1e-6
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=2e-6)
    # Per-cell relative error: < 2e-3 everywhere, the worst at the truncation corner.
    assert np.max(np.abs(np.exp(lp[cells]) - p[cells]) / p[cells]) < 2e-3
    chunk = 64
    c = np.ceil(s / chunk)[:, None]
    g = chunk * c * (c - 1) / 2 + s[:, None] + s[:, None] * o[None, :] + o * (o + 1) / 2
    assert rel(law.mean_g(chunk), (p * g).sum()) < 1e-4
    assert rel(law.mean_product(), (p * s[:, None] * o[None, :]).sum()) < 1e-4


def test_copula_sampling_matches_the_law():
    law = SMALL_LAWS[0]
    n = 200_000
    s, o = law.sample(jax.random.key(3), (n,))
    s, o = np.asarray(s), np.asarray(o)
    assert s.dtype == np.int32 and s.min() >= 1 and s.max() <= 120 and o.max() <= 130
    freq = np.bincount(s, minlength=121)[1:] / n
    assert np.abs(freq - np.asarray(law.prompt.table()[1])).max() < 4e-3
    g = np.asarray(analytic.g(s, o, 64), np.float64)
    assert abs(g.mean() - float(law.mean_g(64))) < 4 * g.std() / math.sqrt(n)


def test_marginal_law_interface():
    m = D([2.0], [0.5], [1.0], 30)
    assert m.max_value == 30 and "1..30" in m.spec
    v, p = m.table()
    assert v.shape == (30,) and float(jnp.sum(p)) == pytest.approx(1.0, abs=1e-6)
    assert float(m.log_pmf(31)) == -np.inf
    x = m.sample(jax.random.key(0), (1000,))
    assert int(x.min()) >= 1 and int(x.max()) <= 30
    with pytest.raises(InputError):
        D([2.0], [-1.0], [1.0], 30)
    with pytest.raises(InputError):
        fit.CopulaLogNormal(m, m, 1.0)


def test_mu_gradient_through_the_fitted_law():
    law = SMALL_LAWS[0]

    def mu(rho):
        return analytic.mu_for(fit.CopulaLogNormal(law.prompt, law.output, rho), 131000, 0.04, 64)

    grad = float(jax.grad(mu)(jnp.float32(0.6)))
    fd = (float(mu(0.62)) - float(mu(0.58))) / 0.04
    assert grad == pytest.approx(fd, rel=1e-2)


# ---------------------------------------------------------------------------------------
# Recovery (12,000 pairs, padded to the 16,384 bucket)


def test_copula_recovery(copula_data, copula_true):
    s, o = copula_data
    f = fit.fit_copula_lognormal(s, o)
    p = f.params()
    got = {
        "mu_s": p["prompt"]["mu_log_tokens"][0],
        "sigma_s": p["prompt"]["sigma"][0],
        "mu_o": p["output"]["mu_log_tokens"][0],
        "sigma_o": p["output"]["sigma"][0],
        "rho": p["rho"],
    }
    for name, value in copula_true.items():
        assert rel(got[name], value) < 0.05, (name, got[name], value)
    assert p["prompt"]["cap"] == s.max() and f.law.max_total == s.max() + o.max()
    assert f.converged and math.isfinite(f.loglik)
    json.dumps(f.to_dict())


def test_copula_loss_gradient_matches_finite_differences(copula_data):
    s, o = copula_data
    vg, _ = fit._optim._compiled(fit.lengths._copula_loss)
    data = fit.lengths._loss_data(s, o, s.max(), o.max())
    f32 = lambda v: jnp.asarray([v], jnp.float32)  # noqa: E731
    p = fit.lengths._CopulaParams(
        f32(6.3), f32(-0.1), f32(0.0), f32(5.0), f32(0.1), f32(0.0), jnp.float32(0.3)
    )
    _, grad = vg(p, data)
    eps = 1e-2
    for name in ("mu_s", "log_sigma_s", "mu_o", "log_sigma_o", "z_rho"):
        v = getattr(p, name)
        up = float(vg(p._replace(**{name: v + eps}), data)[0])
        down = float(vg(p._replace(**{name: v - eps}), data)[0])
        fd = (up - down) / (2 * eps)
        g = float(jnp.sum(getattr(grad, name)))
        assert g == pytest.approx(fd, rel=2e-2, abs=2e-3), name


def test_qq_data_shapes():
    law = SMALL_LAWS[0]
    q = fit.qq_data(law.prompt, np.arange(1, 121), num=9)
    assert len(q["probs"]) == len(q["data"]) == len(q["fit"]) == 9
    assert q["fit"] == sorted(q["fit"])


def test_azure_conv_80_20_mean_g(trace_dir):
    """Fit on the first 80 % (15,492 requests); E[g] of the fit within 5 % of the held-out 20 %."""
    tr = read_trace(trace_dir / "AzureLLMInferenceTrace_conv.csv")
    rep = fit.fit_lengths(
        tr,
        0.8,
        chunk_tokens=CHUNK_TOKENS,
        kv_capacity_tokens=KV_CAPACITY_TOKENS,
        batch_time_s=BATCH_TIME_S,
    )
    d = rep.to_dict()
    assert (rep.num_train, rep.num_test) == (15492, 3874)
    assert abs(rep.rel_error_test) < 0.05, d["rel_error_test"]
    assert d["mu_fit"] == pytest.approx(KV_CAPACITY_TOKENS / (BATCH_TIME_S * rep.mean_g_fit))
    assert rep.num_test_outside_support == 0 and math.isfinite(d["loglik_test_per_request"])
    assert len(d["qq"]["prompt"]["fit"]) == 99
    json.dumps(d)
