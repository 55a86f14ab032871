"""Beyond the paper: mean waiting queue and p99 wait against load for four routers.

Reads results/routers.json; writes fig10_routers.{pdf,png}.
Usage: python paper_figures/fig10_routers.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st
import numpy as np

from kvstab import reproduce as rp

NAME = "fig10_routers"
INPUTS = ["routers"]
OUTPUTS = ["fig10_routers.pdf", "fig10_routers.png"]
TITLE = "Routers (beyond the paper): eight replicas, P/D 1:1, the same arrival streams"
LABELS = {
    "round_robin": "round robin (paper)",
    "random": "random",
    "jsq": "join shortest queue",
    "least_kv": "least KV (held + waiting prompts)",
}
FLOOR_S = 1e-2


def draw(results: dict, out_dir) -> list:
    r = results[INPUTS[0]]
    why = st.missing_reason(r, INPUTS[0])
    if why:
        return st.placeholder(out_dir, NAME, TITLE, why)
    d = r["data"]
    cfg = r["config"]
    fig, axes = st.new_figure(1, 2, figsize=(8.6, 4.0))
    ax_q, ax_w = axes[0, 0], axes[0, 1]
    for i, (router, rows) in enumerate(d["series"].items()):
        x = st.arr([row["load"] for row in rows])
        q = st.arr([row["mean_queue"] for row in rows])
        ci = st.arr([row["mean_queue_ci"] for row in rows])
        lab = LABELS.get(router, router)
        ax_q.plot(x, np.maximum(q, FLOOR_S), "o-", color=st.SEQ[i], label=lab, ms=3)
        lo, hi = np.maximum(ci[:, 0], FLOOR_S), np.maximum(ci[:, 1], FLOOR_S)
        ax_q.fill_between(x, lo, hi, color=st.SEQ[i], alpha=0.15, lw=0)
        p99 = st.arr([row["wait_p99_s"] for row in rows])
        ax_w.plot(x, np.maximum(p99, FLOOR_S), "o-", color=st.SEQ[i], label=lab, ms=3)
    for ax, ylabel in (
        (ax_q, "mean waiting queue, all replicas (requests)"),
        (ax_w, "p99 waiting time, arrival to admission (s)"),
    ):
        # the floor is a drawing convention, not data: grey it out and say so on the axes
        ax.axhline(FLOOR_S, color="0.45", linewidth=0.9, linestyle=":")
        ax.axhspan(FLOOR_S * 0.5, FLOOR_S, color="0.88", zorder=0, linewidth=0)
        ax.text(0.99, FLOOR_S * 0.96, f"floor: values < {FLOOR_S:g} drawn here (not data)",
                transform=ax.get_yaxis_transform(), ha="right", va="top", fontsize=9,
                color="0.35")  # fmt: skip
        ax.set_ylim(bottom=FLOOR_S * 0.5)
        ax.set_yscale("log")
        ax.set_xlabel("load λ / 8μ")
        ax.set_ylabel(ylabel)
    ax_q.legend(loc="upper left")
    ax_q.set_title(
        f"{cfg['trajectories_per_load']} trajectories per load × {cfg['num_steps']} steps;\n"
        "band: 95 % CI",
        fontsize=9,
    )
    censored = sum(row.get("not_admitted", 0) for rows in d["series"].values() for row in rows)
    ax_w.set_title(
        f"8μ = {d['mu_theory_cluster']:.2f} req/s; waits of admitted requests\n"
        f"({censored} recorded requests not admitted by the end are left out)",
        fontsize=9,
    )
    st.title(fig, TITLE)
    st.footer(
        fig,
        st.SIM_NOTE + "; its own runs (sizes above), not the README table's single-rate "
        "simulate runs, so the numbers differ within noise",
        r,
    )
    return st.save(fig, out_dir, NAME)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
