"""Shared numerics of kvstab.fit (kvstab/fit/_optim.py) against float64 twins."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from kvstab import fit


def _phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def log_ndtr_diff_ref(a: float, b: float) -> float:
    if a + b > 0:
        a, b = -b, -a
    return math.log(_phi(b) - _phi(a))


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
