"""Figure 5 (appendix): batch-time CDFs for P/D 2:1 and 4:1 at several λ (model output).

Reads results/batch_time_figs.json; writes fig5_batch_time_pd.{pdf,png}.
Usage: python paper_figures/fig5_batch_time_pd.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st

from kvstab import reproduce as rp

fig1_batch_time_cdf = rp.sibling(__file__, "fig1_batch_time_cdf")  # shared drawing code

NAME = "fig5_batch_time_pd"
INPUTS = ["batch_time_figs"]
OUTPUTS = ["fig5_batch_time_pd.pdf", "fig5_batch_time_pd.png"]
TITLE = (
    "Figure 5 (kvstab batch-time model output): batch-time CDFs for P/D 2:1 and 4:1 at several λ"
)


def draw(results: dict, out_dir) -> list:
    r = results[INPUTS[0]]
    why = st.missing_reason(r, INPUTS[0])
    if why:
        return st.placeholder(out_dir, NAME, TITLE, why)
    d = r["data"]
    fig, axes = st.new_figure(1, 2, figsize=(8.6, 3.8), sharey=True)
    for ax, w in zip(axes[0], ("2:1", "4:1"), strict=True):
        law = d["linear"][w]["law"]
        fig1_batch_time_cdf.cdf_panel(ax, d["linear"][w]["per_rate"], f"P/D {w}: {law}")
    st.title(fig, TITLE)
    st.footer(
        fig,
        st.MODEL_NOTE + "; " + fig1_batch_time_cdf.coef_text(d["linear_coefs"]),
        r,
        paper="λ barely matters; prompt-heavy mixes vary more",
    )
    return st.save(fig, out_dir, NAME)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
