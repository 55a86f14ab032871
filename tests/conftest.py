"""Fixtures shared by several test modules."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
