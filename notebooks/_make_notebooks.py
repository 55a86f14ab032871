"""Write the tutorial notebooks with nbformat (run: python notebooks/_make_notebooks.py).

Run with ``--execute [NAME ...]`` to store them (or the named ones) with their outputs
(numbers and inline figures) at the notebooks' own size, a few minutes on 2 CPU cores in
all. tests/test_notebooks.py checks the stored cells against this file and executes the
notebooks at toy size (``KVSTAB_TOY=1``, read by :func:`kvstab.tutorial.sized`, so no cell
needs to mention it).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def quickstart() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# kvstab quickstart: capacity, then simulation\n\n"
            "Will an LLM replica stay stable? The closed form of Nie, Si & Zhou (arXiv "
            "2605.04595) gives the critical rate μ = M / (b̄·E[g]) above which every scheduler's "
            "queue grows without bound (Theorem 4.1), and μ(1−δ) below which a work-conserving "
            "scheduler is stable (Theorem 4.2). kvstab's JAX simulator then shows the queue "
            "itself. Workload: the paper's 1:1 P/D mix, s and o uniform on 10..1600 tokens, "
            "M = 131,000 KV tokens, chunk ŝ = 512, batch time b̄ = 0.0372 s."
        ),
        new_markdown_cell("## 1. Capacity in closed form"),
        new_code_cell(
            "from kvstab import Uniform, analytic\n"
            "from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS\n\n"
            "rep = analytic.capacity(Uniform(10, 1600), Uniform(10, 1600),\n"
            "                        kv_capacity_tokens=KV_CAPACITY_TOKENS, "
            "chunk_tokens=CHUNK_TOKENS,\n"
            "                        batch_time_s=BATCH_TIME_S, rate_per_s=3.0)\n"
            'print(f"E[g]    = {rep.mean_g:,.0f} token·steps")\n'
            'print(f"mu      = {rep.mu:.3f} req/s   (unstable above, Theorem 4.1)")\n'
            'print(f"mu(1-d) = {rep.mu_stable:.3f} req/s   (stable below, Theorem 4.2)")\n'
            'print(f"at 3 req/s: {rep.verdict}; replicas for 90 % utilisation: {rep.gpus}")\n'
            "rep  # every kvstab result displays as a table"
        ),
        new_markdown_cell(
            "## 2. Simulate the queue at a few arrival rates\n\n"
            "λ is a per-trajectory array, so a whole sweep is one compiled call. Each "
            "trajectory starts empty; `queue_end` is the waiting queue at the end of each block "
            "of steps, `clock_s` the time."
        ),
        new_code_cell(
            "import numpy as np\n\n"
            "from kvstab import Independent\n"
            "from kvstab.sim import ConstantBatchTime, Poisson, Saturated, System, Workload, "
            "simulate\n"
            "from kvstab.tutorial import sized  # smaller runs when the tests execute this\n\n"
            "law = Independent(Uniform(10, 1600), Uniform(10, 1600))\n"
            "system = System(kv_capacity_tokens=KV_CAPACITY_TOKENS, chunk_tokens=CHUNK_TOKENS,\n"
            "                batch_time=ConstantBatchTime(BATCH_TIME_S))\n"
            "rates = np.array([2.0, 3.0, 4.0])\n"
            "n = sized(8, 2)  # trajectories per rate\n"
            "res = simulate(Workload(law, Poisson(np.repeat(rates, n))), system,\n"
            "               num_steps=sized(8192, 1500), "
            "num_trajectories=rates.size * n, seed=0)\n"
            "slopes = res.queue_slope_per_traj().reshape(rates.size, n).mean(axis=1)\n"
            "for lam, g in zip(rates, slopes, strict=True):\n"
            '    print(f"lambda = {lam:g} req/s: queue grows at {g:+.3f} req/s")'
        ),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "fig, ax = plt.subplots(figsize=(6, 3.2))\n"
            "for i, lam in enumerate(rates):\n"
            "    q = res.queue_end[i * n:(i + 1) * n]\n"
            "    t = res.clock_s[i * n]\n"
            '    ax.plot(t, q.mean(axis=0), label=f"λ = {lam:g} req/s")\n'
            "    ax.fill_between(t, q.min(axis=0), q.max(axis=0), alpha=0.2)\n"
            'ax.set_xlabel("time (s)")\n'
            'ax.set_ylabel("waiting requests")\n'
            'ax.set_title("kvstab simulation, one replica, P/D 1:1")\n'
            "ax.legend()\n"
            "plt.show()"
        ),
        new_markdown_cell(
            "## 3. Maximal throughput of a saturated replica\n\n"
            "With an endless backlog the replica completes requests at μ_sim, to compare with "
            "the closed form μ."
        ),
        new_code_cell(
            "sat = simulate(Workload(law, Saturated()), system, "
            "num_steps=sized(8192, 1500),\n"
            "               num_trajectories=sized(16, 4), seed=1)\n"
            "s = sat.summary()\n"
            "print(f\"mu_sim = {s['throughput_per_s']:.3f} req/s, 95% CI \"\n"
            "      f\"[{s['throughput_ci'][0]:.3f}, {s['throughput_ci'][1]:.3f}]; \"\n"
            '      f"closed form mu = {rep.mu:.3f}")\n'
            "sat"
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def boundary() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Finding the stability boundary λ*\n\n"
            "The theorems bracket the boundary: μ(1−δ) ≤ λ* ≤ μ for a work-conserving policy. "
            "`kvstab.stability.estimate_boundary` finds where a given policy's boundary "
            "actually lies: a saturated run (μ_sim), then grids of arrival rates from an empty "
            "and from a loaded start, a drift test per rate and a fit of the queue growth rate "
            "slope = a·(λ − λ*), with a bootstrap CI.\n\n"
            "Here at a size that runs in about a minute on 2 CPU cores (6 rates × 4 runs × "
            '8,192 steps from each start); `precision="default"` or `"fine"` tightens '
            "the intervals."
        ),
        new_code_cell(
            "from kvstab import Independent, Uniform, analytic\n"
            "from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS\n"
            "from kvstab.tutorial import sized  # smaller runs when the tests execute this\n\n"
            "# the paper's 1:1 workload (the tests: short requests and a small KV cache)\n"
            "law, M, b = sized(\n"
            "    (Independent(Uniform(10, 1600), Uniform(10, 1600)), KV_CAPACITY_TOKENS, "
            "BATCH_TIME_S),\n"
            "    (Independent(Uniform(10, 200), Uniform(10, 200)), 8000, 0.02))\n"
            "rep = analytic.capacity(law, kv_capacity_tokens=M, chunk_tokens=CHUNK_TOKENS, "
            "batch_time_s=b)\n"
            'print(f"mu = {rep.mu:.3f} req/s, mu(1-delta) = {rep.mu_stable:.3f} req/s, "\n'
            '      f"delta = {rep.delta:.3f}")'
        ),
        new_code_cell(
            "from kvstab import stability\n"
            "from kvstab.sim import ConstantBatchTime, System\n\n"
            "system = System(kv_capacity_tokens=M, chunk_tokens=CHUNK_TOKENS, "
            "batch_time=ConstantBatchTime(b))\n"
            "res = stability.estimate_boundary(\n"
            '    law, system, precision="fast",\n'
            "    num_steps=sized(8192, 2000), grid_points=sized(6, 5),\n"
            "    replications=sized(4, 3), seed=0)\n"
            "print(res.summary_text())"
        ),
        new_markdown_cell(
            "The picture: the queue's growth rate against λ, from both starts, with μ, "
            "μ(1−δ), μ_sim and λ* marked (`kvstab.plotting.plot_boundary`)."
        ),
        new_code_cell(
            "from IPython.display import Image, display\n\n"
            "from kvstab.plotting import plot_boundary\n\n"
            'fig = plot_boundary(res, "boundary.png")\n'
            'display(Image("boundary.png"))'
        ),
        new_markdown_cell(
            "Read it as: below λ* the queue is stationary (growth ≈ 0); above it the queue "
            "grows at about λ − λ*, the rate at which arrivals exceed the backlogged "
            "replica's departures. For the default policy (FCFS, admission on current use, "
            "recompute preemption) λ* lies in the δ band [μ(1−δ), μ], as the two theorems "
            "allow. At this size the per-rate drift verdicts can all be 'inconclusive' (the "
            "windows are short, the intervals wide: squares in the plot); λ* does not need them, "
            "it comes from the growth line fitted to every backlogged loaded-start run."
        ),
        new_code_cell(
            "print(res.relation)\n"
            'print(f"lambda*/mu = {res.lambda_star / res.mu:.3f}, "\n'
            '      f"mu_sim/mu = {res.mu_sim / res.mu:.3f}")'
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def calibrate() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Calibrating to a real trace\n\n"
            "The paper's protocol (its LongBench experiment): fit the joint law p(s, o) on the "
            "first 80 % of a trace, and check the predicted E[g], hence μ, on the last 20 %. "
            "Here with the Azure LLM inference trace 2023 (conversation), located through "
            "`KVSTAB_DATA` or `<repo>/../shared/data`; without it the notebook makes a "
            "synthetic trace so that it still runs."
        ),
        new_code_cell(
            "import numpy as np\n\n"
            "from kvstab import reproduce, traces\n"
            "from kvstab.tutorial import sized  # smaller runs when the tests execute this\n\n"
            'path = reproduce.find_trace("AzureLLMInferenceTrace_conv.csv")\n'
            "if path is not None:\n"
            '    trace = traces.read_trace(path, fmt="azure")\n'
            "else:  # a synthetic stand-in with log-normal lengths and Poisson arrivals\n"
            "    rng = np.random.default_rng(0)\n"
            "    k = 4000\n"
            "    trace = traces.Trace(np.cumsum(rng.exponential(0.2, k)),\n"
            "                         np.clip(rng.lognormal(6.6, 1.0, k).round(), 1, 14000),\n"
            "                         np.clip(rng.lognormal(5.0, 0.9, k).round(), 1, 1000),\n"
            '                         source="synthetic")\n'
            "k = sized(len(trace.prompt), 3000)  # the whole trace (the tests: a prefix)\n"
            "trace = traces.Trace(trace.arrival_s[:k], trace.prompt[:k], trace.output[:k],\n"
            "                     source=trace.source)\n"
            "summ = trace.summary()\n"
            "print(f\"{summ['num_requests']} requests over {summ['span_s']:.0f} s, \"\n"
            "      f\"{summ['rate_per_s']:.2f} req/s\")\n"
            "print(\"prompt:\", summ['prompt'])\n"
            "print(\"output:\", summ['output'])"
        ),
        new_markdown_cell(
            "## Fit p(s, o) on 80 %, test E[g] on 20 %\n\n"
            "`kvstab.fit.fit_lengths` fits log-normal marginals joined by a Gaussian copula "
            "(maximum likelihood with optax) and compares E[g] of the fit with the held-out "
            "requests' empirical E[g]. b̄ = 0.0372 s is assumed (the trace has no batch "
            "timings)."
        ),
        new_code_cell(
            "from kvstab import fit\n"
            "from kvstab.paper import BATCH_TIME_S, CHUNK_TOKENS, KV_CAPACITY_TOKENS\n\n"
            "report = fit.fit_lengths(trace, 0.8, steps=sized(300, 60),\n"
            "                         kv_capacity_tokens=KV_CAPACITY_TOKENS, "
            "chunk_tokens=CHUNK_TOKENS,\n"
            "                         batch_time_s=BATCH_TIME_S)\n"
            "d = report.to_dict()\n"
            'print(d["fit"]["law"])\n'
            "print(f\"optimizer steps {d['fit']['steps']}, converged: {d['fit']['converged']}\")\n"
            "print(f\"E[g]: fit {d['mean_g_fit']:,.0f}, held-out {d['mean_g_test']:,.0f} \"\n"
            "      f\"({100 * d['rel_error_test']:+.2f} %)\")\n"
            "print(f\"mu:   fit {d['mu_fit']:.3f}, held-out {d['mu_test']:.3f}, \"\n"
            "      f\"train {d['mu_train']:.3f} req/s\")"
        ),
        new_markdown_cell(
            "On the whole trace the fitted law's E[g] lands within a few per cent of the "
            "held-out requests' (`kvstab reproduce`'s Table 2). On a short prefix (the "
            "tests run 3,000 requests) it need not: a single log-normal cannot follow the "
            "bimodal output lengths of a short stretch, and the trace drifts over the hour. "
            "Try `components=2`."
        ),
        new_markdown_cell(
            "## Check against a simulation of the held-out requests\n\n"
            "A saturated replica serving the held-out (s, o) pairs: its throughput μ_sim is "
            "the 'measurement' that the fitted closed form predicts."
        ),
        new_code_cell(
            "from kvstab.sim import Saturated, System, Workload, simulate\n\n"
            "train, test = trace.split(0.8)\n"
            "sat = simulate(Workload(test.joint_law(), Saturated()),\n"
            "               System(KV_CAPACITY_TOKENS, CHUNK_TOKENS),\n"
            "               num_steps=sized(8192, 1000), num_trajectories=sized(16, 4),\n"
            "               seed=0)\n"
            'mu_sim = sat.summary()["throughput_per_s"]\n'
            "print(f\"mu_sim = {mu_sim:.3f} req/s vs fitted mu = {d['mu_fit']:.3f} req/s \"\n"
            "      f\"(gap {100 * abs(d['mu_fit'] - mu_sim) / mu_sim:.1f} %)\")"
        ),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "fig, axes = plt.subplots(1, 2, figsize=(8, 3))\n"
            'for ax, key in zip(axes, ("prompt", "output"), strict=True):\n'
            '    qq = d["qq"][key]\n'
            '    ax.loglog(qq["data"], qq["fit"], ".", ms=3)\n'
            '    lim = [min(qq["data"]), max(qq["data"])]\n'
            '    ax.plot(lim, lim, "k--", lw=0.8)\n'
            '    ax.set_xlabel(f"held-out {key} quantiles (tokens)")\n'
            '    ax.set_ylabel("fitted quantiles (tokens)")\n'
            'fig.suptitle("QQ plots: law fitted on 80 % vs the held-out 20 %")\n'
            "fig.tight_layout()\n"
            "plt.show()"
        ),
        new_markdown_cell(
            "## Calibrate the simulator's batch time with `kvstab.calibrate`\n\n"
            "The law of (s, o) fixes E[g]; the batch time b̄ sets the time scale. "
            "`kvstab.calibrate.fit_batch_time` fits b̄ (or a linear batch-time model) to the "
            "completion times of an observed run by gradient descent along the simulated "
            "path (optax). With a server's log you would pass its arrival and completion "
            "times; here the first held-out requests replayed through the simulator at "
            "b̄ = 0.040 s stand in for that log, so the fit can be checked against the truth."
        ),
        new_code_cell(
            "from kvstab import calibrate\n"
            "from kvstab.sim import ConstantBatchTime, Outputs, Replay\n\n"
            "k = sized(300, 120)\n"
            "arr = test.arrival_s[:k] - test.arrival_s[0]\n"
            "s, o = test.prompt[:k], test.output[:k]\n"
            "truth = System(KV_CAPACITY_TOKENS, CHUNK_TOKENS, ConstantBatchTime(0.040))\n"
            "observed = simulate(Workload(arrivals=Replay(arr, s, o)), truth,\n"
            "                    num_steps=int(1.3 * (arr[-1] + 60) / 0.040),\n"
            "                    num_trajectories=1, outputs=Outputs(num_records=k))\n"
            'finish_s = observed.records["finish_s"][0]\n'
            "bt = calibrate.fit_batch_time(\n"
            "    arr, s, o, finish_s, kv_capacity_tokens=KV_CAPACITY_TOKENS,\n"
            '    chunk_tokens=CHUNK_TOKENS, init={"batch_time_s": 0.03})\n'
            "print(f\"fitted b = {bt.params['batch_time_s']:.4f} s (truth 0.0400 s) after \"\n"
            '      f"{len(bt.history)} optimizer steps, {bt.num_simulations} simulations")'
        ),
        new_code_cell(
            "fig, ax = plt.subplots(figsize=(5, 3))\n"
            "ax.semilogy(bt.history)\n"
            'ax.set_xlabel("optimizer step")\n'
            'ax.set_ylabel("mean squared error of completion times (s²)")\n'
            'ax.set_title("fit_batch_time: loss along the optimisation")\n'
            "plt.show()"
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def sweeps() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Sweeps: a (λ, M) stability map and a p99-TTFT map\n\n"
            "`kvstab.sweep` runs a grid × R replications (λ and M ride in one compiled call) "
            "and returns one row per point with 95 % CIs and the closed form's μ, μ(1−δ) beside "
            "it (docs/sweeps.md). Here: short requests (s, o uniform on 10..100) on a small KV "
            "cache, so that the map takes seconds; `kvstab sweep` runs the same from the shell."
        ),
        new_code_cell(
            "import kvstab\n"
            "from kvstab import Independent, Uniform\n"
            "from kvstab.tutorial import sized  # smaller runs when the tests execute this\n\n"
            "law = Independent(Uniform(10, 100), Uniform(10, 100))\n"
            'grid = {"workload": law, "kv_tokens": [2000, 4000],\n'
            '        "rate_fraction": [0.6, 0.9, 1.2]}\n'
            "res = kvstab.sweep(grid, replications=sized(8, 3), num_steps=sized(4096, 1024), "
            "seed=0)\n"
            "for r in res.rows:\n"
            "    print(f\"M={r['kv_tokens']:>6}  lambda/mu={r['rate_fraction']:.2f}  \"\n"
            "          f\"growth={r['queue_growth_per_s']:+.3f}/s  {r['verdict']:<12} \"\n"
            "          f\"theory: {r['theory']}\")"
        ),
        new_code_cell(
            "from IPython.display import Image, display\n\n"
            'res.plot("stability.png", "queue_growth_per_s")\n'
            'res.plot("ttft.png", "ttft_p99_s")\n'
            'display(Image("stability.png"), Image("ttft.png"))\n'
            'print(f"{len(res.rows)} points, {res.compilations} compilation(s)")'
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def policies() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Which scheduling policy keeps μ?\n\n"
            "μ = M/(b̄·E[g]) bounds the throughput of every policy (Theorem 4.1). "
            "`kvstab.compare.compare_policies` measures how close each named policy preset "
            "(`kvstab.policies`) gets: the saturated throughput μ_sim, the critical rate λ* "
            "from a loaded and an empty start (metastability when they disagree), "
            "preemptions per completion and the p99 wait at 0.8·μ. The command line does the "
            "same: `kvstab compare --policies vllm,swap --plot policies.png`. Here: short "
            "prompts and long outputs on a small KV cache (many preemptions), three presets "
            "at the `tiny` precision, which takes a minute; the README's table is the full run."
        ),
        new_code_cell(
            "from kvstab import Independent, Uniform\n"
            "from kvstab.paper import CHUNK_TOKENS\n"
            "from kvstab.policies import DESCRIPTIONS, policy_presets\n"
            "from kvstab.sim import ConstantBatchTime, System\n\n"
            "law = Independent(Uniform(10, 100), Uniform(50, 600))\n"
            "system = System(6000, CHUNK_TOKENS, ConstantBatchTime(0.02))\n"
            "for name in policy_presets(law):\n"
            "    print(f\"{name:16s} {DESCRIPTIONS.get(name, '')}\")"
        ),
        new_code_cell(
            "from kvstab.compare import compare_policies\n\n"
            'names = ["vllm", "swap", "reserve-oracle"]\n'
            'res = compare_policies(law, system, names, precision="tiny", seed=0, progress=False)\n'
            "print(res.table_text())"
        ),
        new_markdown_cell(
            "Left: λ*/μ per policy with its 95 % CI (filled: loaded start; open: empty "
            "start), μ(1−δ)/μ dashed. Right: preemptions per completion and the p99 wait."
        ),
        new_code_cell(
            "from IPython.display import Image, display\n\n"
            'res.plot("policies.png")\n'
            'display(Image("policies.png"))\n'
            "for r in res.rows:\n"
            "    print(f\"{r['policy']}: lambda*/mu = {r['lambda_star_over_mu']:.3f}, \"\n"
            "          f\"preemptions/completion = {r['preemptions_per_completion']:.2f}\")"
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def _meta() -> dict:
    return {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_finding_the_boundary.ipynb": boundary,
    "03_calibrating_to_a_trace.ipynb": calibrate,
    "04_sweeps.ipynb": sweeps,
    "05_policies.ipynb": policies,
}


def execute(nb: nbformat.NotebookNode, cwd: Path) -> None:
    """Run a notebook in a fresh kernel (inline figures), storing its outputs."""
    import nbclient

    nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(cwd)}}
    ).execute()


def main() -> None:
    import sys
    import tempfile

    run = "--execute" in sys.argv[1:]
    only = [a for a in sys.argv[1:] if not a.startswith("--")]  # e.g. 02_finding_the_boundary
    for name, make in NOTEBOOKS.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        nb = make()
        nbformat.validate(nb)
        if run:
            with tempfile.TemporaryDirectory() as tmp:  # files the notebooks write go there
                execute(nb, Path(tmp))
        nbformat.write(nb, HERE / name)
        print(HERE / name)


if __name__ == "__main__":
    main()
