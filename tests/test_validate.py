"""Bad input, every command and public entry point: one clear error, before any work (issue 17).

The command-line fuzz table is generated from the parser itself: every flag that takes a
value gets values that are not numbers, not finite, out of range or past the integer types
(plus paths, laws, traces and contradictions); each must exit with status 2 and one line on
stderr naming the flag, with no traceback. The API table does the same for the public
functions and their InputError. Every case must fail before the simulator compiles: the test
checks the rollout's compilation count did not move.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from kvstab import analytic, stability, traces, validate
from kvstab.cli import build_parser, main
from kvstab.cli.common import FLAG_RANGES
from kvstab.errors import InputError
from kvstab.fit import fit_arrivals
from kvstab.laws import Empirical, Independent, Uniform, parse_law
from kvstab.sim import (
    SPF,
    Cluster,
    ConstantBatchTime,
    Outputs,
    Poisson,
    Policy,
    System,
    Workload,
    num_compilations,
    simulate,
)

LAW = Independent(Uniform(10, 100), Uniform(10, 100))
SMALL = ["--prompt", "uniform:10:100", "--output", "uniform:10:100", "--kv-tokens", "20000"]
BASE = {
    "capacity": SMALL,
    "simulate": [*SMALL, "--rate", "1", "--steps", "200", "--trajectories", "2", "--quiet"],
    "boundary": [*SMALL, "--precision", "fast", "--quiet"],
    "fit": ["--quiet", "--steps", "5", "--no-mmpp"],  # + --trace FILE (fixture)
    "reproduce": ["--no-draw", "--only", "no_such_name_checked_later"],
    "report": [
        *SMALL,
        "--rate",
        "1",
        "--trajectories",
        "2",
        "--steps",
        "256",
        "--no-boundary",
        "--quiet",
    ],  # fmt: skip
    "size": [*SMALL, "--rate", "1", "--slo", "ttft_p99<=2s", "--steps", "256", "--quiet"],
    "compare": [*SMALL, "--precision", "tiny", "--policies", "vllm", "--quiet"],
    "sweep": ["--rate-fraction", "0.5", "--replications", "2", "--steps", "64", "--quiet"],
}
NOT_NUMBERS = ["nan", "-inf", "abc", "1e400"]
INT_ONLY = ["1.5", "9223372036854775808"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("v")
    good = d / "trace.csv"
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.5, 200))
    rows = [
        f"{a:.3f},{s},{o}"
        for a, s, o in zip(t, rng.integers(10, 900, 200), rng.integers(10, 900, 200), strict=True)
    ]
    good.write_text("arrival_s,prompt_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    huge = d / "huge.csv"
    huge.write_text("arrival_s,prompt_tokens,output_tokens\n0.1,100,100\n0.2," + "1" + "0" * 30
                    + ",5\n0.3,50,50\n")  # fmt: skip
    empty = d / "empty.csv"
    empty.write_text("arrival_s,prompt_tokens,output_tokens\n")
    notdir = d / "a_file"
    notdir.write_text("x")
    return {"good": str(good), "huge": str(huge), "empty": str(empty), "file": str(notdir),
            "dir": str(d)}  # fmt: skip


def _base(command, files):
    argv = list(BASE[command])
    if command == "fit":
        argv += ["--trace", files["good"]]
    return argv


def _cli_cases():
    """(command, extra argv, the flag the error must name): generated from the parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    cases = []
    for command, p in sub.choices.items():
        for action in p._actions:
            if not action.option_strings or action.dest not in FLAG_RANGES:
                continue
            flag = max(action.option_strings, key=len)
            bad = list(NOT_NUMBERS)
            if FLAG_RANGES[action.dest].get("integer"):
                bad += INT_ONLY
            high = FLAG_RANGES[action.dest].get("high")
            if high is not None:
                bad.append(repr(high * 2 + 1))
            low = FLAG_RANGES[action.dest].get("low")
            if low is not None:
                bad.append(repr(low - 1))
            cases += [(command, [f"{flag}={v}"], flag) for v in bad]
    laws = ["uniform:10", "empirical:5,,6", "empirical:", "const:1e40", "const:nan", "x", ""]
    for command in ("capacity", "simulate", "boundary"):
        cases += [(command, ["--prompt", v], "--prompt") for v in laws]
        cases += [(command, ["--output", v], "--output") for v in laws]
        cases += [
            (command, ["--trace", "{huge}"], "--trace"),
            (command, ["--trace", "{empty}"], "--trace"),
            (command, ["--trace", "{dir}/missing.csv"], "--trace"),
            (command, ["--trace", "{good}", "--prompt", "const:5"], "--trace"),
        ]
    for command in ("simulate", "boundary"):
        cases += [
            (command, ["--out", "{dir}"], "--out"),
            (command, ["--out", "{dir}/no/such/dir/x.json"], "--out"),
            (command, ["--out", ""], "--out"),
        ]
    cases += [
        ("boundary", ["--plot", "{dir}/x.xyz"], "--plot"),
        ("boundary", ["--plot", "{dir}/noext"], "--plot"),
        ("boundary", ["--steps", "200"], "--steps"),  # too short for the workload
        (
            "simulate",
            ["--linear-coefs", "nan,0,0,0", "--batch-time-model", "linear"],
            "--linear-coefs",
        ),  # fmt: skip
        ("simulate", ["--linear-coefs", "1,2"], "--linear-coefs"),
        ("simulate", ["--linear-coefs", "0,1,1,1"], "--linear-coefs"),
        ("simulate", ["--trajectories", "100000000"], "--trajectories"),
        ("simulate", ["--initial-queue", "1000000000"], "--initial-queue"),
        ("simulate", ["--kv-tokens", "100"], "--prompt/--output"),
        ("capacity", ["--batch-time", "1e-320"], "--batch-time"),
        ("capacity", ["--rate", "1e9", "--utilization", "1e-300"], "--utilization"),
        ("fit", ["--kv-tokens", "1000"], "--kv-tokens"),
        ("fit", ["--columns", "bogus"], "--columns"),
        ("fit", ["--jitter", "-3"], "--jitter"),
        ("fit", ["--trace", "{huge}"], "--trace"),
        ("reproduce", ["--only", ""], "--only"),
        ("reproduce", ["--only", "a,,b"], "--only"),
        ("reproduce", ["--results", "{file}"], "--results"),
        ("reproduce", ["--out", "{file}"], "--out"),
        ("reproduce", ["--repo", "{dir}/no_such_checkout"], "--repo"),
        ("reproduce", ["--only", "no_such_experiment"], "--only"),
    ]
    return cases


CLI_CASES = _cli_cases()


@pytest.fixture(scope="module")
def compilations():
    before = num_compilations()
    yield
    assert num_compilations() == before, "a bad-input case compiled the simulator"


def _run_case(capsys, files, command, extra, flag) -> str | None:
    """None if the case gave exit 2 and one line naming ``flag``, else what went wrong."""
    argv = [command, *_base(command, files), *(x.format(**files) for x in extra)]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (e.g. 'abc' for an integer)
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    if code != 2 or len(lines) != 1 or "Traceback" in err or flag not in lines[0]:
        return f"{' '.join(argv)}: exit {code}, stderr {err[-300:]!r}"
    return None


@pytest.mark.parametrize("command", sorted(BASE))
def test_cli_bad_input_one_line_exit_2(capsys, files, compilations, command):
    # One test per command (not per case): ~400 cases cost about 10 ms each this way.
    cases = [c for c in CLI_CASES if c[0] == command]
    failures = [f for c in cases if (f := _run_case(capsys, files, *c))]
    assert not failures, "\n".join(failures)


def test_cli_fuzz_covers_every_command():
    commands = {c for c, _, _ in CLI_CASES}
    assert commands == set(BASE)  # every command of the parser is fuzzed
    assert len(CLI_CASES) >= 300


# ---------------------------------------------------------------------------------------------
# The API


def _sim(**kw):
    args = dict(workload=Workload(LAW, Poisson(1.0)), num_steps=200, num_trajectories=2)
    args.update(kw)
    return lambda: simulate(**args)


BAD_INTS = ["5", None, True, 1.5, float("nan"), float("inf"), -1, 2**63, 10**30, [1, 2]]
API_CASES = [
    *[(f"simulate num_steps={v!r}", _sim(num_steps=v), "num_steps") for v in BAD_INTS],
    *[
        (f"simulate num_trajectories={v!r}", _sim(num_trajectories=v), "num_trajectories")
        for v in BAD_INTS
    ],  # fmt: skip
    # a list of seeds is valid (one per equal group of trajectories, kvstab.sweep), so the
    # list case is one that does not divide the trajectories
    *[(f"simulate seed={v!r}", _sim(seed=v), "seed") for v in BAD_INTS if v != [1, 2]],
    ("simulate seed=[1, 2, 3]", _sim(seed=[1, 2, 3]), "seed"),
    ("simulate seed=[1, -2]", _sim(seed=[1, -2]), "seed"),
    *[(f"simulate max_attempts={v!r}", _sim(max_attempts=v), "max_attempts") for v in BAD_INTS],
    *[
        (f"simulate warmup_frac={v!r}", _sim(warmup_frac=v), "warmup_frac")
        for v in ["0.1", None, float("nan"), -0.1, 1.0, 1e300]
    ],  # fmt: skip
    ("simulate workload", _sim(workload=LAW), "workload"),
    ("simulate system", _sim(system=131000), "system"),
    ("simulate policy", _sim(policy="fcfs"), "policy"),
    ("simulate cluster", _sim(cluster=2), "cluster"),
    ("simulate outputs", _sim(outputs=None), "outputs"),
    ("simulate progress", _sim(progress=5), "progress"),
    ("simulate sizes key", _sim(sizes={"max_runing": 64}), "sizes"),
    ("simulate sizes list", _sim(sizes=[64]), "sizes"),
    ("simulate sizes value", _sim(sizes={"max_running": 2**40}), "max_running"),
    (
        "simulate M",
        lambda: _sim(system=System(kv_capacity_tokens=3_000_000_000))(),
        "kv_capacity_tokens",
    ),
    (
        "simulate M array",
        lambda: _sim(system=System(kv_capacity_tokens=[20000, 2**31]))(),
        "kv_capacity_tokens",
    ),  # fmt: skip
    (
        "simulate M str",
        lambda: _sim(system=System(kv_capacity_tokens="20000"))(),
        "kv_capacity_tokens",
    ),
    ("simulate chunk", lambda: _sim(system=System(chunk_tokens=3_000_000_000))(), "chunk_tokens"),
    (
        "simulate b tiny",
        lambda: _sim(system=System(batch_time=ConstantBatchTime(1e-320)))(),
        "batch_time_s",
    ),  # fmt: skip
    ("simulate rate", lambda: _sim(workload=Workload(LAW, Poisson(1e300)))(), "arrival_rate_per_s"),
    (
        "simulate initial queue",
        lambda: _sim(workload=Workload(LAW, Poisson(1.0), initial_queue=2**40))(),
        "initial_queue",
    ),  # fmt: skip
    ("simulate memory: trajectories", _sim(num_trajectories=10**8), "num_trajectories"),
    (
        "simulate memory: initial queue",
        lambda: _sim(workload=Workload(LAW, Poisson(1.0), initial_queue=10**9))(),
        "initial_queue",
    ),
    ("simulate spf window", lambda: _sim(policy=Policy(order=SPF(3_000_000_000)))(), "spf_window"),
    (
        "simulate replicas",
        lambda: _sim(cluster=Cluster(num_replicas=3_000_000_000))(),
        "num_replicas",
    ),
    ("simulate records", lambda: _sim(outputs=Outputs(num_records=2**40))(), "num_records"),
    ("simulate M < s+o", lambda: _sim(system=System(kv_capacity_tokens=150))(), "workload"),
    ("Empirical 1e30", lambda: Empirical([5, 10**30]), "values"),
    ("Uniform huge", lambda: Uniform(1, 2**40), "high"),
    (
        "capacity M",
        lambda: analytic.capacity(
            LAW, kv_capacity_tokens=2**40, chunk_tokens=256, batch_time_s=0.03
        ),
        "kv_capacity_tokens",
    ),
    (
        "capacity b",
        lambda: analytic.capacity(
            LAW, kv_capacity_tokens=20000, chunk_tokens=256, batch_time_s=1e-320
        ),
        "batch_time_s",
    ),
    (
        "capacity b str",
        lambda: analytic.capacity(
            LAW, kv_capacity_tokens=20000, chunk_tokens=256, batch_time_s="0.03"
        ),
        "batch_time_s",
    ),  # fmt: skip
    (
        "capacity chunk",
        lambda: analytic.capacity(
            LAW, kv_capacity_tokens=20000, chunk_tokens=float("nan"), batch_time_s=0.03
        ),
        "chunk_tokens",
    ),  # fmt: skip
    (
        "boundary steps",
        lambda: stability.estimate_boundary(LAW, System(20000), num_steps="x"),
        "num_steps",
    ),  # fmt: skip
    (
        "boundary seed",
        lambda: stability.estimate_boundary(LAW, System(20000), seed=2**63),
        "seed",
    ),  # fmt: skip
    (
        "boundary precision",
        lambda: stability.estimate_boundary(LAW, precision="huge"),
        "precision",
    ),  # fmt: skip
    (
        "saturated seed",
        lambda: stability.saturated_throughput(LAW, System(20000), seed=-1),
        "seed",
    ),  # fmt: skip
    (
        "drift rate",
        lambda: stability.drift_test(LAW, float("nan"), System(20000)),
        "rate",
    ),  # fmt: skip
    ("read_trace not a path", lambda: traces.read_trace(123), "trace"),
    (
        "Trace text times",
        lambda: traces.Trace(arrival_s="abc", prompt=[1], output=[1]),
        "arrival_s",
    ),  # fmt: skip
    (
        "Trace 1e30 tokens",
        lambda: traces.Trace(arrival_s=[0.0, 1.0], prompt=[1, 10**30], output=[1, 1]),
        "prompt",
    ),  # fmt: skip
    ("Empirical text", lambda: Empirical(["a"]), "values"),
    ("parse_law empty item", lambda: parse_law("empirical:5,,6", "prompt"), "prompt"),
    ("fit_arrivals text", lambda: fit_arrivals("abc"), "gaps"),
    ("mu_for huge M", lambda: analytic.mu_for(LAW, 2**40, 0.03, 256), "kv_capacity_tokens"),
    (
        "capacity rate str",
        lambda: analytic.capacity(
            LAW, kv_capacity_tokens=20000, chunk_tokens=256, batch_time_s=0.03, rate_per_s="x"
        ),
        "rate_per_s",
    ),
    (
        "check_output_file figure",
        lambda: validate.check_output_file("plot", "x.xyz", figure=True),
        "plot",
    ),
]


@pytest.mark.parametrize("name,call,field", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_input_error_naming_the_field(compilations, name, call, field):
    with pytest.raises(InputError) as exc:
        call()
    assert isinstance(exc.value, ValueError)
    assert field in str(exc.value), str(exc.value)


# ---------------------------------------------------------------------------------------------
# Units: the checks and the memory estimate


def test_check_value_ranges_and_types():
    validate.check_value("x", 5, low=1, high=10, integer=True)
    validate.check_value("x", np.int64(5), low=1, high=10, integer=True)
    validate.check_value("x", 5.0, low=1, high=10, integer=True)
    validate.check_value("x", np.array([1, 2]), low=1, integer=True, array=True)
    with pytest.raises(InputError, match=r"x: must be an integer >= 0 and <= 2147483647"):
        validate.check_value("x", 2**63, low=0, high=validate.INT32_MAX, integer=True)
    with pytest.raises(InputError, match="got 'abc'"):
        validate.check_value("x", "abc")
    validate.check_value("x", None, optional=True)


def test_memory_check_names_the_numbers_and_a_suggestion(monkeypatch):
    sizes = {"max_running": 64, "max_preempted": 64, "num_requests": 1000, "cal_len": 512}
    one = validate.estimate_bytes(1, sizes, num_blocks=10, num_steps=640)
    assert validate.estimate_bytes(8, sizes, num_blocks=10, num_steps=640) == 8 * one
    # "record every request" (2**30) costs what recording the 1000 buffered ones costs
    kw = dict(num_blocks=10, num_steps=640)
    everything = validate.estimate_bytes(1, sizes, num_records=2**30, **kw)
    assert everything == validate.estimate_bytes(1, sizes, num_records=1000, **kw) < 2**20
    fake = lambda: (100 * one, "fake device")  # noqa: E731
    assert validate.check_memory(10, sizes, num_trajectories=10, available=fake,
                                 num_blocks=10, num_steps=640) == 10 * one  # fmt: skip
    with pytest.raises(InputError, match="fake device") as exc:
        validate.check_memory(1000, sizes, num_trajectories=1000, available=fake,
                              num_blocks=10, num_steps=640)  # fmt: skip
    assert exc.value.field == "num_trajectories" and "at most about 80 trajectories" in str(
        exc.value
    )
    monkeypatch.setenv("KVSTAB_MEMORY_BYTES", str(one // 2))
    with pytest.raises(InputError, match="num_requests") as exc:
        validate.check_memory(1, sizes, num_trajectories=1, num_blocks=10, num_steps=640,
                              buffer_fields={"num_requests": "initial_queue"})  # fmt: skip
    assert exc.value.field == "initial_queue"


def test_available_bytes_is_positive():
    have, where = validate.available_bytes()
    assert have is None or have > 0
    assert where


def test_min_steps_grows_with_the_lifetimes():
    short = stability.min_steps(Independent(Uniform(10, 100), Uniform(10, 100)), 256)
    long = stability.min_steps(Independent(Uniform(10, 100), Uniform(1010, 1100)), 256)
    assert 0 < short < long


# ---------------------------------------------------------------------------------------------
# Regressions of issue 17 that need more than a refusal


class _FakeBoundary:
    def to_dict(self):
        return {"lambda_star": 1.5, "flags": []}

    def summary_text(self):
        return "kvstab boundary: fake summary"


def test_boundary_keeps_results_when_the_figure_fails(capsys, tmp_path, monkeypatch):
    import json

    import kvstab.cli.boundary as cli_boundary

    def broken_plot(result, path):
        raise RuntimeError("no backend")

    monkeypatch.setattr(stability, "estimate_boundary", lambda *a, **k: _FakeBoundary())
    monkeypatch.setattr(cli_boundary, "plot_boundary", broken_plot)
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    code = main(["boundary", *SMALL, "--quiet", "--out", str(out), "--plot", str(plot)])
    stdout, err = capsys.readouterr()
    assert code == 1
    assert json.loads(out.read_text())["lambda_star"] == 1.5  # written before the figure
    assert "fake summary" in stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--plot" in lines[0] and "results kept" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_into_a_read_only_directory_is_refused(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code = main(["simulate", *BASE["simulate"], "--out", str(ro / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "permission" in err


@pytest.mark.slow
def test_simulate_says_when_steps_are_rounded_and_warns_on_a_short_run(capsys, tmp_path):
    import json

    out = tmp_path / "s.json"
    code = main(["simulate", "--prompt", "uniform:10:400", "--output", "uniform:10:400",
                 "--kv-tokens", "20000", "--rate", "1", "--steps", "2570", "--trajectories",
                 "2", "--json", "--out", str(out)])  # fmt: skip
    stdout, err = capsys.readouterr()
    assert code == 0
    summ = json.loads(stdout)
    T = summ["config"]["num_steps"]
    assert T > 2570 and summ["num_steps_requested"] == 2570
    assert "--steps 2,570 ran as" in err and f"{T:,} steps" in err
    import re

    short = [w for w in summ["warnings"] if "run too short" in w]
    assert len(short) == 1, summ["warnings"]
    need = int(re.search(r"--steps >= (\d+)", short[0]).group(1))
    expected = stability.min_steps(Independent(Uniform(10, 400), Uniform(10, 400)), 256, 0.25)
    assert T < need and abs(need - expected) <= 0.01 * expected  # float32 vs float64 sums


@pytest.mark.slow
def test_ctrl_c_stops_a_run_promptly_with_status_130(tmp_path):
    """Ctrl-C during a run: exit 130 within seconds (it used to end in SIGSEGV at exit)."""
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    p = subprocess.Popen(
        [sys.executable, "-m", "kvstab", "simulate", *SMALL, "--rate", "1", "--steps",
         "2000000", "--trajectories", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    line = p.stderr.readline()  # the first progress line: the run has started
    assert "kvstab simulate" in line, line
    p.send_signal(signal.SIGINT)
    t0 = time.perf_counter()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert time.perf_counter() - t0 < 30
    assert "interrupted" in err and "Traceback" not in err
