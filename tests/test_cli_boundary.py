"""`kvstab boundary`: JSON keys, results file, plot, progress on stderr, one-line errors."""

import json

import pytest

from kvstab import SIM_SEMANTICS_VERSION, __version__
from kvstab.cli import main

# A small workload with short lifetimes (about 106 steps), so that a tiny run already spans
# many lifetimes: mu is about 32 req/s.
SMALL = [
    "--prompt",
    "uniform:10:200",
    "--output",
    "uniform:10:200",
    "--kv-tokens",
    "20000",
    "--batch-time",
    "0.0372",
    "--precision",
    "fast",
    "--steps",
    "4096",
    "--trajectories",
    "3",
    "--grid-points",
    "5",
    "--seed",
    "2",
]


def run(capsys, *argv):
    code = main(["boundary", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_boundary_json_out_plot_and_progress(capsys, tmp_path):
    plot = tmp_path / "boundary.png"
    results = tmp_path / "boundary.json"
    code, out, err = run(capsys, *SMALL, "--json", "--plot", str(plot), "--out", str(results))
    assert code == 0, err
    d = json.loads(out)
    for key in ("lambda_star", "ci_low", "ci_high", "mu", "mu_stable", "mu_sim", "mu_sim_ci"):
        assert key in d
    assert d["ci_low"] <= d["lambda_star"] <= d["ci_high"]
    assert d["lambda_star"] < d["mu"]
    assert len(d["mu_sim_ci"]) == 2
    assert d["config"]["precision"] == "fast" and d["seed"] == 2
    assert d["kvstab_version"] == __version__
    assert d["sim_semantics_version"] == SIM_SEMANTICS_VERSION
    assert {r["verdict"] for r in d["grid"]} <= {"stable", "unstable", "inconclusive"}
    saved = json.loads(results.read_text())
    assert saved["lambda_star"] == d["lambda_star"] and saved["config"] == d["config"]
    assert plot.stat().st_size > 10_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "%" in err and "elapsed" in err  # progress on stderr


def test_boundary_human_summary_quiet(capsys):
    code, out, err = run(capsys, *SMALL, "--quiet")
    assert code == 0, err
    assert err == ""
    assert "lambda*" in out and "mu_sim" in out and "mu(1-delta)" in out


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--trajectories", "1"], "--trajectories"),
        (["--steps", "10"], "--steps"),
        (["--grid-points", "1"], "--grid-points"),
        (["--kv-tokens", "0"], "--kv-tokens"),
        (["--batch-time", "-1"], "--batch-time"),
        (["--prompt", "lognormal:100:1"], "--prompt"),
        (["--kv-tokens", "1000"], "--prompt/--output"),
        (["--plot", "/nonexistent-dir/x.png"], "--plot"),
        (["--out", "/nonexistent-dir/x.json"], "--out"),
        (["--initial-queue", "0"], "--initial-queue"),
    ],
)
def test_boundary_bad_input_one_line_exit_2(capsys, argv, flag):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], err


def test_boundary_bad_choice_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["boundary", "--precision", "huge"])
    assert e.value.code == 2
    assert "--precision" in capsys.readouterr().err
