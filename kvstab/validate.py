"""Input validation in one layer, before any work: types, finiteness, the ranges the
simulator's integer and float types impose, the memory a run needs, and where results go.

Everything here raises :class:`kvstab.errors.InputError` (a ``ValueError``) naming the field
and the allowed range; the command line (:func:`kvstab.cli.common.validate_args`) swaps the
field for the flag the user typed and exits with status 2.

The limits, and why:

* token counts (M, ŝ, s, o, an initial queue) <= 2**30: the simulator holds them, and sums
  such as U + s + o, in int32;
* steps T <= 2**30 (the step index is int32, and T is rounded up to whole blocks);
* trajectories x replicas (rows) <= 2**31 - 1; seeds in [0, 2**31 - 1] (``jax.random.PRNGKey``
  silently wraps larger ones: seed 2**32 would repeat seed 0);
* batch time b̄ in [1e-9, 1e6] s and rates <= 1e9 req/s: the clock is float32, and μ = M/(b̄·E[g])
  must be a finite number;
* memory: :func:`check_memory` estimates the bytes of a run's buffers and compares them with
  what the device has.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from kvstab.errors import InputError

INT32_MAX = 2**31 - 1
MAX_TOKENS = 2**30
MAX_STEPS = 2**30
MAX_SEED = INT32_MAX
MAX_REPLICAS = 2**16
MAX_WINDOW = 2**16
MAX_RATE_PER_S = 1e9
BATCH_TIME_RANGE_S = (1e-9, 1e6)
MAX_ATTEMPTS = 100
SIZE_KEYS = ("max_running", "max_preempted", "num_requests", "cal_len", "replica_requests")
# Fraction of the available memory a run may plan to use (XLA needs room for temporaries).
MEMORY_FRACTION = 0.8


def _is_tracer(value: Any) -> bool:
    return any(c.__name__ == "Tracer" for c in type(value).__mro__)


def _fmt(x: float) -> str:
    if float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    return f"{x:g}"


def _range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None and high - low <= 1000:  # a natural interval
        return f" in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if low is not None and high is not None:  # a lower bound, and a limit of the types
        return (
            f" {'>' if low_open else '>='} {_fmt(low)} and {'<' if high_open else '<='} "
            f"{_fmt(high)}"
        )
    if low is not None:
        return f" {'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_fmt(high)}"
    return ""


def check_value(
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    array: bool = False,
    optional: bool = False,
) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite number (or, with ``array``, an
    array of them) in the range, of the right type: no strings, booleans or None (unless
    ``optional``), no NaN or infinity, no fractions where an integer is needed. Values inside
    jit/grad (tracers) are left to be checked when concrete."""
    if value is None and optional:
        return
    if _is_tracer(value):
        return
    kind = "an integer" if integer else "a finite number"
    want = f"must be {kind}{_range(low, high, low_open, high_open)}"
    if array:
        want = (
            f"must be {'integers' if integer else 'finite numbers'}"
            + _range(low, high, low_open, high_open)
            + " (a scalar or one per trajectory)"
        )
    bad_type = isinstance(value, (str, bytes, bool, np.bool_)) or value is None
    if not bad_type and not isinstance(value, numbers.Real):
        try:
            a = np.asarray(value)
        except Exception:
            a = None
        bad_type = a is None or (a.ndim > 0 and not array) or a.size == 0
        if not bad_type and a.dtype == object:
            try:
                a = np.asarray([float(x) for x in a.reshape(-1)])
            except (TypeError, ValueError, OverflowError):
                bad_type = True
        if not bad_type and a.dtype.kind not in "iuf":
            bad_type = True
        if bad_type:
            raise InputError(field, f"{want}, got {_show(value)}")
        values = a.reshape(-1)
    else:
        if bad_type:
            raise InputError(field, f"{want}, got {_show(value)}")
        values = [value]
    for v in values:
        try:
            x = float(v)
        except OverflowError:  # a Python int beyond float range
            x = math.inf if v > 0 else -math.inf
        if math.isnan(x) or math.isinf(x):
            raise InputError(field, f"{want}, got {_show(v)}")
        if integer and not (isinstance(v, numbers.Integral) or x == math.floor(x)):
            raise InputError(field, f"{want}, got {_show(v)}")
        bad_low = low is not None and (x <= low if low_open else x < low)
        bad_high = high is not None and (x >= high if high_open else x > high)
        if isinstance(v, numbers.Integral) and high is not None and not high_open:
            bad_high = int(v) > high  # exact for ints beyond float precision
        if bad_low or bad_high:
            raise InputError(field, f"{want}, got {_show(v)}")


def _show(v: Any) -> str:
    if isinstance(v, (np.generic,)):
        v = v.item()
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_choice(field: str, value: Any, allowed: tuple) -> None:
    """``value`` is one of ``allowed`` (strings)."""
    if not isinstance(value, str) or value not in allowed:
        raise InputError(field, f"must be one of {', '.join(allowed)}, got {_show(value)}")


# ---------------------------------------------------------------------------------------------
# The system and the simulator's arguments


def check_system(kv_capacity_tokens, chunk_tokens, batch_time_s, *, array: bool = False) -> None:
    """M and ŝ in [1, 2**30] tokens, b̄ in [1e-9, 1e6] s."""
    check_value(
        "kv_capacity_tokens", kv_capacity_tokens, low=1, high=MAX_TOKENS, integer=True,
        array=array,
    )  # fmt: skip
    check_value("chunk_tokens", chunk_tokens, low=1, high=MAX_TOKENS, integer=True)
    lo, hi = BATCH_TIME_RANGE_S
    check_value("batch_time_s", batch_time_s, low=lo, high=hi, array=array)


def check_sizes(sizes: Any) -> None:
    """A ``sizes`` override: a dict of known keys with integer values in [1, 2**31 - 1]."""
    if sizes is None:
        return
    if not isinstance(sizes, dict):
        raise InputError("sizes", f"must be a dict with keys among {', '.join(SIZE_KEYS)}")
    for k, v in sizes.items():
        if k not in SIZE_KEYS:
            raise InputError("sizes", f"unknown key {k!r}; allowed: {', '.join(SIZE_KEYS)}")
        check_value(f"sizes[{k!r}]", v, low=1, high=INT32_MAX, integer=True)


def check_simulate_args(
    workload,
    system,
    policy,
    cluster,
    outputs,
    *,
    num_steps,
    num_trajectories,
    seed,
    warmup_frac,
    progress,
    sizes,
    max_attempts,
) -> None:
    """Every argument of :func:`kvstab.sim.simulate`, before anything is sampled or compiled."""
    from kvstab.sim.components import Cluster, Outputs, Policy, Replay, System, Workload

    for field, value, kind in (
        ("workload", workload, Workload),
        ("system", system, System),
        ("policy", policy, Policy),
        ("cluster", cluster, Cluster),
        ("outputs", outputs, Outputs),
    ):
        if not isinstance(value, kind):
            raise InputError(field, f"must be a {kind.__name__}, got {_show(value)}")
    check_value("num_steps", num_steps, low=1, high=MAX_STEPS, integer=True)
    check_value("num_trajectories", num_trajectories, low=1, high=INT32_MAX, integer=True)
    check_value("seed", seed, low=0, high=MAX_SEED, integer=True)
    check_value("warmup_frac", warmup_frac, low=0, high=1, high_open=True)
    check_value("max_attempts", max_attempts, low=1, high=MAX_ATTEMPTS, integer=True)
    if progress is not None and not callable(progress):
        raise InputError("progress", f"must be a callable or None, got {_show(progress)}")
    check_sizes(sizes)

    bt = system.batch_time
    check_system(
        system.kv_capacity_tokens, system.chunk_tokens, getattr(bt, "batch_time_s", 1.0),
        array=True,
    )  # fmt: skip
    coefs = np.asarray(bt.coefs, dtype=np.float64)
    if not np.all(np.isfinite(coefs)) or np.any(coefs < 0):
        raise InputError("linear_coefs", f"need 4 finite numbers >= 0, got {tuple(bt.coefs)}")
    for name in ("sigma", "slow_fraction", "slow_factor"):
        if hasattr(bt, name):
            check_value(name, getattr(bt, name))
    check_value("num_replicas", cluster.num_replicas, low=1, high=MAX_REPLICAS, integer=True)
    rows = int(num_trajectories) * int(cluster.num_replicas)
    if rows > INT32_MAX:
        raise InputError(
            "num_trajectories",
            f"trajectories x replicas must be <= {INT32_MAX}, got {rows}",
        )
    window = getattr(policy.order, "window", 1)
    check_value("spf_window", window, low=1, high=MAX_WINDOW, integer=True)
    check_value("num_records", outputs.num_records, low=0, high=INT32_MAX, integer=True)
    for name in ("block_steps", "num_segments"):
        check_value(name, getattr(outputs, name), low=1, high=MAX_STEPS, integer=True,
                    optional=True)  # fmt: skip
    check_value("initial_queue", workload.initial_queue, low=0, high=MAX_TOKENS, integer=True)
    arrivals = workload.arrivals
    if arrivals.rate_per_s is not None:
        check_value(
            "arrival_rate_per_s", arrivals.rate_per_s, low=0, high=MAX_RATE_PER_S, array=True
        )
    if isinstance(arrivals, Replay):
        for name in ("prompt", "output"):
            v = np.asarray(getattr(arrivals, name))
            if v.size and float(np.max(v)) > MAX_TOKENS:
                raise InputError(name, f"token counts must be <= {MAX_TOKENS}, got {np.max(v)}")
    law = workload.lengths
    if law is not None:
        for name in ("prompt", "output"):
            marginal = getattr(law, name, None)
            top = getattr(marginal, "max_value", None)
            if top is not None and top > MAX_TOKENS:
                raise InputError(name, f"lengths must be <= {MAX_TOKENS} tokens, got max {top}")


# ---------------------------------------------------------------------------------------------
# Memory


def estimate_bytes(
    rows: int,
    sizes: dict,
    *,
    num_blocks: int,
    num_steps: int,
    num_records: int = 0,
    window: int = 1,
    record_steps: bool = False,
    dynamic: bool = False,
) -> int:
    """Bytes a run of ``rows`` (trajectories x replicas) needs on the device, estimated from
    the buffers of :class:`kvstab.sim.state.State` (int32), the sampled requests (arrival
    epoch float32, (s, o) int32) and the outputs. The state is counted twice (a scan holds
    the carry in and out) and the requests three times (sampling temporaries)."""
    K = int(sizes.get("max_running", 2))
    S = int(sizes.get("max_preempted", K))
    L = int(sizes.get("cal_len", 2))
    R = int(sizes.get("num_requests", 1))
    # records exist only for buffered requests (num_records may say "all": 2**30)
    records = min(int(num_records), max(R, int(sizes.get("replica_requests", 0))))
    state = 4 * (5 * L + 3 * K + 2 * S + window + 6 * max(records, 1) + 32)
    if dynamic:
        state += 12 * int(sizes.get("replica_requests", R))
    requests = 12 * R * 3
    outputs = 4 * 9 * int(num_blocks) + (4 * 8 * int(num_steps) if record_steps else 0)
    return int(rows) * (2 * state + requests + 2 * outputs)


def available_bytes() -> tuple[int | None, str]:
    """(bytes free on the device JAX runs on, its name); (None, name) when unknown.

    GPU/TPU: ``memory_stats()`` (limit minus in use) of the first device; CPU: the memory
    the OS reports available (``MemAvailable``, else free pages)."""
    try:
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), str(
                    dev.device_kind
                )
    except Exception:  # no backend info: fall back to the host's memory
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "CPU (available RAM)"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "CPU (free RAM)"
    except (ValueError, OSError, AttributeError):
        return None, "unknown device"


def check_memory(
    rows: int,
    sizes: dict,
    *,
    num_trajectories: int,
    num_segments: int = 1,
    available: Callable[[], tuple[int | None, str]] = available_bytes,
    buffer_fields: dict | None = None,
    **estimate,
) -> int:
    """Raise :class:`InputError` when the run's estimated memory exceeds what the device has,
    with both numbers and what to change; returns the estimate. The field is
    ``num_trajectories`` when fewer trajectories would fit, else the argument that sized the
    largest buffer (``buffer_fields``: buffer name -> argument).

    ``KVSTAB_MEMORY_BYTES`` overrides the available bytes (for tests, or to leave room for
    another process)."""
    need = estimate_bytes(rows, sizes, **estimate)
    env = os.environ.get("KVSTAB_MEMORY_BYTES")
    have, where = (int(float(env)), "KVSTAB_MEMORY_BYTES") if env else available()
    if have is None or need <= MEMORY_FRACTION * have:
        return need
    per_row = need / max(rows, 1)
    fit = max(int(MEMORY_FRACTION * have // max(per_row, 1)) // max(rows // num_trajectories, 1), 0)
    big = max(sizes.items(), key=lambda kv: kv[1]) if sizes else ("", 0)
    hint = (
        f"use at most about {fit} trajectories per call (and several calls or seeds)"
        if fit >= 1
        else f"even one trajectory needs {per_row / 2**30:.3g} GiB: its largest buffer is "
        f"{big[0]} = {big[1]:,} (fewer steps, a smaller initial queue or rate, or a smaller M)"
    )
    field = "num_trajectories" if fit >= 1 else (buffer_fields or {}).get(big[0], "num_steps")
    raise InputError(
        field,
        f"the run needs about {need / 2**30:.3g} GiB ({num_trajectories} trajectories x "
        f"{per_row * rows / max(num_trajectories, 1) / 2**20:.3g} MiB) but {where} has "
        f"{have / 2**30:.3g} GiB free; {hint}",
    )


# ---------------------------------------------------------------------------------------------
# Outputs


# What matplotlib writes with its standard backends (FigureCanvasBase.filetypes).
FIGURE_FORMATS = (
    "eps", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw", "rgba", "svg", "svgz", "tif",
    "tiff", "webp",
)  # fmt: skip


def figure_formats() -> tuple[str, ...]:
    """File suffixes matplotlib can write: its standard list, or, once matplotlib is loaded,
    what it reports (importing it only for this check would cost about a second)."""
    import sys

    if "matplotlib.backend_bases" in sys.modules:
        canvas = sys.modules["matplotlib.backend_bases"].FigureCanvasBase
        return tuple(sorted(canvas.get_supported_filetypes()))
    return FIGURE_FORMATS


def check_output_file(field: str, path: Any, *, figure: bool = False) -> None:
    """``path`` (if given) can be written as a file: a string, not a directory, in an
    existing writable directory; with ``figure``, a suffix matplotlib supports."""
    if path is None:
        return
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InputError(field, f"must be a file name, got {_show(path)}")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(field, f"{path} is a directory; give a file name")
    if not os.path.isdir(parent):
        raise InputError(field, f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise InputError(field, f"cannot write {path}: permission denied")
    if figure:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        formats = figure_formats()
        if ext not in formats:
            raise InputError(
                field,
                f"cannot draw a figure as {ext or 'a file without a suffix'!r}; use one of "
                f"{', '.join(formats)}",
            )


def check_output_dir(field: str, path: Any) -> None:
    """``path`` is a directory that exists and is writable, or can be created."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InputError(field, f"must be a directory name, got {_show(path)}")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(field, f"{path} is a file; give a directory")
        if not os.access(path, os.W_OK):
            raise InputError(field, f"cannot write to {path}: permission denied")
        return
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise InputError(field, f"cannot create {path}: {parent} is not a writable directory")
