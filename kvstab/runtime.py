"""How kvstab sets up JAX when it is imported: all CPU cores, and a persistent compile cache.

``import kvstab`` calls :func:`configure` before JAX starts its CPU backend:

* **All cores** (:func:`use_all_cpu_cores`): XLA exposes one CPU device per core
  (``--xla_force_host_platform_device_count``), and the simulator splits its trajectories
  over them (``shard_map`` in :mod:`kvstab.sim.rollout`). Results do not depend on the
  device count. Left alone when ``XLA_FLAGS`` already sets a device count;
  ``KVSTAB_CPU_DEVICES=N`` chooses N (``1`` opts out). It only takes effect if nothing has
  run on JAX's CPU backend yet, so import kvstab before computing with JAX.
* **Compile cache** (:func:`enable_compilation_cache`): JAX's persistent compilation cache
  in ``$KVSTAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/kvstab/jax``, else
  ``~/.cache/kvstab/jax``, so a new process (a second ``kvstab simulate``) loads the
  simulator's compiled programs instead of compiling them again. ``KVSTAB_CACHE_DIR=off``
  disables it; a cache directory set through JAX itself (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config``) is kept. An unwritable directory disables the cache (a debug log note),
  never the simulation.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

from kvstab.errors import InputError

log = logging.getLogger("kvstab")

CACHE_OFF = ("off", "0", "none", "false", "no", "")
# Programs that took less than this to compile are not written to the cache. JAX's default
# (1 s) would skip the workload sampler's many small programs, which together cost about as
# much as the rollout on a first call; reading one back costs a few milliseconds.
MIN_COMPILE_TIME_S = 0.0

_state: dict = {"cache_dir": None}


def cpu_device_count() -> int | None:
    """The CPU device count kvstab asks XLA for: ``KVSTAB_CPU_DEVICES``, else the number of
    cores; None when ``XLA_FLAGS`` already sets one (the user's choice is kept)."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    raw = os.environ.get("KVSTAB_CPU_DEVICES")
    if raw is None or raw.strip() == "":
        return os.cpu_count() or 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(
            "KVSTAB_CPU_DEVICES", f"must be an integer >= 1 (1: one CPU device), got {raw!r}"
        )
    return n


def use_all_cpu_cores() -> None:
    """Expose one XLA CPU device per core (or ``KVSTAB_CPU_DEVICES``) through ``XLA_FLAGS``,
    so the simulator shards trajectories over the cores. Must run before JAX creates its
    CPU backend; ``import kvstab`` calls it. Respects an ``XLA_FLAGS`` that already sets the
    device count."""
    n = cpu_device_count()
    if n is not None and n > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def default_cache_dir() -> str | None:
    """Where the compile cache lives: ``$KVSTAB_CACHE_DIR`` (None if it says off), else
    ``$XDG_CACHE_HOME/kvstab/jax``, else ``~/.cache/kvstab/jax``."""
    env = os.environ.get("KVSTAB_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in CACHE_OFF else os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kvstab", "jax")


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default
    :func:`default_cache_dir`); returns the directory in use, or None when it is off (by
    ``KVSTAB_CACHE_DIR=off``, or because the directory cannot be written: a debug note).
    Without ``path``, a directory the user set through JAX is kept and returned."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    if path is None and current and current != _state["cache_dir"]:
        return current  # set by the user through JAX (JAX_COMPILATION_CACHE_DIR, jax.config)
    path = default_cache_dir() if path is None else os.path.expanduser(path)
    if path is None:
        log.debug("kvstab: persistent compilation cache off (KVSTAB_CACHE_DIR)")
        return None
    if not _writable(path):
        log.debug("kvstab: compilation cache %s is not writable; compiling without it", path)
        return None
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_compilation_cache_dir", path)
    _state["cache_dir"] = path
    return path


def compilation_cache_dir() -> str | None:
    """The persistent compile cache directory kvstab set up (None: off)."""
    return _state["cache_dir"]


def configure() -> None:
    """Both of the above; ``import kvstab`` runs this once, before JAX is imported."""
    if "jax" not in sys.modules or not _backend_started():
        use_all_cpu_cores()
    enable_compilation_cache()


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)
    except Exception:  # a JAX without this private: assume it has not started
        return False
