"""Batch time from per-batch timing logs of a serving engine.

The model (PAPER.md §1, choice 3): one batch of P prefill tokens and D decode tokens over
KV tokens of cache takes b = c₀ + c_p·P + c_d·D + c_kv·KV seconds. The paper itself uses one
representative b̄ per workload, the median of about 10,000 logged batches or a trimmed mean
when the batch times are heavy-tailed (PAPER.md §4).

* :class:`BatchLog` / :func:`read_batch_log`: the log, one row per batch (token counts,
  duration in seconds), read with the same row-numbered errors as the trace readers.
* :func:`fit_batch_log`: the linear model by a Huber regression of the logged durations on
  the batch composition (robust to the long tail of slow batches), a :class:`BatchLogFit`.
* :func:`batch_time_estimators`, :func:`trimmed_mean`: the paper's b̄ estimators.

Not to be confused with :func:`kvstab.calibrate.fit_batch_time`, which fits b̄ (or the same
coefficients) without a timing log, by pathwise gradients through the simulator against an
observed run's completion times.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kvstab.errors import InputError, check_number
from kvstab.fit._optim import Progress, _minimize
from kvstab.traces import _open_text, _Rows

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
class BatchLogFit:
    """b = c₀ + c_p·P + c_d·D + c_kv·KV (PAPER.md §1, choice 3) fitted to a timing log.

    The result of :func:`fit_batch_log` (a Huber regression of logged batch durations).

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


def fit_batch_log(
    log: BatchLog,
    *,
    huber_delta_s: float | None = None,
    steps: int = 200,
    progress: Progress | None = None,
) -> BatchLogFit:
    """Fit b = c₀ + c_p·P + c_d·D + c_kv·KV to a timing log by Huber regression (optax L-BFGS).

    A robust regression of the logged durations on the batch composition (prefill, decode
    and KV tokens): residuals beyond the Huber threshold count linearly, so the long tail of
    slow batches does not drag the coefficients.

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
    return BatchLogFit(
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
