"""Results files: JSON with the configuration, seed and versions, written atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _default(x: Any):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "to_dict"):
        return x.to_dict()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _clean(x: Any):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        return _clean(x.item())
    return x


def provenance() -> dict:
    """Versions stamped into every results file."""
    import jax

    from kvstab import SIM_SEMANTICS_VERSION, __version__

    return {
        "kvstab_version": __version__,
        "sim_semantics_version": SIM_SEMANTICS_VERSION,
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
    }


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` plus provenance to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"provenance": provenance(), **payload}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(_clean(json.loads(json.dumps(body, default=_default))), f, indent=1)
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)
