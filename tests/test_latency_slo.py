"""Latency metrics (kvstab.latency) and SLOs (kvstab.slo): cheap tests of the default run.

The sizing and goodput runs are in tests/test_slo_sizing.py (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvstab import latency, reference
from kvstab.cli import main
from kvstab.errors import InputError
from kvstab.sim import Outputs, Replay, System, Workload, simulate
from kvstab.slo import INCONCLUSIVE, MET, MISSED, check_latencies, parse_slo


def _direct(ref, arr, o, window, metric):
    """A metric per request straight from the reference simulator's step records."""
    clock = np.asarray(ref.clock_s, np.float64)  # clock[k]: start of step k

    def at_end(step):  # end of a step (-1: never) -> seconds, inf when it did not happen
        return np.where(step >= 0, clock[np.maximum(step, 0) + 1], np.inf)

    tok, fin = at_end(ref.first_token_step), at_end(ref.finish_step)
    admit = np.where(ref.first_admit_step >= 0, clock[np.maximum(ref.first_admit_step, 0)], np.inf)
    inside = (arr >= window[0]) & (arr < window[1])
    with np.errstate(invalid="ignore"):  # inf - inf for requests that never finished
        tpot = np.where(np.isfinite(fin), (fin - tok) / np.maximum(o - 1, 1), np.inf)
    v = {
        "wait": admit - arr,
        "ttft": tok - arr,
        "e2e": fin - arr,
        "tpot": tpot,
    }[metric]
    keep = inside & ((o > 1) & np.isfinite(fin) if metric == "tpot" else True)
    return v[keep]


def test_percentiles_agree_with_reference_records():
    """TTFT/TPOT/wait/e2e percentiles from the JAX run's records equal the pooled percentile
    computed directly from the reference simulator's step records on the same stream."""
    rng = np.random.default_rng(7)
    R, M, T = 400, 3000, 1200
    arr = np.cumsum(rng.exponential(1 / 9.0, R)).astype(np.float32).astype(np.float64)
    s = rng.integers(10, 300, R)
    o = rng.integers(1, 160, R)
    system = System(kv_capacity_tokens=M)
    res = simulate(
        Workload(None, Replay(arr, s, o)),
        system,
        num_steps=T,
        num_trajectories=1,
        outputs=Outputs(num_records=R),
    )
    ref = reference.simulate(arr, s, o, system=system, num_steps=T, stream_ends=True)
    np.testing.assert_array_equal(res.request_lengths["output_tokens"][0], o)  # TPOT's o
    np.testing.assert_array_equal(res.request_lengths["prompt_tokens"][0], s)
    lat = latency.latencies_of(res)
    window = lat.window_s[0]
    assert 0 < window[0] < window[1] < res.clock_s[0, -1]
    for metric in ("ttft", "tpot", "wait", "e2e"):
        direct = _direct(ref, arr, o, window, metric)
        assert direct.size > 50
        for qn in ("p50", "p90", "p99"):
            p = latency.percentile(lat, metric, qn, num_boot=20)
            want = np.quantile(direct, latency.QUANTILES[qn], method="inverted_cdf")
            assert p.num_requests == direct.size
            np.testing.assert_allclose(p.estimate, want, rtol=1e-5, err_msg=f"{metric} {qn}")
    # TPOT leaves out the unfinished requests of the window and says how many
    unfinished = int(
        np.sum((arr >= window[0]) & (arr < window[1]) & (o > 1) & (ref.finish_step < 0))
    )
    assert unfinished > 0 and lat.left_out["tpot"].sum() == unfinished
    assert f"{unfinished} request(s)" in " ".join(latency.percentile(lat, "tpot", "p50").notes)
    # the run is loaded enough that TTFT differs from one step: the test is not vacuous
    ttft = _direct(ref, arr, o, window, "ttft")
    assert np.ptp(ttft[np.isfinite(ttft)]) > 0.5


def _synthetic(values_per_traj: np.ndarray) -> latency.Latencies:
    """Latencies whose every metric holds the given (traj, req) values."""
    x = np.asarray(values_per_traj, np.float64)
    window = np.tile([0.0, 1.0], (x.shape[0], 1))
    return latency.Latencies({m: x for m in latency.METRICS}, window)


def test_percentile_and_bootstrap_interval():
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, (20, 600)) * rng.uniform(0.8, 1.2, (20, 1))  # correlated rows
    lat = _synthetic(x)
    p = latency.percentile(lat, "ttft", "p90", num_boot=200)
    assert p.estimate == np.quantile(x.ravel(), 0.9, method="inverted_cdf")
    assert p.low < p.estimate < p.high
    assert p.num_requests == x.size and p.num_trajectories == 20 and not p.notes
    # the interval reflects the between-trajectory spread: wider than for i.i.d. requests
    iid = latency.percentile(_synthetic(rng.exponential(1.0, x.shape)), "ttft", "p90",
                             num_boot=200)  # fmt: skip
    assert p.high - p.low > 2 * (iid.high - iid.low)
    # a deterministic function of the seed
    assert latency.percentile(lat, "ttft", "p90", num_boot=200, seed=0) == p


def test_percentile_notes_few_requests_and_censored():
    x = np.full((4, 30), 1.0)
    x[0, 0] = np.inf  # unfinished at the end of the run
    x[1, :5] = np.nan  # outside the window
    p = latency.percentile(_synthetic(x), "e2e", "p999")
    assert p.num_requests == 115 and p.num_censored == 1
    assert math.isinf(p.estimate) and math.isinf(p.high)  # the censored one is the top 0.1 %
    assert latency.percentile(_synthetic(x), "e2e", "p99").estimate == 1.0  # 114/115 >= 0.99
    text = " ".join(p.notes)
    assert "few requests" in text and "10000" in text  # 10 / (1 - 0.999)
    assert "trajectories" in text and "+inf" in text
    with pytest.raises(InputError, match="metric"):
        latency.percentile(_synthetic(x), "latency", "p99")
    with pytest.raises(InputError, match="quantile"):
        latency.percentile(_synthetic(x), "ttft", "p95")


def test_parse_slo_forms():
    slo = parse_slo("ttft_p99<=2s, tpot_p99<=100ms,e2e_p50<=30,wait_p999<=1.5e-1s")
    got = [(o.metric, o.quantile, o.threshold_s) for o in slo.objectives]
    assert got == [("ttft", "p99", 2.0), ("tpot", "p99", 0.1), ("e2e", "p50", 30.0),
                   ("wait", "p999", 0.15)]  # fmt: skip
    assert parse_slo(str(slo)) == slo


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("ttft_p99", "cannot read"),
        ("ttft_p99<=2h", "cannot read"),
        ("ttft_p99>=2s", "cannot read"),
        ("latency_p99<=2s", "unknown metric 'latency'"),
        ("ttft_p95<=2s", "unknown quantile 'p95'"),
        ("ttft_p99<=0s", "must be > 0"),
        ("ttft_p99<=1s,ttft_p99<=2s", "twice"),
    ],
)
def test_parse_slo_errors(text, words):
    with pytest.raises(InputError) as e:
        parse_slo(text)
    assert e.value.field == "slo" and words in e.value.message
    if "cannot read" in words or "unknown" in words:
        assert "wait, ttft, tpot, e2e" in e.value.message and "p999" in e.value.message


def test_check_verdicts():
    rng = np.random.default_rng(1)
    lat = _synthetic(rng.uniform(0.0, 1.0, (12, 300)))  # p90 is near 0.9
    verdict = lambda text: check_latencies(parse_slo(text), lat)  # noqa: E731
    assert verdict("ttft_p90<=1s")["verdict"] == MET
    assert verdict("ttft_p90<=0.5s")["verdict"] == MISSED
    near = verdict("ttft_p90<=900ms")
    assert near["verdict"] == INCONCLUSIVE
    ob = near["objectives"][0]
    assert ob["low"] <= 0.9 < ob["high"]
    # all objectives must hold; one missed makes the SLO missed
    assert verdict("ttft_p90<=1s,e2e_p50<=0.2s")["verdict"] == MISSED
    assert verdict("ttft_p90<=1s,e2e_p50<=0.5s")["verdict"] == INCONCLUSIVE
    assert verdict("ttft_p90<=1s,e2e_p50<=0.9s")["verdict"] == MET


def test_cli_size_bad_slo(capsys):
    for bad, words in (("speed_p99<=2s", "unknown metric"), ("ttft<2s", "cannot read")):
        assert main(["size", "--rate", "10", "--slo", bad, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kvstab size: error: --slo:") and words in err
        assert len(err.splitlines()) == 1


def test_cli_size_bad_numbers(capsys):
    assert main(["size", "--rate", "0", "--slo", "ttft_p99<=2s", "--quiet"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["size", "--rate", "1", "--slo", "ttft_p99<=2s", "--cooldown", "1"]) == 2
    assert "kvstab size: error: --cooldown: must be a number in [0, 1)" in capsys.readouterr().err


def test_cli_size_resumes_from_out_file(tmp_path, capsys, no_recompile):
    """An --out file of the same configuration keeps its checked replica counts: nothing is
    simulated again (here every G needed is in the file, so the run compiles nothing)."""
    from kvstab.results import read_json, write_json

    out = tmp_path / "size.json"
    argv = ["size", "--rate", "0.3", "--slo", "ttft_p99<=2s", "--kv-tokens", "12800",
            "--steps", "512", "--trajectories", "4", "--quiet", "--out", str(out)]  # fmt: skip
    config = {
        "slo": "ttft_p99<=2s", "rate_per_s": 0.3, "router": "round_robin",
        "workload": "prompt uniform:10:1600, output uniform:10:1600",
        "kv_capacity_tokens": 12800, "chunk_tokens": 512, "batch_time_s": 0.0372,
        "steps": 512, "trajectories": 4, "seed": 0, "warmup_frac": 0.25, "cooldown_frac": 0.25,
    }  # fmt: skip
    ob = {"metric": "ttft", "quantile": "p99", "estimate": 0.3, "low": 0.2, "high": 0.4,
          "notes": [], "threshold_s": 2.0, "verdict": MET}  # fmt: skip
    check = {"verdict": MET, "objectives": [ob], "worst_ratio": 0.15, "num_replicas": 1,
             "flags": [], "wall_s": 1.0}  # fmt: skip
    write_json(out, {"kind": "size", "config": config, "checks": {"1": check}})
    with no_recompile():
        assert main(argv) == 0
    text = capsys.readouterr().out
    assert "G = 1 " in text and "answer       1 replica(s)" in text
    saved = read_json(out)
    assert saved["report"]["replicas"] == 1 and saved["provenance"]["sim_semantics_version"]
