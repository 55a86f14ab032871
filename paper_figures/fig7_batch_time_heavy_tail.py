"""Figure 7 (appendix): heavy-tailed batch times of the 8:1 workload (kvstab's two-point
random batch-time model: model output).

Reads results/batch_time_figs.json; writes fig7_batch_time_heavy_tail.{pdf,png}.
Usage: python paper_figures/fig7_batch_time_heavy_tail.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st

from kvstab import reproduce as rp

NAME = "fig7_batch_time_heavy_tail"
INPUTS = ["batch_time_figs"]
OUTPUTS = ["fig7_batch_time_heavy_tail.pdf", "fig7_batch_time_heavy_tail.png"]
TITLE = "Figure 7 (kvstab batch-time model output): heavy-tailed batch times, 8:1 workload's model"


def model_text(m: dict) -> str:
    """The batch-time model in words, from the results file's own parameters."""
    base = f"b = {m['batch_time_s'] * 1000:g} ms × exp({m['batch_time_sigma']}·Z)"
    if m.get("batch_time_law", "two_point") == "lognormal":
        return f"log-normal model: {base}"
    return (
        f"two-point model: {base}, × {m['slow_factor']:g} for "
        f"{100 * m['slow_fraction']:.0f} % of batches (log-normal jitter)"
    )


def draw(results: dict, out_dir) -> list:
    r = results[INPUTS[0]]
    why = st.missing_reason(r, INPUTS[0])
    if why:
        return st.placeholder(out_dir, NAME, TITLE, why)
    h = r["data"]["heavy_tail"]
    fig, axes = st.new_figure(1, 2, figsize=(8.6, 3.6))
    ax, ax2 = axes[0]
    edges = 1000 * st.arr(h["hist_edges_s"])
    counts = st.arr(h["hist_counts"])
    ax.stairs(
        counts / counts.sum(),
        edges,
        fill=True,
        color=st.SEQ[0],
        alpha=0.6,
        label=f"{h['num_samples']:,} batches",
    )
    ax.set_xscale("log")
    ax.set_xlabel("batch time (ms, log scale)")
    ax.set_ylabel("fraction of batches per bin")
    ax.set_title(model_text(h["model"]), fontsize=9)
    ax.legend(loc="upper right")
    e = h["ecdf"]
    ax2.plot(
        1000 * st.arr(e["values"]),
        st.arr(e["probs"]),
        color=st.SEQ[0],
        label="empirical CDF of the model's batch times",
    )
    fast = 1 - h["model"]["slow_fraction"]
    ax2.axhline(
        fast,
        color="0.4",
        linestyle=":",
        linewidth=1,
        label=f"{100 * fast:.0f} % fast / {100 * (1 - fast):.0f} % slow",
    )
    ax2.set_xlabel("batch time (ms)")
    ax2.set_ylabel("fraction of batches")
    ax2.set_ylim(0, 1.01)
    ax2.set_title("CDF", fontsize=9)
    ax2.legend(loc="lower right")
    st.title(fig, TITLE)
    st.footer(fig, st.MODEL_NOTE, r, paper="8:1 batch times: about 70 % similar, 30 % much slower")
    return st.save(fig, out_dir, NAME)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
