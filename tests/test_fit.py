"""Calibration (kvstab.fit): numerics against float64 twins, recovery of known parameters,
the 80/20 protocol on the Azure conversation trace, batch-time models and ``kvstab fit``.

Recovery tests draw data from known parameters with NumPy (not with the code under test) and
require every fitted parameter within 5 % (relative); sample sizes are stated in each test.
The copula tests share one data size bucket (16,384 padded rows) so that the likelihood is
compiled once per session.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvstab import analytic, cli, fit
from kvstab.errors import InputError
from kvstab.traces import Trace, read_trace

ND = NormalDist()


def data_dir() -> Path | None:
    """The shared traces: $KVSTAB_DATA, else ../shared/data next to the repository."""
    env = os.environ.get("KVSTAB_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


DATA = data_dir()
needs_data = pytest.mark.skipif(
    DATA is None, reason="real traces not found: set KVSTAB_DATA or provide ../shared/data"
)


def rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


# ---------------------------------------------------------------------------------------
# Float64 twins


def _phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def log_ndtr_diff_ref(a: float, b: float) -> float:
    if a + b > 0:
        a, b = -b, -a
    return math.log(_phi(b) - _phi(a))


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
# Numerics


def test_log_ndtr_diff_against_float64():
    rng = np.random.default_rng(0)
    a = rng.uniform(-30, 30, 2000).astype(np.float32)
    h = np.exp(rng.uniform(np.log(1e-4), np.log(8.0), 2000)).astype(np.float32)
    b = (a + h).astype(np.float32)
    got = np.asarray(jax.jit(fit.log_ndtr_diff)(jnp.asarray(a), jnp.asarray(b)), np.float64)
    ref = np.array([log_ndtr_diff_ref(float(x), float(y)) for x, y in zip(a, b, strict=True)])
    # Relative error of the probability itself, plus float32 rounding of a large log.
    err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
    assert err.max() < 3e-6, (
        a[err.argmax()],
        b[err.argmax()],
        got[err.argmax()],
        ref[err.argmax()],
    )
    # Widths given directly keep their relative accuracy however narrow (cells of k ~ 10⁵).
    a = np.array([-6.0, -0.3, 0.0, 2.0, 11.0], np.float32)
    h = np.array([1e-7, 2.5e-6, 1e-5, 3e-6, 1e-6], np.float32)
    got = np.asarray(jax.jit(fit.log_ndtr_interval)(jnp.asarray(a), jnp.asarray(h)))
    for x, w, y in zip(a.astype(float), h.astype(float), got, strict=True):
        lo, hi = (x, x + w) if x + w / 2 <= 0 else (-x - w, -x)
        ref = math.log(0.5 * math.erfc(-hi / math.sqrt(2)) - 0.5 * math.erfc(-lo / math.sqrt(2)))
        assert abs(y - ref) < 1e-5 * max(1.0, abs(ref)), (x, w, y, ref)
    g = jax.jit(jax.grad(lambda x: jnp.sum(fit.log_ndtr_diff(x, x + 0.01))))(
        jnp.linspace(-40, 40, 101)
    )
    assert np.all(np.isfinite(np.asarray(g)))


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
# Arrival processes


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


# ---------------------------------------------------------------------------------------
# Length laws: recovery (12,000 pairs, padded to the 16,384 bucket)


TRUE = {"mu_s": 6.5, "sigma_s": 0.8, "mu_o": 4.8, "sigma_o": 1.0, "rho": 0.5}


@pytest.fixture(scope="module")
def copula_data():
    n = 12_000  # pairs: SE of rho about 0.7 %, of the sigmas about 0.7 %
    rng = np.random.default_rng(6)
    z = rng.standard_normal((n, 2))
    z[:, 1] = TRUE["rho"] * z[:, 0] + math.sqrt(1 - TRUE["rho"] ** 2) * z[:, 1]
    s = np.maximum(np.round(np.exp(TRUE["mu_s"] + TRUE["sigma_s"] * z[:, 0])), 1)
    o = np.maximum(np.round(np.exp(TRUE["mu_o"] + TRUE["sigma_o"] * z[:, 1])), 1)
    return s.astype(np.int64), o.astype(np.int64)


def test_copula_recovery(copula_data):
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
    for name, value in TRUE.items():
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


@needs_data
def test_azure_conv_80_20_mean_g():
    """Fit on the first 80 % (15,492 requests); E[g] of the fit within 5 % of the held-out 20 %."""
    tr = read_trace(DATA / "AzureLLMInferenceTrace_conv.csv")
    rep = fit.fit_lengths(tr, 0.8, chunk_tokens=512, kv_capacity_tokens=131000, batch_time_s=0.0372)
    d = rep.to_dict()
    assert (rep.num_train, rep.num_test) == (15492, 3874)
    assert abs(rep.rel_error_test) < 0.05, d["rel_error_test"]
    assert d["mu_fit"] == pytest.approx(131000 / (0.0372 * rep.mean_g_fit))
    assert rep.num_test_outside_support == 0 and math.isfinite(d["loglik_test_per_request"])
    assert len(d["qq"]["prompt"]["fit"]) == 99
    json.dumps(d)


# ---------------------------------------------------------------------------------------
# Batch time


BATCH_HEADER = "prefill_tokens,decode_tokens,kv_tokens,duration_s\n"


def test_batch_time_recovery(tmp_path):
    n = 4000  # batches; 5 % outliers (stalls of 0.1-0.6 s) that a squared loss would chase
    rng = np.random.default_rng(7)
    prefill = rng.integers(0, 513, n)
    decode = rng.integers(0, 257, n)
    kv = rng.integers(0, 131001, n)
    c = (0.012, 4e-5, 6e-5, 1.2e-7)
    d = c[0] + c[1] * prefill + c[2] * decode + c[3] * kv + rng.normal(0, 5e-4, n)
    out = rng.random(n) < 0.05
    d[out] += rng.uniform(0.1, 0.6, out.sum())
    path = tmp_path / "batches.csv"
    path.write_text(
        BATCH_HEADER
        + "".join(
            f"{a},{b},{k},{t!r}\n"
            for a, b, k, t in zip(prefill, decode, kv, d.tolist(), strict=True)
        )
    )
    f = fit.fit_batch_log(fit.read_batch_log(path))
    for got, want in zip(f.coefficients, c, strict=True):
        assert rel(got, want) < 0.05, (f.coefficients, c)
    e = f.estimators
    assert e["median_s"] == pytest.approx(np.median(d))
    srt = np.sort(d)
    assert e["trimmed_mean_5_s"] == pytest.approx(srt[200 : n - 200].mean())
    assert e["trimmed_mean_10_s"] == pytest.approx(srt[400 : n - 400].mean())
    assert e["trimmed_mean_5_upper_s"] == pytest.approx(srt[: n - 200].mean())
    json.dumps(f.to_dict())


@pytest.mark.parametrize(
    "body, match",
    [
        ("", "is empty"),
        (BATCH_HEADER, "is empty: no data rows"),
        ("prefill_tokens,decode_tokens,duration_s\n1,2,0.1\n", r"missing column\(s\) 'kv_tokens'"),
        (BATCH_HEADER + "1,2,3,0.1\n1,-2,3,0.1\n", r"row 2 \(line 3\): decode_tokens must be >= 0"),
        (BATCH_HEADER + "1.5,2,3,0.1\n", r"row 1 \(line 2\): prefill_tokens must be an integer"),
        (BATCH_HEADER + "1,2,3,0.1\n1,2,3,fast\n", r"row 2 \(line 3\): cannot parse duration_s"),
        (BATCH_HEADER + "1,2,3,0\n", r"row 1 \(line 2\): duration_s must be finite and > 0"),
        (BATCH_HEADER + "1,2,3\n", r"row 1 \(line 2\): expected 4 fields"),
    ],
)
def test_batch_log_errors(tmp_path, body, match):
    p = tmp_path / "b.csv"
    p.write_text(body)
    with pytest.raises(InputError, match=match):
        fit.read_batch_log(p)


def test_trimmed_mean_validation():
    assert fit.trimmed_mean([1, 2, 3, 100], 0.25) == 2.5
    assert fit.trimmed_mean([1, 2, 3, 100], 0.25, "upper") == 2.0
    with pytest.raises(InputError):
        fit.trimmed_mean([1.0], 0.5)


# ---------------------------------------------------------------------------------------
# Command line


def test_cli_fit_json(tmp_path, capsys, copula_data):
    # 12,000 requests, clipped like the Azure conversation trace (s <= 14,050, o <= 1,000),
    # so that every compiled kernel is shared with the tests above.
    s, o = copula_data
    s, o = np.minimum(s, 14050), np.minimum(o, 1000)
    t = np.cumsum(np.random.default_rng(8).exponential(0.25, s.size))
    path = tmp_path / "trace.csv"
    path.write_text(
        "arrival_s,prompt_tokens,output_tokens\n"
        + "".join(f"{a!r},{b},{c}\n" for a, b, c in zip(t.tolist(), s, o, strict=True))
    )
    rc = cli.main(["fit", "--trace", str(path), "--json", "--no-mmpp", "--steps", "100"])
    out, err = capsys.readouterr()
    assert rc == 0
    d = json.loads(out)
    for key in ("rate_per_s", "mean_g_empirical", "mean_g_fit", "loglik", "params", "arrivals"):
        assert key in d
    assert d["rate_per_s"] == pytest.approx(4.0, rel=0.05)
    assert abs(d["mean_g_fit"] / d["mean_g_empirical"] - 1) < 0.1
    assert d["arrivals"]["poisson"]["rate_per_s"] == pytest.approx(4.0, rel=0.05)
    assert "fitting" in err  # progress on stderr


def test_cli_fit_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,x,1\n")
    assert cli.main(["fit", "--trace", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trace" in err[0] and "row 2 (line 3)" in err[0]
    assert cli.main(["fit", "--trace", str(bad), "--train-frac", "1.2"]) == 2
    assert "--train-frac" in capsys.readouterr().err
