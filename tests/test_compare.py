"""`kvstab compare` and kvstab.compare.compare_policies: one row per policy, the documented
keys, sane ordering between policies, resumable results, one-line errors.

The default run checks the command line's cheap paths (--list, bad --policies) and draws
the table and the figure from a stored results file (tests/data/compare_tiny.json, written by
``kvstab compare --precision tiny --out``); the simulations (about 20 s per policy on 2 CPU
cores, mostly compilation) are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstab.cli import main
from kvstab.compare import PRECISIONS, CompareResult, compare_policies, load_result
from kvstab.errors import InputError
from kvstab.laws import Independent, Uniform
from kvstab.policies import DESCRIPTIONS, policy_presets
from kvstab.sim import ConstantBatchTime, System

STORED = Path(__file__).resolve().parent / "data" / "compare_tiny.json"
# Short requests, long outputs and a small KV cache: many preemptions, runs of seconds.
LAW = Independent(Uniform(10, 100), Uniform(50, 600))
SYSTEM = System(6000, 512, ConstantBatchTime(0.02))
TINY_FLAGS = [
    "--prompt", "uniform:10:100", "--output", "uniform:50:600",
    "--kv-tokens", "6000", "--batch-time", "0.02", "--precision", "tiny",
]  # fmt: skip
ROW_KEYS = {
    "policy", "description", "mu", "mu_stable", "delta", "mu_sim", "mu_sim_ci", "lambda_star",
    "ci_low", "ci_high", "lambda_star_over_mu", "lambda_star_empty", "lambda_star_empty_ci",
    "metastable", "preemptions_per_completion", "mean_kv_tokens", "kv_utilization",
    "p99_wait_s", "p99_wait_ci", "load_rate",
}  # fmt: skip


def test_list_prints_every_preset_with_its_description(capsys):
    assert main(["compare", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    table = policy_presets(LAW)
    assert [line.split()[0] for line in out] == list(table)
    for line, name in zip(out, table, strict=True):
        assert DESCRIPTIONS[name] in line


@pytest.mark.parametrize("value", ["vllm,no-such-policy", ",", "VLLM"])
def test_unknown_policy_exits_2_naming_the_flag_and_the_presets(capsys, value):
    assert main(["compare", "--policies", value]) == 2
    err = capsys.readouterr().err
    assert "--policies" in err and "Traceback" not in err
    for name in policy_presets(LAW):
        assert name in err


def test_bad_python_input_is_one_input_error():
    with pytest.raises(InputError) as e:
        compare_policies(LAW, SYSTEM, ["vllm", "nope"], progress=False)
    assert e.value.field == "policies" and "swap" in e.value.message
    with pytest.raises(InputError) as e:
        compare_policies(LAW, SYSTEM, ["vllm", "vllm"], progress=False)
    assert e.value.field == "policies"
    with pytest.raises(InputError) as e:
        compare_policies(LAW, SYSTEM, ["vllm"], precision="huge", progress=False)
    assert e.value.field == "precision" and all(p in e.value.message for p in PRECISIONS)
    with pytest.raises(InputError) as e:
        compare_policies(LAW, SYSTEM, ["vllm"], load_factor=1.2, progress=False)
    assert e.value.field == "load_factor"


def test_stored_results_give_an_aligned_table_json_and_a_figure(tmp_path):
    res = load_result(STORED)
    assert isinstance(res, CompareResult) and res.rows
    text = res.table_text()
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("policy"))
    body = lines[header + 2 : header + 2 + len(res.rows)]
    assert [line.split()[0] for line in body] == [r["policy"] for r in res.rows]
    assert len({len(line) for line in lines[header : header + 2 + len(res.rows)]}) == 1
    assert f"{res.theory['mu']:.3f}" in text
    again = json.loads(res.to_json())
    assert again["rows"] == res.to_dict()["rows"]
    assert again["seed"] == res.seed and again["sim_semantics_version"] >= 1
    assert again["kvstab_version"] and again["config"]["precision"] == "tiny"
    png = tmp_path / "c.png"
    res.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


# ---------------------------------------------------------------------------------------------
# Simulations (slow: each policy compiles the simulator)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare") / "c.json"
    res = compare_policies(
        LAW,
        SYSTEM,
        ["vllm", "swap", "reserve-oracle"],
        precision="tiny",
        seed=3,
        progress=False,
        results_path=path,
    )
    return res, path


@pytest.mark.slow
def test_one_row_per_policy_with_the_documented_keys(tiny):
    res, _ = tiny
    assert [r["policy"] for r in res.rows] == ["vllm", "swap", "reserve-oracle"]
    for r in res.rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["mu_sim_ci"][0] <= r["mu_sim"] <= r["mu_sim_ci"][1]
        assert r["mu_stable"] < r["mu"]
        assert r["lambda_star_over_mu"] == pytest.approx(r["lambda_star"] / r["mu"])
        assert 0 < r["kv_utilization"] <= 1
        assert r["p99_wait_s"] >= r["p50_wait_s"] >= 0
        assert r["load_rate"] == pytest.approx(0.8 * r["mu"])


@pytest.mark.slow
def test_policies_rank_as_the_model_says(tiny):
    res, _ = tiny
    vllm, swap, oracle = (res.row(n) for n in ("vllm", "swap", "reserve-oracle"))
    assert oracle["preemptions_per_completion"] == 0  # it reserves s+o: never overflows
    assert vllm["preemptions_per_completion"] > 0
    # swap keeps the work recompute throws away: fewer preemptions, no less throughput
    assert swap["preemptions_per_completion"] < vllm["preemptions_per_completion"]
    assert swap["mu_sim_ci"][1] >= vllm["mu_sim"]
    # reserving the peak leaves memory idle: below the greedy policies
    assert oracle["mu_sim"] < vllm["mu_sim"] and oracle["kv_utilization"] < vllm["kv_utilization"]
    for r in res.rows:  # no policy beats the closed form beyond its CI (Theorem 4.1)
        assert r["mu_sim_ci"][0] <= r["mu"] * 1.02


@pytest.mark.slow
def test_results_file_resumes_finished_policies(tiny):
    res, path = tiny
    stored = json.loads(Path(path).read_text())
    assert stored["provenance"]["sim_semantics_version"] == res.sim_semantics_version
    assert stored["config"]["seed"] == 3 and len(stored["rows"]) == 3
    again = compare_policies(
        LAW, SYSTEM, ["reserve-oracle", "vllm"], precision="tiny", seed=3, progress=False,
        results_path=path,
    )  # fmt: skip
    assert again.resumed == ["reserve-oracle", "vllm"]
    assert again.rows == [res.row("reserve-oracle"), res.row("vllm")]


@pytest.mark.slow
def test_cli_json_rows(capsys, tmp_path):
    out = tmp_path / "r.json"
    plot = tmp_path / "r.png"
    argv = ["compare", *TINY_FLAGS, "--policies", "reserve-oracle", "--json", "--quiet"]
    assert main([*argv, "--out", str(out), "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    (row,) = data["rows"]
    for key in ("policy", "mu_sim", "lambda_star", "ci_low", "ci_high", "metastable"):
        assert key in row
    assert row["policy"] == "reserve-oracle" and row["preemptions_per_completion"] == 0
    assert json.loads(out.read_text())["rows"] == data["rows"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
