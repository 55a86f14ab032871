"""One error type for bad input: it names the field and the allowed range.

The Python API raises :class:`InputError` (a ``ValueError``); the command line catches it,
swaps the field name for its flag and exits with status 2 after printing one line.
"""

from __future__ import annotations

import math
from typing import Any


class InputError(ValueError):
    """Invalid input. ``field`` names the offending argument, ``message`` the allowed range."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def _is_tracer(value: Any) -> bool:
    """A JAX tracer (inside jit/grad): its value is unknown until run; checked when concrete."""
    return any(c.__name__ == "Tracer" for c in type(value).__mro__)


def check_number(
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite number in the stated range (not
    a string, a boolean or None; tracers pass, to be checked when concrete)."""
    if _is_tracer(value):
        return
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise InputError(
            field, f"must be {kind}{_range(low, high, low_open, high_open)}, got {value!r}"
        )
    try:
        x = float(value)
    except OverflowError:  # a Python int beyond float range
        x = math.inf
    except (TypeError, ValueError):
        raise InputError(
            field, f"must be {kind}{_range(low, high, low_open, high_open)}, got {value!r}"
        ) from None
    if math.isnan(x) or math.isinf(x):
        raise InputError(
            field, f"must be a finite number{_range(low, high, low_open, high_open)}, got {value}"
        )
    if integer and x != int(x):
        raise InputError(
            field, f"must be an integer{_range(low, high, low_open, high_open)}, got {value}"
        )
    bad_low = low is not None and (x <= low if low_open else x < low)
    bad_high = high is not None and (x >= high if high_open else x > high)
    if bad_low or bad_high:
        kind = "an integer" if integer else "a number"
        raise InputError(
            field, f"must be {kind}{_range(low, high, low_open, high_open)}, got {value}"
        )


def _range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        return f" in {lb}{_fmt(low)}, {_fmt(high)}{hb}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_fmt(high)}"
    return ""


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
