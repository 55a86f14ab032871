"""benchmarks/gpu_check.sh in its --cpu-small mode: the GPU check's steps, tiny, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about a minute on 2 cores: two benchmarks and a slice of the tests
def test_gpu_check_cpu_small_writes_its_record(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(out))
    p = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-small"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["mode"] == "cpu-small" and rec["provenance"]["jax_backend"] == "cpu"
    sims = rec["simulate"]
    assert [s["trajectories"] for s in sims] == [64, 128]
    for s in sims:
        assert s["flags"] == 0
        assert s["completed_per_s"] > 0 and s["compile_s"] > 0
        assert s["state_bytes_per_trajectory"] > 0
    assert rec["equivalence_tests"]["exit_status"] == 0
    assert "passed" in rec["equivalence_tests"]["summary"]
    assert rec["sweep_status"] == "0" or rec["sweep_status"].startswith("skipped")


def test_gpu_check_rejects_unknown_arguments():
    p = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--gpu-big"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "--cpu-small" in p.stderr
