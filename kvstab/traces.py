"""Request-trace readers and trace statistics.

A *trace* is one row per request: arrival time, prompt tokens s and output tokens o. Three
formats are read (:func:`read_trace`):

* ``azure``: the Azure LLM inference trace 2023 (Splitwise) CSV, header
  ``TIMESTAMP,ContextTokens,GeneratedTokens``, timestamps ``YYYY-MM-DD HH:MM:SS.fffffff``
  (wall clock, 100-ns ticks).
* ``mooncake``: the Mooncake FAST'25 JSONL traces, gzipped or not, one object per line with
  ``timestamp`` (milliseconds from the start), ``input_length``, ``output_length``.
* ``csv``: a generic CSV with header ``arrival_s,prompt_tokens,output_tokens`` (seconds); other
  column names through ``columns={"arrival_s": ..., "prompt_tokens": ..., "output_tokens": ...}``
  and other time units through ``time_unit_s``.

Every malformed input raises :class:`~kvstab.errors.InputError` with field ``"trace"``, the
file name and the *row number*: ``row N (line L)``, where N counts data rows from 1 (the CSV
header and blank lines are not rows) and L is the physical line of the file. Checked: empty
file, missing columns, unparsable rows, negative or non-integer token counts, timestamps that
go backwards, and zero-token rows (an error unless ``drop_zero=True``, which excludes them
and records how many in :attr:`Trace.num_dropped_zero`).

Bucketed timestamps: the Mooncake conversation trace rounds arrivals to 3-s buckets (90 % of
the gaps are 0). :func:`detect_bucket_s` recognises this and :func:`jitter_buckets` spreads the
arrivals uniformly within each bucket, which is what an arrival-process fit needs
(:mod:`kvstab.fit` refuses zero gaps and says so).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import io
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from kvstab.errors import InputError, check_number
from kvstab.laws import JointEmpirical
from kvstab.paper import CHUNK_TOKENS
from kvstab.validate import MAX_TOKENS

FORMATS = ("auto", "azure", "mooncake", "csv")
CANONICAL = ("arrival_s", "prompt_tokens", "output_tokens")
AZURE_COLUMNS = {
    "arrival_s": "TIMESTAMP",
    "prompt_tokens": "ContextTokens",
    "output_tokens": "GeneratedTokens",
}
MOONCAKE_KEYS = {
    "arrival_s": "timestamp",
    "prompt_tokens": "input_length",
    "output_tokens": "output_length",
}
CSV_COLUMNS = {name: name for name in CANONICAL}
# Seconds per unit of the time column, by format.
DEFAULT_TIME_UNIT_S = {"azure": 1.0, "mooncake": 1e-3, "csv": 1.0}

_DATETIME = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*$"
)


# ---------------------------------------------------------------------------------------
# The trace object


@dataclasses.dataclass(frozen=True, eq=False)
class Trace:
    """A request trace: arrival times and (prompt, output) token counts, in arrival order.

    Attributes:
        arrival_s: float64 [req], seconds, non-decreasing, ``arrival_s[0] == 0``.
        prompt: int64 [req], prompt tokens s ≥ 1.
        output: int64 [req], output tokens o ≥ 1.
        source: where the rows came from (a path, or a description).
        format: ``"azure"``, ``"mooncake"``, ``"csv"`` or ``"arrays"``.
        num_dropped_zero: rows excluded because s = 0 or o = 0 (``drop_zero=True``).
        start_offset_s: seconds to add to ``arrival_s`` to get the time in the source's
            clock relative to its first row (non-zero for the second half of a split).
    """

    arrival_s: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    source: str = "<arrays>"
    format: str = "arrays"
    num_dropped_zero: int = 0
    start_offset_s: float = 0.0

    def __post_init__(self):
        try:
            t = np.asarray(self.arrival_s, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("arrival_s", "must be numbers (seconds)") from None
        s = np.asarray(self.prompt)
        o = np.asarray(self.output)
        if t.ndim != 1 or t.size == 0 or s.shape != t.shape or o.shape != t.shape:
            raise InputError(
                "trace",
                "need equally many arrival times, prompt and output "
                "lengths (1-D), at least one request",
            )
        if not np.all(np.isfinite(t)):
            i = int(np.flatnonzero(~np.isfinite(t))[0])
            raise InputError("arrival_s", f"must be finite, got {t[i]} at index {i}")
        back = np.flatnonzero(np.diff(t) < 0)
        if back.size:
            i = int(back[0]) + 1
            raise InputError(
                "arrival_s",
                f"must be non-decreasing; index {i} ({t[i]} s) comes "
                f"before index {i - 1} ({t[i - 1]} s)",
            )
        for name, v in (("prompt", s), ("output", o)):
            if v.dtype.kind not in "iuf":
                try:
                    v = v.astype(np.float64)
                except (TypeError, ValueError):
                    raise InputError(name, "token counts must be numbers") from None
            bad = ~np.isfinite(v) | (v < 1) | (v > MAX_TOKENS) | (v != np.round(v))
            if np.any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise InputError(
                    name,
                    f"token counts must be integers >= 1 and <= {MAX_TOKENS}, got {v[i]} "
                    f"at index {i}",
                )
        object.__setattr__(self, "arrival_s", t - t[0])
        object.__setattr__(self, "prompt", s.astype(np.int64))
        object.__setattr__(self, "output", o.astype(np.int64))

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def num_requests(self) -> int:
        return len(self)

    @property
    def span_s(self) -> float:
        """Time from the first to the last arrival, seconds."""
        return float(self.arrival_s[-1])

    @property
    def rate_per_s(self) -> float | None:
        """(rows − 1) / span, requests/s (the data README's definition); None if span is 0."""
        return (len(self) - 1) / self.span_s if self.span_s > 0 else None

    @property
    def interarrival_s(self) -> np.ndarray:
        """Gaps between consecutive arrivals, seconds, float64 [req − 1]."""
        return np.diff(self.arrival_s)

    def joint_law(self):
        """The empirical joint law of (s, o): equal weight on every request (keeps correlation).

        Returns:
            :class:`kvstab.laws.JointEmpirical`.
        """
        return JointEmpirical(self.prompt, self.output)

    def mean_g(self, chunk_tokens: int = CHUNK_TOKENS, form: str = "exact") -> float:
        """Empirical E[g(s, o)] over the requests, token·steps (PAPER.md §2), in float64.

        g = prefill + s·o + o(o+1)/2 with prefill Σ_{j=1}^{⌈s/ŝ⌉} min(jŝ, s) = ŝc(c−1)/2 + s,
        c = ⌈s/ŝ⌉ (``"exact"``), or (1 + s/ŝ)s/2 (``"paper"``). The same value as
        ``self.joint_law().mean_g(...)`` (float32, :func:`kvstab.analytic.g`) without JAX.
        """
        check_number("chunk_tokens", chunk_tokens, low=1, integer=True)
        if form not in ("exact", "paper"):
            raise InputError("g_form", f"must be one of exact, paper, got {form!r}")
        s = self.prompt.astype(np.float64)
        o = self.output.astype(np.float64)
        if form == "paper":
            prefill = (1.0 + s / chunk_tokens) * s / 2.0
        else:
            c = np.ceil(s / chunk_tokens)
            prefill = chunk_tokens * c * (c - 1.0) / 2.0 + s
        return float(np.mean(prefill + s * o + o * (o + 1.0) / 2.0))

    def _subset(self, sl: slice) -> Trace:
        t = self.arrival_s[sl]
        return Trace(
            t,
            self.prompt[sl],
            self.output[sl],
            source=self.source,
            format=self.format,
            num_dropped_zero=0,
            start_offset_s=self.start_offset_s + float(t[0]),
        )

    def split(self, frac: float = 0.8) -> tuple[Trace, Trace]:
        """Chronological train/test split: the first ``floor(frac·n)`` requests, then the rest.

        This is the protocol of the paper's LongBench experiment (PAPER.md §4: p(s, o) fitted
        on 80 %, tested on 20 %). Each part's arrivals restart at 0; ``start_offset_s`` keeps
        the offset.

        Args:
            frac: fraction in (0, 1) of the requests in the training part.

        Returns:
            (train, test), both non-empty.
        """
        check_number("frac", frac, low=0, high=1, low_open=True, high_open=True)
        n_train = int(math.floor(frac * len(self)))
        if n_train < 1 or n_train >= len(self):
            raise InputError(
                "frac",
                f"split of {len(self)} requests at {frac} leaves an empty "
                "part; need at least 2 requests and 0 < frac < 1",
            )
        return self._subset(slice(0, n_train)), self._subset(slice(n_train, None))

    def summary(self, chunk_tokens: int = CHUNK_TOKENS) -> dict[str, Any]:
        """Statistics of the trace (arrival process, lengths, E[g]).

        Args:
            chunk_tokens: prefill chunk ŝ (tokens per step) for E[g].

        Returns:
            dict with: ``num_requests``, ``span_s``, ``rate_per_s`` ((n−1)/span),
            ``interarrival_cv`` (std/mean of the gaps), ``dispersion_index_1s`` (variance /
            mean of the arrival counts in consecutive 1-s windows [0, 1), [1, 2), ... up to
            the last arrival; 1 for Poisson), ``bucket_s`` (see :func:`detect_bucket_s`),
            ``prompt`` / ``output`` (min, mean, p10, p50, p90, p99, max), ``corr_prompt_output``
            (Pearson), ``mean_g_exact`` and ``mean_g_paper`` (E[g(s, o)] in token·steps,
            PAPER.md §2, exact chunk sum and the paper's closed form), ``mean_o_s_plus_half_o``
            (E[o(s + o/2)], the data README's approximation), ``num_dropped_zero``.
        """
        check_number("chunk_tokens", chunk_tokens, low=1, integer=True)
        gaps = self.interarrival_s
        mean_gap = float(gaps.mean()) if gaps.size else float("nan")
        cv = float(gaps.std() / mean_gap) if gaps.size and mean_gap > 0 else None
        counts = np.bincount(np.floor(self.arrival_s).astype(np.int64))
        disp = float(counts.var() / counts.mean()) if counts.size > 1 else None
        s = self.prompt.astype(np.float64)
        o = self.output.astype(np.float64)
        corr = (
            float(np.corrcoef(s, o)[0, 1])
            if len(self) > 1 and s.std() > 0 and o.std() > 0
            else None
        )
        return {
            "source": self.source,
            "format": self.format,
            "num_requests": len(self),
            "num_dropped_zero": self.num_dropped_zero,
            "span_s": self.span_s,
            "rate_per_s": self.rate_per_s,
            "interarrival_cv": cv,
            "dispersion_index_1s": disp,
            "bucket_s": detect_bucket_s(self),
            "prompt": _quantiles(self.prompt),
            "output": _quantiles(self.output),
            "corr_prompt_output": corr,
            "chunk_tokens": int(chunk_tokens),
            "mean_g_exact": self.mean_g(chunk_tokens, "exact"),
            "mean_g_paper": self.mean_g(chunk_tokens, "paper"),
            "mean_o_s_plus_half_o": float(np.mean(o * (s + o / 2.0))),
        }


def _quantiles(v: np.ndarray) -> dict[str, float]:
    q = np.quantile(v.astype(np.float64), [0.1, 0.5, 0.9, 0.99])
    return {
        "min": int(v.min()),
        "mean": float(v.mean()),
        "p10": float(q[0]),
        "p50": float(q[1]),
        "p90": float(q[2]),
        "p99": float(q[3]),
        "max": int(v.max()),
    }


# ---------------------------------------------------------------------------------------
# Bucketed timestamps


def detect_bucket_s(trace: Trace, min_tie_fraction: float = 0.5) -> float | None:
    """Bucket width of a trace whose timestamps were rounded to coarse buckets, else None.

    A trace counts as bucketed when at least ``min_tie_fraction`` of its inter-arrival gaps
    are exactly 0 (Mooncake conversation: 90 %). The width is the median of the positive
    gaps, rounded to 1 ms (3.0 s for Mooncake conversation).

    Args:
        trace: the trace.
        min_tie_fraction: fraction of zero gaps in (0, 1] above which a trace is bucketed.

    Returns:
        The bucket width in seconds, or None.
    """
    check_number("min_tie_fraction", min_tie_fraction, low=0, high=1, low_open=True)
    gaps = trace.interarrival_s
    if gaps.size == 0 or np.mean(gaps == 0) < min_tie_fraction:
        return None
    pos = gaps[gaps > 0]
    if pos.size == 0:
        return None
    return float(np.round(np.median(pos), 3)) or float(np.median(pos))


def jitter_buckets(trace: Trace, bucket_s: float, key: jax.Array) -> Trace:
    """Spread arrivals uniformly within their timestamp buckets.

    Each arrival t becomes t + U·bucket_s with U ~ Uniform[0, 1) i.i.d., the requests are
    re-sorted by the new times (lengths move with their request) and the times restart at 0.
    This is the data README's recommendation for the Mooncake conversation trace
    (``bucket_s=3.0``), and with ``bucket_s`` = the timestamp resolution (1 ms for Mooncake)
    it breaks the occasional exact ties that a continuous arrival model cannot have.

    Args:
        trace: the trace.
        bucket_s: bucket width, seconds, > 0.
        key: JAX PRNG key.

    Returns:
        A new :class:`Trace` (same source and format).
    """
    check_number("bucket_s", bucket_s, low=0, low_open=True)
    u = np.asarray(jax.random.uniform(key, (len(trace),)), dtype=np.float64)
    t = trace.arrival_s + u * float(bucket_s)
    order = np.argsort(t, kind="stable")
    return Trace(
        t[order],
        trace.prompt[order],
        trace.output[order],
        source=trace.source,
        format=trace.format,
        num_dropped_zero=trace.num_dropped_zero,
        start_offset_s=trace.start_offset_s + float(t[order][0]),
    )


# ---------------------------------------------------------------------------------------
# Readers


class _Rows:
    """Accumulates parsed rows and reports errors with the row number."""

    def __init__(self, path: str, drop_zero: bool):
        self.path = path
        self.drop_zero = drop_zero
        self.sec: list[int] = []  # integer seconds (datetime) or 0
        self.frac: list[float] = []  # the rest, seconds
        self.row_line: list[tuple[int, int]] = []
        self.prompt: list[int] = []
        self.output: list[int] = []
        self.zero_rows: list[int] = []  # indices into the lists above
        self.first_zero: tuple[int, int, str] | None = None

    def fail(self, row: int, line: int, message: str):
        raise InputError("trace", f"{self.path}: row {row} (line {line}): {message}")

    def tokens(self, row: int, line: int, name: str, value: Any) -> int:
        """Parse one token count: an integer >= 0 (zeros are handled by the caller)."""
        if isinstance(value, bool) or value is None:
            self.fail(row, line, f"{name} must be a whole number of tokens, got {value!r}")
        if isinstance(value, int):
            x = float(value)
            iv = value
        else:
            text = str(value).strip()
            if not text:
                self.fail(row, line, f"{name} is empty")
            try:
                iv = int(text)
                x = float(iv)
            except ValueError:
                try:
                    x = float(text)
                except ValueError:
                    self.fail(row, line, f"cannot parse {name} {text!r} as a number of tokens")
                iv = None
        if not math.isfinite(x):
            self.fail(row, line, f"{name} must be a finite number of tokens, got {value!r}")
        if x < 0:
            self.fail(row, line, f"{name} must be >= 0 tokens, got {value!r}")
        if x != math.floor(x):
            self.fail(row, line, f"{name} must be an integer number of tokens, got {value!r}")
        if x > MAX_TOKENS:
            self.fail(row, line, f"{name} must be <= {MAX_TOKENS} tokens, got {value!r}")
        return int(x) if iv is None else iv

    def add(self, row: int, line: int, sec: int, frac: float, s: int, o: int) -> None:
        if s == 0 or o == 0:
            what = "prompt" if s == 0 else "output"
            if not self.drop_zero:
                self.fail(
                    row,
                    line,
                    f"zero {what} tokens (a failed request?); pass "
                    "drop_zero=True (command line: --drop-zero) to exclude "
                    "zero-token rows",
                )
            self.zero_rows.append(len(self.prompt))
        self.sec.append(sec)
        self.frac.append(frac)
        self.row_line.append((row, line))
        self.prompt.append(s)
        self.output.append(o)

    def finish(self, fmt: str) -> Trace:
        n = len(self.prompt)
        if n == 0:
            raise InputError("trace", f"{self.path} is empty: no data rows")
        sec = np.asarray(self.sec, dtype=np.int64)
        t = (sec - sec[0]).astype(np.float64) + (np.asarray(self.frac) - self.frac[0])
        back = np.flatnonzero(np.diff(t) < 0)
        if back.size:
            i = int(back[0]) + 1
            row, line = self.row_line[i]
            self.fail(
                row,
                line,
                f"arrival time {t[i]:.9g} s (from the first row) is before the "
                f"previous row's {t[i - 1]:.9g} s; the trace must be sorted by "
                "arrival time",
            )
        keep = np.ones(n, dtype=bool)
        keep[np.asarray(self.zero_rows, dtype=np.int64)] = False
        if not keep.any():
            raise InputError(
                "trace", f"{self.path}: no rows left after dropping {n} zero-token rows"
            )
        return Trace(
            t[keep],
            np.asarray(self.prompt)[keep],
            np.asarray(self.output)[keep],
            source=self.path,
            format=fmt,
            num_dropped_zero=int(n - keep.sum()),
        )


def _open_text(path: str) -> io.TextIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _parse_time(
    rows: _Rows, row: int, line: int, name: str, text: Any, unit_s: float
) -> tuple[int, float]:
    """A time value: a number (in units of ``unit_s`` seconds) or a datetime string.

    Returns integer seconds and a fractional part separately, so that wall-clock datetimes
    (≈ 6·10¹⁰ s since year 1) keep their 100-ns ticks after the first row is subtracted.
    """
    if isinstance(text, bool) or text is None:
        rows.fail(row, line, f"{name} must be a time, got {text!r}")
    if isinstance(text, int | float):
        x = float(text) * unit_s
        if not math.isfinite(x):
            rows.fail(row, line, f"{name} must be finite, got {text!r}")
        return 0, x
    s = str(text).strip()
    if not s:
        rows.fail(row, line, f"{name} is empty")
    try:
        x = float(s) * unit_s
    except ValueError:
        m = _DATETIME.match(s)
        if m is None:
            rows.fail(
                row,
                line,
                f"cannot parse {name} {s!r}; expected seconds or YYYY-MM-DD HH:MM:SS[.fffffff]",
            )
        y, mo, d, hh, mm, ss = (int(v) for v in m.groups()[:6])
        try:
            day = datetime.date(y, mo, d).toordinal()
        except ValueError:
            rows.fail(row, line, f"invalid date in {name} {s!r}")
        if hh > 23 or mm > 59 or ss > 60:
            rows.fail(row, line, f"invalid time of day in {name} {s!r}")
        digits = m.group(7) or ""
        frac = int(digits) / 10 ** len(digits) if digits else 0.0
        return day * 86400 + hh * 3600 + mm * 60 + ss, frac
    if not math.isfinite(x):
        rows.fail(row, line, f"{name} must be finite, got {s!r}")
    return 0, x


def _read_csv(path: str, f, mapping: Mapping[str, str], unit_s: float, rows: _Rows) -> None:
    reader = csv.reader(f)
    header = None
    for rec in reader:
        if any(c.strip() for c in rec):
            header = [c.strip() for c in rec]
            break
    if header is None:
        raise InputError("trace", f"{path} is empty: no header and no data rows")
    missing = [c for c in CANONICAL if mapping[c] not in header]
    if missing:
        names = ", ".join(repr(mapping[c]) for c in missing)
        raise InputError(
            "trace",
            f"{path}: missing column(s) {names}; the header has {', '.join(header)}. Other "
            "column names: pass columns (command line: --columns arrival_s=NAME,"
            "prompt_tokens=NAME,output_tokens=NAME)",
        )
    idx = {c: header.index(mapping[c]) for c in CANONICAL}
    row = 0
    try:
        for rec in reader:
            line = reader.line_num
            if not any(c.strip() for c in rec):
                continue
            row += 1
            if len(rec) != len(header):
                rows.fail(
                    row, line, f"expected {len(header)} fields like the header, got {len(rec)}"
                )
            sec, frac = _parse_time(
                rows, row, line, mapping["arrival_s"], rec[idx["arrival_s"]], unit_s
            )
            s = rows.tokens(row, line, mapping["prompt_tokens"], rec[idx["prompt_tokens"]])
            o = rows.tokens(row, line, mapping["output_tokens"], rec[idx["output_tokens"]])
            rows.add(row, line, sec, frac, s, o)
    except csv.Error as e:
        rows.fail(row + 1, reader.line_num, f"malformed CSV: {e}")


def _read_jsonl(path: str, f, mapping: Mapping[str, str], unit_s: float, rows: _Rows) -> None:
    row = 0
    for line, text in enumerate(_lines(f), start=1):
        if not text.strip():
            continue
        row += 1
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            rows.fail(row, line, f"not valid JSON ({e.msg})")
        if not isinstance(obj, dict):
            rows.fail(row, line, "expected a JSON object per line")
        missing = [mapping[c] for c in CANONICAL if mapping[c] not in obj]
        if missing:
            rows.fail(row, line, f"missing key(s) {', '.join(map(repr, missing))}")
        sec, frac = _parse_time(
            rows, row, line, mapping["arrival_s"], obj[mapping["arrival_s"]], unit_s
        )
        s = rows.tokens(row, line, mapping["prompt_tokens"], obj[mapping["prompt_tokens"]])
        o = rows.tokens(row, line, mapping["output_tokens"], obj[mapping["output_tokens"]])
        rows.add(row, line, sec, frac, s, o)


def _lines(f) -> Iterator[str]:
    yield from f


def _detect_format(path: str) -> str:
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "mooncake"
    with _open_text(path) as f:
        for text in f:
            if text.strip():
                first = text.strip()
                break
        else:
            return "csv"
    if first.startswith("{"):
        return "mooncake"
    cols = {c.strip() for c in first.split(",")}
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= cols:
        return "azure"
    return "csv"


def read_trace(
    path: str | os.PathLike,
    fmt: str = "auto",
    columns: Mapping[str, str] | None = None,
    drop_zero: bool = False,
    time_unit_s: float | None = None,
) -> Trace:
    """Read a request trace.

    Args:
        path: file to read; gzip-compressed files are recognised by their first bytes.
        fmt: ``"azure"``, ``"mooncake"``, ``"csv"`` or ``"auto"`` (``.jsonl[.gz]`` or a first
            line starting with ``{`` is Mooncake; a header with TIMESTAMP, ContextTokens and
            GeneratedTokens is Azure; anything else the generic CSV).
        columns: the file's names for the canonical fields ``arrival_s``, ``prompt_tokens``,
            ``output_tokens`` (CSV column names, or JSON keys for ``mooncake``); fields not
            given keep the format's default names. E.g. BurstGPT:
            ``{"arrival_s": "Timestamp", "prompt_tokens": "Request tokens",
            "output_tokens": "Response tokens"}``.
        drop_zero: exclude rows with 0 prompt or 0 output tokens (failed requests) instead of
            raising; the count is kept in :attr:`Trace.num_dropped_zero`.
        time_unit_s: seconds per unit of a numeric time column (default 1 for CSV, 0.001 for
            Mooncake). Datetime strings ``YYYY-MM-DD HH:MM:SS[.f…]`` are always accepted.

    Returns:
        A :class:`Trace`, arrivals shifted to start at 0.

    Raises:
        InputError: (field ``"trace"``) naming the file and ``row N (line L)`` for a malformed
            row; also for a missing file, an empty file and missing columns.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError("trace", f"must be a file name, got {path!r}")
    path = os.fspath(path)
    if fmt not in FORMATS:
        raise InputError("trace_format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not os.path.isfile(path):
        raise InputError("trace", f"cannot read {path}: no such file")
    if time_unit_s is not None:
        check_number("time_unit_s", time_unit_s, low=0, low_open=True)
    if columns is not None:
        if not isinstance(columns, Mapping) or any(k not in CANONICAL for k in columns):
            raise InputError(
                "columns",
                f"keys must be among {', '.join(CANONICAL)}, got "
                f"{list(columns) if isinstance(columns, Mapping) else columns!r}",
            )
    try:
        kind = _detect_format(path) if fmt == "auto" else fmt
        base = {"azure": AZURE_COLUMNS, "mooncake": MOONCAKE_KEYS, "csv": CSV_COLUMNS}[kind]
        mapping = {**base, **(columns or {})}
        unit = DEFAULT_TIME_UNIT_S[kind] if time_unit_s is None else float(time_unit_s)
        rows = _Rows(path, drop_zero)
        with _open_text(path) as f:
            if kind == "mooncake":
                _read_jsonl(path, f, mapping, unit, rows)
            else:
                _read_csv(path, f, mapping, unit, rows)
        return rows.finish(kind)
    except UnicodeDecodeError as e:
        raise InputError("trace", f"{path}: not a UTF-8 text file ({e.reason})") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError("trace", f"cannot read {path}: {e}") from None
