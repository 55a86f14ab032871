"""Figure 3's role: prompt and output lengths of the trace used for Table 2 (Azure LLM
inference trace 2023, conversation): marginals, the fit on 80 % vs the held-out 20 %, and
the joint CDF of (s, o).

Reads results/fig3_trace_lengths.json (and results/table2_trace.json for the fitted law, if
present); writes fig3_trace_lengths.{pdf,png}.
Usage: python paper_figures/fig3_trace_lengths.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st

from kvstab import reproduce as rp

NAME = "fig3_trace_lengths"
INPUTS = ["fig3_trace_lengths", "table2_trace"]
OUTPUTS = ["fig3_trace_lengths.pdf", "fig3_trace_lengths.png"]
TITLE = (
    "Figure 3 (role played by the Azure LLM inference trace 2023, conversation): "
    "prompt/output lengths"
)


def draw(results: dict, out_dir) -> list:
    r = results["fig3_trace_lengths"]
    why = st.missing_reason(r, "fig3_trace_lengths")
    if why:
        return st.placeholder(out_dir, NAME, TITLE, why)
    d = r["data"]
    t2 = results.get("table2_trace")
    fitted = None if st.missing_reason(t2, "table2_trace") else t2["data"]["fitted_marginal_cdf"]
    fig, axes = st.new_figure(2, 2, figsize=(8.6, 6.4))
    for j, (key, label) in enumerate(
        (("prompt", "prompt length s"), ("output", "output length o"))
    ):
        m = d[key]
        ax = axes[0, j]
        edges = st.arr(m["hist_edges"])
        counts = st.arr(m["hist_counts"])
        ax.stairs(
            counts / counts.sum(),
            edges,
            fill=True,
            color=st.SEQ[j],
            alpha=0.6,
            label=f"all {d['num_requests']:,} requests",
        )
        ax.axvline(
            m["median"],
            color="0.2",
            linestyle=":",
            linewidth=1,
            label=f"median {m['median']:.0f}, mean {m['mean']:.0f} tokens",
        )
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} (tokens, log scale)")
        ax.set_ylabel("fraction of requests per bin")
        ax.set_title(f"marginal of {key} lengths", fontsize=9)
        ax.legend(loc="upper left", fontsize=9)
    ax = axes[1, 0]
    for j, key in enumerate(("prompt", "output")):
        m = d[key]
        ax.plot(
            st.arr(m["ecdf_train"]["values"]),
            st.arr(m["ecdf_train"]["probs"]),
            color=st.SEQ[j],
            label=f"{key}: first 80 % (train)",
        )
        ax.plot(
            st.arr(m["ecdf_test"]["values"]),
            st.arr(m["ecdf_test"]["probs"]),
            color=st.SEQ[j],
            linestyle="--",
            label=f"{key}: last 20 % (held out)",
        )
        if fitted is not None:
            f = fitted[key]
            ax.plot(
                st.arr(f["tokens"]),
                st.arr(f["cdf"]),
                color=("#8B2500", "#3D1A66")[j],  # one dark colour per fit, not shared
                linestyle=":" if j else "-.",
                linewidth=1.6,
                label=f"{key}: law fitted on 80 %",
            )
    ax.set_xscale("log")
    ax.set_xlabel("tokens (log scale)")
    ax.set_ylabel("CDF")
    ax.set_ylim(0, 1.01)
    ax.set_title("train vs held-out, and the fitted copula law (Table 2)", fontsize=9)
    ax.legend(loc="upper left", fontsize=9)
    ax = axes[1, 1]
    j = d["joint_cdf"]
    gs, go, c = st.arr(j["prompt_tokens"]), st.arr(j["output_tokens"]), st.arr(j["cdf"])
    mesh = ax.pcolormesh(
        gs, go, c.T, shading="nearest", cmap="viridis", vmin=0, vmax=1, rasterized=True
    )
    cs = ax.contour(gs, go, c.T, levels=[0.1, 0.25, 0.5, 0.75, 0.9], colors="white", linewidths=0.7)
    ax.clabel(cs, fontsize=9, fmt="%.2f")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("prompt length s (tokens)")
    ax.set_ylabel("output length o (tokens)")
    ax.set_title(
        f"joint CDF P(S ≤ s, O ≤ o); corr(s, o) = {d['corr_prompt_output']:.3f}", fontsize=9
    )
    fig.colorbar(mesh, ax=ax, label="P(S ≤ s, O ≤ o)")
    st.title(fig, TITLE)
    st.footer(fig, st.DATA_NOTE + "; the paper used LongBench v2 (not available here)", r)
    return st.save(fig, out_dir, NAME)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
