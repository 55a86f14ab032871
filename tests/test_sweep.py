"""kvstab.sweep / `kvstab sweep`: one compilation per static combination, points reproduce
single simulate calls, resumable tables, bad grids as one error, the stability map."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kvstab.cli import main
from kvstab.errors import InputError
from kvstab.laws import Independent, Uniform
from kvstab.sim import simulate
from kvstab.sweep import SweepResult, point_seed, sweep

LAW = Independent(Uniform(10, 100), Uniform(10, 100))
GRID = {"workload": LAW, "kv_tokens": [3000, 6000], "rate_fraction": [0.5, 1.3]}
RUN = dict(replications=3, num_steps=256, chunk_points=2, seed=3)
CLI_GRID = ["--prompt", "uniform:10:100", "--output", "uniform:10:100", "--kv-tokens",
            "3000,6000", "--rate-fraction", "0.5,1.3", "--replications", "3", "--steps", "256",
            "--chunk-points", "2", "--seed", "3"]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


# The default run keeps the checks that simulate nothing (the test command's time budget);
# those that simulate are marked slow (CI runs them: about a minute on 2 cores).


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> SweepResult:
    return sweep(GRID, out=tmp_path_factory.mktemp("sweep") / "out", **RUN)


@pytest.mark.slow
def test_one_compilation_for_every_chunk_and_points_reproduce_simulate(small):
    assert small.chunks_run == 2 and len(small.rows) == 4
    assert small.compilations == 1  # two chunks of one static combination
    for i in (1, 2):
        row = small.rows[i]
        assert row["seed"] == point_seed(3, i)
        res = simulate(**small.simulate_args(i))
        assert res.throughput_per_traj().mean() == row["throughput_per_s"]
        w = res.warmup_blocks
        kv = res.kv_tokens[:, w:].astype(np.float64).mean(axis=1).mean()
        assert kv == pytest.approx(row["mean_kv_tokens"], rel=1e-9)


@pytest.mark.slow
def test_table_files_and_resume_through_the_cli(small, capsys):
    out = small.out
    csv_text = (out / "sweep.csv").read_text()
    assert csv_text == small.to_csv()
    assert csv_text.splitlines()[0].split(",")[0] == "point"
    side = json.loads((out / "sweep.json").read_text())
    assert side["complete"] and side["seed"] == 3 and side["axes"]["kv_tokens"] == [3000, 6000]
    assert {"kvstab_version", "sim_semantics_version"} <= set(side["provenance"])
    # The same command from the command line finds every chunk on disk: nothing re-runs.
    code = main(["sweep", *CLI_GRID, "--out", str(out), "--json", "--quiet"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["throughput_per_s"] for r in rows] == [r["throughput_per_s"] for r in small.rows]
    assert (out / "sweep.csv").read_text() == csv_text


@pytest.mark.slow
def test_metrics_columns_and_theory(small):
    for r in small.rows:
        assert r["mu_stable"] < r["mu"] and r["rate"] == pytest.approx(r["rate_fraction"] * r["mu"])
        assert r["throughput_per_s_lo"] <= r["throughput_per_s"] <= r["throughput_per_s_hi"]
        assert r["theory"] == ("stable" if r["rate_fraction"] < 1 else "unstable")
        assert 0 < r["mean_kv_tokens"] <= r["kv_tokens"]
        assert r["ttft_p50_s"] <= r["ttft_p99_s"] and r["wait_p50_s"] <= r["latency_p50_s"]
    # 256 steps are ~5 lifetimes of this law: too short a window for a verdict, said per row
    assert all(r["note"] for r in small.rows if r["verdict"] == "inconclusive")


@pytest.mark.slow
def test_to_pandas_or_clear_error(small):
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="rows"):
            small.to_pandas()
    else:
        assert list(small.to_pandas().columns) == small.columns


@pytest.mark.slow
def test_plot_heat_map_and_lines(small, tmp_path):
    assert small.plot(tmp_path / "map.png").stat().st_size > 0
    with pytest.raises(InputError, match="png"):
        small.plot(tmp_path / "map.gif")


def test_changed_configuration_is_refused_naming_it(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # writes sweep.json, runs nothing
        sweep(GRID, out=tmp_path, stop_after_chunks=0, **RUN)
    with pytest.raises(InputError, match=r"kv_tokens: \[3000, 6000\] -> \[3000, 7000\]"):
        sweep(dict(GRID, kv_tokens=[3000, 7000]), out=tmp_path, **RUN)


@pytest.mark.parametrize(
    "grid, field",
    [
        ({"rate": [1.0], "kv_tokens": []}, "kv_tokens"),
        ({"rate": [1.0, "x"]}, "rate"),
        ({"rate": [1.0], "temperature": [1]}, "temperature"),
        ({"rate": [1.0], "rate_fraction": [0.5]}, "rate"),
        ({"rate_fraction": [0.5], "kv_tokens": [2000]}, "kv_tokens"),  # below max(s+o)
        ({"rate": [1.0], "admission": ["greedy"]}, "admission"),
    ],
)
def test_bad_grids_name_the_axis(grid, field):
    with pytest.raises(InputError) as e:
        sweep(grid, replications=2, num_steps=64)
    assert e.value.field == field


def test_grid_too_big_for_memory_before_allocating():
    with pytest.raises(InputError) as e:
        sweep(dict(GRID), replications=4, num_steps=256, memory_bytes=10_000)
    assert e.value.field == "replications" and "GiB" in e.value.message


def test_cli_bad_grid_is_one_line_exit_2(capsys):
    assert main(["sweep", "--kv-tokens", "4000,abc", "--rate", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kv-tokens" in err[0]
    assert main(["sweep", "--rate", "1", "--plot", "x.gif"]) == 2


# ---------------------------------------------------------------------------------------------
# Slow: interruption, several processes, the stability map against the closed form


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KVSTAB_CPU_DEVICES="1")
    return subprocess.Popen([sys.executable, "-m", "kvstab", "sweep", *args, "--quiet"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, **kw)  # fmt: skip


KILL_GRID = [*CLI_GRID[:-4], "--chunk-points", "1", "--seed", "5"]


@pytest.fixture(scope="module")
def whole_csv(tmp_path_factory) -> str:
    """The table of an uninterrupted one-process run of KILL_GRID."""
    whole = tmp_path_factory.mktemp("whole")
    assert _cli([*KILL_GRID, "--out", str(whole)]).wait(600) == 0
    return (whole / "sweep.csv").read_text()


@pytest.mark.slow
def test_kill_9_and_rerun_gives_the_uninterrupted_table(tmp_path, whole_csv):
    cut = tmp_path / "cut"
    p = _cli([*KILL_GRID, "--out", str(cut)])
    t0 = time.monotonic()
    while not (cut / "chunks" / "chunk-00000.json").exists():
        assert p.poll() is None and time.monotonic() - t0 < 600
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (cut / "sweep.csv").exists()
    assert len(list((cut / "chunks").glob("chunk-*.json"))) < 4
    assert _cli([*KILL_GRID, "--out", str(cut)]).wait(600) == 0
    assert (cut / "sweep.csv").read_text() == whole_csv


@pytest.mark.slow
def test_two_processes_give_the_one_process_table(tmp_path, whole_csv):
    two = tmp_path / "two"
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    dist = ["--distributed", "--coordinator", f"localhost:{port}", "--num-processes", "2"]
    ps = [_cli([*KILL_GRID, "--out", str(two), *dist, "--process-id", str(i)]) for i in (0, 1)]
    assert [p.wait(600) for p in ps] == [0, 0]
    assert (two / "sweep.csv").read_text() == whole_csv
    done = [json.loads(f.read_text())["chunk"] for f in (two / "chunks").glob("*.json")]
    assert sorted(done) == [0, 1, 2, 3]


@pytest.mark.slow
def test_stability_map_matches_the_closed_form():
    # Short requests (lifetimes ~60 steps): a 4096-step run is ~50 lifetimes after warm-up.
    law = Independent(Uniform(10, 100), Uniform(10, 100))
    res = sweep(
        {"workload": law, "kv_tokens": [2000, 4000], "rate_fraction": [0.6, 0.8, 1.2, 1.4]},
        replications=8,
        num_steps=4096,
        seed=1,
    )
    assert res.compilations <= 1
    for r in res.rows:
        if r["rate"] < 0.9 * r["mu_stable"]:
            assert r["verdict"] == "stable", r
        if r["rate"] > 1.15 * r["mu"]:
            assert r["verdict"] == "unstable", r
            assert r["queue_growth_per_s"] > 0


def test_cli_grid_file_feeds_the_same_checks(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text("rate_fraction = [0.5, 0.9]\nkv_tokens = []\nreplications = 2\n")
    assert main(["sweep", "--grid", str(grid)]) == 2
    assert "--kv-tokens: is an empty axis" in capsys.readouterr().err
    grid.write_text("rate_fraction = [0.5\n")
    assert main(["sweep", "--grid", str(grid)]) == 2
    assert "--grid" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", [[1, 2, 3], [], [1, -2]])
def test_simulate_group_seeds_must_split_the_trajectories_evenly(seeds):
    from kvstab.sim import Poisson, Workload

    with pytest.raises(InputError) as e:
        simulate(Workload(LAW, Poisson(1.0)), num_trajectories=4, num_steps=8, seed=seeds)
    assert e.value.field == "seed"
