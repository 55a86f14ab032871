"""One style for every regenerated figure and table (helpers; this file draws nothing itself).

Figures: matplotlib's Agg canvas (no display), PDF + PNG side by side, axes with units, a
legend, and a footer that says where the numbers come from ("kvstab simulation" or "kvstab
batch-time model output"), because none of them is a GPU measurement. Tables: Markdown for
reading and JSON for machines, with the paper's numbers beside kvstab's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from kvstab.plotting import COLORS, DPI, SEQ  # noqa: E402,F401  (one palette: kvstab.plotting's)
from kvstab.plotting import PAPER_RC as RC  # noqa: E402
from kvstab.results import write_json_atomic  # noqa: E402

matplotlib.rcParams.update(RC)

SIM_NOTE = "kvstab simulation (JAX simulator), not a GPU measurement"
MODEL_NOTE = "kvstab batch-time model output, not GPU measurements"
DATA_NOTE = "real request trace (binned); fitted law from kvstab.fit"


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(7.5, 4.2), **kw):
    """(figure, axes array) on the Agg canvas, constrained layout."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def title(fig, text: str) -> None:
    """Figure title, wrapped to the figure's width."""
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(text, int(fig.get_figwidth() * 13))))


def footer_on() -> bool:
    """The provenance footer is drawn unless ``KVSTAB_FIGURE_FOOTER=0`` (for a paper: the
    provenance then lives only in the files' metadata, see :func:`save`)."""
    return os.environ.get("KVSTAB_FIGURE_FOOTER", "1") not in ("0", "", "no", "off")


def footer(fig, text: str, results: dict | None = None, paper: str | None = None) -> None:
    """Provenance under the axes: what the numbers are, size, seed and versions; optionally
    a second line with what the paper reported. Always stored in the PNG/PDF metadata
    (:func:`save`); drawn only when :func:`footer_on`."""
    parts = [text]
    if results:
        size = "quick size" if results.get("quick") else "full size"
        parts.append(
            f"{size}; seed {results.get('seed')}; kvstab {results.get('kvstab_version')}, "
            f"sim semantics v{results.get('sim_semantics_version')}"
        )
    import textwrap

    width = int(fig.get_figwidth() * 12.5)  # characters per line at 9 pt
    lines = textwrap.wrap(f"paper (GPU): {paper}", width) if paper else []
    lines += textwrap.wrap("   |   ".join(parts), width)
    line = "\n".join(lines)
    fig._kvstab_provenance = " ".join(lines)
    if not footer_on():
        return
    fig.get_layout_engine().set(h_pad=0.06)
    fig.supxlabel(line, fontsize=9, color="0.35", style="italic")


def save(fig, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    prov = getattr(fig, "_kvstab_provenance", None)
    for ext in ("pdf", "png"):
        p = out / f"{stem}.{ext}"
        meta = {"Software": "kvstab"} if ext == "png" else {"Creator": "kvstab"}
        if prov:
            meta["Description" if ext == "png" else "Subject"] = prov
        fig.savefig(p, dpi=DPI, metadata=meta)
        paths.append(p)
    return paths


def placeholder(out_dir, stem: str, title: str, reason: str) -> list[Path]:
    """A figure that says clearly why the real one could not be drawn."""
    fig, axes = new_figure(figsize=(6.0, 2.4))
    ax = axes[0, 0]
    ax.set_axis_off()
    ax.text(
        0.5,
        0.62,
        title,
        ha="center",
        va="center",
        fontsize=10,
        weight="bold",
        transform=ax.transAxes,
        wrap=True,
    )
    ax.text(
        0.5,
        0.32,
        f"not drawn: {reason}",
        ha="center",
        va="center",
        fontsize=9,
        color="#b00000",
        transform=ax.transAxes,
        wrap=True,
    )
    return save(fig, out_dir, stem)


def missing_reason(results: dict | None, name: str) -> str | None:
    """Why a results file cannot be used (absent, skipped, or failed), else None."""
    if results is None:
        return f"results/{name}.json not found (run `kvstab reproduce --only {name}`)"
    if results.get("status") == "skipped":
        return str(results.get("reason"))
    if results.get("status") != "ok":
        return f"results/{name}.json has status {results.get('status')!r}"
    return None


# ---------------------------------------------------------------------------------------------
# Number formatting


def arr(x: Any, dtype=np.float64) -> np.ndarray:
    """A results-file list back to a numpy array (None -> NaN)."""
    if x is None:
        return np.asarray(np.nan, dtype)
    return np.asarray(_none_to_nan(x) if isinstance(x, list) else x, dtype=dtype)


def _none_to_nan(x):
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return np.nan if x is None else x


def num(x: Any) -> float:
    return math.nan if x is None else float(x)


def fmt(x: Any, nd: int = 3) -> str:
    v = num(x)
    return "–" if not math.isfinite(v) else f"{v:.{nd}f}"


def fmt_ci(mean: Any, ci: Sequence[Any] | None, nd: int = 3) -> str:
    if ci is None or len(ci) != 2 or not all(math.isfinite(num(c)) for c in ci):
        return fmt(mean, nd)
    return f"{fmt(mean, nd)} [{fmt(ci[0], nd)}, {fmt(ci[1], nd)}]"


def pct(x: Any, nd: int = 2) -> str:
    v = num(x)
    return "–" if not math.isfinite(v) else f"{100 * v:.{nd}f} %"


# ---------------------------------------------------------------------------------------------
# Tables


def write_table(
    out_dir: str | os.PathLike,
    stem: str,
    *,
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    notes: Sequence[str],
    data: Any,
    results: dict | None,
) -> list[Path]:
    """Write ``stem.md`` (a Markdown table with notes) and ``stem.json`` (the numbers)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"### {title}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    lines.append("")
    for n in notes:
        lines.append(f"- {n}")
    if results:
        lines.append(
            f"- Source: `{results.get('experiment')}` results "
            f"({'quick' if results.get('quick') else 'full'} size, seed {results.get('seed')}, "
            f"kvstab {results.get('kvstab_version')}, SIM_SEMANTICS_VERSION "
            f"{results.get('sim_semantics_version')}, {results.get('wall_s', 0):.0f} s)."
        )
    md = out / f"{stem}.md"
    md.write_text("\n".join(lines) + "\n")
    js = out / f"{stem}.json"
    payload = {
        "title": title,
        "columns": list(header),
        "rows_text": [list(map(str, r)) for r in rows],
        "data": data,
        "notes": list(notes),
        "source": None
        if not results
        else {
            k: results.get(k)
            for k in (
                "experiment",
                "quick",
                "seed",
                "kvstab_version",
                "sim_semantics_version",
                "config_digest",
                "started_utc",
            )
        },
    }
    write_json_atomic(js, payload)
    return [md, js]


def write_missing_table(out_dir, stem: str, title: str, reason: str) -> list[Path]:
    return write_table(
        out_dir,
        stem,
        title=title,
        header=["status"],
        rows=[[f"not available: {reason}"]],
        notes=[],
        data={"status": "missing", "reason": reason},
        results=None,
    )


def band_plot(ax, t, band: dict, color: str, label: str, *, samples=None) -> None:
    """Mean line with a 10–90 % band across trajectories (and thin sample paths)."""
    t = np.asarray(t, np.float64)
    lo, hi, mean = (arr(band[k]) for k in ("p10", "p90", "mean"))
    ax.fill_between(t, lo, hi, color=color, alpha=0.2, linewidth=0)
    if samples is not None:
        for srow in arr(samples)[:2]:
            ax.plot(t, srow, color=color, linewidth=0.5, alpha=0.45)
    ax.plot(t, mean, color=color, label=label)
