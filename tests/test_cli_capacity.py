"""`kvstab capacity`: the paper's numbers, JSON keys, one-line errors with exit status 2."""

import json

import pytest

from kvstab.cli import main

TABLE1 = [
    ("uniform:10:1600", "uniform:10:1600", "0.0372", 3.263),
    ("uniform:10:2133", "uniform:10:1066", "0.0430", 3.956),
    ("uniform:10:1066", "uniform:10:2133", "0.0337", 2.902),
]


def run(capsys, *argv):
    code = main(["capacity", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("prompt,output,b,mu", TABLE1)
def test_table1_json(capsys, prompt, output, b, mu):
    code, out, _ = run(
        capsys,
        "--prompt",
        prompt,
        "--output",
        output,
        "--kv-tokens",
        "131000",
        "--chunk",
        "512",
        "--batch-time",
        b,
        "--g",
        "paper",
        "--json",
    )
    assert code == 0
    d = json.loads(out)
    assert f"{d['mu']:.4g}" == f"{mu:.4g}"
    assert round(d["delta"], 4) == 0.0244
    for key in ("mean_g", "mu", "delta", "mu_stable"):
        assert key in d


def test_rate_gives_verdict_and_gpus(capsys):
    code, out, _ = run(capsys, "--rate", "20", "--utilization", "0.9", "--json")
    d = json.loads(out)
    assert code == 0 and d["verdict"] == "unstable"
    assert d["gpus"] == 7  # ceil(20 / (0.9 * 3.262))
    code, out, _ = run(capsys, "--rate", "3")
    assert code == 0 and "stable" in out and "mu" in out


@pytest.mark.parametrize(
    "argv,flag,words",
    [
        (["--kv-tokens", "0"], "--kv-tokens", ">= 1"),
        (["--kv-tokens", "-5"], "--kv-tokens", ">= 1"),
        (["--chunk", "0"], "--chunk", ">= 1"),
        (["--batch-time", "0"], "--batch-time", ">= 1e-09"),
        (["--batch-time", "nan"], "--batch-time", "finite"),
        (["--rate", "-1"], "--rate", ">= 0"),
        (["--rate", "nan"], "--rate", "finite"),
        (["--utilization", "0"], "--utilization", "(0, 1]"),
        (["--utilization", "1.01"], "--utilization", "(0, 1]"),
        (["--prompt", "uniform:10"], "--prompt", "cannot parse"),
        (["--output", "gauss:3"], "--output", "cannot parse"),
        (["--output", "geometric:200"], "--output", "add a cap"),
        (["--kv-tokens", "3000"], "--prompt/--output", "exceeds --kv-tokens"),
        (["--kv-tokens", "abc"], "--kv-tokens", "expected an integer"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, flag, words):
    with pytest.raises(SystemExit) as exc:
        code = main(["capacity", *argv])
        raise SystemExit(code)
    assert exc.value.code == 2
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and words in lines[0]
    assert "Traceback" not in err
