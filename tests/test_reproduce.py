"""`kvstab reproduce --quick` regenerates every figure and table, and Table 1 agrees with the
closed form.

This runs the whole quick reproduction (about 5 minutes on 2 CPU cores), so it is marked slow:
`python -m pytest -m slow` runs it. The default (fast) run draws every figure and table from
small results files instead (tests/test_paper_figures.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The scripts every run must produce, listed once.
from test_paper_figures import EXPERIMENTS, FIGURES, TABLES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _reproduce(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, KVSTAB_REPO=str(ROOT))
    env.pop("KVSTAB_TOY", None)
    cmd = [
        sys.executable,
        "-m",
        "kvstab",
        "reproduce",
        "--quick",
        "--results",
        str(tmp / "results"),
        "--out",
        str(tmp / "out"),
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    proc = _reproduce(tmp=tmp)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return tmp, proc


def test_every_figure_and_table_is_written(quick_run):
    tmp, _ = quick_run
    out = tmp / "out"
    missing = [
        f"{s}.{e}"
        for s in FIGURES
        for e in ("png", "pdf")
        if not (out / f"{s}.{e}").is_file() or (out / f"{s}.{e}").stat().st_size < 2000
    ]
    missing += [
        f"{t}.{e}" for t in TABLES for e in ("md", "json") if not (out / f"{t}.{e}").is_file()
    ]
    assert not missing, f"missing or empty: {missing}"
    for t in TABLES:
        json.loads((out / f"{t}.json").read_text())  # valid JSON
        assert (out / f"{t}.md").read_text().startswith("### ")


def test_results_files_record_config_seed_and_versions(quick_run):
    from kvstab import SIM_SEMANTICS_VERSION, __version__

    tmp, _ = quick_run
    for name in EXPERIMENTS:
        r = json.loads((tmp / "results" / f"{name}.json").read_text())
        assert r["status"] in ("ok", "skipped"), (name, r.get("reason"))
        assert r["kvstab_version"] == __version__
        assert r["sim_semantics_version"] == SIM_SEMANTICS_VERSION
        assert r["quick"] is True
        assert "seed" in r and "config" in r and "data" in r


def test_table1_mu_sim_within_3_percent_of_mu_theory(quick_run):
    tmp, _ = quick_run
    table = json.loads((tmp / "out" / "table1.json").read_text())
    rows = {r["workload"]: r for r in table["data"]}
    assert set(rows) >= {"1:1", "2:1", "1:2", "Mixed"}
    for name, r in rows.items():
        gap = abs(r["mu_sim"] - r["mu_theory"]) / r["mu_theory"]
        assert gap < 0.03, f"{name}: mu_sim {r['mu_sim']:.4f} vs mu_theory {r['mu_theory']:.4f}"
        lo, hi = r["mu_sim_ci"]
        assert lo <= r["mu_sim"] <= hi
        assert r["paper_mu_gpu"] is not None and r["paper_mu_theory"] is not None
    # kvstab's closed form with the paper's g reproduces the paper's mu_theory (3 decimals)
    for name in ("1:1", "2:1", "1:2"):
        assert abs(rows[name]["mu_theory_paper_form"] - rows[name]["paper_mu_theory"]) < 6e-4


def test_state_aware_routers_queue_less_than_round_robin(quick_run):
    tmp, _ = quick_run
    r = json.loads((tmp / "results" / "routers.json").read_text())
    series = r["data"]["series"]
    assert r["data"]["flags"] == []
    for i, row in enumerate(series["round_robin"]):
        if row["load"] < 0.9:
            continue  # at light load every router keeps the queue near zero
        rr = row["mean_queue"]
        assert series["jsq"][i]["mean_queue"] < rr, (row["load"], series["jsq"][i], rr)
        assert series["least_kv"][i]["mean_queue"] < rr, (row["load"], series["least_kv"][i], rr)
        for router in series:  # every router carries the load
            thr = series[router][i]["throughput_per_s"]
            assert abs(thr / row["rate_per_s"] - 1) < 0.05, (router, row["load"], thr)


def test_finished_experiments_are_not_rerun(quick_run):
    tmp, _ = quick_run
    before = (tmp / "results" / "table3_replicas.json").stat().st_mtime_ns
    proc = _reproduce("--only", "table3_replicas", tmp=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "up to date" in proc.stderr
    assert (tmp / "results" / "table3_replicas.json").stat().st_mtime_ns == before
    assert (tmp / "out" / "table3_replicas.md").is_file()


def test_progress_goes_to_stderr(quick_run):
    _, proc = quick_run
    assert f"[1/{len(EXPERIMENTS) + len(FIGURES) + len(TABLES)}]" in proc.stderr
    assert "done in" in proc.stderr
