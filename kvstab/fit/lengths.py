"""Joint laws of prompt and output lengths (s, o) fitted to a trace.

The model, :class:`CopulaLogNormal`: each marginal is a discretized log-normal, or a mixture
of them, truncated to 1..cap (:class:`DiscreteLogNormalMixture`: round(exp(N(μ_c, σ_c²)))
conditioned on 1 ≤ K ≤ cap), and the two are joined by a Gaussian copula with correlation
ρ: (Z₁, Z₂) standard bivariate normal, s = F_s⁻¹(Φ(Z₁)), o = F_o⁻¹(Φ(Z₂)). Both are
:class:`~kvstab.laws.LengthLaw` / :class:`~kvstab.laws.JointLaw` pytrees, so E[g] (PAPER.md
§2) and μ (§3) of a fitted law, and their gradients in the law's parameters, come from
:mod:`kvstab.analytic` like those of any other law.

:func:`fit_copula_lognormal` fits the law by maximum likelihood (L-BFGS, float32 numerics
that stay accurate in the tails); :func:`fit_lengths` runs the paper's 80/20 protocol
(PAPER.md §4: fit on the first 80 % of a trace, compare E[g] and μ with the held-out 20 %)
and returns a :class:`LengthFitReport`; :func:`qq_data` gives quantile pairs for plots.

Gradients: the loss is differentiated exactly by JAX (the discrete laws' probabilities are
smooth in the parameters; no relaxation). ``jax.grad`` of :meth:`CopulaLogNormal.mean_g`
with respect to the law's leaves is the derivative of the quadrature described there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from statistics import NormalDist
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, ndtr

from kvstab.analytic import validate_system
from kvstab.errors import InputError, check_number
from kvstab.fit._optim import (
    Progress,
    _compiled,
    _gauss_legendre_01,
    _minimize,
    _ndtri,
    log_ndtr_diff,
    log_ndtr_interval,
)
from kvstab.laws import JointLaw, LengthLaw, _pytree
from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS
from kvstab.request import check_form, prefill_area
from kvstab.traces import Trace

_SCORE_EDGE = 40.0  # normal score standing for ±∞ (Φ(−40) = 0 in float32, log Φ finite)
_TINY_P = 1e-30  # probabilities are clamped here before Φ⁻¹ (|Φ⁻¹(1e-30)| = 11.46)
_RHO_MAX = 0.999
_GL_CELL = 16  # Gauss-Legendre nodes per cell of the outer variable in mean_g
_GL_PAIR = 16  # Gauss-Legendre nodes per cell in the pair log-probability
_M_GRID = 4096  # grid points for the inner conditional mean m(z) in mean_g
_M_GRID_EDGE = 12.0


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
    chunk_tokens: int = CHUNK_TOKENS,
    kv_capacity_tokens: int = KV_CAPACITY_TOKENS,
    batch_time_s: float = BATCH_TIME_S,
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
