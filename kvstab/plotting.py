"""Figures of kvstab results, in one style: matplotlib's Agg canvas (no display, no global
backend change), axes with units, a legend, the closed-form rates marked.

* :func:`plot_boundary`: the stability picture of :func:`kvstab.stability.estimate_boundary`:
  the waiting queue's growth rate (with 95 % CIs) against the arrival rate, from an empty and
  from a loaded start, with μ, μ(1−δ), μ_sim and λ* (with its CI band) marked.
"""

from __future__ import annotations

import math
import os

import numpy as np

# One palette for every kvstab figure.
COLORS = {
    "empty": "#1f77b4",
    "loaded": "#d62728",
    "mu": "#2ca02c",
    "mu_stable": "#9467bd",
    "mu_sim": "#7f7f7f",
    "lambda_star": "#ff7f0e",
    "fit": "#ff7f0e",
}
# Colours for a sequence of arrival rates / curves (colour-blind friendly, ordered).
SEQ = ["#0072B2", "#009E73", "#E69F00", "#D55E00", "#CC79A7", "#56B4E9", "#000000"]
MARKERS = {"stable": "o", "unstable": "^", "inconclusive": "s"}
FIGSIZE = (10.0, 4.8)
DPI = 130
# matplotlib settings of the paper's figures (paper_figures/_style.py applies them).
PAPER_RC = {
    "font.size": 9.5,
    "axes.titlesize": 10,
    "axes.labelsize": 9.5,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,
}


def new_figure(figsize=FIGSIZE):
    """A (figure, axes) pair on the Agg canvas; save with ``fig.savefig``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    return fig, ax


def _zoom_on_rates(ax, rates: dict, span: float) -> None:
    """When the marked rates lie within 12 % of the x range, an inset number line spreads
    them out (each with its value), so close vertical lines stay readable."""
    vals = {k: v for k, v in rates.items() if math.isfinite(v)}
    if len(vals) < 2:
        return
    lo, hi = min(vals.values()), max(vals.values())
    if span <= 0 or hi - lo > 0.12 * span:
        return
    pad = max(0.15 * (hi - lo), 1e-3)
    ins = ax.inset_axes([0.03, 0.66, 0.42, 0.30])
    styles = {"μ(1−δ)": ("mu_stable", ":"), "λ*": ("lambda_star", "-"), "μ_sim": ("mu_sim", "-."),
              "μ": ("mu", "--")}  # fmt: skip
    for i, (name, v) in enumerate(sorted(vals.items(), key=lambda kv: kv[1])):
        color, ls = styles.get(name, ("mu_sim", "-"))
        ins.axvline(v, color=COLORS[color], linestyle=ls, linewidth=1.4)
        ins.text(v, 0.88 - 0.25 * (i % 4), f" {name} {v:.3f}", fontsize=9,
                 color=COLORS[color], va="top", transform=ins.get_xaxis_transform())  # fmt: skip
    ins.set_xlim(lo - pad, hi + 3.5 * pad)
    ins.set_yticks([])
    ins.tick_params(labelsize=9)
    ins.text(0.99, 0.95, "zoom (req/s)", transform=ins.transAxes, ha="right", va="top",
             fontsize=9, color="0.3")  # fmt: skip
    ins.set_facecolor("white")


def plot_boundary(result, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Queue growth rate vs arrival rate, with μ, μ(1−δ), μ_sim and λ* marked.

    Args:
        result: a :class:`kvstab.stability.BoundaryResult` (or its ``to_dict()``).
        path: file to write (format from the suffix: .png, .pdf, .svg); None: only return.
        title: figure title (default: workload and policy).

    Returns:
        The matplotlib Figure.
    """
    r = result if isinstance(result, dict) else result.to_dict()
    fig, ax = new_figure()

    def num(x):
        return math.nan if x is None else float(x)

    rows = r["grid"]
    rates_all = [row["rate"] for row in rows]
    for start, label, dx in (("empty", "empty start", -1), ("loaded", "loaded start", 1)):
        sel = sorted((row for row in rows if row["start"] == start), key=lambda q: q["rate"])
        if not sel:
            continue
        x = np.array([q["rate"] for q in sel])
        y = np.array([num(q["slope"]) for q in sel])
        lo = np.array([num(q["slope_ci_low"]) for q in sel])
        hi = np.array([num(q["slope_ci_high"]) for q in sel])
        span = (max(rates_all) - min(rates_all)) or 1.0
        xs = x + dx * 0.002 * span  # offset the two starts so their bars do not overlap
        yerr = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(
            xs,
            y,
            yerr=yerr,
            fmt="none",
            ecolor=COLORS[start],
            elinewidth=1.0,
            capsize=2.5,
            alpha=0.8,
        )
        used = np.array([bool(q.get("backlogged")) for q in sel])
        for verdict, marker in MARKERS.items():
            is_v = np.array([q["verdict"] == verdict for q in sel])
            for m, alpha in ((is_v & used, 1.0), (is_v & ~used, 0.45)):
                if m.any():
                    ax.scatter(
                        xs[m],
                        y[m],
                        marker=marker,
                        s=26,
                        color=COLORS[start],
                        facecolors=COLORS[start] if start == "loaded" else "white",
                        zorder=3,
                        linewidths=1.1,
                        alpha=alpha,
                    )
        ax.plot(
            [],
            [],
            color=COLORS[start],
            marker="o",
            linestyle="none",
            markerfacecolor=COLORS[start] if start == "loaded" else "white",
            label=f"{label} (mean slope, 95% CI)",
        )
    ax.plot(
        [],
        [],
        linestyle="none",
        label="○ stable, △ unstable, □ inconclusive; faded: emptied (not fitted)",
    )

    lam, clo, chi = num(r["lambda_star"]), num(r["ci_low"]), num(r["ci_high"])
    x_lo, x_hi = min(rates_all), max(rates_all)
    if math.isfinite(lam):
        xx = np.linspace(x_lo, x_hi, 50)
        ax.plot(
            xx,
            xx - lam,
            color=COLORS["fit"],
            linewidth=1.0,
            linestyle="-",
            alpha=0.7,
            label="fit: growth = λ − λ* (backlogged runs)",
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    if math.isfinite(clo) and math.isfinite(chi):
        ax.axvspan(
            clo,
            chi,
            color=COLORS["lambda_star"],
            alpha=0.18,
            linewidth=0,
        )
    if math.isfinite(lam):
        ax.axvline(
            lam,
            color=COLORS["lambda_star"],
            linewidth=1.6,
            label=f"λ* = {lam:.3f} req/s, 95% CI [{clo:.3f}, {chi:.3f}] (shaded)",
        )
    mu, mus, musim = num(r["mu"]), num(r["mu_stable"]), num(r["mu_sim"])
    ax.axvline(
        mu, color=COLORS["mu"], linewidth=1.4, linestyle="--", label=f"μ = {mu:.3f} req/s (Thm 4.1)"
    )
    ax.axvline(
        mus,
        color=COLORS["mu_stable"],
        linewidth=1.4,
        linestyle=":",
        label=f"μ(1−δ) = {mus:.3f} req/s (Thm 4.2)",
    )
    if math.isfinite(musim):
        ax.axvline(
            musim,
            color=COLORS["mu_sim"],
            linewidth=1.0,
            linestyle="-.",
            label=f"μ_sim = {musim:.3f} req/s (saturated)",
        )
    ax.set_xlabel("arrival rate λ (requests/s)")
    ax.set_ylabel("waiting-queue growth rate (requests/s)")
    c = r["config"]
    if title is None:
        title = (
            f"{c['workload']}; M = {c['kv_capacity_tokens']:,}, b̄ = {c['batch_time_s']:g} s; "
            f"{c['admission']} / {c['overflow']}"
        )
    ax.set_title(title, fontsize=10)
    pad = 0.03 * (x_hi - x_lo or 1.0)
    ax.set_xlim(min(x_lo, mus) - pad, max(x_hi, mu) + pad)
    # One compact legend under the axes (the plot keeps the full width).
    fig.legend(loc="outside lower center", ncol=2, fontsize=9, handlelength=1.6,
               columnspacing=1.2, frameon=False)  # fmt: skip
    _zoom_on_rates(ax, {"μ(1−δ)": mus, "λ*": lam, "μ_sim": musim, "μ": mu}, x_hi - x_lo)
    if r.get("metastable"):
        ax.text(
            0.99,
            0.02,
            "metastable: the starts disagree",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color=COLORS["loaded"],
        )
    if path is not None:
        fig.savefig(os.fspath(path))
    return fig
