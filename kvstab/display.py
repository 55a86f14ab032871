"""One look for every result object: a short text table (``repr``) and a small HTML table
(``_repr_html_``, what Jupyter shows).

A result's ``summary()`` returns rows ``(label, value)``-style as a flat ``dict``; these
helpers render it, so :class:`~kvstab.sim.SimResult`, :class:`~kvstab.stability.BoundaryResult`,
:class:`~kvstab.stability.SaturationResult`, :class:`~kvstab.analytic.CapacityReport` and
:class:`~kvstab.report.Report` all display the same way.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping


def fmt(value) -> str:
    """A value as a short string: 4 significant digits for floats, ``[lo, hi]`` for pairs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return fmt(value.item())
    return str(value)


def text_table(title: str, rows: Mapping) -> str:
    """``Title`` then one ``label  value`` line per row (labels aligned)."""
    width = max((len(str(k)) for k in rows), default=0)
    lines = [title]
    lines += [f"  {str(k):<{width}}  {fmt(v)}" for k, v in rows.items()]
    return "\n".join(lines)


def html_table(title: str, rows: Mapping) -> str:
    """The same rows as a small HTML table with a caption."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left'>{html.escape(fmt(v))}</td></tr>"
        for k, v in rows.items()
    )
    return (
        f"<table><caption style='text-align:left'><b>{html.escape(title)}</b></caption>"
        f"{body}</table>"
    )


class Displayable:
    """Mixin: ``repr`` and ``_repr_html_`` from ``_display_title()`` and ``_display_rows()``."""

    def _display_title(self) -> str:  # pragma: no cover - overridden
        return type(self).__name__

    def _display_rows(self) -> dict:  # pragma: no cover - overridden
        return {}

    def __repr__(self) -> str:
        return text_table(self._display_title(), self._display_rows())

    def _repr_html_(self) -> str:
        return html_table(self._display_title(), self._display_rows())
