"""Beyond the paper: λ*/μ and preemptions per completion of each scheduling policy, per workload.

Reads results/policies.json; writes fig11_policies.{pdf,png}.
Usage: python paper_figures/fig11_policies.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import _style as st
import numpy as np

from kvstab import reproduce as rp

NAME = "fig11_policies"
INPUTS = ["policies"]
OUTPUTS = ["fig11_policies.pdf", "fig11_policies.png"]
TITLE = "Scheduling policies against the closed form μ (beyond the paper)"


def draw(results: dict, out_dir) -> list:
    r = results[INPUTS[0]]
    why = st.missing_reason(r, INPUTS[0])
    if why:
        return st.placeholder(out_dir, NAME, TITLE, why)
    d = r["data"]["workloads"]
    cfg = r["config"]
    workloads = list(d)
    policies = []
    for w in workloads:
        for row in d[w]["rows"]:
            if row["policy"] not in policies:
                policies.append(row["policy"])
    fig, axes = st.new_figure(1, 2, figsize=(9.6, 4.2))
    ax, ax2 = axes[0, 0], axes[0, 1]
    x = np.arange(len(workloads))
    width = 0.8 / max(len(policies), 1)
    for j, pol in enumerate(policies):
        lam, lo, hi, emp, pre, meta = [], [], [], [], [], []
        for w in workloads:
            rows = {row["policy"]: row for row in d[w]["rows"]}
            row = rows.get(pol, {})
            mu = st.num(d[w]["theory"]["mu"])
            lam.append(st.num(row.get("lambda_star")) / mu)
            lo.append(st.num(row.get("ci_low")) / mu)
            hi.append(st.num(row.get("ci_high")) / mu)
            emp.append(st.num(row.get("lambda_star_empty")) / mu)
            pre.append(st.num(row.get("preemptions_per_completion")))
            meta.append(bool(row.get("metastable")))
        lam, lo, hi, emp, pre = map(np.asarray, (lam, lo, hi, emp, pre))
        xs = x - 0.4 + width * (j + 0.5)
        color = st.SEQ[j % len(st.SEQ)]
        err = np.nan_to_num(np.maximum(np.vstack([lam - lo, hi - lam]), 0))
        ax.errorbar(xs, lam, yerr=err, fmt="o", ms=4, color=color, capsize=3, label=pol)
        ax.plot(xs, emp, "o", ms=6, mfc="none", color=color, alpha=0.7)
        ax2.bar(xs, np.nan_to_num(pre), width=width, color=color, label=pol)
        for k in np.flatnonzero(meta):  # the starts disagree: the boundary depends on it
            ax.annotate(
                "M",
                (xs[k], lam[k]),
                xytext=(0, -12),
                textcoords="offset points",
                ha="center",
                fontsize=6.5,
                color=color,
            )
    for i, w in enumerate(workloads):
        th = d[w]["theory"]
        ax.hlines(
            th["mu_stable"] / th["mu"],
            i - 0.45,
            i + 0.45,
            colors=st.COLORS["mu_stable"],
            linestyles="--",
            lw=1.2,
            label="μ(1−δ)/μ" if i == 0 else None,
        )
    ax.axhline(1.0, color=st.COLORS["mu"], lw=1.2, label="μ (Theorem 4.1)")
    labels = [w.replace("-", "-\n") for w in workloads]
    ax.set_xticks(x, labels)
    ax.set_ylabel("λ*/μ (filled: loaded start, 95 % CI; open: empty start)")
    ax.set_xlabel("workload (M: metastable, the two starts disagree)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    ax2.set_xticks(x, labels)
    ax2.set_xlabel("workload")
    ax2.set_ylabel("preemptions per completion (saturated run)")
    ax.set_title(f"precision {cfg['precision']}; seed {cfg['seed']}", fontsize=8)
    st.title(fig, TITLE)
    st.footer(fig, st.SIM_NOTE, r)
    return st.save(fig, out_dir, NAME)


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
