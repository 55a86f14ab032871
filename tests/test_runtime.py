"""Start-up: the persistent compile cache and the CPU device count set by ``import kvstab``
(kvstab/runtime.py), and a repeated ``simulate()`` that compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from kvstab import runtime
from kvstab.errors import InputError
from kvstab.laws import Independent, Uniform
from kvstab.sim import (
    Cluster,
    ConstantBatchTime,
    Outputs,
    Poisson,
    System,
    Workload,
    router_from_name,
    simulate,
)

ROOT = Path(__file__).resolve().parents[1]

PROBE = (
    "import json, kvstab, jax, jax.numpy as jnp;"
    "jax.jit(lambda x: x * 2 + 1)(jnp.arange(3.0)).block_until_ready();"
    "print(json.dumps([jax.config.jax_compilation_cache_dir, jax.local_device_count(),"
    " kvstab.runtime.compilation_cache_dir()]))"
)


def _probe(**env) -> list:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_dir_and_device_count_on_import_and_their_opt_outs(tmp_path):
    """A fresh process: KVSTAB_CACHE_DIR moves the cache (programs are written there) and
    KVSTAB_CPU_DEVICES chooses the device count; =off and =1 opt out of both."""
    cache = tmp_path / "cache"
    jax_dir, ndev, ours = _probe(KVSTAB_CACHE_DIR=str(cache), KVSTAB_CPU_DEVICES="2")
    assert jax_dir == ours == str(cache)
    assert ndev == 2
    assert any(cache.iterdir()), "no compiled program was written to the cache"

    jax_dir, ndev, ours = _probe(KVSTAB_CACHE_DIR="off", KVSTAB_CPU_DEVICES="1")
    assert jax_dir is None and ours is None
    assert ndev == 1


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("KVSTAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.default_cache_dir() == str(tmp_path / "kvstab" / "jax")
    for off in ("off", "OFF", "0", "none"):
        monkeypatch.setenv("KVSTAB_CACHE_DIR", off)
        assert runtime.default_cache_dir() is None
    monkeypatch.setenv("KVSTAB_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert runtime.default_cache_dir() == str(tmp_path / "elsewhere")


def test_unwritable_cache_dir_falls_back_silently(tmp_path):
    """A cache directory that cannot be created leaves the cache as it was, no error."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    before = jax.config.jax_compilation_cache_dir
    assert runtime.enable_compilation_cache(str(blocker / "jax")) is None
    assert jax.config.jax_compilation_cache_dir == before


def test_cpu_device_count_respects_xla_flags_and_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    monkeypatch.setenv("KVSTAB_CPU_DEVICES", "5")
    assert runtime.cpu_device_count() is None  # the user's XLA_FLAGS wins
    monkeypatch.delenv("XLA_FLAGS")
    assert runtime.cpu_device_count() == 5
    monkeypatch.delenv("KVSTAB_CPU_DEVICES")
    assert runtime.cpu_device_count() == (os.cpu_count() or 1)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("KVSTAB_CPU_DEVICES", bad)
        with pytest.raises(InputError, match="KVSTAB_CPU_DEVICES"):
            runtime.cpu_device_count()


_compiles = {"n": 0}


def _count_compiles(name: str, *args, **kwargs) -> None:
    if name == "/jax/core/compile/backend_compile_duration":  # any program, cached or not
        _compiles["n"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def test_repeated_simulate_compiles_nothing(no_recompile):
    """A second identical simulate() in one process compiles neither the rollout nor any
    other program (sampler, probes, summaries), reports progress per segment, and gives the
    same numbers. (The configuration of test_simulate.py's sharding test: one compile for
    both.)"""
    kw = dict(
        num_steps=256,
        num_trajectories=4,
        seed=5,
        outputs=Outputs(block_steps=16, num_segments=2),
        cluster=Cluster(3, router_from_name("jsq")),
    )
    wl = Workload(Independent(Uniform(1, 40), Uniform(1, 40)), Poisson([3.0, 5.0, 7.0, 9.0]))
    system = System(400, 8, ConstantBatchTime(0.125))
    first = simulate(wl, system, **kw)
    seen = []
    before = _compiles["n"]
    with no_recompile():
        again = simulate(wl, system, progress=lambda *a: seen.append(a), **kw)
    assert _compiles["n"] == before, f"{_compiles['n'] - before} program(s) compiled"
    np.testing.assert_array_equal(first.completed, again.completed)
    np.testing.assert_array_equal(first.queue_end, again.queue_end)
    assert seen == [(128, 256, 1), (256, 256, 1)]
