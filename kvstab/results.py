"""Results files: JSON with the configuration, seed and versions, written atomically."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from kvstab import SIM_SEMANTICS_VERSION, __version__


def to_jsonable(obj: Any) -> Any:
    """numpy arrays -> lists, numpy scalars -> Python, NaN/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        return to_jsonable(np.asarray(obj))
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON through a temporary file and a rename (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results files are shared
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(obj), f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def provenance() -> dict:
    """Versions stamped into every results file."""
    return {
        "kvstab_version": __version__,
        "sim_semantics_version": SIM_SEMANTICS_VERSION,
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
    }


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` plus provenance to ``path`` atomically."""
    return write_json_atomic(path, {"provenance": provenance(), **payload})


def read_json(path: str | os.PathLike, *, missing_ok: bool = False) -> Any:
    """The parsed JSON file. ``missing_ok``: None instead of an error when the file is missing
    or not valid JSON (e.g. a results file from an old crash)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        if missing_ok:
            return None
        raise
