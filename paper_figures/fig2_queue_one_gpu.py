"""Figure 2: waiting queue vs time, one replica, 1:1, λ ∈ {1, 3, 5, 20, 50} (kvstab simulation).

Reads results/fig2_queue_one_gpu.json; writes fig2_queue_one_gpu.{pdf,png}.
Usage: python paper_figures/fig2_queue_one_gpu.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st

from kvstab import reproduce as rp

NAME = "fig2_queue_one_gpu"
INPUTS = ["fig2_queue_one_gpu"]
OUTPUTS = ["fig2_queue_one_gpu.pdf", "fig2_queue_one_gpu.png"]
TITLE = "Figure 2 (kvstab simulation): waiting queue vs time, one replica, P/D 1:1"


def draw(results: dict, out_dir) -> list:
    return draw_queue(
        results[INPUTS[0]],
        out_dir,
        NAME,
        TITLE,
        INPUTS[0],
        paper_text="bounded (< 5) at λ = 1, 3; linear growth at 5, 20, 50",
    )


def draw_queue(r, out_dir, stem: str, title: str, name: str, paper_text: str) -> list:
    why = st.missing_reason(r, name)
    if why:
        return st.placeholder(out_dir, stem, title, why)
    d = r["data"]
    series = d["series"]
    fig, axes = st.new_figure(1, 2, figsize=(8.6, 3.7))
    ax, axz = axes[0]
    n = d["num_trajectories_per_rate"]
    slow = [
        s for s in series if s["slope_ci"][0] is None or s["slope_per_s"] < 0.05 * s["rate_per_s"]
    ]
    for i, s in enumerate(series):
        c = st.SEQ[i % len(st.SEQ)]
        lab = f"λ = {s['rate_per_s']:g} req/s: growth {st.fmt(s['slope_per_s'], 2)} req/s"
        st.band_plot(ax, s["time_s"], s["queue"], c, lab, samples=None)
        if s in slow:
            st.band_plot(
                axz,
                s["time_s"],
                s["queue"],
                c,
                f"λ = {s['rate_per_s']:g} req/s",
                samples=s["samples"],
            )
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=-0.4)  # keeps an all-zero queue (λ = 1) visible above the axis
    ax.set_xlabel("time (s)")
    ax.set_ylabel("waiting requests (queue length)")
    ax.set_title(
        f"all rates (symlog scale); mean and 10–90 % band over {n} trajectories", fontsize=9
    )
    ax.legend(
        loc="upper left",
        title=f"μ = {d['mu_theory']:.3f}, μ(1−δ) = {d['mu_stable']:.3f} req/s",
        title_fontsize=9,
    )
    axz.set_xlabel("time (s)")
    axz.set_ylabel("waiting requests (queue length)")
    axz.set_title("stable rates (linear scale), two sample paths each", fontsize=9)
    axz.set_ylim(bottom=-0.6)
    if slow:
        axz.legend(loc="upper left")
    st.title(fig, title)
    st.footer(fig, st.SIM_NOTE, r, paper=paper_text)
    return st.save(fig, out_dir, stem)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
