"""Beyond the paper: stability map over (λ, M), 1:1 workload, one replica (kvstab simulation),
with the closed forms μ(M) (Theorem 4.1), μ(1−δ(M)) (Theorem 4.2) and the simulated λ*(M).

Reads results/stability_map.json; writes fig9_stability_map.{pdf,png}.
Usage: python paper_figures/fig9_stability_map.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st
import numpy as np
from matplotlib.colors import Normalize

from kvstab import paper
from kvstab import reproduce as rp

NAME = "fig9_stability_map"
INPUTS = ["stability_map"]
OUTPUTS = ["fig9_stability_map.pdf", "fig9_stability_map.png"]
TITLE = (
    f"Stability map over (λ, M), P/D 1:1, b̄ = {paper.BATCH_TIME_S} s "
    "(kvstab simulation; beyond the paper)"
)


def draw(results: dict, out_dir) -> list:
    r = results[INPUTS[0]]
    why = st.missing_reason(r, INPUTS[0])
    if why:
        return st.placeholder(out_dir, NAME, TITLE, why)
    d = r["data"]
    M = st.arr(d["kv_capacity_tokens"])
    frac = st.arr(d["growth_fraction"])
    mu = st.arr(d["mu_theory"])
    ls, ci = st.arr(d["lambda_star"]), st.arr(d["lambda_star_ci"])
    f = st.arr(d["rate_factors"])
    fig, axes = st.new_figure(1, 2, figsize=(8.8, 3.9))
    ax, ax2 = axes[0]
    norm = Normalize(vmin=0.0, vmax=max(0.3, float(np.nanmax(frac))))
    # one column of cells per M (the λ grid scales with μ(M)); edges halfway in log M
    logm = np.log(M)
    mid = np.exp((logm[1:] + logm[:-1]) / 2)
    m_edges = np.concatenate([[M[0] ** 2 / mid[0]], mid, [M[-1] ** 2 / mid[-1]]])
    f_mid = (f[1:] + f[:-1]) / 2
    f_edges = np.concatenate([[2 * f[0] - f_mid[0]], f_mid, [2 * f[-1] - f_mid[-1]]])
    mesh = None
    for i in range(M.size):
        x = np.array([m_edges[i], m_edges[i + 1]]) / 1000
        y = f_edges * mu[i]
        mesh = ax.pcolormesh(
            x,
            y,
            np.clip(frac[i][:, None], 0, None),
            cmap="magma_r",
            norm=norm,
            shading="flat",
            rasterized=True,
        )
    mm = np.geomspace(m_edges[0], m_edges[-1], 200)
    mu_line = float(np.mean(mu / M)) * mm  # μ is proportional to M (E[g] does not depend on M)
    ax.plot(
        mm / 1000,
        mu_line,
        color=st.COLORS["mu"],
        linestyle="--",
        label="μ(M) = M/(b̄·E[g]) (Thm 4.1)",
    )
    delta_m = st.arr(d["delta"]) * M  # max(s+o), constant
    ax.plot(
        mm / 1000,
        mu_line * (1 - delta_m[0] / mm),
        color=st.COLORS["mu_stable"],
        linestyle=":",
        label="μ(1−δ(M)) (Thm 4.2)",
    )
    ax.errorbar(
        M / 1000,
        ls,
        yerr=np.abs(np.vstack([ls - ci[:, 0], ci[:, 1] - ls])),
        fmt="o",
        ms=3.5,
        color=st.COLORS["lambda_star"],
        capsize=2,
        label="simulated λ* (95 % CI)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("KV capacity M (thousand tokens, log scale)")
    ax.set_ylabel("arrival rate λ (requests/s)")
    # each M has its own λ grid (it scales with μ(M)): outside it nothing was simulated
    ax.set_facecolor("0.88")
    ax.set_title("colour: queue growth / λ (0 = stable); grey: not simulated", fontsize=9)
    ax.legend(loc="upper left", fontsize=9)
    fig.colorbar(mesh, ax=ax, label="waiting-queue growth rate / λ")
    xs = np.geomspace(M[0], M[-1], 200)
    ax2.axhline(1.0, color=st.COLORS["mu"], linestyle="--", label="μ (Thm 4.1)")
    ax2.plot(
        xs / 1000,
        1 - delta_m[0] / xs,
        color=st.COLORS["mu_stable"],
        linestyle=":",
        label="1 − δ(M) (Thm 4.2)",
    )
    ax2.errorbar(
        M / 1000,
        ls / mu,
        yerr=np.abs(np.vstack([ls - ci[:, 0], ci[:, 1] - ls])) / mu,
        fmt="o",
        ms=3.5,
        color=st.COLORS["lambda_star"],
        capsize=2,
        label="simulated λ*/μ (95 % CI)",
    )
    ax2.set_xscale("log")
    ax2.set_xlabel("KV capacity M (thousand tokens, log scale)")
    ax2.set_ylabel("rate / μ(M)")
    ax2.set_title("the boundary between the two theorems' bounds", fontsize=9)
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    for a in (ax, ax2):
        a.xaxis.set_major_locator(FixedLocator(M / 1000))
        a.xaxis.set_minor_locator(NullLocator())
        a.xaxis.set_major_formatter(ScalarFormatter())
    ax2.legend(loc="lower right", fontsize=9)
    st.title(fig, TITLE)
    st.footer(fig, st.SIM_NOTE + "; λ* per M: hinge fit on this grid", r)
    return st.save(fig, out_dir, NAME)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
