"""`kvstab simulate`: the JSON keys the issue asks for, routers, one-line errors."""

import json

import pytest

from kvstab.cli import main

SMALL = ["--prompt", "uniform:10:400", "--output", "uniform:10:400", "--kv-tokens", "20000"]
KEYS = {
    "throughput_per_s",
    "throughput_ci",
    "mean_kv_tokens",
    "max_kv_tokens",
    "preemptions_per_completion",
    "mean_queue",
    "queue_slope_per_s",
    "flags",
}


@pytest.mark.parametrize("router", ["round_robin", "jsq", "least_kv"])
def test_json_over_replicas(capsys, router):
    argv = ["simulate", *SMALL, "--rate", "20", "--replicas", "4", "--router", router]
    code = main([*argv, "--steps", "1024", "--trajectories", "2", "--json", "--quiet"])
    out, _ = capsys.readouterr()
    assert code == 0
    d = json.loads(out)
    assert KEYS <= set(d)
    assert d["flags"] == [] and d["max_kv_tokens"] <= 20000
    assert d["config"]["router"] == router and d["config"]["num_replicas"] == 4
    assert 0.9 * 20 < d["throughput_per_s"] < 1.1 * 20  # stable: completions keep up with λ


def test_dynamic_router_with_random_batch_time_is_one_line_error(capsys):
    argv = ["simulate", *SMALL, "--rate", "20", "--replicas", "2", "--router", "jsq"]
    code = main([*argv, "--batch-time-model", "random", "--steps", "64"])
    _, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--router" in lines[0] and "constant" in lines[0], err
