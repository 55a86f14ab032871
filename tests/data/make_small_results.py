"""Shrink the results files of a quick reproduction into the test fixtures next to this file.

tests/test_paper_figures.py draws every figure and table from these small files in seconds;
the full quick reproduction (tests/test_reproduce.py) is the slow test. Regenerate after a
change to an experiment's results layout:

    kvstab reproduce --quick --no-draw --results /tmp/results
    python tests/data/make_small_results.py /tmp/results

Numeric lists of 100 or more values keep an evenly spaced subset of 40 (the same positions
for lists of equal length, so parallel arrays stay aligned); floats keep 6 significant digits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "results"
MAX_LEN, KEEP = 100, 40


def _is_numbers(x) -> bool:
    return bool(x) and all(isinstance(v, int | float) or v is None for v in x)


def shrink(x):
    if isinstance(x, dict):
        return {k: shrink(v) for k, v in x.items()}
    if isinstance(x, list):
        if len(x) >= MAX_LEN and (_is_numbers(x) or all(isinstance(v, list) for v in x)):
            idx = np.unique(np.linspace(0, len(x) - 1, KEEP).round().astype(int))
            x = [x[i] for i in idx]
        return [shrink(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.6g}")
    return x


def main(results_dir: str) -> None:
    HERE.mkdir(exist_ok=True)
    for path in sorted(Path(results_dir).glob("*.json")):
        data = shrink(json.loads(path.read_text()))
        (HERE / path.name).write_text(json.dumps(data, separators=(",", ":")) + "\n")
        print(HERE / path.name, (HERE / path.name).stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1])
