"""Arrival processes fitted to the inter-arrival gaps of a trace.

The paper's arrivals are Poisson (PAPER.md §1); real traces are often burstier. Three
models of the gaps x₁..x_n (seconds), each a :class:`PoissonFit`, :class:`GammaRenewalFit`
or :class:`MMPP2Fit` when fitted:

* Poisson: i.i.d. exponential gaps of rate λ; the MLE λ̂ = n / Σ x is closed form
  (:func:`fit_poisson`).
* Gamma renewal: i.i.d. Gamma(shape k, rate β) gaps, arrival rate β/k, gap CV 1/√k
  (k < 1: burstier than Poisson) (:func:`fit_gamma_renewal`).
* Two-state MMPP: a hidden state switching 0 ↔ 1 at rates q₀, q₁, Poisson arrivals of rate
  λ_i in state i; its likelihood is a forward algorithm in ``lax.scan``
  (:func:`fit_mmpp2`, with a float64 NumPy twin :func:`mmpp2_loglik_reference`).

:func:`fit_arrivals` fits all three to the same gaps and compares them by log-likelihood
and AIC (:class:`ArrivalFits`). :func:`sample_gaps` / :func:`sample_arrivals` draw gaps or
arrival times from any fitted model, for the simulator. Tied (zero) gaps are refused with
advice (:func:`kvstab.traces.jitter_buckets`). Gaps are rescaled to mean one before
optimising, and reported log-likelihoods are re-evaluated in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from kvstab.errors import InputError, check_number
from kvstab.fit._optim import Progress, _minimize
from kvstab.traces import Trace


def _as_gaps(data: Trace | Any, field: str = "gaps") -> np.ndarray:
    """Inter-arrival gaps (seconds, float64) of a trace or an array of gaps; all must be > 0."""
    if isinstance(data, Trace):
        gaps = data.interarrival_s
        origin = f"trace {data.source}"
    else:
        try:
            gaps = np.asarray(data, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise InputError(field, "must be a Trace or an array of gaps in seconds") from None
        origin = "gaps"
    if gaps.size < 2:
        raise InputError(field, f"need at least 2 inter-arrival gaps (3 requests), got {gaps.size}")
    if not np.all(np.isfinite(gaps)) or np.any(gaps < 0):
        raise InputError(field, "inter-arrival gaps must be finite and >= 0")
    zero = int(np.sum(gaps == 0))
    if zero:
        raise InputError(
            field,
            f"{origin} has {zero} of {gaps.size} inter-arrival gaps equal to 0 (tied or bucketed "
            "timestamps), which a continuous arrival model cannot produce; spread them first "
            "with kvstab.traces.jitter_buckets(trace, bucket_s, key) (bucket_s: the bucket "
            "width, e.g. 3.0 s for Mooncake conversation, or the timestamp resolution)",
        )
    return gaps


@dataclasses.dataclass(frozen=True)
class PoissonFit:
    """Poisson arrivals: i.i.d. exponential gaps with rate ``rate_per_s`` (PAPER.md §1).

    ``loglik`` is the log-density of the observed gaps (seconds), nats.
    """

    rate_per_s: float
    loglik: float
    num_gaps: int
    name: str = "poisson"
    num_params: int = 1

    @property
    def aic(self) -> float:
        return 2 * self.num_params - 2 * self.loglik

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "aic": self.aic}


@dataclasses.dataclass(frozen=True)
class GammaRenewalFit:
    """Gamma renewal arrivals: i.i.d. gaps ~ Gamma(shape k, rate β) (β in 1/s).

    Mean gap k/β, so the arrival rate is β/k; gap CV = 1/√k (k < 1: burstier than Poisson).
    """

    shape: float
    rate_param_per_s: float
    loglik: float
    num_gaps: int
    steps: int = 0
    converged: bool = True
    name: str = "gamma_renewal"
    num_params: int = 2

    @property
    def rate_per_s(self) -> float:
        return self.rate_param_per_s / self.shape

    @property
    def cv(self) -> float:
        return 1.0 / math.sqrt(self.shape)

    @property
    def aic(self) -> float:
        return 2 * self.num_params - 2 * self.loglik

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "rate_per_s": self.rate_per_s,
            "cv": self.cv,
            "aic": self.aic,
        }


@dataclasses.dataclass(frozen=True)
class MMPP2Fit:
    """Two-state Markov-modulated Poisson process.

    The hidden state i ∈ {0, 1} switches to the other state at rate ``switch_per_s[i]``;
    in state i requests arrive as a Poisson process of rate ``rates_per_s[i]``. The process
    starts in its stationary law. Long-run rate = Σ π_i λ_i with π ∝ (q₁, q₀).
    """

    rates_per_s: tuple[float, float]
    switch_per_s: tuple[float, float]
    loglik: float
    num_gaps: int
    steps: int = 0
    converged: bool = True
    name: str = "mmpp2"
    num_params: int = 4

    @property
    def stationary(self) -> tuple[float, float]:
        q0, q1 = self.switch_per_s
        return q1 / (q0 + q1), q0 / (q0 + q1)

    @property
    def rate_per_s(self) -> float:
        p0, p1 = self.stationary
        return p0 * self.rates_per_s[0] + p1 * self.rates_per_s[1]

    @property
    def aic(self) -> float:
        return 2 * self.num_params - 2 * self.loglik

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rates_per_s"] = list(self.rates_per_s)
        d["switch_per_s"] = list(self.switch_per_s)
        return {
            **d,
            "rate_per_s": self.rate_per_s,
            "stationary": list(self.stationary),
            "aic": self.aic,
        }


ArrivalModel = PoissonFit | GammaRenewalFit | MMPP2Fit


@dataclasses.dataclass(frozen=True)
class ArrivalFits:
    """Every fitted arrival model of one trace; ``best`` is the name with the lowest AIC."""

    poisson: PoissonFit
    gamma_renewal: GammaRenewalFit
    mmpp2: MMPP2Fit | None
    num_gaps: int

    @property
    def models(self) -> list[ArrivalModel]:
        return [m for m in (self.poisson, self.gamma_renewal, self.mmpp2) if m is not None]

    @property
    def best(self) -> str:
        return min(self.models, key=lambda m: m.aic).name

    def model(self, name: str) -> ArrivalModel:
        for m in self.models:
            if m.name == name:
                return m
        raise InputError(
            "model", f"no fitted model {name!r}; have {', '.join(m.name for m in self.models)}"
        )

    def to_dict(self) -> dict:
        return {
            "num_gaps": self.num_gaps,
            "best_by_aic": self.best,
            **{m.name: m.to_dict() for m in self.models},
        }


def fit_poisson(data: Trace | Any) -> PoissonFit:
    """Poisson rate MLE λ̂ = n / Σ x over the n gaps x (seconds); closed form.

    Args:
        data: a :class:`~kvstab.traces.Trace` or an array of inter-arrival gaps (s).
    """
    gaps = _as_gaps(data)
    n = gaps.size
    rate = n / float(gaps.sum())
    return PoissonFit(
        rate_per_s=rate, loglik=n * math.log(rate) - rate * float(gaps.sum()), num_gaps=n
    )


class _GammaParams(NamedTuple):
    log_shape: jax.Array
    log_rate: jax.Array


def _gamma_loss(p: _GammaParams, stats) -> jax.Array:
    """Mean negative log-likelihood of gamma gaps from (mean x, mean log x); pure jnp."""
    mean_x, mean_log_x = stats
    k = jnp.exp(p.log_shape)
    return -(k * p.log_rate - gammaln(k) + (k - 1.0) * mean_log_x - jnp.exp(p.log_rate) * mean_x)


def fit_gamma_renewal(
    data: Trace | Any, *, steps: int = 200, progress: Progress | None = None
) -> GammaRenewalFit:
    """MLE of a gamma renewal process (gaps i.i.d. Gamma(k, β)) with optax L-BFGS.

    Gaps are divided by their mean before fitting (so β̃ = k at the optimum, order one); the
    reported rate is the closed-form conditional MLE β = k / mean gap at the fitted k, and the
    log-likelihood is re-evaluated in float64.

    Args:
        data: a trace or an array of gaps (s); all gaps must be > 0.
        steps: maximum optimizer steps.
        progress: optional callback ``(label, step, max_steps, loss)``.
    """
    gaps = _as_gaps(data)
    scale = float(gaps.mean())
    x = gaps / scale
    stats = (jnp.float32(1.0), jnp.float32(np.mean(np.log(x))))
    cv2 = float(x.var()) or 1.0
    k0 = min(max(1.0 / cv2, 1e-3), 1e3)
    p0 = _GammaParams(jnp.float32(math.log(k0)), jnp.float32(math.log(k0)))
    p, _, n, conv = _minimize(
        _gamma_loss, p0, stats, steps=steps, label="gamma_renewal", progress=progress
    )
    k = float(jnp.exp(p.log_shape))
    # Given k the rate MLE is k / mean gap in closed form; using it removes the float32
    # optimizer's last digits from the reported rate (which must equal the Poisson MLE).
    beta = k / float(gaps.mean())
    ll = float(
        gaps.size * (k * math.log(beta) - math.lgamma(k))
        + (k - 1.0) * np.log(gaps).sum()
        - beta * gaps.sum()
    )
    return GammaRenewalFit(
        shape=k, rate_param_per_s=beta, loglik=ll, num_gaps=gaps.size, steps=n, converged=conv
    )


class _MMPPParams(NamedTuple):
    log_rates: jax.Array  # [2]
    log_switch: jax.Array  # [2]


def _expm2_scaled(a, x):
    """exp(A·x) for a 2×2 Metzler matrix A as (log factor, matrix): exp(Ax) = e^f · Mat.

    exp(Ax) = e^{(s+D)x} [ (1+e^{−2Dx})/2 · I + (1−e^{−2Dx})/(2D) · (A − sI) ], s = tr A / 2,
    D = √(((a₀₀−a₁₁)/2)² + a₀₁a₁₀) ≥ 0 (real eigenvalues s ± D). Overflow-free for large x.
    """
    s = 0.5 * (a[0, 0] + a[1, 1])
    d = jnp.sqrt(jnp.maximum(0.25 * (a[0, 0] - a[1, 1]) ** 2 + a[0, 1] * a[1, 0], 1e-24))
    e = jnp.exp(-2.0 * d * x)
    c1 = 0.5 * (1.0 + e)
    c2 = -jnp.expm1(-2.0 * d * x) / (2.0 * d)
    mat = c1 * jnp.eye(2) + c2 * (a - s * jnp.eye(2))
    return (s + d) * x, mat


def _mmpp_loglik_terms(p: _MMPPParams, x) -> jax.Array:
    """Per-gap log-likelihood terms of a 2-state MMPP (scaled forward algorithm).

    f(x₁..x_n) = α₀ Π_i [exp((Q−Λ)x_i) Λ] 1, α₀ = the state law at an arrival in steady state
    (∝ π Λ). Each step renormalises the forward row vector and keeps the log normaliser.
    """
    lam = jnp.exp(p.log_rates)
    q = jnp.exp(p.log_switch)
    a = jnp.array([[-(q[0] + lam[0]), q[0]], [q[1], -(q[1] + lam[1])]])
    pi = jnp.array([q[1], q[0]]) / (q[0] + q[1])
    alpha0 = pi * lam / jnp.sum(pi * lam)

    def step(alpha, xi):
        logf, mat = _expm2_scaled(a, xi)
        v = (alpha @ mat) * lam
        c = jnp.sum(v)
        return v / c, logf + jnp.log(c)

    _, terms = jax.lax.scan(step, alpha0, x)
    return terms


def _mmpp_loss(p: _MMPPParams, x) -> jax.Array:
    return -jnp.mean(_mmpp_loglik_terms(p, x))


def mmpp2_loglik_reference(rates_per_s, switch_per_s, gaps) -> float:
    """Float64 NumPy twin of the MMPP log-likelihood (slow, obviously correct; for tests)."""
    lam = np.asarray(rates_per_s, dtype=np.float64)
    q = np.asarray(switch_per_s, dtype=np.float64)
    a = np.array([[-(q[0] + lam[0]), q[0]], [q[1], -(q[1] + lam[1])]])
    w, v = np.linalg.eig(a)
    vinv = np.linalg.inv(v)
    pi = np.array([q[1], q[0]]) / q.sum()
    alpha = pi * lam / np.sum(pi * lam)
    ll = 0.0
    for xi in np.asarray(gaps, dtype=np.float64):
        m = (v * np.exp(w * xi)) @ vinv
        vec = (alpha @ m) * lam
        c = vec.sum()
        ll += math.log(c)
        alpha = vec / c
    return float(ll)


def fit_mmpp2(
    data: Trace | Any,
    *,
    steps: int = 200,
    progress: Progress | None = None,
    init: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> MMPP2Fit:
    """MLE of a two-state MMPP with optax L-BFGS (forward algorithm in ``lax.scan``).

    Gaps are divided by their mean before fitting. The default start is rates (0.5, 2)×λ̂ and
    switching rates 0.05·λ̂ each (λ̂ the Poisson rate); the likelihood has local optima, so
    compare with the gamma renewal fit (:func:`fit_arrivals` does). The reported log-likelihood
    is re-evaluated in float64 by :func:`mmpp2_loglik_reference`.

    Args:
        data: a trace or an array of gaps (s), all > 0.
        steps: maximum optimizer steps.
        progress: optional callback.
        init: optional start ((λ₀, λ₁), (q₀, q₁)) in 1/s.
    """
    gaps = _as_gaps(data)
    scale = float(gaps.mean())
    x = jnp.asarray(gaps / scale, jnp.float32)
    if init is None:
        rates, switch = (0.5, 2.0), (0.05, 0.05)
    else:
        (r0, r1), (q0, q1) = init
        for name, v in (
            ("init rates", r0),
            ("init rates", r1),
            ("init switch", q0),
            ("init switch", q1),
        ):
            check_number(name, v, low=0, low_open=True)
        rates, switch = (r0 * scale, r1 * scale), (q0 * scale, q1 * scale)
    p0 = _MMPPParams(
        jnp.log(jnp.asarray(rates, jnp.float32)), jnp.log(jnp.asarray(switch, jnp.float32))
    )
    p, _, n, conv = _minimize(_mmpp_loss, p0, x, steps=steps, label="mmpp2", progress=progress)
    lam = np.exp(np.asarray(p.log_rates, np.float64)) / scale
    q = np.exp(np.asarray(p.log_switch, np.float64)) / scale
    order = np.argsort(lam)  # state 0 is the slow state
    lam, q = lam[order], q[order]
    ll = mmpp2_loglik_reference(lam, q, gaps)
    return MMPP2Fit(
        rates_per_s=(float(lam[0]), float(lam[1])),
        switch_per_s=(float(q[0]), float(q[1])),
        loglik=ll,
        num_gaps=gaps.size,
        steps=n,
        converged=conv,
    )


def fit_arrivals(
    data: Trace | Any, *, mmpp: bool = True, steps: int = 200, progress: Progress | None = None
) -> ArrivalFits:
    """Fit Poisson, gamma renewal and (optionally) 2-state MMPP arrivals; compare by AIC.

    All log-likelihoods are of the same n inter-arrival gaps (conditional on the first
    arrival), so they are comparable; AIC = 2·(number of parameters) − 2·loglik.

    Args:
        data: a trace or an array of gaps (s), all > 0 (see :func:`kvstab.traces.jitter_buckets`
            for bucketed or tied timestamps).
        mmpp: also fit the MMPP (a ``lax.scan`` over the gaps per step; slower).
        steps: maximum optimizer steps per model.
        progress: optional callback.
    """
    gaps = _as_gaps(data)
    return ArrivalFits(
        poisson=fit_poisson(gaps),
        gamma_renewal=fit_gamma_renewal(gaps, steps=steps, progress=progress),
        mmpp2=fit_mmpp2(gaps, steps=steps, progress=progress) if mmpp else None,
        num_gaps=gaps.size,
    )


def sample_gaps(model: ArrivalModel, key: jax.Array, n: int) -> jax.Array:
    """n inter-arrival gaps (seconds, float32 [n]) from a fitted arrival model.

    Renewal models draw i.i.d. gaps; the MMPP starts in its stationary state law and is
    simulated event by event (``lax.scan`` over arrivals, ``lax.while_loop`` over state
    switches), so its gaps are dependent.

    Args:
        model: a :class:`PoissonFit`, :class:`GammaRenewalFit` or :class:`MMPP2Fit`.
        key: JAX PRNG key.
        n: number of gaps, ≥ 1.
    """
    check_number("n", n, low=1, integer=True)
    n = int(n)
    if isinstance(model, PoissonFit):
        return jax.random.exponential(key, (n,)) / model.rate_per_s
    if isinstance(model, GammaRenewalFit):
        # Sample log-gaps: with shape k ≪ 1 most gamma draws underflow float32 otherwise.
        log_g = jax.random.loggamma(key, jnp.float32(model.shape), (n,))
        return jnp.exp(log_g - math.log(model.rate_param_per_s))
    if isinstance(model, MMPP2Fit):
        return _sample_mmpp(
            jnp.asarray(model.rates_per_s, jnp.float32),
            jnp.asarray(model.switch_per_s, jnp.float32),
            key,
            n,
        )
    raise InputError(
        "model", f"need a PoissonFit, GammaRenewalFit or MMPP2Fit, got {type(model).__name__}"
    )


def sample_arrivals(model: ArrivalModel, key: jax.Array, n: int) -> jax.Array:
    """Arrival times (seconds, float32 [n], non-decreasing) of n requests from a fitted model.

    The cumulative sum of :func:`sample_gaps` from t = 0 (the first request arrives after
    one gap). Float32 times resolve about 6e-8·t: over an hour (t ≈ 3600 s) gaps below
    about 0.2 ms can round to exact ties; use :func:`sample_gaps` where gaps must be exact.

    Args:
        model: a :class:`PoissonFit`, :class:`GammaRenewalFit` or :class:`MMPP2Fit`.
        key: JAX PRNG key.
        n: number of arrivals, ≥ 1.
    """
    return jnp.cumsum(sample_gaps(model, key, n))


@functools.partial(jax.jit, static_argnums=(3,))
def _sample_mmpp(lam, q, key, n):
    """Gaps of a stationary 2-state MMPP: per arrival, run the state chain until an arrival."""
    key_state, key_path = jax.random.split(key)
    state0 = jax.random.bernoulli(key_state, q[0] / (q[0] + q[1])).astype(jnp.int32)

    def one_arrival(state, k):
        def body(c):
            state, gap, k, _ = c
            k, k_time, k_kind = jax.random.split(k, 3)
            total = lam[state] + q[state]
            gap = gap + jax.random.exponential(k_time) / total
            arrived = jax.random.uniform(k_kind) * total < lam[state]
            return jnp.where(arrived, state, 1 - state), gap, k, arrived

        state, gap, _, _ = jax.lax.while_loop(
            lambda c: ~c[3], body, (state, jnp.float32(0.0), k, False)
        )
        return state, gap

    _, gaps = jax.lax.scan(one_arrival, state0, jax.random.split(key_path, n))
    return gaps
