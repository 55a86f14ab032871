"""Figure 1: CDF of batch times, P/D 1:1, from kvstab's linear batch-time model (model output).

Reads results/batch_time_figs.json; writes fig1_batch_time_cdf.{pdf,png}.
Usage: python paper_figures/fig1_batch_time_cdf.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st

from kvstab import reproduce as rp

NAME = "fig1_batch_time_cdf"
INPUTS = ["batch_time_figs"]
OUTPUTS = ["fig1_batch_time_cdf.pdf", "fig1_batch_time_cdf.png"]
TITLE = "Figure 1 (kvstab batch-time model output): CDF of batch times, P/D 1:1"


def cdf_panel(ax, per_rate: list, title: str) -> None:
    for i, s in enumerate(per_rate):
        e = s["ecdf"]
        ax.plot(
            1000 * st.arr(e["values"]),
            st.arr(e["probs"]),
            color=st.SEQ[i],
            label=f"λ = {s['rate_per_s']:g} req/s: median {1000 * s['median_s']:.1f} ms, "
            f"p99 {1000 * s['p99_s']:.1f} ms",
        )
    ax.set_xlabel("batch time (ms)")
    ax.set_ylabel("fraction of batches")
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")


def coef_text(coefs) -> str:
    c0, cp, cd, ckv = coefs
    return (
        f"linear model b = {c0 * 1000:g} ms + {cp * 1e6:g} µs·P + {cd * 1e6:g} µs·D + "
        f"{ckv * 1e9:g} ns·KV (illustrative, not fitted to a GPU)"
    )


def draw(results: dict, out_dir) -> list:
    r = results[INPUTS[0]]
    why = st.missing_reason(r, INPUTS[0])
    if why:
        return st.placeholder(out_dir, NAME, TITLE, why)
    d = r["data"]
    fig, axes = st.new_figure(1, 1, figsize=(6.4, 3.9))
    w = d["linear"]["1:1"]
    cdf_panel(
        axes[0, 0],
        w["per_rate"],
        coef_text(d["linear_coefs"]) + "\nper-step batch "
        "times after warm-up, pooled over trajectories (P prefill, D decode, KV resident "
        "tokens)",
    )
    st.title(fig, TITLE)
    st.footer(
        fig,
        st.MODEL_NOTE,
        r,
        paper="≈ 90 % of batches near 40 ms, a tail to ≈ 700 ms; kvstab's linear model "
        "has no such tail (Figure 7 shows its heavy-tailed model)",
    )
    return st.save(fig, out_dir, NAME)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
