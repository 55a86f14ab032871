"""`kvstab report` and :mod:`kvstab.report`: the verdict words in the three regimes, the
text never contradicting itself, one-line errors, --json keys and --plot (tiny sizes; the
runs that compile the simulator are marked slow), and the shared display of result objects."""

import json
import math
import re

import pytest

from kvstab import analytic
from kvstab.cli import main
from kvstab.display import fmt, html_table, text_table
from kvstab.laws import Independent, parse_law
from kvstab.report import Report, lambda_star_phrase, verdict_phrase

MU, MU_STABLE = 3.262, 3.182
TINY = [
    "--prompt",
    "uniform:10:200",
    "--output",
    "uniform:10:200",
    "--kv-tokens",
    "4000",
    "--rate",
    "1",
    "--trajectories",
    "3",
    "--steps",
    "512",
    "--boundary-rates",
    "3",
    "--boundary-runs",
    "2",
    "--boundary-steps",
    "600",
    "--quiet",
]


def regime(rate):
    return verdict_phrase(rate, MU, MU_STABLE, analytic.gpus_needed(rate, MU, 0.9), 0.9)


def test_verdict_stable_says_one_replica_is_enough_and_why_two():
    text = regime(3.0)
    assert text.startswith("One replica is enough to be stable")
    assert "for <= 90 % utilisation use 2" in text
    assert "unstable" not in text and "between the bounds" not in text


def test_verdict_between_the_bounds_defers_to_the_policy():
    text = regime(3.2)
    assert "between the bounds" in text and "depends on the policy" in text
    assert "enough to be stable" not in text and "unstable" not in text


def test_verdict_unstable_gives_the_replicas_needed_for_stability():
    text = regime(7.0)
    assert "One replica is unstable" in text
    assert "at least 3 replicas are needed for stability" in text  # ceil(7 / 3.262)
    assert "enough to be stable" not in text


@pytest.mark.parametrize("rate", [0.5, 3.0, 3.2, 3.262, 3.3, 20.0])
def test_verdict_matches_the_closed_form_verdict(rate):
    words = {
        "stable": "enough to be stable",
        "in the delta band": "between the bounds",
        "unstable": "is unstable",
    }
    text = regime(rate)
    v = analytic.verdict(rate, MU, MU_STABLE)
    assert words[v] in text
    assert sum(w in text for w in words.values()) == 1


def test_lambda_star_phrase_three_cases():
    assert "below the simulated lambda*" in lambda_star_phrase(3.0, 3.2, 3.15, 3.25)
    assert "above the simulated lambda*" in lambda_star_phrase(3.3, 3.2, 3.15, 3.25)
    assert "too close to call" in lambda_star_phrase(3.2, 3.2, 3.15, 3.25)
    assert "could not" in lambda_star_phrase(3.0, math.nan, math.nan, math.nan)


def fake_report(rate=3.0):
    """A Report from the closed form and made-up simulation numbers (no simulator run)."""
    law = Independent(parse_law("uniform:10:1600", "p"), parse_law("uniform:10:1600", "o"))
    cap = analytic.capacity(
        law, kv_capacity_tokens=131000, chunk_tokens=512, batch_time_s=0.0372, rate_per_s=rate
    )
    ci = lambda m: {"mean": m, "ci": [0.5 * m, 1.5 * m]}  # noqa: E731
    sim = {
        "throughput_per_s": 2.97,
        "throughput_ci": [2.9, 3.0],
        "mean_queue": ci(4.25),
        "wait_s": {"p50": ci(0.625), "p99": ci(6.75)},
        "ttft_s": {"p50": ci(0.875), "p99": ci(7.5)},
        "preemptions_per_completion": 1.5,
        "completed": 100,
        "flags": [],
        "warmup_s": 75.0,
        "wall_s": 1.0,
    }
    cfg = {
        "workload": cap.workload,
        "rate_per_s": rate,
        "sim_trajectories": 4,
        "sim_steps": 512,
        "warmup_frac": 0.25,
        "boundary": None,
        "slo": None,
    }
    return Report(
        config=cfg,
        capacity=cap,
        simulation=sim,
        boundary=None,
        gpus_rho=cap.gpus,
        gpus_slo=None,
        wall_s=2.0,
        verdict=verdict_phrase(rate, cap.mu, cap.mu_stable, cap.gpus, 0.9),
    )


def test_report_text_repr_and_html_carry_the_numbers():
    r = fake_report()
    text = r.text()
    for needle in (
        "3.262",
        "3.182",
        "4.25",
        "6.75",
        "7.5",
        "1.5 per completed request",
        "enough to be stable",
    ):
        assert needle in text
    assert text.count("verdict") == 1
    assert "6.75" in repr(r) and "3.262" in repr(r)
    html = r._repr_html_()
    assert html.startswith("<table>") and "6.75" in html and "3.182" in html
    assert set(r.to_dict()) >= {"config", "capacity", "simulation", "boundary", "verdict"}
    json.dumps(r.to_dict(), allow_nan=False)


def test_report_text_says_when_waits_are_censored():
    r = fake_report(7.0)
    assert "still queued" not in r.text()
    r.simulation.update(not_admitted=12, arrived_after_warmup=1000)
    text = r.text()
    assert "still queued 12 of 1000 requests (1.2 %)" in text and "too low" not in text
    r.simulation.update(not_admitted=300)
    assert "too low" in r.text() and "One replica is unstable" in r.text()


def test_capacity_report_repr_and_html():
    r = fake_report(3.0).capacity
    assert f"{r.mu:.4g}" in repr(r) and f"{r.mu_stable:.4g}" in repr(r)
    assert f"{r.mu:.4g}" in r._repr_html_() and "<td" in r._repr_html_()
    assert r.summary()["verdict"] == "stable"


def test_display_helpers():
    rows = {"a": 1.23456, "pair": [1.0, 2.0], "none": None, "flag": True, "<b>": "x&y"}
    t = text_table("T", rows)
    assert t.splitlines()[0] == "T" and "1.235" in t and "[1, 2]" in t and "yes" in t
    h = html_table("T", rows)
    assert "&lt;b&gt;" in h and "x&amp;y" in h
    assert fmt(float("nan")) == "nan" and fmt(123456) == "123,456"


@pytest.mark.parametrize(
    "flags,flag",
    [
        (["--rate", "0"], "--rate"),
        (["--trajectories", "1"], "--trajectories"),
        (["--steps", "10"], "--steps"),
        (["--boundary-runs", "1"], "--boundary-runs"),
    ],
)
def test_bad_input_one_line_naming_the_flag(capsys, flags, flag):
    assert main(["report", *flags, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {flag}:" in err


# --- runs of the simulator (compilation dominates: ~20-40 s on a loaded 2-core machine) ------


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    png = tmp_path_factory.mktemp("report") / "page.png"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["report", *TINY, "--json", "--plot", str(png), "--out", str(png) + ".json"])
    assert code == 0
    return json.loads(buf.getvalue()), png


@pytest.mark.slow
def test_cli_json_keys_and_plot(tiny_json):
    d, png = tiny_json
    assert set(d) == {
        "config",
        "capacity",
        "simulation",
        "boundary",
        "gpus_rho",
        "gpus_slo",
        "verdict",
        "wall_s",
    }
    s = d["simulation"]
    for name in ("wait_s", "ttft_s"):
        for p in ("p50", "p99"):
            lo, hi = s[name][p]["ci"]
            assert 0 <= lo <= s[name][p]["mean"] <= hi
        assert s[name]["p50"]["mean"] <= s[name]["p99"]["mean"]
    b = d["boundary"]
    assert b["ci_low"] <= b["lambda_star"] <= b["ci_high"]
    assert d["config"]["sim_trajectories"] == 3 and d["config"]["boundary"]["replications"] == 2
    assert d["config"]["kvstab_version"] and d["config"]["sim_semantics_version"]
    assert d["gpus_rho"] == analytic.gpus_needed(1.0, d["capacity"]["mu"], 0.9)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(png.with_name(png.name + ".json").read_text())
    assert saved["kind"] == "report" and saved["config"]["seed"] == 0
    assert saved["boundary"]["lambda_star"] == b["lambda_star"]


@pytest.mark.slow
def test_cli_text_has_every_part(capsys):
    assert main(["report", *TINY, "--no-boundary"]) == 0
    out = capsys.readouterr().out
    assert "mu(1-delta)" in out and "TTFT" in out and "p99" in out
    assert "enough to be stable" in out and "lambda*" not in out.split("verdict")[0]
    assert re.search(r"use 1 \(the same\)", out)


@pytest.mark.slow
def test_result_objects_display_their_numbers():
    from kvstab.report import report
    from kvstab.sim import ConstantBatchTime, System
    from kvstab.stability import saturated_throughput

    law = Independent(parse_law("uniform:10:200", "p"), parse_law("uniform:10:200", "o"))
    r = report(
        law,
        rate_per_s=1.0,
        kv_capacity_tokens=4000,
        trajectories=3,
        steps=512,
        boundary_grid_points=3,
        boundary_replications=2,
        boundary_steps=600,
    )
    sim, b = r.sim_result, r.boundary
    thr = f"{sim.summary()['throughput_per_s']:.4g}"
    assert thr in repr(sim) and thr in sim._repr_html_()
    assert sim.to_dict()["config"]["num_trajectories"] == 3
    lam = f"{b.lambda_star:.4g}"
    assert (
        lam in repr(b)
        and lam in b._repr_html_()
        and b.summary()["lambda* (req/s)"] == b.lambda_star
    )
    sat = saturated_throughput(
        law, System(4000, 512, ConstantBatchTime(0.0372)), num_trajectories=2, num_steps=600
    )
    mu = f"{sat.mu_sim:.4g}"
    assert (
        mu in repr(sat)
        and mu in sat._repr_html_()
        and sat.summary()["mu_sim (req/s)"] == sat.mu_sim
    )
