"""Length laws for prompt (s) and output (o) lengths, and joint laws of (s, o).

A *marginal* law is a distribution on the positive integers. Every law can

* ``sample(key, shape)`` integer lengths (int32) with JAX,
* give its ``table()``: support values and probabilities as ``jnp`` arrays, used for exact
  expectations (finite support) or accurate truncated summation (unbounded laws),
* say its essential supremum ``max_value`` (``None`` when unbounded),
* print itself as the compact string ``spec`` understood by :func:`parse_law`.

Laws are JAX pytrees: the continuous parameters (geometric mean, log-normal median and
sigma) are leaves, so ``jax.grad`` of anything computed from a law (e.g. the critical rate
μ in :mod:`kvstab.analytic`) gives derivatives with respect to them. Integer shape data
(bounds, caps, empirical samples, truncation points) are static.

A *joint* law of (s, o) is :class:`Independent` (two marginals) or :class:`JointEmpirical`
(pairs from a trace, which keeps their correlation); :mod:`kvstab.fit.lengths` adds fitted
parametric joint laws with the same interface.

Command-line forms (``parse_law``)::

    const:V                  s = V always
    uniform:A:B              uniform on the integers A..B inclusive (as in the paper's tables)
    geometric:MEAN[:CAP]     geometric on 1, 2, ... with the given mean; optional cap min(CAP, x)
    lognormal:MEDIAN:SIGMA[:CAP]
                             round(exp(N(ln MEDIAN, SIGMA²))), at least 1; optional cap min(CAP, x)
    empirical:V1,V2,...      equal weight on the listed samples
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from kvstab.errors import InputError, check_number
from kvstab.request import g, prefill_area
from kvstab.validate import MAX_TOKENS

# Unbounded laws are summed exactly over 1..N with N the (1 - TAIL_MASS) quantile; the
# ignored tail must carry less than TAIL_MOMENT_REL of the second moment, else a cap is
# required (a heavy tail would make the sum inaccurate, and δ is undefined anyway).
TAIL_MASS = 1e-13
TAIL_MOMENT_REL = 1e-9
MAX_SUMMATION_POINTS = 1 << 23


def _pytree(static: tuple[str, ...], leaves: tuple[str, ...]):
    """Register a frozen dataclass as a pytree with the given leaf and static fields."""

    def wrap(cls):
        def flatten(obj):
            return tuple(getattr(obj, f) for f in leaves), tuple(getattr(obj, f) for f in static)

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for f, v in zip(leaves, children, strict=True):
                object.__setattr__(obj, f, v)
            for f, v in zip(static, aux, strict=True):
                object.__setattr__(obj, f, v)
            return obj

        jax.tree_util.register_pytree_node(cls, flatten, unflatten)
        return cls

    return wrap


class LengthLaw:
    """Base class of marginal length laws on the positive integers."""

    min_value: int = 1

    @property
    def max_value(self) -> int | None:  # ess sup; None if unbounded
        raise NotImplementedError

    @property
    def spec(self) -> str:
        raise NotImplementedError

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        raise NotImplementedError

    def table(self) -> tuple[jax.Array, jax.Array]:
        """Support points (float) and probabilities; exact for finite support."""
        raise NotImplementedError

    @property
    def summation(self) -> str:
        """How expectations over this law are computed (stated in reports)."""
        if self.max_value is not None:
            return "exact sum over the finite support"
        return (
            f"sum over 1..{self._truncation} (the 1-{TAIL_MASS:g} quantile); "
            f"ignored tail < {TAIL_MOMENT_REL:g} of E[x^2]"
        )

    def expect(self, f) -> jax.Array:
        values, probs = self.table()
        return jnp.sum(probs * f(values))

    def mean(self) -> jax.Array:
        return self.expect(lambda x: x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"


def _check_len(field: str, v: Any, name: str) -> int:
    check_number(f"{field}.{name}" if field else name, v, low=1, high=MAX_TOKENS, integer=True)
    return int(v)


@_pytree(static=("value",), leaves=())
@dataclasses.dataclass(frozen=True, repr=False)
class Constant(LengthLaw):
    """Every length equals ``value``."""

    value: int

    def __post_init__(self):
        object.__setattr__(self, "value", _check_len("", self.value, "value"))

    @property
    def min_value(self) -> int:
        return self.value

    @property
    def max_value(self) -> int:
        return self.value

    @property
    def spec(self) -> str:
        return f"const:{self.value}"

    def sample(self, key, shape):
        return jnp.full(shape, self.value, jnp.int32)

    def table(self):
        return jnp.asarray([float(self.value)]), jnp.asarray([1.0])


@_pytree(static=("low", "high"), leaves=())
@dataclasses.dataclass(frozen=True, repr=False)
class Uniform(LengthLaw):
    """Uniform on the integers ``low..high`` inclusive (the paper's U{a..b})."""

    low: int
    high: int

    def __post_init__(self):
        lo = _check_len("", self.low, "low")
        hi = _check_len("", self.high, "high")
        if hi < lo:
            raise InputError("high", f"must be >= low ({lo}), got {hi}")
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)

    @property
    def min_value(self) -> int:
        return self.low

    @property
    def max_value(self) -> int:
        return self.high

    @property
    def spec(self) -> str:
        return f"uniform:{self.low}:{self.high}"

    def sample(self, key, shape):
        return jax.random.randint(key, shape, self.low, self.high + 1, dtype=jnp.int32)

    def table(self):
        n = self.high - self.low + 1
        values = jnp.arange(self.low, self.high + 1, dtype=jnp.result_type(float))
        return values, jnp.full((n,), 1.0 / n)


def _cap_from(cap) -> int | None:
    if cap is None:
        return None
    return _check_len("", cap, "cap")


@_pytree(static=("cap", "_truncation"), leaves=("mean_value",))
@dataclasses.dataclass(frozen=True, repr=False)
class Geometric(LengthLaw):
    """Geometric on 1, 2, ... with mean ``mean_value`` (success prob 1/mean), capped at ``cap``.

    With a cap the length is ``min(cap, x)``: the mass beyond the cap sits at the cap, like an
    output truncated by ``max_tokens``.
    """

    mean_value: Any
    cap: int | None = None
    _truncation: int = dataclasses.field(default=0, compare=False)

    def __post_init__(self):
        check_number("mean", self.mean_value, low=1)
        object.__setattr__(self, "cap", _cap_from(self.cap))
        if self.cap is not None:
            n = self.cap
        else:
            m = float(self.mean_value)
            p = 1.0 / m
            # (1-p)^N < TAIL_MASS  <=>  N > log(TAIL_MASS) / log(1-p)
            n = int(math.ceil(math.log(TAIL_MASS) / math.log1p(-p))) if p < 1 else 1
            if n > MAX_SUMMATION_POINTS:
                raise InputError(
                    "mean", f"geometric mean {m:g} too large to sum exactly; add a cap"
                )
        object.__setattr__(self, "_truncation", max(n, 1))

    @property
    def max_value(self) -> int | None:
        return self.cap

    @property
    def spec(self) -> str:
        m = float(self.mean_value)
        ms = f"{m:g}"
        return f"geometric:{ms}" + (f":{self.cap}" if self.cap is not None else "")

    def sample(self, key, shape):
        p = 1.0 / jnp.asarray(self.mean_value, jnp.float32)
        x = jax.random.geometric(key, p, shape, dtype=jnp.int32)
        return jnp.minimum(x, self.cap) if self.cap is not None else x

    def table(self):
        n = self._truncation
        k = jnp.arange(1, n + 1, dtype=jnp.result_type(float))
        p = 1.0 / jnp.asarray(self.mean_value, k.dtype)
        probs = p * jnp.exp((k - 1) * jnp.log1p(-p))
        if self.cap is not None:
            # P(min(cap, x) = cap) = P(x >= cap) = (1-p)^(cap-1)
            probs = probs.at[-1].set(jnp.exp((n - 1) * jnp.log1p(-p)))
        return k, probs


@_pytree(static=("cap", "_truncation"), leaves=("median", "sigma"))
@dataclasses.dataclass(frozen=True, repr=False)
class LogNormal(LengthLaw):
    """``max(1, round(exp(N(ln median, sigma²))))``, capped at ``min(cap, ·)`` if a cap is given."""

    median: Any
    sigma: Any
    cap: int | None = None
    _truncation: int = dataclasses.field(default=0, compare=False)

    def __post_init__(self):
        check_number("median", self.median, low=0, low_open=True)
        check_number("sigma", self.sigma, low=0, low_open=True)
        object.__setattr__(self, "cap", _cap_from(self.cap))
        if self.cap is not None:
            n = self.cap
        else:
            mu, sg = math.log(float(self.median)), float(self.sigma)
            # Far enough that the ignored tail holds < 1e-13 of the mass (z = 7.4) and
            # < TAIL_MOMENT_REL of E[x^2] (the size-biased tail, z = 6.1 past mu + 2 sigma^2).
            log_n = max(mu + 7.4 * sg, mu + 2 * sg**2 + 6.1 * sg)
            n = int(math.ceil(math.exp(min(log_n, 40.0)))) + 1
            if n > MAX_SUMMATION_POINTS or _lognormal_tail_rel(mu, sg, n) > TAIL_MOMENT_REL:
                raise InputError(
                    "cap",
                    f"lognormal:{float(self.median):g}:{sg:g} is too heavy-tailed to sum without a "
                    "cap; give one (lognormal:MEDIAN:SIGMA:CAP)",
                )
        object.__setattr__(self, "_truncation", max(n, 1))

    @property
    def max_value(self) -> int | None:
        return self.cap

    @property
    def spec(self) -> str:
        s = f"lognormal:{float(self.median):g}:{float(self.sigma):g}"
        return s + (f":{self.cap}" if self.cap is not None else "")

    def sample(self, key, shape):
        z = jax.random.normal(key, shape)
        x = jnp.exp(jnp.log(jnp.asarray(self.median, jnp.float32)) + self.sigma * z)
        # Round in float, clamp before the int cast so a huge draw cannot wrap around.
        hi = float(self.cap) if self.cap is not None else float(np.iinfo(np.int32).max // 4)
        return jnp.clip(jnp.round(x), 1.0, hi).astype(jnp.int32)

    def table(self):
        n = self._truncation
        k = jnp.arange(1, n + 1, dtype=jnp.result_type(float))
        mu = jnp.log(jnp.asarray(self.median, k.dtype))
        sg = jnp.asarray(self.sigma, k.dtype)
        z_hi = (jnp.log(k + 0.5) - mu) / sg
        z_lo = (jnp.log(jnp.maximum(k - 0.5, 1e-30)) - mu) / sg
        # Differences of the CDF below the median, of the survival function above it, so that
        # neither side loses the small probabilities to cancellation.
        probs = jnp.where(z_lo > 0, ndtr(-z_lo) - ndtr(-z_hi), ndtr(z_hi) - ndtr(z_lo))
        probs = probs.at[0].set(ndtr(z_hi[0]))  # everything below 1.5 rounds to (at least) 1
        if self.cap is not None:
            probs = probs.at[-1].set(ndtr(-z_lo[-1]))  # everything from cap - 0.5 up
        return k, probs


def _lognormal_tail_rel(mu: float, sigma: float, n: float) -> float:
    """E[X^2; X > n] / E[X^2] for the continuous log-normal."""
    z = (mu + 2 * sigma**2 - math.log(n)) / sigma
    return 0.5 * math.erfc(-z / math.sqrt(2)) if z > -40 else 0.0


@_pytree(static=("values", "weights"), leaves=())
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Empirical(LengthLaw):
    """Equal-weight (or weighted) empirical law of observed lengths."""

    values: Any
    weights: Any = None

    def __post_init__(self):
        v = np.asarray(self.values)
        if v.ndim != 1 or v.size == 0:
            raise InputError("values", "must be a non-empty 1-D list of lengths")
        if v.dtype.kind not in "iuf":  # Python ints beyond int64 (a 10**30-token row), text
            try:
                v = v.astype(np.float64)
            except (TypeError, ValueError, OverflowError):
                raise InputError("values", "lengths must be numbers") from None
        bad = ~np.isfinite(v) | (v < 1) | (v > MAX_TOKENS) | (v != np.round(v))
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                "values",
                f"lengths must be integers >= 1 and <= {MAX_TOKENS}, got {v[i]} at index {i}",
            )
        uniq, inv = np.unique(v.astype(np.int64), return_inverse=True)
        w = np.ones(v.size) if self.weights is None else np.asarray(self.weights, float)
        if w.shape != v.shape or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise InputError("weights", "must be non-negative, finite, one per value, not all zero")
        probs = np.bincount(inv, weights=w) / w.sum()
        object.__setattr__(self, "values", tuple(int(x) for x in uniq))
        object.__setattr__(self, "weights", tuple(float(x) for x in probs))

    @property
    def min_value(self) -> int:
        return self.values[0]

    @property
    def max_value(self) -> int:
        return self.values[-1]

    @property
    def spec(self) -> str:
        if len(self.values) <= 8:
            return "empirical:" + ",".join(str(v) for v in self.values)
        return f"empirical({len(self.values)} distinct values, {self.values[0]}..{self.values[-1]})"

    def sample(self, key, shape):
        vals = jnp.asarray(self.values, jnp.int32)
        cdf = jnp.cumsum(jnp.asarray(self.weights, jnp.float32))
        u = jax.random.uniform(key, shape) * cdf[-1]
        idx = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), len(self.values) - 1)
        return vals[idx]

    def table(self):
        return (
            jnp.asarray(self.values, jnp.result_type(float)),
            jnp.asarray(self.weights, jnp.result_type(float)),
        )


# ---------------------------------------------------------------------------------------
# Joint laws of (s, o)


class JointLaw:
    """Base class of joint laws of (prompt, output) lengths."""

    @property
    def max_prompt(self) -> int | None:
        raise NotImplementedError

    @property
    def max_total(self) -> int | None:
        """ess sup (s + o), or ``None`` if unbounded (the paper's δ·M)."""
        raise NotImplementedError

    @property
    def max_output(self) -> int | None:
        """ess sup o, or ``None`` if unbounded (or not known)."""
        out = getattr(self, "output", None)
        if out is None:
            return None
        cap = getattr(out, "max_value", None)
        return getattr(out, "cap", None) if cap is None else cap

    @property
    def spec(self) -> str:
        raise NotImplementedError

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def mean_g(self, chunk_tokens: int, form: str = "exact") -> jax.Array:
        raise NotImplementedError

    @property
    def summation(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"


@_pytree(static=(), leaves=("prompt", "output"))
@dataclasses.dataclass(frozen=True, repr=False)
class Independent(JointLaw):
    """s and o independent, each from its own marginal law (the paper's synthetic workloads)."""

    prompt: LengthLaw
    output: LengthLaw

    @property
    def max_prompt(self):
        return self.prompt.max_value

    @property
    def max_total(self):
        a, b = self.prompt.max_value, self.output.max_value
        return None if a is None or b is None else a + b

    @property
    def spec(self) -> str:
        return f"prompt {self.prompt.spec}, output {self.output.spec}"

    @property
    def summation(self) -> str:
        return f"prompt: {self.prompt.summation}; output: {self.output.summation}"

    def sample(self, key, shape):
        key_prompt, key_output = jax.random.split(key)
        return self.prompt.sample(key_prompt, shape), self.output.sample(key_output, shape)

    def mean_g(self, chunk_tokens, form="exact"):
        # E[g] = E[prefill(s)] + E[s] E[o] + E[o (o + 1) / 2]   (PAPER.md §2, by independence)
        e_prefill = self.prompt.expect(lambda s: prefill_area(s, chunk_tokens, form))
        e_s = self.prompt.mean()
        e_o = self.output.mean()
        e_decode_own = self.output.expect(lambda o: o * (o + 1) / 2)
        return e_prefill + e_s * e_o + e_decode_own


@_pytree(static=("prompts", "outputs"), leaves=())
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class JointEmpirical(JointLaw):
    """Equal weight on observed (s, o) pairs: keeps the trace's correlation."""

    prompts: Any
    outputs: Any

    def __post_init__(self):
        s = np.asarray(self.prompts)
        o = np.asarray(self.outputs)
        if s.ndim != 1 or s.shape != o.shape or s.size == 0:
            raise InputError("pairs", "need equally many prompt and output lengths, at least one")
        for name, v in (("prompts", s), ("outputs", o)):
            bad = ~np.isfinite(v) | (v < 1) | (v != np.round(v))
            if np.any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise InputError(name, f"lengths must be integers >= 1, got {v[i]} at index {i}")
        object.__setattr__(self, "prompts", np.ascontiguousarray(s, dtype=np.int64))
        object.__setattr__(self, "outputs", np.ascontiguousarray(o, dtype=np.int64))

    def __hash__(self):  # static pytree aux data must be hashable
        return hash((self.prompts.tobytes(), self.outputs.tobytes()))

    @property
    def size(self) -> int:
        return int(self.prompts.size)

    @property
    def max_prompt(self):
        return int(self.prompts.max())

    @property
    def max_total(self):
        return int((self.prompts + self.outputs).max())

    @property
    def max_output(self):
        return int(self.outputs.max())

    @property
    def spec(self) -> str:
        return f"joint empirical law of {self.size} (s, o) pairs"

    @property
    def summation(self) -> str:
        return "exact mean over the observed pairs"

    def sample(self, key, shape):
        idx = jax.random.randint(key, shape, 0, self.size)
        return (
            jnp.asarray(self.prompts, jnp.int32)[idx],
            jnp.asarray(self.outputs, jnp.int32)[idx],
        )

    def mean_g(self, chunk_tokens, form="exact"):
        s = jnp.asarray(self.prompts, jnp.result_type(float))
        o = jnp.asarray(self.outputs, jnp.result_type(float))
        return jnp.mean(g(s, o, chunk_tokens, form))


def as_joint(prompt_or_joint, output: LengthLaw | None = None) -> JointLaw:
    """Accept either a joint law or two marginals."""
    if isinstance(prompt_or_joint, JointLaw):
        if output is not None:
            raise InputError("output", "give either a joint law or two marginals, not both")
        return prompt_or_joint
    if not isinstance(prompt_or_joint, LengthLaw) or not isinstance(output, LengthLaw):
        raise InputError("workload", "need a joint law, or a prompt law and an output law")
    return Independent(prompt_or_joint, output)


# ---------------------------------------------------------------------------------------
# String forms


def parse_law(text: str, field: str = "law") -> LengthLaw:
    """Parse a compact law string (see module docstring); errors name ``field``."""
    forms = (
        "const:V, uniform:A:B, geometric:MEAN[:CAP], lognormal:MEDIAN:SIGMA[:CAP], "
        "empirical:V1,V2,..."
    )
    if not isinstance(text, str) or ":" not in text:
        raise InputError(field, f"cannot parse law {text!r}; expected one of {forms}")
    kind, _, rest = text.strip().partition(":")
    kind = kind.lower()
    parts = rest.split(":") if rest else []

    def num(i: int, name: str, integer: bool) -> float:
        try:
            v = float(parts[i])
        except (IndexError, ValueError):
            raise InputError(field, f"cannot parse {name} in {text!r}; expected {forms}") from None
        if math.isnan(v) or math.isinf(v):
            raise InputError(field, f"{name} in {text!r} must be a finite number, got {parts[i]}")
        if integer and v != int(v):
            raise InputError(field, f"{name} in {text!r} must be an integer, got {parts[i]}")
        return int(v) if integer else v

    try:
        if kind in ("const", "constant") and len(parts) == 1:
            return Constant(num(0, "V", True))
        if kind == "uniform" and len(parts) == 2:
            return Uniform(num(0, "A", True), num(1, "B", True))
        if kind == "geometric" and len(parts) in (1, 2):
            cap = num(1, "CAP", True) if len(parts) == 2 else None
            return Geometric(num(0, "MEAN", False), cap)
        if kind == "lognormal" and len(parts) in (2, 3):
            cap = num(2, "CAP", True) if len(parts) == 3 else None
            return LogNormal(num(0, "MEDIAN", False), num(1, "SIGMA", False), cap)
        if kind == "empirical" and len(parts) == 1:
            items = parts[0].split(",")
            if not all(x.strip() for x in items):
                raise InputError(field, f"empty value in {text!r}; give V1,V2,...")
            try:
                vals = [float(x) for x in items]
            except ValueError:
                raise InputError(field, f"cannot parse the values in {text!r}") from None
            return Empirical(vals)
    except InputError as e:
        if e.field == field:
            raise
        raise InputError(field, f"{text!r}: {e.field} {e.message}") from None
    raise InputError(field, f"cannot parse law {text!r}; expected one of {forms}")
