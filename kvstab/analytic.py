"""Closed forms of the paper (PAPER.md §2–3), in pure ``jax.numpy`` so that they differentiate.

* g(s, o): area under one request's KV-memory curve, token·steps (PAPER.md §2), in the
  paper's closed form and in the exact form for any chunk size ŝ (defined with the rest of
  a request's life in :mod:`kvstab.request`, re-exported here).
* E[g] over a workload law: exact sums for finite support, truncated summation with a stated
  tail bound for unbounded laws (:mod:`kvstab.laws`).
* μ = M / (b̄·E[g]) (critical rate, §3); δ = ess sup(s+o) / M; μ(1−δ) (Theorem 4.2);
  a verdict for a rate λ; cluster size G = ⌈λ / (ρ μ)⌉; class mixes μ_mix = (Σ q_ℓ/μ_ℓ)⁻¹.

Derivatives: ``jax.grad`` of :func:`critical_rate` or :func:`mu_for` with respect to M, b̄
and the continuous parameters of a law (laws are pytrees) are derivatives of the closed form.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from kvstab.display import Displayable
from kvstab.errors import InputError, check_number
from kvstab.laws import JointLaw, LengthLaw, as_joint

# g, its forms and the prefill area live in kvstab.request, the bottom module; they are
# re-exported so that ``kvstab.analytic.g_exact`` and the like keep working.
from kvstab.request import (  # noqa: F401
    G_FORMS,
    check_form,
    g,
    g_exact,
    g_paper,
    prefill_area,
)
from kvstab.validate import MAX_TOKENS, check_system, check_value


def mean_g(workload: JointLaw, chunk_tokens: int, form: str = "exact"):
    """E[g(s, o)] under a joint law, token·steps. See ``workload.summation`` for the method."""
    check_form(form)
    check_number("chunk_tokens", chunk_tokens, low=1, integer=True)
    return workload.mean_g(int(chunk_tokens), form)


def critical_rate(kv_capacity_tokens, batch_time_s, mean_g_value):
    """μ = M / (b̄ · E[g]) requests/s (PAPER.md §3)."""
    return kv_capacity_tokens / (batch_time_s * mean_g_value)


def delta(workload: JointLaw, kv_capacity_tokens) -> float:
    """δ = ess sup(s + o) / M (Theorem 4.2). Unbounded laws have no δ: a cap is required."""
    total = workload.max_total
    if total is None:
        raise InputError(
            "workload",
            f"{workload.spec} is unbounded, so s+o can exceed M; add a cap to the law "
            "(e.g. geometric:MEAN:CAP or lognormal:MEDIAN:SIGMA:CAP)",
        )
    return total / kv_capacity_tokens


def mu_for(
    workload: JointLaw,
    kv_capacity_tokens,
    batch_time_s,
    chunk_tokens: int,
    form: str = "exact",
):
    """μ for a workload; differentiable in M, b̄ and the law's continuous parameters."""
    check_value("kv_capacity_tokens", kv_capacity_tokens, low=0, low_open=True,
                high=MAX_TOKENS, array=True)  # fmt: skip
    return critical_rate(kv_capacity_tokens, batch_time_s, mean_g(workload, chunk_tokens, form))


def verdict(rate_per_s: float, mu: float, mu_stable: float) -> str:
    """'stable' below μ(1−δ) (Thm 4.2), 'unstable' above μ (Thm 4.1), else 'in the delta band'."""
    if rate_per_s < mu_stable:
        return "stable"
    if rate_per_s > mu:
        return "unstable"
    return "in the delta band"


def gpus_needed(rate_per_s: float, mu_per_replica: float, utilization: float = 0.9) -> int:
    """Minimum replicas G = ⌈λ / (ρ·μ)⌉ for a target utilisation ρ (PAPER.md §3)."""
    check_number("rate_per_s", rate_per_s, low=0)
    check_number("utilization", utilization, low=0, high=1, low_open=True)
    check_number("mu", mu_per_replica, low=0, low_open=True)
    if rate_per_s == 0:
        return 0
    # Guard the ceiling against float noise: 3.0000000000000004 must not become 4.
    ratio = rate_per_s / (utilization * mu_per_replica)
    if not math.isfinite(ratio) or ratio > 1e15:
        raise InputError(
            "utilization",
            f"lambda/(rho*mu) = {rate_per_s:g}/({utilization:g}*{mu_per_replica:g}) is too large "
            "to count replicas; give a larger --utilization or a smaller --rate",
        )
    return int(math.ceil(ratio - 1e-9 * max(1.0, ratio)))


def mixed_rate(mus: Sequence[Any], fractions: Sequence[Any]):
    """Critical rate of a class mix, μ_mix = (Σ_ℓ q_ℓ / μ_ℓ)⁻¹ (PAPER.md §3)."""
    mus_a = jnp.asarray(mus, jnp.result_type(float))
    q = jnp.asarray(fractions, jnp.result_type(float))
    if mus_a.shape != q.shape or mus_a.ndim != 1 or mus_a.size == 0:
        raise InputError("fractions", "need one fraction per class, at least one class")
    qn = np.asarray(q)
    if np.any(qn < 0) or not math.isclose(float(qn.sum()), 1.0, rel_tol=1e-6):
        raise InputError("fractions", f"must be >= 0 and sum to 1, got {qn.tolist()}")
    if np.any(np.asarray(mus_a) <= 0):
        raise InputError("mus", "every class rate must be > 0")
    return 1.0 / jnp.sum(q / mus_a)


@dataclasses.dataclass(frozen=True, repr=False)
class CapacityReport(Displayable):
    """Everything ``kvstab capacity`` prints. Rates in requests/s, E[g] in token·steps."""

    workload: str
    kv_capacity_tokens: int
    chunk_tokens: int
    batch_time_s: float
    g_form: str
    summation: str
    mean_g: float
    mu: float
    delta: float
    mu_stable: float
    rate_per_s: float | None = None
    utilization: float = 0.9
    verdict: str | None = None
    gpus: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> dict:
        """The headline numbers, flat (what ``repr`` and the HTML table show)."""
        out = {
            "E[g] (token*steps)": self.mean_g,
            "mu (req/s)": self.mu,
            "delta": self.delta,
            "mu(1-delta) (req/s)": self.mu_stable,
        }
        if self.rate_per_s is not None:
            out["rate (req/s)"] = self.rate_per_s
            out["verdict"] = self.verdict
            out[f"replicas for utilisation <= {self.utilization:g}"] = self.gpus
        return out

    def _display_title(self) -> str:
        return (
            f"CapacityReport: {self.workload}; M = {self.kv_capacity_tokens:,}, "
            f"chunk = {self.chunk_tokens}, b = {self.batch_time_s:g} s"
        )

    def _display_rows(self) -> dict:
        return self.summary()


def validate_system(kv_capacity_tokens, chunk_tokens, batch_time_s) -> None:
    """M, ŝ in [1, 2**30] tokens, b̄ in [1e-9, 1e6] s (:func:`kvstab.validate.check_system`)."""
    check_system(kv_capacity_tokens, chunk_tokens, batch_time_s)


def capacity(
    workload: JointLaw | LengthLaw,
    output: LengthLaw | None = None,
    *,
    kv_capacity_tokens: int,
    chunk_tokens: int,
    batch_time_s: float,
    g_form: str = "exact",
    rate_per_s: float | None = None,
    utilization: float = 0.9,
) -> CapacityReport:
    """The closed-form capacity answer for one replica (and a cluster, given a rate).

    Raises:
        InputError: for M ≤ 0, ŝ ≤ 0, b̄ ≤ 0, λ < 0, ρ ∉ (0, 1], NaN anywhere, or a law whose
            s + o can exceed M (such a request could never be served).
    """
    joint = as_joint(workload, output)
    validate_system(kv_capacity_tokens, chunk_tokens, batch_time_s)
    check_form(g_form)
    if rate_per_s is not None:
        check_number("rate_per_s", rate_per_s, low=0)
    check_number("utilization", utilization, low=0, high=1, low_open=True)
    d = delta(joint, kv_capacity_tokens)
    if joint.max_total > kv_capacity_tokens:
        raise InputError(
            "workload",
            f"ess sup(s+o) = {joint.max_total} exceeds kv_capacity_tokens "
            f"M = {kv_capacity_tokens}: "
            "such a request can never be served; need max(s+o) <= M",
        )
    eg = float(mean_g(joint, chunk_tokens, g_form))
    mu = float(critical_rate(kv_capacity_tokens, batch_time_s, eg))
    mu_stable = mu * (1.0 - d)
    v = gpus = None
    if rate_per_s is not None:
        v = verdict(rate_per_s, mu, mu_stable)
        gpus = gpus_needed(rate_per_s, mu, utilization)
    return CapacityReport(
        workload=joint.spec,
        kv_capacity_tokens=int(kv_capacity_tokens),
        chunk_tokens=int(chunk_tokens),
        batch_time_s=float(batch_time_s),
        g_form=g_form,
        summation=joint.summation,
        mean_g=eg,
        mu=mu,
        delta=float(d),
        mu_stable=mu_stable,
        rate_per_s=None if rate_per_s is None else float(rate_per_s),
        utilization=float(utilization),
        verdict=v,
        gpus=gpus,
    )
