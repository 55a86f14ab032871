"""Calibration from traces: arrival processes, joint length laws and batch-time models.

Everything is fitted by maximum likelihood (or a robust loss) with :mod:`optax`; the losses
are pure ``jax.numpy`` functions of a ``NamedTuple`` of unconstrained parameters and of the
data (passed as arguments, and padded to power-of-two sizes, so that refitting other data of
a similar size does not recompile). The optimizer is L-BFGS: the direction from
``optax.scale_by_lbfgs``, the step from a backtracking line search driven from Python
(:func:`_minimize`), so that only the ``jit``-compiled value-and-gradient is compiled and a
``progress`` callback reports each step; all losses are smooth. Computations run in float32
(x64 is not enabled) and are written to stay accurate there: log-probabilities of small
intervals use a series on exactly computed widths (:func:`log_ndtr_interval`), time gaps and
token counts are rescaled to order one before optimizing, and reported log-likelihoods are
re-evaluated in float64 on the host where cheap.

Arrivals (PAPER.md §1: Poisson in the paper; going beyond it for bursty traces):

* :func:`fit_poisson`: rate MLE λ̂ = n/Σ x over the n gaps x, closed form.
* :func:`fit_gamma_renewal`: i.i.d. gamma gaps (shape k, rate β): CV = 1/√k.
* :func:`fit_mmpp2`: a two-state Markov-modulated Poisson process.
* :func:`fit_arrivals`: all of them, compared by log-likelihood and AIC.
* :func:`sample_arrivals` / :func:`sample_gaps`: arrival times (or gaps) from any fitted
  model, for the simulator.

Lengths: :class:`CopulaLogNormal`, a :class:`~kvstab.laws.JointLaw` whose marginals are
discretized log-normals (or mixtures of them, :class:`DiscreteLogNormalMixture`) truncated to
the observed range, joined by a Gaussian copula; :func:`fit_copula_lognormal` fits it,
:func:`fit_lengths` runs the paper's 80/20 protocol (PAPER.md §4) and compares E[g] of the fit
with the held-out data; :func:`qq_data` gives quantile pairs for plots.

Batch time (PAPER.md §1, choice 3; §4 for the b̄ estimators): :func:`read_batch_log`,
:func:`fit_batch_time` (b = c₀ + c_p·P + c_d·D + c_kv·KV with a Huber loss) and
:func:`batch_time_estimators` (median, trimmed means).

Gradients: the losses are differentiated exactly by JAX (no relaxation is involved; the
discrete laws' probabilities are smooth functions of the parameters). ``jax.grad`` of
:meth:`CopulaLogNormal.mean_g` with respect to the law's leaves is the derivative of the
quadrature described there.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Callable, Mapping
from statistics import NormalDist
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import gammaln, log_ndtr, logsumexp, ndtr, ndtri

from kvstab.analytic import validate_system
from kvstab.errors import InputError, check_number
from kvstab.laws import JointLaw, LengthLaw, _pytree
from kvstab.request import check_form, prefill_area
from kvstab.traces import Trace, _open_text, _Rows

Progress = Callable[[str, int, int, float], None]
"""``progress(label, step, max_steps, loss)``, called after every optimizer step."""

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SCORE_EDGE = 40.0  # normal score standing for ±∞ (Φ(−40) = 0 in float32, log Φ finite)
_TINY_P = 1e-30  # probabilities are clamped here before Φ⁻¹ (|Φ⁻¹(1e-30)| = 11.46)
_RHO_MAX = 0.999
_GL_CELL = 16  # Gauss-Legendre nodes per cell of the outer variable in mean_g
_GL_PAIR = 16  # Gauss-Legendre nodes per cell in the pair log-probability
_M_GRID = 4096  # grid points for the inner conditional mean m(z) in mean_g
_M_GRID_EDGE = 12.0


# ---------------------------------------------------------------------------------------
# Numerics


def log_ndtr_diff(a, b):
    """log(Φ(b) − Φ(a)) elementwise for a ≤ b, accurate in float32 everywhere.

    See :func:`log_ndtr_interval`, which takes the width b − a directly: use it when the
    width is known more precisely than the difference of two rounded ends.
    """
    a = jnp.asarray(a)
    return log_ndtr_interval(a, jnp.asarray(b) - a)


def log_ndtr_interval(a, h):
    """log(Φ(a + h) − Φ(a)) elementwise for widths h ≥ 0, accurate in float32 everywhere.

    Narrow intervals (h·(1+|m|) < 0.5, m = a + h/2 the midpoint) use the Taylor series
    Φ(m+h/2) − Φ(m−h/2) = h·φ(m)·[1 + h²(m²−1)/24 + h⁴(m⁴−6m²+3)/1920 + O(h⁶m⁶)] (relative
    error < 1e-7 under the condition), so their relative accuracy is that of h itself; wider
    ones the difference of log Φ on the side of the lighter tail (mirrored so that m ≤ 0),
    which loses less than one digit there. Both branches get sanitised inputs so that
    gradients are finite. Width 0 is treated as 1e-30.
    """
    a = jnp.asarray(a)
    h = jnp.asarray(h)
    m = a + 0.5 * h
    flip = m > 0  # mirror: Φ(b) − Φ(a) = Φ(−a) − Φ(−b)
    m = jnp.where(flip, -m, m)
    lo = jnp.where(flip, -(a + h), a)
    narrow = h * (1.0 + jnp.abs(m)) < 0.5
    hs = jnp.maximum(jnp.where(narrow, h, 0.1), 1e-30)
    ms = jnp.where(narrow, m, 0.0)
    m2 = ms * ms
    h2 = hs * hs
    corr = h2 * (m2 - 1.0) / 24.0 + h2 * h2 * (m2 * m2 - 6.0 * m2 + 3.0) / 1920.0
    series = jnp.log(hs) - 0.5 * m2 - _LOG_SQRT_2PI + jnp.log1p(corr)
    lo_w = jnp.where(narrow, -1.0, lo)
    hi_w = jnp.where(narrow, 0.0, lo + h)
    l_hi, l_lo = log_ndtr(jnp.stack([hi_w, lo_w]))  # one call site: a smaller XLA program
    wide = l_hi + jnp.log1p(-jnp.exp(jnp.minimum(l_lo - l_hi, -1e-7)))
    return jnp.where(narrow, series, wide)


@jax.custom_jvp
def _ndtri(p):
    """Φ⁻¹(p) with the derivative 1/φ(Φ⁻¹(p)) in closed form (smaller graphs than autodiff)."""
    return ndtri(p)


@_ndtri.defjvp
def _ndtri_jvp(primals, tangents):
    (p,), (dp,) = primals, tangents
    z = ndtri(p)
    return z, dp * jnp.exp(0.5 * z * z + _LOG_SQRT_2PI)


def _gauss_legendre_01(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1.0) / 2.0, w / 2.0


def _tree_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _minimize(
    loss: Callable[[Any, Any], jax.Array],
    params,
    data,
    *,
    steps: int,
    label: str,
    progress: Progress | None,
    grad_tol: float = 1e-5,
    rel_tol: float = 1e-8,
):
    """Minimise ``loss(params, data)`` by L-BFGS; returns (params, loss, steps, converged).

    The search direction comes from ``optax.scale_by_lbfgs`` (memory 10, scaled initial
    preconditioner); the step length from a backtracking (Armijo) line search driven from
    Python, so that only ``value_and_grad(loss)`` and the small direction update are
    compiled (an in-graph line search would put several copies of the loss into one XLA
    program and multiply the compile time). Stops when the gradient norm falls below
    ``grad_tol``, when the loss has changed by less than ``rel_tol`` (relative) for 5
    consecutive steps, when no step decreases the loss along the L-BFGS direction nor (after
    a memory reset) along steepest descent, or after ``steps`` steps.
    """
    check_number("steps", steps, low=1, integer=True)
    vg, direction = _compiled(loss)

    # Strong dtypes: optax initialises counters as weak-typed scalars; the first update would
    # otherwise return differently typed state and compile a second time.
    def fresh(p):
        return jax.tree.map(lambda x: jnp.array(x, dtype=x.dtype), _LBFGS.init(p))

    state = fresh(params)
    value, grad = vg(params, data)
    value = float(value)
    if not math.isfinite(value):
        raise InputError(
            label,
            f"the initial {label} loss is not finite; the data may be outside the model's support",
        )
    converged = False
    quiet = 0
    n = 0
    for n in range(1, int(steps) + 1):
        accepted = False
        for restart in (False, True):
            if restart:  # the quasi-Newton model failed: forget it, retry steepest descent
                state = fresh(params)
            d, new_state, slope = direction(grad, state, params)
            if not float(slope) < 0:  # not a descent direction
                continue
            accepted, alpha = False, 1.0
            for _ in range(12):
                trial = jax.tree.map(lambda x, u, a=alpha: x + a * u, params, d)
                t_value, t_grad = vg(trial, data)
                t_value = float(t_value)
                if math.isfinite(t_value) and t_value <= value + 1e-4 * alpha * float(slope):
                    accepted = True
                    break
                if abs(alpha * float(slope)) <= 1e-7 * max(1.0, abs(value)):
                    break  # the predicted decrease is below float32 resolution
                alpha *= 0.5
            if accepted:
                break
        if not accepted:
            # No resolvable decrease along either direction. Converged if the quasi-Newton
            # model predicts less than 1e-5 (relative) left to gain, f − f* ≈ −gᵀd/2: below
            # that the float32 loss cannot rank the candidates.
            d, _, slope = direction(grad, fresh(params) if restart else state, params)
            converged = float(_tree_norm(grad)) < grad_tol or -float(slope) / 2 < 1e-5 * max(
                1.0, abs(value)
            )
            break
        change = abs(value - t_value) / max(1.0, abs(value))
        params, state, value, grad = trial, new_state, t_value, t_grad
        if progress is not None:
            progress(label, n, int(steps), value)
        if float(_tree_norm(grad)) < grad_tol:
            converged = True
            break
        quiet = quiet + 1 if change < rel_tol else 0
        if quiet >= 5:
            converged = True
            break
    return params, value, n, converged


_LBFGS = optax.scale_by_lbfgs(memory_size=10)
_COMPILED: dict[Any, tuple[Callable, Callable]] = {}


def _cpu_options() -> dict | None:
    """XLA options for the loss programs: on CPU, backend optimisation level 1 compiles about
    a third faster than the default (3) at no measurable cost in run time for these losses."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


def _compiled(loss):
    """jit'd value_and_grad of ``loss`` and the L-BFGS direction (descent: −H·g)."""
    if loss not in _COMPILED:

        @jax.jit
        def direction(grad, state, params):
            precond, state = _LBFGS.update(grad, state, params)
            d = jax.tree.map(jnp.negative, precond)
            slope = sum(
                jnp.vdot(g, u)
                for g, u in zip(jax.tree.leaves(grad), jax.tree.leaves(d), strict=True)
            )
            return d, state, slope

        _COMPILED[loss] = (
            jax.jit(jax.value_and_grad(loss), compiler_options=_cpu_options()),
            direction,
        )
    return _COMPILED[loss]


def _as_gaps(data: Trace | Any, field: str = "gaps") -> np.ndarray:
    """Inter-arrival gaps (seconds, float64) of a trace or an array of gaps; all must be > 0."""
    if isinstance(data, Trace):
        gaps = data.interarrival_s
        origin = f"trace {data.source}"
    else:
        gaps = np.asarray(data, dtype=np.float64).ravel()
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


# ---------------------------------------------------------------------------------------
# Arrival processes


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


# ---------------------------------------------------------------------------------------
# Length laws


def _mix_log_interval(mu, sigma, logw, x_lo, x_hi):
    """log Σ_c w_c P(x_lo < exp(N(μ_c, σ_c²)) ≤ x_hi), elementwise over x (components last).

    Callers stack all the intervals they need into one call: the graph (and so the compile
    time) grows with the number of call sites of :func:`log_ndtr_interval`, not with their
    size.
    """
    za = (jnp.log(x_lo)[..., None] - mu) / sigma
    # The width from log1p of the exact ratio: ln(k+½) − ln(k−½) as a difference of rounded
    # logs would lose every digit for k ~ 10⁵ in float32.
    width = jnp.log1p(jnp.maximum(x_hi - x_lo, 0.0) / x_lo)[..., None] / sigma
    return logsumexp(logw + log_ndtr_interval(za, width), axis=-1)


def _marginal_parts(mu, sigma, logw, cap, k):
    """For float lengths k (any shape): log P(K = k), P(K ≤ k−1), P(K ≤ k), P(K > k−1), P(K > k).

    The truncated discretized log-normal mixture on 1..cap; CDF and survival values are
    each accurate when small (no 1 − F); P(K ≤ 0) = 0 and P(K > cap) = 0 exactly.
    """
    half = jnp.broadcast_to(jnp.asarray(0.5, k.dtype), k.shape)
    top = jnp.broadcast_to(cap + 0.5, k.shape)
    lo = jnp.stack([half, k - 0.5, half, half, k - 0.5, k + 0.5])
    hi = jnp.stack([top, k + 0.5, k - 0.5, k + 0.5, top, top])
    lv = _mix_log_interval(mu, sigma, logw, lo, hi)
    log_z, log_pmf = lv[0], lv[1] - lv[0]
    f_lo, f_hi, sf_lo, sf_hi = jnp.exp(lv[2:] - log_z)
    # Exact ends; beyond the cap (padded tables) every cell is empty.
    f_lo = jnp.where(k <= 1, 0.0, jnp.where(k > cap, 1.0, f_lo))
    sf_lo = jnp.where(k <= 1, 1.0, jnp.where(k > cap, 0.0, sf_lo))
    f_hi = jnp.where(k >= cap, 1.0, f_hi)
    sf_hi = jnp.where(k >= cap, 0.0, sf_hi)
    return log_pmf, f_lo, f_hi, sf_lo, sf_hi


def _marginal_log_pmf(mu, sigma, logw, cap, k):
    """log P(K = k), k ∈ 1..cap (float k)."""
    return _marginal_parts(mu, sigma, logw, cap, k)[0]


def _nodes_and_scores(f_lo, f_hi, sf_lo, sf_hi, k, cap, t):
    """Φ⁻¹ in one call for Gauss-Legendre nodes inside cells and for the cells' end scores.

    For cells (F(k−1), F(k)] (arrays of any shape [...]): node t ∈ (0,1) sits at
    z = Φ⁻¹(F(k−1) + t·ΔF), computed on the survival side when the cell lies mostly in the
    upper half so that nothing is lost near 1 → [..., n]; the end scores Φ⁻¹(F(k−1)) and
    Φ⁻¹(F(k)) (the Gaussian-copula thresholds) → [...] each, with ±40 for ±∞.
    Probabilities are clamped at 1e-30 (|Φ⁻¹| ≤ 11.46).
    """
    n = t.shape[0]
    use_f = (f_lo + f_hi) < 1.0
    u = f_lo[..., None] + t * (f_hi - f_lo)[..., None]
    v = sf_hi[..., None] + (1.0 - t) * (sf_lo - sf_hi)[..., None]
    parts = [jnp.where(use_f[..., None], u, v)]
    signs = [jnp.broadcast_to(jnp.where(use_f[..., None], 1.0, -1.0), parts[0].shape)]
    for f, sf in ((f_lo, sf_lo), (f_hi, sf_hi)):
        side = f < 0.5
        parts.append(jnp.where(side, f, sf)[..., None])
        signs.append(jnp.where(side, 1.0, -1.0)[..., None])
    p = jnp.concatenate(parts, axis=-1)
    z = jnp.concatenate(signs, axis=-1) * _ndtri(jnp.clip(p, _TINY_P, 0.999999))
    score_lo = jnp.where(k <= 1, -_SCORE_EDGE, z[..., n])
    score_hi = jnp.where(k >= cap, _SCORE_EDGE, z[..., n + 1])
    return z[..., :n], score_lo, score_hi


def _scores(f, sf):
    """Normal scores Φ⁻¹(F) from (F, 1 − F), each accurate when small; ±40 for F = 0, 1."""
    side = f < 0.5
    z = jnp.where(side, 1.0, -1.0) * _ndtri(jnp.clip(jnp.where(side, f, sf), _TINY_P, 0.5))
    return jnp.where(f <= 0, -_SCORE_EDGE, jnp.where(sf <= 0, _SCORE_EDGE, z))


def _padded_size(n: int) -> int:
    """Static array size for n items (a support 1..cap, or n data rows): the next power of
    two ≥ n, at least 1024.

    Kernels take the cap (or a row weight) as an array and mask the padding, so laws whose
    caps, and data sets whose sizes, fall in the same bucket share one compiled program (a
    sweep over caps does not recompile each time).
    """
    return max(1024, 1 << (int(n) - 1).bit_length())


def _marginal_cells(mu, sigma, logw, cap, size: int):
    """For k = 1..size: log P(K=k) (−inf beyond cap), P(K ≤ k−1), P(K ≤ k), P(K > k−1),
    P(K > k) of the truncated discretized log-normal mixture; cap is an array."""
    k = jnp.arange(1, size + 1, dtype=jnp.float32)
    log_pmf, f_lo, f_hi, sf_lo, sf_hi = _marginal_parts(mu, sigma, logw, cap, k)
    return jnp.where(k <= cap, log_pmf, -jnp.inf), f_lo, f_hi, sf_lo, sf_hi


def _marginal_scores(mu, sigma, logw, cap, size: int):
    """Copula thresholds Φ⁻¹(P(K ≤ k)) for k = 1..size−1 (+40 from k = cap on)."""
    _, _, f_hi, _, sf_hi = _marginal_cells(mu, sigma, logw, cap, size)
    return _scores(f_hi[:-1], sf_hi[:-1])


_log_pmf_kernel = jax.jit(_marginal_log_pmf)


@functools.partial(jax.jit, static_argnames=("size",))
def _table_kernel(mu, sigma, logw, cap, size):
    return jnp.exp(_marginal_cells(mu, sigma, logw, cap, size)[0])


@functools.partial(jax.jit, static_argnames=("size",))
def _scores_kernel(mu, sigma, logw, cap, size):
    return _marginal_scores(mu, sigma, logw, cap, size)


def _lengths_from_normal(scores, z):
    """Length k with z in (score_{k−1}, score_k]: the inverse-CDF map of the copula."""
    return (jnp.searchsorted(scores, z, side="left") + 1).astype(jnp.int32)


@_pytree(static=("cap",), leaves=("mu", "sigma", "weights"))
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class DiscreteLogNormalMixture(LengthLaw):
    """Discretized log-normal (mixture) truncated to 1..cap.

    P(K = k) ∝ Σ_c w_c [Φ((ln(k+½) − μ_c)/σ_c) − Φ((ln(k−½) − μ_c)/σ_c)], k = 1..cap, i.e.
    round(exp(N(μ_c, σ_c²))) conditioned on 1 ≤ K ≤ cap (one component: the issue's law).

    Attributes:
        mu: [comp] location of ln(length) per component (ln tokens).
        sigma: [comp] scale of ln(length), > 0.
        weights: [comp] mixture weights, ≥ 0, summing to 1.
        cap: truncation point (tokens), the largest possible length.
    """

    mu: Any
    sigma: Any
    weights: Any
    cap: int

    def __post_init__(self):
        mu = jnp.atleast_1d(jnp.asarray(self.mu, jnp.float32))
        sg = jnp.atleast_1d(jnp.asarray(self.sigma, jnp.float32))
        w = jnp.atleast_1d(jnp.asarray(self.weights, jnp.float32))
        if mu.ndim != 1 or mu.shape != sg.shape or mu.shape != w.shape:
            raise InputError("mu", "mu, sigma and weights need one entry per component")
        check_number("cap", self.cap, low=1, integer=True)
        object.__setattr__(self, "cap", int(self.cap))
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sg)
        object.__setattr__(self, "weights", w / jnp.sum(w))
        try:  # values can be checked only when concrete (not under jit or grad)
            mun, sgn, wn = np.asarray(mu), np.asarray(sg), np.asarray(w)
        except jax.errors.TracerArrayConversionError:
            return
        if not np.all(np.isfinite(mun)):
            raise InputError("mu", f"must be finite, got {mun.tolist()}")
        if not np.all(np.isfinite(sgn)) or np.any(sgn <= 0):
            raise InputError("sigma", f"must be finite and > 0, got {sgn.tolist()}")
        if np.any(~np.isfinite(wn)) or np.any(wn < 0) or abs(wn.sum() - 1.0) > 1e-4:
            raise InputError("weights", f"must be >= 0 and sum to 1, got {wn.tolist()}")

    @property
    def num_components(self) -> int:
        return int(np.shape(self.mu)[0])

    @property
    def max_value(self) -> int:
        return self.cap

    @property
    def spec(self) -> str:
        parts = [
            f"{float(w):.3g}*lognormal(median {math.exp(float(m)):.4g}, sigma {float(s):.3g})"
            for m, s, w in zip(
                np.asarray(self.mu), np.asarray(self.sigma), np.asarray(self.weights), strict=True
            )
        ]
        body = parts[0].split("*", 1)[1] if len(parts) == 1 else " + ".join(parts)
        return f"discretized {body} on 1..{self.cap}"

    @property
    def summation(self) -> str:
        return f"exact sum over the finite support 1..{self.cap}"

    def _args(self):
        """(μ, σ, log w, cap as an array): the traced inputs of the kernels."""
        return (
            self.mu,
            self.sigma,
            jnp.log(jnp.maximum(self.weights, 1e-30)),
            jnp.float32(self.cap),
        )

    @property
    def _size(self) -> int:
        return _padded_size(self.cap)

    def log_pmf(self, k) -> jax.Array:
        """log P(K = k) for integer lengths k (array), −inf outside 1..cap."""
        k = jnp.asarray(k, jnp.float32)
        lp = _log_pmf_kernel(*self._args(), jnp.clip(k, 1.0, float(self.cap)))
        return jnp.where((k >= 1) & (k <= self.cap), lp, -jnp.inf)

    def table(self):
        """Support 1..cap (float32) and probabilities (exact up to float32 rounding)."""
        probs = _table_kernel(*self._args(), size=self._size)[: self.cap]
        return jnp.arange(1, self.cap + 1, dtype=jnp.float32), probs

    def normal_scores(self) -> jax.Array:
        """Φ⁻¹(P(K ≤ k)) for k = 1..cap−1: the inner copula thresholds."""
        return _scores_kernel(*self._args(), size=self._size)[: self.cap - 1]

    def sample(self, key, shape):
        return _marginal_sample_kernel(
            *self._args(), jax.random.normal(key, shape), size=self._size
        )


@functools.partial(jax.jit, static_argnames=("size",))
def _marginal_sample_kernel(mu, sigma, logw, cap, z, size):
    return _lengths_from_normal(_marginal_scores(mu, sigma, logw, cap, size), z)


@_pytree(static=(), leaves=("prompt", "output", "rho"))
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class CopulaLogNormal(JointLaw):
    """Joint (s, o) law: discretized, truncated log-normal (mixture) marginals joined by a
    Gaussian copula with correlation ρ.

    (Z₁, Z₂) standard bivariate normal with correlation ρ; s = F_s⁻¹(Φ(Z₁)) and
    o = F_o⁻¹(Φ(Z₂)) with F the marginal CDFs, so the marginals are exactly the
    :class:`DiscreteLogNormalMixture` laws and the dependence is the Gaussian copula.
    P(s = j, o = k) = ∫_{α_{j−1}}^{α_j} φ(z) [Φ((c_k − ρz)/r) − Φ((c_{k−1} − ρz)/r)] dz with
    α, c the normal scores of the marginal CDFs and r = √(1 − ρ²).

    A JAX pytree: leaves are the marginals' (μ, σ, w) and ρ, so ``jax.grad`` of
    :func:`kvstab.analytic.mu_for` works; the caps are static. The compiled kernels take the
    caps as arrays and pad the tables to a power of two, so laws with caps in the same
    bucket share compiled code.

    Attributes:
        prompt: marginal law of s (tokens).
        output: marginal law of o (tokens).
        rho: copula correlation in (−1, 1) (|ρ| ≤ 0.999 is enforced by the fit).
    """

    prompt: DiscreteLogNormalMixture
    output: DiscreteLogNormalMixture
    rho: Any

    def __post_init__(self):
        for name in ("prompt", "output"):
            if not isinstance(getattr(self, name), DiscreteLogNormalMixture):
                raise InputError(name, "must be a DiscreteLogNormalMixture")
        check_number("rho", self.rho, low=-1, high=1, low_open=True, high_open=True)
        object.__setattr__(self, "rho", jnp.asarray(self.rho, jnp.float32))

    @property
    def max_prompt(self) -> int:
        return self.prompt.cap

    @property
    def max_total(self) -> int:
        return self.prompt.cap + self.output.cap

    @property
    def spec(self) -> str:
        return (
            f"Gaussian copula (rho {float(self.rho):.3f}) of prompt {self.prompt.spec}, "
            f"output {self.output.spec}"
        )

    @property
    def summation(self) -> str:
        return (
            "marginal terms E[prefill(s)], E[o(o+1)/2]: exact sums over 1..cap; cross term "
            f"E[s*o] = sum_j j P(s=j) E[o | s=j]: {_GL_CELL}-point Gauss-Legendre per cell of the "
            f"longer-support variable in probability space, the conditional mean of the other "
            f"tabulated at {_M_GRID} normal scores on [-{_M_GRID_EDGE:g}, {_M_GRID_EDGE:g}] and "
            "interpolated linearly (relative error < 1e-4, float32)"
        )

    def _kernel_args(self):
        return (self.prompt._args(), self.output._args(), self.rho)

    def log_prob(self, s, o) -> jax.Array:
        """log P(s, o) for integer arrays of prompt and output lengths (same shape)."""
        s = np.asarray(s, np.float32)
        o = np.asarray(o, np.float32)
        if s.shape != o.shape:
            raise InputError("o", f"need the shape of s {s.shape}, got {o.shape}")
        inside = (s >= 1) & (s <= self.prompt.cap) & (o >= 1) & (o <= self.output.cap)
        n = s.size
        pad = _padded_size(max(n, 1)) - n  # bucketed sizes share one compiled kernel
        lp = _log_prob_kernel(
            _natural(self),
            jnp.float32(self.prompt.cap),
            jnp.float32(self.output.cap),
            jnp.asarray(
                np.pad(np.clip(s.ravel(), 1, self.prompt.cap), (0, pad), constant_values=1)
            ),
            jnp.asarray(
                np.pad(np.clip(o.ravel(), 1, self.output.cap), (0, pad), constant_values=1)
            ),
        )
        return jnp.where(jnp.asarray(inside), lp[:n].reshape(s.shape), -jnp.inf)

    def sample(self, key, shape):
        k1, k2 = jax.random.split(key)
        return _copula_sample_kernel(
            *self._kernel_args(),
            jax.random.normal(k1, shape),
            jax.random.normal(k2, shape),
            size_s=self.prompt._size,
            size_o=self.output._size,
        )

    def mean_g(self, chunk_tokens, form="exact"):
        """E[g(s, o)] in token·steps (PAPER.md §2); see :attr:`summation` for the method."""
        check_form(form)
        check_number("chunk_tokens", chunk_tokens, low=1)
        return _copula_mean_g_kernel(
            *self._kernel_args(),
            jnp.float32(chunk_tokens),
            jnp.asarray(form == "paper"),
            size_s=self.prompt._size,
            size_o=self.output._size,
        )[0]

    def mean_product(self) -> jax.Array:
        """E[s·o] (token²) by the quadrature stated in :attr:`summation`."""
        return _copula_mean_g_kernel(
            *self._kernel_args(),
            jnp.float32(1.0),
            jnp.asarray(False),
            size_s=self.prompt._size,
            size_o=self.output._size,
        )[1]


@functools.partial(jax.jit, static_argnames=("size_s", "size_o"))
def _copula_sample_kernel(args_s, args_o, rho, z1, e2, size_s, size_o):
    z2 = rho * z1 + jnp.sqrt(1.0 - rho**2) * e2
    return (
        _lengths_from_normal(_marginal_scores(*args_s, size_s), z1),
        _lengths_from_normal(_marginal_scores(*args_o, size_o), z2),
    )


@functools.partial(jax.jit, static_argnames=("size_s", "size_o"))
def _copula_mean_g_kernel(args_s, args_o, rho, chunk_tokens, paper, size_s, size_o):
    """(E[g], E[s·o]) with E[g] = E[prefill(s)] + E[s·o] + E[o(o+1)/2] (PAPER.md §2); the
    prefill term in the paper's closed form where ``paper`` (a traced bool), else exact."""
    cells_s = _marginal_cells(*args_s, size_s)
    cells_o = _marginal_cells(*args_o, size_o)
    # The inner thresholds come from the cells already computed (no second copy in the graph).
    if size_s >= size_o:
        e_so = _cross_moment(cells_s, _scores(cells_o[2][:-1], cells_o[4][:-1]), rho)
    else:
        e_so = _cross_moment(cells_o, _scores(cells_s[2][:-1], cells_s[4][:-1]), rho)
    s = jnp.arange(1, size_s + 1, dtype=jnp.float32)
    o = jnp.arange(1, size_o + 1, dtype=jnp.float32)
    prefill = jnp.where(
        paper, prefill_area(s, chunk_tokens, "paper"), prefill_area(s, chunk_tokens, "exact")
    )
    e_prefill = jnp.sum(jnp.exp(cells_s[0]) * prefill)
    e_decode_own = jnp.sum(jnp.exp(cells_o[0]) * o * (o + 1.0) / 2.0)
    return e_prefill + e_so + e_decode_own, e_so


def _cross_moment(outer_cells, inner_scores, rho):
    """E[X·Y] under the Gaussian copula, X the outer variable (cells), Y the inner (scores).

    E[XY] = Σ_j j P(X=j) E[m(Z_X) | cell j] with m(z) = E[Y | Z_X = z]
    = 1 + Σ_k Φ((ρz − c_k)/r) over the inner thresholds c_k (k ≥ cap contributes 0),
    tabulated on a grid of z and interpolated linearly; the cell expectation by
    Gauss-Legendre in probability space.
    """
    r = jnp.sqrt(1.0 - rho**2)
    zg = jnp.linspace(-_M_GRID_EDGE, _M_GRID_EDGE, _M_GRID, dtype=jnp.float32)
    m_grid = 1.0 + jnp.sum(ndtr((rho * zg[:, None] - inner_scores[None, :]) / r), axis=1)
    log_pmf, f_lo, f_hi, sf_lo, sf_hi = outer_cells
    t, w = _gauss_legendre_01(_GL_CELL)
    k = jnp.arange(1, f_lo.shape[0] + 1, dtype=jnp.float32)
    z, _, _ = _nodes_and_scores(f_lo, f_hi, sf_lo, sf_hi, k, jnp.inf, jnp.asarray(t, jnp.float32))
    m_bar = jnp.interp(z, zg, m_grid) @ jnp.asarray(w, jnp.float32)
    values = jnp.arange(1, log_pmf.shape[0] + 1, dtype=jnp.float32)
    return jnp.sum(values * jnp.exp(log_pmf) * m_bar)


class _CopulaNatural(NamedTuple):
    mu_s: jax.Array
    sigma_s: jax.Array
    logw_s: jax.Array
    mu_o: jax.Array
    sigma_o: jax.Array
    logw_o: jax.Array
    rho: jax.Array


def _natural(law: CopulaLogNormal) -> _CopulaNatural:
    (ms, ss, ws, _), (mo, so, wo, _) = law.prompt._args(), law.output._args()
    return _CopulaNatural(ms, ss, ws, mo, so, wo, law.rho)


def _copula_log_prob(p: _CopulaNatural, cap_s, cap_o, s, o):
    """log P(s, o) of the copula law for float arrays s ∈ 1..cap_s, o ∈ 1..cap_o; pure jnp.

    P(s=j, o=k) = P(s=j) · E[Φ((c_k − ρZ₁)/r) − Φ((c_{k−1} − ρZ₁)/r) | Z₁ in cell j]
    = P(o=k) · E[Φ((α_j − ρZ₂)/r) − Φ((α_{j−1} − ρZ₂)/r) | Z₂ in cell k]; both are computed
    (stacked, one call) and the one integrating over the narrower cell (the smaller marginal
    probability) is kept. The cell expectation is a 16-point Gauss-Legendre rule in
    probability space.
    """
    r = jnp.sqrt(1.0 - p.rho**2)
    # Both marginals in one batched call (leading axis: 0 = prompt, 1 = output).
    both = lambda a, b: jnp.stack([a, b])[:, None, :]  # noqa: E731  [2, 1, comp]
    k = jnp.stack([s, o])
    cap = jnp.stack([cap_s, cap_o])[:, None]
    log_p, f_lo, f_hi, sf_lo, sf_hi = _marginal_parts(
        both(p.mu_s, p.mu_o), both(p.sigma_s, p.sigma_o), both(p.logw_s, p.logw_o), cap, k
    )
    t, w = _gauss_legendre_01(_GL_PAIR)
    z, score_lo, score_hi = _nodes_and_scores(
        f_lo, f_hi, sf_lo, sf_hi, k, cap, jnp.asarray(t, jnp.float32)
    )
    # Row 0 integrates over the prompt cell against the output cell's ends, row 1 the reverse.
    lo = (score_lo[::-1, :, None] - p.rho * z) / r
    hi = (score_hi[::-1, :, None] - p.rho * z) / r
    cond = logsumexp(log_ndtr_diff(lo, hi) + jnp.log(jnp.asarray(w, jnp.float32)), axis=-1)
    via = log_p + cond  # [2, N]
    return jnp.where(log_p[0] <= log_p[1], via[0], via[1])


_log_prob_kernel = jax.jit(_copula_log_prob)


class _CopulaParams(NamedTuple):
    """Unconstrained parameters: σ = exp(log σ), w = softmax(logits), ρ = 0.999·tanh(z)."""

    mu_s: jax.Array
    log_sigma_s: jax.Array
    logit_w_s: jax.Array
    mu_o: jax.Array
    log_sigma_o: jax.Array
    logit_w_o: jax.Array
    z_rho: jax.Array


def _to_natural(p: _CopulaParams) -> _CopulaNatural:
    return _CopulaNatural(
        p.mu_s,
        jnp.exp(p.log_sigma_s),
        jax.nn.log_softmax(p.logit_w_s),
        p.mu_o,
        jnp.exp(p.log_sigma_o),
        jax.nn.log_softmax(p.logit_w_o),
        _RHO_MAX * jnp.tanh(p.z_rho),
    )


def _copula_loss(p: _CopulaParams, data) -> jax.Array:
    """Mean negative log-likelihood per request (nats); pure jnp. ``data`` = (s, o, weight,
    cap_s, cap_o); padding rows have weight 0."""
    s, o, wt, cap_s, cap_o = data
    return -jnp.sum(wt * _copula_log_prob(_to_natural(p), cap_s, cap_o, s, o)) / jnp.sum(wt)


def _init_marginal(x: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lx = np.log(x.astype(np.float64))
    sd = max(float(lx.std()), 0.05)
    if components == 1:
        return np.array([lx.mean()]), np.array([sd]), np.array([1.0])
    qs = np.quantile(lx, (np.arange(components) + 0.5) / components)
    return qs, np.full(components, max(sd / components, 0.05)), np.full(components, 1 / components)


def _normal_scores_of_ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    inv = NormalDist().inv_cdf  # host float64; avoids compiling an op for every data size
    return np.array([inv(v) for v in (ranks + 0.5) / x.size])


@dataclasses.dataclass(frozen=True)
class CopulaFit:
    """A fitted :class:`CopulaLogNormal` with its log-likelihood (nats, training data)."""

    law: CopulaLogNormal
    loglik: float
    num_requests: int
    num_params: int
    steps: int
    converged: bool

    @property
    def aic(self) -> float:
        return 2 * self.num_params - 2 * self.loglik

    def params(self) -> dict:
        """Fitted parameters: per marginal μ, σ, weights and medians e^μ; and ρ."""
        out: dict[str, Any] = {}
        for name, m in (("prompt", self.law.prompt), ("output", self.law.output)):
            mu = np.asarray(m.mu, np.float64)
            out[name] = {
                "mu_log_tokens": mu.tolist(),
                "median_tokens": np.exp(mu).tolist(),
                "sigma": np.asarray(m.sigma, np.float64).tolist(),
                "weights": np.asarray(m.weights, np.float64).tolist(),
                "cap": m.cap,
            }
        out["rho"] = float(self.law.rho)
        return out

    def to_dict(self) -> dict:
        return {
            "law": self.law.spec,
            "params": self.params(),
            "loglik": self.loglik,
            "loglik_per_request": self.loglik / self.num_requests,
            "aic": self.aic,
            "num_requests": self.num_requests,
            "num_params": self.num_params,
            "steps": self.steps,
            "converged": self.converged,
        }


def _unconstrained(law: CopulaLogNormal) -> _CopulaParams:
    """The optimizer's parameters of a law (inverse of :func:`_to_natural`)."""
    m_s, m_o = law.prompt, law.output
    return _CopulaParams(
        m_s.mu,
        jnp.log(m_s.sigma),
        jnp.log(jnp.maximum(m_s.weights, 1e-30)),
        m_o.mu,
        jnp.log(m_o.sigma),
        jnp.log(jnp.maximum(m_o.weights, 1e-30)),
        jnp.arctanh(jnp.clip(law.rho / _RHO_MAX, -1 + 1e-7, 1 - 1e-7)),
    )


def _loss_data(s, o, cap_s: int, cap_o: int, size: int | None = None):
    """Padded (s, o, weight, cap_s, cap_o) for :func:`_copula_loss`; padding has weight 0.

    Sizes are rounded up to :func:`_padded_size` so that data sets of similar size share one
    compiled likelihood.
    """
    s = np.asarray(s)
    size = _padded_size(s.size) if size is None else max(size, _padded_size(s.size))
    pad = size - s.size
    return (
        jnp.asarray(np.pad(s, (0, pad), constant_values=1), jnp.float32),
        jnp.asarray(np.pad(np.asarray(o), (0, pad), constant_values=1), jnp.float32),
        jnp.asarray(np.pad(np.ones(s.size), (0, pad)), jnp.float32),
        jnp.float32(cap_s),
        jnp.float32(cap_o),
    )


def _mean_loglik(law: CopulaLogNormal, s, o, size: int | None = None) -> float:
    """Mean log P(s, o) per pair (nats) through the fitting kernel (data padded to ``size``)."""
    vg, _ = _compiled(_copula_loss)
    value, _ = vg(_unconstrained(law), _loss_data(s, o, law.prompt.cap, law.output.cap, size))
    return -float(value)


def fit_copula_lognormal(
    prompt: Any,
    output: Any,
    *,
    components: int = 1,
    max_prompt: int | None = None,
    max_output: int | None = None,
    steps: int = 300,
    progress: Progress | None = None,
) -> CopulaFit:
    """MLE of :class:`CopulaLogNormal` on (s, o) pairs with optax L-BFGS.

    The start is the moments of ln s and ln o (split at quantiles for mixtures) and ρ = the
    correlation of the rank normal scores.

    Args:
        prompt: int [req] prompt lengths ≥ 1 (tokens).
        output: int [req] output lengths ≥ 1 (tokens).
        components: log-normal components per marginal (1 = the issue's law; 2 if one
            log-normal cannot follow the data).
        max_prompt: truncation of s; default the largest observed prompt.
        max_output: truncation of o; default the largest observed output.
        steps: maximum optimizer steps.
        progress: optional callback.
    """
    s = np.asarray(prompt)
    o = np.asarray(output)
    if s.ndim != 1 or s.shape != o.shape or s.size < 3:
        raise InputError("trace", "need equally many prompt and output lengths, at least 3")
    for name, v in (("prompt", s), ("output", o)):
        if np.any(~np.isfinite(v)) or np.any(v < 1) or np.any(v != np.round(v)):
            raise InputError(name, "lengths must be integers >= 1")
    check_number("components", components, low=1, high=8, integer=True)
    components = int(components)
    cap_s = int(s.max()) if max_prompt is None else int(max_prompt)
    cap_o = int(o.max()) if max_output is None else int(max_output)
    check_number("max_prompt", cap_s, low=int(s.max()), integer=True)
    check_number("max_output", cap_o, low=int(o.max()), integer=True)
    ms, ss, ws = _init_marginal(s, components)
    mo, so, wo = _init_marginal(o, components)
    rho0 = float(
        np.clip(
            np.corrcoef(_normal_scores_of_ranks(s), _normal_scores_of_ranks(o))[0, 1], -0.9, 0.9
        )
    )
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    p0 = _CopulaParams(
        f32(ms),
        f32(np.log(ss)),
        f32(np.log(ws)),
        f32(mo),
        f32(np.log(so)),
        f32(np.log(wo)),
        f32(np.arctanh(rho0 / _RHO_MAX)),
    )
    # Pad to a power of two (weight 0) so that data sets of similar size share one compile.
    data = _loss_data(s, o, cap_s, cap_o)
    p, loss, n, conv = _minimize(
        _copula_loss, p0, data, steps=steps, label="lengths", progress=progress
    )
    nat = _to_natural(p)
    law = CopulaLogNormal(
        DiscreteLogNormalMixture(nat.mu_s, nat.sigma_s, jnp.exp(nat.logw_s), cap_s),
        DiscreteLogNormalMixture(nat.mu_o, nat.sigma_o, jnp.exp(nat.logw_o), cap_o),
        nat.rho,
    )
    k_params = 2 * (3 * components - 1) + 1
    return CopulaFit(
        law=law,
        loglik=-loss * s.size,
        num_requests=int(s.size),
        num_params=k_params,
        steps=n,
        converged=conv,
    )


def qq_data(law: LengthLaw, values: Any, num: int = 99) -> dict[str, list[float]]:
    """Quantile pairs of a fitted marginal vs data, for QQ plots.

    Args:
        law: a length law with a finite ``table()`` (e.g. ``fit.law.prompt``).
        values: observed lengths.
        num: number of probability levels p = (i − ½)/num, i = 1..num.

    Returns:
        ``{"probs": [...], "data": [...], "fit": [...]}``: data quantiles (linear
        interpolation) and the law's quantiles (smallest k with P(K ≤ k) ≥ p), tokens.
    """
    check_number("num", num, low=1, integer=True)
    probs = (np.arange(1, num + 1) - 0.5) / num
    v, pr = law.table()
    cdf = np.cumsum(np.asarray(pr, np.float64))
    cdf /= cdf[-1]
    idx = np.minimum(np.searchsorted(cdf, probs, side="left"), cdf.size - 1)
    return {
        "probs": probs.tolist(),
        "data": np.quantile(np.asarray(values, np.float64), probs).tolist(),
        "fit": np.asarray(v, np.float64)[idx].tolist(),
    }


@dataclasses.dataclass(frozen=True)
class LengthFitReport:
    """The 80/20 length-law protocol (PAPER.md §4, the LongBench experiment's role).

    E[g] in token·steps (exact chunk sum, PAPER.md §2), μ in requests/s (§3).
    """

    fit: CopulaFit
    source: str
    train_frac: float
    num_train: int
    num_test: int
    chunk_tokens: int
    kv_capacity_tokens: int
    batch_time_s: float
    mean_g_fit: float
    mean_g_fit_paper: float
    mean_g_train: float
    mean_g_test: float
    loglik_test_per_request: float | None
    num_test_outside_support: int
    qq: dict

    @property
    def law(self) -> CopulaLogNormal:
        return self.fit.law

    @property
    def rel_error_test(self) -> float:
        """(E[g]_fit − E[g]_test) / E[g]_test."""
        return (self.mean_g_fit - self.mean_g_test) / self.mean_g_test

    def mu(self, mean_g: float) -> float:
        return self.kv_capacity_tokens / (self.batch_time_s * mean_g)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "train_frac": self.train_frac,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "fit": self.fit.to_dict(),
            "summation": self.law.summation,
            "chunk_tokens": self.chunk_tokens,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "batch_time_s": self.batch_time_s,
            "mean_g_fit": self.mean_g_fit,
            "mean_g_fit_paper": self.mean_g_fit_paper,
            "mean_g_train": self.mean_g_train,
            "mean_g_test": self.mean_g_test,
            "rel_error_test": self.rel_error_test,
            "mu_fit": self.mu(self.mean_g_fit),
            "mu_test": self.mu(self.mean_g_test),
            "mu_train": self.mu(self.mean_g_train),
            "loglik_test_per_request": self.loglik_test_per_request,
            "num_test_outside_support": self.num_test_outside_support,
            "qq": self.qq,
        }


def fit_lengths(
    trace: Trace,
    train_frac: float = 0.8,
    *,
    components: int = 1,
    steps: int = 300,
    chunk_tokens: int = 512,
    kv_capacity_tokens: int = 131000,
    batch_time_s: float = 0.0372,
    progress: Progress | None = None,
    qq_points: int = 99,
) -> LengthFitReport:
    """Fit the copula law on the first ``train_frac`` of a trace, test E[g] on the rest.

    The paper fits p(s, o) on 80 % of its LongBench trace and tests on 20 % (PAPER.md §4);
    the split is chronological (:meth:`Trace.split`). Reports E[g] of the fit against the
    empirical E[g] of both parts, the implied μ = M/(b̄·E[g]) of each, the held-out
    log-likelihood per request (test rows beyond the fitted caps are counted, not scored) and
    QQ data.

    Args:
        trace: the trace.
        train_frac: fraction of requests used for fitting, in (0, 1).
        components: log-normal components per marginal.
        steps: maximum optimizer steps.
        chunk_tokens: ŝ for E[g].
        kv_capacity_tokens: M for μ.
        batch_time_s: b̄ for μ (s).
        progress: optional callback.
        qq_points: number of quantile levels in ``qq``.
    """
    validate_system(kv_capacity_tokens, chunk_tokens, batch_time_s)
    train, test = trace.split(train_frac)
    fit = fit_copula_lognormal(
        train.prompt, train.output, components=components, steps=steps, progress=progress
    )
    law = fit.law
    inside = (test.prompt <= law.prompt.cap) & (test.output <= law.output.cap)
    ll_test = None
    if inside.any():  # through the fitting kernel, padded like the training data
        ll_test = _mean_loglik(
            law, test.prompt[inside], test.output[inside], _padded_size(fit.num_requests)
        )
    return LengthFitReport(
        fit=fit,
        source=trace.source,
        train_frac=float(train_frac),
        num_train=len(train),
        num_test=len(test),
        chunk_tokens=int(chunk_tokens),
        kv_capacity_tokens=int(kv_capacity_tokens),
        batch_time_s=float(batch_time_s),
        mean_g_fit=float(law.mean_g(int(chunk_tokens), "exact")),
        mean_g_fit_paper=float(law.mean_g(int(chunk_tokens), "paper")),
        mean_g_train=train.mean_g(int(chunk_tokens), "exact"),
        mean_g_test=test.mean_g(int(chunk_tokens), "exact"),
        loglik_test_per_request=ll_test,
        num_test_outside_support=int((~inside).sum()),
        qq={
            "prompt": qq_data(law.prompt, test.prompt, qq_points),
            "output": qq_data(law.output, test.output, qq_points),
        },
    )


# ---------------------------------------------------------------------------------------
# Batch time


BATCH_COLUMNS = ("prefill_tokens", "decode_tokens", "kv_tokens", "duration_s")


@dataclasses.dataclass(frozen=True, eq=False)
class BatchLog:
    """Per-batch timing log: token counts (int64 [batch]) and durations (float64 [batch], s)."""

    prefill_tokens: np.ndarray
    decode_tokens: np.ndarray
    kv_tokens: np.ndarray
    duration_s: np.ndarray
    source: str = "<arrays>"

    def __post_init__(self):
        d = np.asarray(self.duration_s, np.float64)
        if d.ndim != 1 or d.size == 0:
            raise InputError("duration_s", "need at least one batch")
        for name in ("prefill_tokens", "decode_tokens", "kv_tokens"):
            v = np.asarray(getattr(self, name))
            if v.shape != d.shape:
                raise InputError(name, "need one value per batch")
            bad = ~np.isfinite(v) | (v < 0) | (v != np.round(v))
            if np.any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise InputError(name, f"must be integers >= 0, got {v[i]} at index {i}")
            object.__setattr__(self, name, v.astype(np.int64))
        bad = ~np.isfinite(d) | (d <= 0)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise InputError("duration_s", f"must be finite and > 0, got {d[i]} at index {i}")
        object.__setattr__(self, "duration_s", d)

    def __len__(self) -> int:
        return int(self.duration_s.size)


def read_batch_log(path: str | os.PathLike, columns: Mapping[str, str] | None = None) -> BatchLog:
    """Read a timing log CSV with header ``prefill_tokens,decode_tokens,kv_tokens,duration_s``.

    Same rules as :func:`kvstab.traces.read_trace`: errors name the file and ``row N (line
    L)``; token counts must be integers ≥ 0 (0 is fine: a decode-only batch), durations
    finite and > 0 seconds.

    Args:
        path: CSV file (gzip recognised by its first bytes).
        columns: the file's names for the canonical columns, if different.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError("batch_log", f"cannot read {path}: no such file")
    mapping = {c: c for c in BATCH_COLUMNS}
    if columns is not None:
        if not isinstance(columns, Mapping) or any(k not in BATCH_COLUMNS for k in columns):
            raise InputError("columns", f"keys must be among {', '.join(BATCH_COLUMNS)}")
        mapping.update(columns)
    rows = _Rows(path, drop_zero=True)

    def fail(row, line, msg):
        raise InputError("batch_log", f"{path}: row {row} (line {line}): {msg}")

    rows.fail = fail  # type: ignore[method-assign]
    cols: dict[str, list] = {c: [] for c in BATCH_COLUMNS}
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = None
            for rec in reader:
                if any(c.strip() for c in rec):
                    header = [c.strip() for c in rec]
                    break
            if header is None:
                raise InputError("batch_log", f"{path} is empty: no header and no data rows")
            missing = [mapping[c] for c in BATCH_COLUMNS if mapping[c] not in header]
            if missing:
                raise InputError(
                    "batch_log",
                    f"{path}: missing column(s) "
                    f"{', '.join(map(repr, missing))}; the header has "
                    f"{', '.join(header)}",
                )
            idx = {c: header.index(mapping[c]) for c in BATCH_COLUMNS}
            row = 0
            for rec in reader:
                line = reader.line_num
                if not any(c.strip() for c in rec):
                    continue
                row += 1
                if len(rec) != len(header):
                    fail(
                        row, line, f"expected {len(header)} fields like the header, got {len(rec)}"
                    )
                for c in BATCH_COLUMNS[:3]:
                    cols[c].append(rows.tokens(row, line, mapping[c], rec[idx[c]]))
                text = rec[idx["duration_s"]].strip()
                try:
                    d = float(text)
                except ValueError:
                    fail(row, line, f"cannot parse {mapping['duration_s']} {text!r} as seconds")
                if not math.isfinite(d) or d <= 0:
                    fail(
                        row, line, f"{mapping['duration_s']} must be finite and > 0 s, got {text!r}"
                    )
                cols["duration_s"].append(d)
    except UnicodeDecodeError as e:
        raise InputError("batch_log", f"{path}: not a UTF-8 text file ({e.reason})") from None
    if not cols["duration_s"]:
        raise InputError("batch_log", f"{path} is empty: no data rows")
    return BatchLog(*(np.asarray(cols[c]) for c in BATCH_COLUMNS), source=path)


def trimmed_mean(x: Any, frac: float, tails: str = "both") -> float:
    """Mean after removing a fraction of the values (PAPER.md §4: the 8:1 workload's b̄).

    Args:
        x: values (e.g. batch times, s).
        frac: fraction in [0, 0.5) cut from each tail (``tails="both"``, the convention of
            ``scipy.stats.trim_mean``) or from the top only (``tails="upper"``). The paper
            does not say which it used.
        tails: ``"both"`` or ``"upper"``.
    """
    v = np.sort(np.asarray(x, np.float64).ravel())
    if v.size == 0:
        raise InputError("x", "need at least one value")
    check_number("frac", frac, low=0, high=0.5, high_open=True)
    if tails not in ("both", "upper"):
        raise InputError("tails", f"must be 'both' or 'upper', got {tails!r}")
    cut = int(math.floor(frac * v.size))
    lo = cut if tails == "both" else 0
    return float(v[lo : v.size - cut].mean())


def batch_time_estimators(durations: Any) -> dict[str, float]:
    """The paper's representative batch times b̄ (PAPER.md §4), seconds.

    Returns:
        ``median_s`` (the paper's default, over about 10,000 batches), ``trimmed_mean_5_s``
        and ``trimmed_mean_10_s`` (5 % / 10 % cut from each tail, for heavy-tailed batch
        times), ``trimmed_mean_5_upper_s`` / ``trimmed_mean_10_upper_s`` (top only), and
        ``mean_s``.
    """
    d = np.asarray(durations, np.float64).ravel()
    if d.size == 0 or np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise InputError("duration_s", "need at least one finite duration > 0 s")
    return {
        "median_s": float(np.median(d)),
        "trimmed_mean_5_s": trimmed_mean(d, 0.05),
        "trimmed_mean_10_s": trimmed_mean(d, 0.10),
        "trimmed_mean_5_upper_s": trimmed_mean(d, 0.05, "upper"),
        "trimmed_mean_10_upper_s": trimmed_mean(d, 0.10, "upper"),
        "mean_s": float(d.mean()),
    }


@dataclasses.dataclass(frozen=True)
class BatchTimeFit:
    """b = c₀ + c_p·P + c_d·D + c_kv·KV (PAPER.md §1, choice 3), fitted with a Huber loss.

    Coefficients in seconds and seconds per token; ``huber_delta_s`` is the Huber threshold
    (residuals beyond it count linearly). ``estimators``: :func:`batch_time_estimators`.
    """

    c0_s: float
    cp_s_per_token: float
    cd_s_per_token: float
    ckv_s_per_token: float
    huber_delta_s: float
    residual_scale_s: float
    num_batches: int
    steps: int
    converged: bool
    estimators: dict

    @property
    def coefficients(self) -> tuple[float, float, float, float]:
        return self.c0_s, self.cp_s_per_token, self.cd_s_per_token, self.ckv_s_per_token

    def predict(self, prefill_tokens, decode_tokens, kv_tokens):
        """Predicted batch time (s) for token counts (arrays broadcast)."""
        return (
            self.c0_s
            + self.cp_s_per_token * np.asarray(prefill_tokens)
            + self.cd_s_per_token * np.asarray(decode_tokens)
            + self.ckv_s_per_token * np.asarray(kv_tokens)
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _huber_loss(theta, data) -> jax.Array:
    x, y, delta = data
    return jnp.mean(optax.losses.huber_loss(x @ theta, y, delta=delta))


def fit_batch_time(
    log: BatchLog,
    *,
    huber_delta_s: float | None = None,
    steps: int = 200,
    progress: Progress | None = None,
) -> BatchTimeFit:
    """Robust linear batch-time model by a Huber loss, optimised with optax L-BFGS.

    Columns are scaled to unit maximum and the target to unit median before optimizing; the
    start is ordinary least squares (float64). The default Huber threshold is
    1.345 × 1.4826 × MAD of the least-squares residuals (95 % efficiency under Gaussian noise).

    Args:
        log: a :class:`BatchLog`.
        huber_delta_s: Huber threshold in seconds (> 0), or None for the default.
        steps: maximum optimizer steps.
        progress: optional callback.
    """
    if not isinstance(log, BatchLog):
        raise InputError("batch_log", "need a BatchLog (see read_batch_log)")
    if len(log) < 4:
        raise InputError(
            "batch_log", f"need at least 4 batches to fit 4 coefficients, got {len(log)}"
        )
    x = np.column_stack(
        [np.ones(len(log)), log.prefill_tokens, log.decode_tokens, log.kv_tokens]
    ).astype(np.float64)
    col_scale = np.maximum(np.abs(x).max(axis=0), 1.0)
    y = log.duration_s
    y_scale = float(np.median(y))
    xs, ys = x / col_scale, y / y_scale
    theta0, *_ = np.linalg.lstsq(xs, ys, rcond=None)
    resid = ys - xs @ theta0
    mad = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    if huber_delta_s is None:
        delta = 1.345 * max(mad, 1e-6)
    else:
        check_number("huber_delta_s", huber_delta_s, low=0, low_open=True)
        delta = float(huber_delta_s) / y_scale
    data = (jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32), jnp.float32(delta))
    theta, _, n, conv = _minimize(
        _huber_loss,
        jnp.asarray(theta0, jnp.float32),
        data,
        steps=steps,
        label="batch_time",
        progress=progress,
        grad_tol=1e-7,
    )
    coef = np.asarray(theta, np.float64) * y_scale / col_scale
    return BatchTimeFit(
        c0_s=float(coef[0]),
        cp_s_per_token=float(coef[1]),
        cd_s_per_token=float(coef[2]),
        ckv_s_per_token=float(coef[3]),
        huber_delta_s=delta * y_scale,
        residual_scale_s=mad * y_scale,
        num_batches=len(log),
        steps=n,
        converged=conv,
        estimators=batch_time_estimators(y),
    )


def text_progress(stream=None, every: int = 10) -> Progress:
    """A progress callback printing one line per ``every`` steps (``\\r``-updated on a tty)."""
    stream = sys.stderr if stream is None else stream
    tty = getattr(stream, "isatty", lambda: False)()

    def report(label: str, step: int, total: int, loss: float) -> None:
        if tty:
            stream.write(f"\r  fitting {label}: step {step}/{total}  loss {loss:.6g}   ")
            stream.flush()
        elif step == 1 or step % every == 0:
            stream.write(f"  fitting {label}: step {step}/{total}  loss {loss:.6g}\n")

    return report
