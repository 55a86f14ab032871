"""Calibrating the simulator itself to an observed run, by gradient descent (optax).

Two kinds of parameters, two kinds of gradient (STYLE.md "Gradients": say what a gradient
means):

* **Time scales** (b̄ of the constant model; c₀, c_p, c_d, c_kv of the linear model) have
  *pathwise* gradients. Along one simulated path (which requests are admitted, preempted and
  finished at which step) every completion time is t_{f+1} = Σ_{j≤f} b_j(θ), a smooth
  function of θ. :func:`fit_batch_time` differentiates that with ``jax.grad`` while the path
  is held fixed (infinitesimal perturbation analysis), re-simulates every ``resim_every``
  optimiser steps so the path follows θ, and stops when θ settles. The gradient equals the
  derivative of the loss wherever the path is locally constant in θ; it ignores the jumps where
  an arrival moves to another step. Tests check it against finite differences taken with the
  path held fixed and against full re-simulation at small steps.

* **The effective KV capacity M** acts only through the admission test at the memory limit:
  the loss is piecewise constant in M, its pathwise gradient is zero almost everywhere.
  :func:`fit_kv_capacity` therefore uses an opt-in *smoothed relaxation*: the Gaussian
  smoothing L_σ(M) = E_Z[L(M + σZ)], whose gradient E[L(M + σZ)·Z]/σ is estimated with
  antithetic pairs in one compiled simulator call (M is traced per trajectory, so the
  perturbed copies cost no recompile). The fitted value minimises the smoothed loss; σ sets
  the smoothing scale (default 2 % of M) and is reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kvstab.errors import InputError, check_number
from kvstab.paper import CHUNK_TOKENS
from kvstab.sim import (
    ConstantBatchTime,
    LinearBatchTime,
    Outputs,
    Policy,
    Replay,
    Saturated,
    System,
    Workload,
    simulate,
)


@dataclasses.dataclass
class BatchTimeFit:
    """Result of :func:`fit_batch_time`. Times in seconds."""

    model: str
    params: dict
    loss: float
    history: list
    num_simulations: int
    gradient: str = "pathwise (IPA): derivative along the simulated path, path held fixed"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _predicted_finish_times(theta, model, path, arrival_s):
    """Completion times along a fixed path as a differentiable function of θ.

    What is held fixed is what a small change of the time scale leaves unchanged: the number
    of whole steps between a request's arrival and its finish, and the fraction ρ of the
    step during which it arrived (arrivals themselves are fixed in seconds):

        t_finish(θ) = arrival + ρ·b_{a−1}(θ) + Σ_{j=a}^{f} b_j(θ)

    with a the first step starting at or after the arrival and f the finish step.

    Args:
        theta: log-parameters: (1,) log b̄ for ``constant``; (4,) log coefficients for linear.
        path: dict with per-step ``prefill_tokens``, ``decode_tokens``, ``kv_tokens`` (T,),
            and per-request ``finish_step``, ``arrival_step``, ``arrival_frac`` (req,).
        arrival_s: (req,) arrival times, seconds.
    """
    # The batch-time model's one definition (kvstab.sim.components), differentiated in θ.
    p, d, kv = path["prefill_tokens"], path["decode_tokens"], path["kv_tokens"]
    if model == "constant":
        b_const = ConstantBatchTime.step_time_s(jnp.exp(theta[0]), None, p, d, kv, None)
        b = jnp.full(kv.shape, b_const)
    else:
        b = LinearBatchTime.step_time_s(None, jnp.exp(theta), p, d, kv, None)
    clock = jnp.concatenate([jnp.zeros(1), jnp.cumsum(b)])
    f = jnp.maximum(jnp.asarray(path["finish_step"]), 0)
    a = jnp.asarray(path["arrival_step"])
    before = b[jnp.maximum(a - 1, 0)]
    return (
        jnp.asarray(arrival_s, jnp.float32)
        + path["arrival_frac"] * before
        + clock[f + 1]
        - clock[a]
    )


def _path_from(result, arrival_s) -> dict:
    """The discrete path of a one-trajectory SimResult (record_steps and records on)."""
    bt = np.asarray(result.steps["batch_time_s"][0], np.float64)
    clock = np.concatenate([[0.0], np.cumsum(bt)])
    a = np.searchsorted(clock, arrival_s, side="left")  # first step start >= arrival
    a = np.minimum(a, bt.size - 1)
    prev = bt[np.maximum(a - 1, 0)]
    frac = np.where(a > 0, (clock[a] - arrival_s) / prev, 0.0)
    path = {
        k: jnp.asarray(result.steps[k][0], jnp.float32)
        for k in ("prefill_tokens", "decode_tokens", "kv_tokens")
    }
    path.update(
        finish_step=np.asarray(result.records["finish_step"][0]),
        arrival_step=jnp.asarray(a, jnp.int32),
        arrival_frac=jnp.asarray(np.clip(frac, 0.0, 1.0), jnp.float32),
    )
    return path


def fit_batch_time(
    arrival_s,
    prompt,
    output,
    observed_finish_s,
    *,
    kv_capacity_tokens: int,
    chunk_tokens: int = CHUNK_TOKENS,
    model: str = "constant",
    init: dict | None = None,
    num_steps: int | None = None,
    learning_rate: float = 0.05,
    max_iters: int = 200,
    resim_every: int = 10,
    tol: float = 1e-5,
    progress: Callable | None = None,
) -> BatchTimeFit:
    """Fit the batch-time model to the completion times of an observed run.

    Args:
        arrival_s, prompt, output: the observed requests (one replica), arrival order.
        observed_finish_s: (req,) observed completion time of each request (nan if it did not
            complete in the observation window).
        kv_capacity_tokens, chunk_tokens: the system (M is held fixed here).
        model: ``constant`` (fits b̄) or ``linear`` (fits c₀, c_p, c_d, c_kv; all kept > 0
            by optimising their logarithms).
        init: starting values ({"batch_time_s": ...} or {"linear_coefs": [...]}).
        num_steps: steps to simulate (default: enough to cover the observed window at the
            initial b̄, with 30 % to spare).
        learning_rate, max_iters, resim_every, tol: optax Adam settings; stops when the
            relative change of θ over ``resim_every`` steps is below ``tol``.
        progress: callable(iteration, loss) for a progress display.

    Returns:
        BatchTimeFit with the fitted parameters and the loss history (mean squared error of
        completion times, s²).
    """
    if model not in ("constant", "linear"):
        raise InputError("model", f"must be constant or linear, got {model!r}")
    obs = np.asarray(observed_finish_s, np.float64)
    a = np.asarray(arrival_s, np.float64)
    if obs.shape != a.shape:
        raise InputError("observed_finish_s", "need one completion time (or nan) per request")
    done = np.isfinite(obs)
    if done.sum() < 2:
        raise InputError("observed_finish_s", "need at least two completed requests")
    init = dict(init or {})
    if model == "constant":
        b0 = float(init.get("batch_time_s", 0.05))
        check_number("batch_time_s", b0, low=0, low_open=True)
        theta = jnp.log(jnp.asarray([b0], jnp.float32))
    else:
        c0 = np.asarray(init.get("linear_coefs", [0.02, 1e-5, 1e-5, 1e-8]), np.float64)
        if c0.shape != (4,) or np.any(c0 <= 0):
            raise InputError("linear_coefs", "need four starting coefficients > 0")
        theta = jnp.log(jnp.asarray(c0, jnp.float32))
    horizon = float(np.nanmax(obs))
    if num_steps is None:
        b_guess = (
            float(jnp.exp(theta[0]))
            if model == "constant"
            else float(np.sum(c0[:1]) + c0[1] * chunk_tokens + c0[2] * 64)
        )
        num_steps = int(1.3 * horizon / b_guess) + 64
    num_steps = int(-(-num_steps // 64) * 64)

    def run(theta_now):
        if model == "constant":
            batch_time = ConstantBatchTime(float(jnp.exp(theta_now[0])))
        else:
            batch_time = LinearBatchTime(*(float(c) for c in np.exp(np.asarray(theta_now))))
        r = simulate(
            Workload(arrivals=Replay(a, prompt, output)),
            System(kv_capacity_tokens, chunk_tokens, batch_time),
            num_steps=num_steps,
            num_trajectories=1,
            outputs=Outputs(num_records=a.size, record_steps=True, block_steps=64, num_segments=1),
        )
        return _path_from(r, a)

    obs_j = jnp.asarray(np.nan_to_num(obs), jnp.float32)

    def loss_fn(th, path):
        # Requests that finished both in the observation and on the simulated path; the
        # others carry no pathwise information about θ (they follow through the path update).
        pred = _predicted_finish_times(th, model, path, a)
        both = jnp.asarray(done & (path["finish_step"] >= 0))
        err = jnp.where(both, pred - obs_j, 0.0)
        return jnp.sum(err * err) / jnp.maximum(jnp.sum(both), 1)

    grad_fn = jax.value_and_grad(loss_fn)
    opt = optax.adam(learning_rate)
    state = opt.init(theta)
    history = []
    sims = 0
    path = None
    theta_prev = theta
    for it in range(max_iters):
        if it % resim_every == 0:
            if it > 0:
                rel = float(jnp.max(jnp.abs(theta - theta_prev)))
                if rel < tol:
                    break
                theta_prev = theta
            path = run(theta)
            sims += 1
        loss, g = grad_fn(theta, path)
        history.append(float(loss))
        if progress is not None:
            progress(it, float(loss))
        upd, state = opt.update(g, state, theta)
        theta = optax.apply_updates(theta, upd)
    params = (
        {"batch_time_s": float(jnp.exp(theta[0]))}
        if model == "constant"
        else {"linear_coefs": [float(x) for x in jnp.exp(theta)]}
    )
    return BatchTimeFit(
        model=model, params=params, loss=history[-1], history=history, num_simulations=sims
    )


def pathwise_loss_and_grad(theta, model, path, arrival_s, observed_finish_s):
    """The pathwise loss and its ``jax.grad`` on a given path (exposed for checks)."""
    obs = np.asarray(observed_finish_s, np.float64)
    obs_j = jnp.asarray(np.nan_to_num(obs), jnp.float32)
    mask = jnp.asarray(np.isfinite(obs) & (np.asarray(path["finish_step"]) >= 0))

    def f(th):
        pred = _predicted_finish_times(th, model, path, arrival_s)
        err = jnp.where(mask, pred - obs_j, 0.0)
        return jnp.sum(err * err) / jnp.maximum(jnp.sum(mask), 1)

    return jax.value_and_grad(f)(theta)


@dataclasses.dataclass
class CapacityFit:
    """Result of :func:`fit_kv_capacity`."""

    kv_capacity_tokens: float
    sigma_tokens: float
    loss: float
    history: list
    num_simulations: int
    gradient: str = "Gaussian-smoothed relaxation: grad of E[L(M + sigma Z)], antithetic estimate"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def smoothed_capacity_loss_and_grad(
    law, M, target_throughput_per_s, *, sigma, num_pairs, key_seed, sim_kwargs
):
    """Smoothed loss L_σ(M) and its antithetic gradient estimate, from one simulator call.

    L(M) = (μ_sim(M) / target − 1)², μ_sim the saturated throughput. With Z_i ~ N(0, 1) and
    antithetic partners −Z_i: ∇L_σ ≈ mean_i [L(M + σZ_i) − L(M − σZ_i)] Z_i / (2σ), and
    L_σ ≈ mean of all 2n evaluations.
    """
    z = np.random.default_rng(key_seed).standard_normal(num_pairs)
    ms = np.concatenate([M + sigma * z, M - sigma * z])
    ms = np.maximum(np.round(ms), 1).astype(np.int64)
    kw = dict(sim_kwargs)
    system = System(ms, kw.pop("chunk_tokens"), ConstantBatchTime(kw.pop("batch_time_s")))
    r = simulate(
        Workload(law, Saturated()),
        system,
        num_trajectories=ms.size,
        seed=key_seed,
        outputs=Outputs(num_segments=1),
        **kw,
    )
    thr = r.throughput_per_traj()
    losses = (thr / target_throughput_per_s - 1.0) ** 2
    lp, lm = losses[:num_pairs], losses[num_pairs:]
    grad = float(np.mean((lp - lm) * z) / (2 * sigma))
    return float(losses.mean()), grad


def fit_kv_capacity(
    law,
    observed_throughput_per_s: float,
    *,
    batch_time_s: float,
    chunk_tokens: int = CHUNK_TOKENS,
    init_tokens: float,
    sigma_frac: float = 0.02,
    num_pairs: int = 16,
    learning_rate: float = 0.05,
    max_iters: int = 40,
    num_steps: int = 8192,
    admission: str = "current",
    overflow: str = "recompute",
    progress: Callable | None = None,
) -> CapacityFit:
    """Fit the effective KV capacity M to an observed saturated throughput (requests/s).

    Optimises log M with optax Adam on the Gaussian-smoothed loss (module docstring). Each
    iteration is one compiled simulator call over 2·``num_pairs`` perturbed copies of M
    (common random numbers: the same seed for + and − partners).
    """
    check_number("observed_throughput_per_s", observed_throughput_per_s, low=0, low_open=True)
    check_number("init_tokens", init_tokens, low=1)
    check_number("sigma_frac", sigma_frac, low=0, low_open=True, high=0.5)
    log_m = jnp.asarray(np.log(init_tokens), jnp.float32)
    opt = optax.adam(learning_rate)
    state = opt.init(log_m)
    history, iterates = [], []
    sim_kwargs = dict(
        batch_time_s=batch_time_s,
        chunk_tokens=chunk_tokens,
        num_steps=num_steps,
        policy=Policy.from_names(admission=admission, overflow=overflow),
    )
    # Fix the static sizes once, for up to twice the starting M, so that the iterations reuse
    # one compiled simulator (sizes derived from each iteration's M would recompile).
    probe = simulate(
        Workload(law, Saturated()),
        System(int(2 * init_tokens), chunk_tokens, ConstantBatchTime(batch_time_s)),
        sim_kwargs["policy"],
        num_steps=num_steps,
        num_trajectories=2 * num_pairs,
        outputs=Outputs(num_segments=1),
    )
    sim_kwargs["sizes"] = probe.config["sizes"]
    for it in range(max_iters):
        m = float(np.exp(log_m))
        sigma = sigma_frac * m
        loss, g_m = smoothed_capacity_loss_and_grad(
            law,
            m,
            observed_throughput_per_s,
            sigma=sigma,
            num_pairs=num_pairs,
            key_seed=it,
            sim_kwargs=sim_kwargs,
        )
        history.append(loss)
        if progress is not None:
            progress(it, loss)
        g_log = jnp.asarray(g_m * m, jnp.float32)  # chain rule: dL/dlogM = M dL/dM
        upd, state = opt.update(g_log, state, log_m)
        log_m = optax.apply_updates(log_m, upd)
        iterates.append(float(log_m))
    # Polyak averaging over the second half: the gradient estimate is noisy, the average of
    # the iterates is far steadier than the last one.
    m = float(np.exp(np.mean(iterates[len(iterates) // 2 :])))
    return CapacityFit(
        kv_capacity_tokens=m,
        sigma_tokens=sigma_frac * m,
        loss=history[-1],
        history=history,
        num_simulations=max_iters,
    )
