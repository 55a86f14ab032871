"""Table 2's role: a real trace (Azure conversation), p(s, o) fitted on 80 %, tested on 20 %.

Reads results/table2_trace.json; writes table2_trace.md and table2_trace.json.
Usage: python paper_figures/table2_trace.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st

from kvstab import paper
from kvstab import reproduce as rp

NAME = "table2_trace"
INPUTS = ["table2_trace"]
OUTPUTS = ["table2_trace.md", "table2_trace.json"]
TITLE = (
    "Table 2 (role played by the Azure LLM inference trace 2023, conversation): "
    "p(s, o) fitted on 80 %, tested on 20 %"
)


def draw(results: dict, out_dir) -> list:
    r = results["table2_trace"]
    why = st.missing_reason(r, "table2_trace")
    if why:
        return st.write_missing_table(out_dir, "table2_trace", TITLE, why)
    x = r["data"]["row"]
    header = [
        "",
        "trace",
        "μ_gpu / μ_sim [95 % CI]",
        "μ_theory (fit on 80 %)",
        "GAP",
        "λ* [95 % CI]",
        "E[g] fit vs held-out",
    ]
    text = [
        [
            "paper",
            "LongBench v2, 503 questions",
            st.fmt(x["paper_mu_gpu"]) + " (GPU)",
            st.fmt(x["paper_mu_theory"]),
            st.pct(x["paper_gap"]),
            "–",
            "–",
        ],
        [
            "kvstab",
            f"Azure conv., {x['num_train']} train / {x['num_test']} test requests",
            st.fmt_ci(x["mu_sim"], x["mu_sim_ci"]) + " (sim)",
            st.fmt(x["mu_theory"]),
            st.pct(x["gap_theory_vs_sim"]),
            st.fmt_ci(x["lambda_star"], x["lambda_star_ci"]),
            f"{x['mean_g_fit']:,.0f} vs {x['mean_g_test']:,.0f} token·steps "
            f"({100 * x['gap_fit_vs_test_mean_g']:+.2f} %)",
        ],
    ]
    fit = r["data"]["fit"]
    notes = [
        "LongBench v2 is not available here; the Azure LLM inference trace 2023 "
        "(conversation; Patel et al., Splitwise, ISCA 2024; CC-BY 4.0) plays its role. The "
        "absolute rates are not comparable with the paper's (other lengths); the protocol and "
        "the GAP are.",
        "Protocol: chronological split; p(s, o) fitted on the first 80 % "
        f"({fit.get('fit', {}).get('law', 'copula law')}); μ_theory = M/(b̄·E[g]) under the "
        "fitted law; the 'measurement' is a kvstab simulation of a saturated replica serving "
        "the held-out 20 %'s (s, o) pairs (μ_sim), not a GPU run.",
        f"b̄ = {x['batch_time_s']} s assumed (the trace has no batch timings); "
        f"M = {paper.KV_CAPACITY_TOKENS:,}, ŝ = {paper.CHUNK_TOKENS}.",
        f"Closed form on the held-out pairs themselves: μ = {st.fmt(x['mu_theory_test_empirical'])}"
        f", μ(1−δ) = {st.fmt(x['mu_stable_test'])}; on the training pairs: "
        f"{st.fmt(x['mu_theory_train_empirical'])} req/s (the trace drifts over the hour).",
        f"μ_sim: {x.get('mu_sim_estimator')}.",
        f"λ*: {x.get('lambda_star_estimator')}.",
        "GAP (kvstab) = |μ_theory − μ_sim| / μ_sim.",
    ]
    data = {k: v for k, v in x.items()}
    return st.write_table(
        out_dir,
        "table2_trace",
        title=TITLE,
        header=header,
        rows=text,
        notes=notes,
        data=data,
        results=r,
    )


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
