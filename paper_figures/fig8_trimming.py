"""Figure 8 (appendix): the heavy-tailed batch times after 5 % and 10 % trimming, with the
b̄ estimators of Table 4 (kvstab batch-time model output).

Reads results/batch_time_figs.json; writes fig8_trimming.{pdf,png}.
Usage: python paper_figures/fig8_trimming.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st

from kvstab import reproduce as rp

# shared drawing code
fig7_batch_time_heavy_tail = rp.sibling(__file__, "fig7_batch_time_heavy_tail")

NAME = "fig8_trimming"
INPUTS = ["batch_time_figs"]
OUTPUTS = ["fig8_trimming.pdf", "fig8_trimming.png"]
TITLE = (
    "Figure 8 (kvstab batch-time model output): batch times after 5 % and 10 % "
    "trimming, and the b̄ estimators"
)


def draw(results: dict, out_dir) -> list:
    r = results[INPUTS[0]]
    why = st.missing_reason(r, INPUTS[0])
    if why:
        return st.placeholder(out_dir, NAME, TITLE, why)
    h = r["data"]["heavy_tail"]
    fig, axes = st.new_figure(1, 1, figsize=(6.8, 3.9))
    ax = axes[0, 0]
    curves = [("untrimmed", h["ecdf"], st.SEQ[0], "-")]
    curves += [
        (f"{k} % trimmed from each tail", e, ("#009E73", "#7B3294")[i], "--")
        for i, (k, e) in enumerate(sorted(h["trimmed_ecdf"].items(), key=lambda kv: int(kv[0])))
    ]
    for label, e, c, ls in curves:
        ax.plot(1000 * st.arr(e["values"]), st.arr(e["probs"]), color=c, linestyle=ls, label=label)
    est = h["estimators_s"]
    marks = [
        ("median", est["median_s"]),
        ("5 % trimmed mean", est["trimmed_mean_5_s"]),
        ("10 % trimmed mean", est["trimmed_mean_10_s"]),
        ("mean", est["mean_s"]),
    ]
    for j, (label, v) in enumerate(marks):
        ax.axvline(
            1000 * v,
            color=("#D55E00", "#009E73", "#7B3294", "#000000")[j],
            linewidth=1.1,
            linestyle=(0, (1, 1.5)) if j != 3 else "-.",
            label=f"{label}: {1000 * v:.2f} ms",
        )
    ax.set_xlabel("batch time (ms)")
    ax.set_ylabel("fraction of batches (of those kept)")
    ax.set_ylim(0, 1.01)
    ax.set_title(fig7_batch_time_heavy_tail.model_text(h["model"]), fontsize=9)
    ax.legend(loc="lower right", fontsize=9)
    st.title(fig, TITLE)
    st.footer(
        fig,
        st.MODEL_NOTE,
        r,
        paper="b̄ from a 5 % trimmed mean gives μ_theory = 4.977, "
        "from a 10 % trimmed mean 5.862 (μ_gpu 5.470)",
    )
    return st.save(fig, out_dir, NAME)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
