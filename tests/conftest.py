"""Fixtures shared by several test modules.

* ``trace_dir``: the real request traces (``$KVSTAB_DATA``, else ``../shared/data`` beside the
  checkout); a test that asks for it is skipped, saying why, where they are absent.
* ``key``: a fresh JAX PRNG key per test, derived from the test's name (diffrax's ``getkey``):
  tests never share a key by accident and a failure reproduces on its own.
* ``no_recompile``: a context manager that fails if the simulator's rollout compiles inside it.
* ``copula_true`` / ``copula_data``: a Gaussian-copula sample shared by the fit tests.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

from kvstab.reproduce import data_dir
from kvstab.sim import num_compilations


@pytest.fixture(scope="session")
def trace_dir() -> Path:
    """The directory of the shared request traces; skips the test when it is absent."""
    path = data_dir()
    if path is None:
        pytest.skip("real traces not found: set KVSTAB_DATA or provide ../shared/data")
    return path


@pytest.fixture
def key(request) -> jax.Array:
    """A PRNG key seeded from the test's node id (stable across runs and orderings)."""
    return jax.random.PRNGKey(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def no_recompile():
    """``with no_recompile(): ...`` fails if the simulator's rollout is compiled inside it."""

    @contextlib.contextmanager
    def guard():
        before = num_compilations()
        yield
        added = num_compilations() - before
        assert added == 0, f"the rollout was compiled {added} more time(s)"

    return guard


COPULA_TRUE = {"mu_s": 6.5, "sigma_s": 0.8, "mu_o": 4.8, "sigma_o": 1.0, "rho": 0.5}


@pytest.fixture(scope="session")
def copula_true() -> dict[str, float]:
    """Parameters of the log-normal Gaussian-copula law behind ``copula_data``."""
    return dict(COPULA_TRUE)


@pytest.fixture(scope="session")
def copula_data():
    """12,000 (s, o) pairs drawn with NumPy from ``copula_true``: rounded log-normals joined
    by a Gaussian copula (SE of rho about 0.7 %, of the sigmas about 0.7 %)."""
    n = 12_000
    t = COPULA_TRUE
    rng = np.random.default_rng(6)
    z = rng.standard_normal((n, 2))
    z[:, 1] = t["rho"] * z[:, 0] + math.sqrt(1 - t["rho"] ** 2) * z[:, 1]
    s = np.maximum(np.round(np.exp(t["mu_s"] + t["sigma_s"] * z[:, 0])), 1)
    o = np.maximum(np.round(np.exp(t["mu_o"] + t["sigma_o"] * z[:, 1])), 1)
    return s.astype(np.int64), o.astype(np.int64)
