"""Figure 3's role: marginals of s and o and their joint CDF for the trace of Table 2.

The paper plots LongBench v2's prompt and output lengths; kvstab uses the trace that plays
Table 2's role (Azure LLM inference trace 2023, conversation). Only binned statistics go into
the results file (histograms on log-spaced bins, the joint CDF on a grid, quantiles), never
the trace itself. The figure overlays the marginals of the law fitted in Table 2 when its
results exist. Skipped, and said so, when the trace file is not present.

Usage: python experiments/fig3_trace_lengths.py [--quick] [--force] [--results DIR]
"""

from __future__ import annotations

import _common as ex
import numpy as np

from kvstab import reproduce as rp
from kvstab.progress import Progress

NAME = "fig3_trace_lengths"
ORDER = 63
TITLE = "Figure 3 (role): prompt/output lengths of the Azure conversation trace"
TRACE_FILE = "AzureLLMInferenceTrace_conv.csv"


def config(quick: bool) -> dict:
    path = rp.find_trace(TRACE_FILE)
    return {
        "seed": 0,
        "trace": ex.file_fingerprint(path) if path else {"file": TRACE_FILE, "missing": True},
        "train_frac": 0.8,
        "num_bins": 60,
        "joint_grid": 80,
    }


def run(cfg: dict, progress: Progress):
    from kvstab import traces

    path = rp.find_trace(TRACE_FILE)
    if path is None:
        return rp.Skip(
            f"trace {TRACE_FILE} not found (set KVSTAB_DATA or put it in <repo>/../shared/data)"
        )
    progress(f"reading {path.name}")
    trace = traces.read_trace(path, fmt="azure")
    train, test = trace.split(cfg["train_frac"])
    s = trace.prompt.astype(np.float64)
    o = trace.output.astype(np.float64)
    out = {
        "trace": f"Azure LLM inference trace 2023, conversation ({len(trace)} requests)",
        "num_requests": len(trace),
        "num_train": len(train),
        "num_test": len(test),
    }
    for name, v, vtr, vte in (
        ("prompt", s, train.prompt, test.prompt),
        ("output", o, train.output, test.output),
    ):
        edges = np.geomspace(max(v.min(), 1) * 0.9, v.max() * 1.1, cfg["num_bins"] + 1)
        counts, _ = np.histogram(v, bins=edges)
        out[name] = {
            "hist_edges": edges,
            "hist_counts": counts,
            "ecdf_all": ex.ecdf_points(v, num=300),
            "ecdf_train": ex.ecdf_points(vtr, num=300),
            "ecdf_test": ex.ecdf_points(vte, num=300),
            "mean": float(v.mean()),
            "median": float(np.median(v)),
            "max": float(v.max()),
        }
    gs = np.geomspace(max(s.min(), 1), s.max(), cfg["joint_grid"])
    go = np.geomspace(max(o.min(), 1), o.max(), cfg["joint_grid"])
    # Joint CDF F(s, o) = P(S <= s, O <= o) via a 2-D cumulative histogram.
    hs = np.searchsorted(gs, s, side="left")
    ho = np.searchsorted(go, o, side="left")
    h = np.zeros((gs.size + 1, go.size + 1))
    np.add.at(h, (hs, ho), 1.0)
    cdf = np.cumsum(np.cumsum(h, axis=0), axis=1)[: gs.size, : go.size] / s.size
    out["joint_cdf"] = {"prompt_tokens": gs, "output_tokens": go, "cdf": cdf}
    out["corr_prompt_output"] = float(np.corrcoef(s, o)[0, 1])
    out["summary"] = {k: v for k, v in trace.summary().items() if k != "source"}
    out["notes"] = [
        "Role of the paper's LongBench v2 lengths played by the Azure "
        "conversation trace (real data, binned)."
    ]
    return out


if __name__ == "__main__":
    import sys

    sys.exit(rp.experiment_main(sys.modules[__name__]))
