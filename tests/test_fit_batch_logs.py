"""Batch-time fits from timing logs (kvstab.fit.batch_logs): recovery of known
coefficients under outliers, the b-bar estimators, and row-numbered errors in malformed logs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvstab import fit
from kvstab.errors import InputError


def rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


BATCH_HEADER = "prefill_tokens,decode_tokens,kv_tokens,duration_s\n"


def test_batch_time_recovery(tmp_path):
    n = 4000  # batches; 5 % outliers (stalls of 0.1-0.6 s) that a squared loss would chase
    rng = np.random.default_rng(7)
    prefill = rng.integers(0, 513, n)
    decode = rng.integers(0, 257, n)
    kv = rng.integers(0, 131001, n)
    c = (0.012, 4e-5, 6e-5, 1.2e-7)
    d = c[0] + c[1] * prefill + c[2] * decode + c[3] * kv + rng.normal(0, 5e-4, n)
    out = rng.random(n) < 0.05
    d[out] += rng.uniform(0.1, 0.6, out.sum())
    path = tmp_path / "batches.csv"
    path.write_text(
        BATCH_HEADER
        + "".join(
            f"{a},{b},{k},{t!r}\n"
            for a, b, k, t in zip(prefill, decode, kv, d.tolist(), strict=True)
        )
    )
    f = fit.fit_batch_log(fit.read_batch_log(path))
    for got, want in zip(f.coefficients, c, strict=True):
        assert rel(got, want) < 0.05, (f.coefficients, c)
    e = f.estimators
    assert e["median_s"] == pytest.approx(np.median(d))
    srt = np.sort(d)
    assert e["trimmed_mean_5_s"] == pytest.approx(srt[200 : n - 200].mean())
    assert e["trimmed_mean_10_s"] == pytest.approx(srt[400 : n - 400].mean())
    assert e["trimmed_mean_5_upper_s"] == pytest.approx(srt[: n - 200].mean())
    json.dumps(f.to_dict())


@pytest.mark.parametrize(
    "body, match",
    [
        ("", "is empty"),
        (BATCH_HEADER, "is empty: no data rows"),
        ("prefill_tokens,decode_tokens,duration_s\n1,2,0.1\n", r"missing column\(s\) 'kv_tokens'"),
        (BATCH_HEADER + "1,2,3,0.1\n1,-2,3,0.1\n", r"row 2 \(line 3\): decode_tokens must be >= 0"),
        (BATCH_HEADER + "1.5,2,3,0.1\n", r"row 1 \(line 2\): prefill_tokens must be an integer"),
        (BATCH_HEADER + "1,2,3,0.1\n1,2,3,fast\n", r"row 2 \(line 3\): cannot parse duration_s"),
        (BATCH_HEADER + "1,2,3,0\n", r"row 1 \(line 2\): duration_s must be finite and > 0"),
        (BATCH_HEADER + "1,2,3\n", r"row 1 \(line 2\): expected 4 fields"),
    ],
)
def test_batch_log_errors(tmp_path, body, match):
    p = tmp_path / "b.csv"
    p.write_text(body)
    with pytest.raises(InputError, match=match):
        fit.read_batch_log(p)


def test_trimmed_mean_validation():
    assert fit.trimmed_mean([1, 2, 3, 100], 0.25) == 2.5
    assert fit.trimmed_mean([1, 2, 3, 100], 0.25, "upper") == 2.0
    with pytest.raises(InputError):
        fit.trimmed_mean([1.0], 0.5)
