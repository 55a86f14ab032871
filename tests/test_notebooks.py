"""The tutorial notebooks: stored as notebooks/_make_notebooks.py writes them, with their
outputs (at least one inline figure each, no errors), and they run top to bottom at toy size
(KVSTAB_TOY=1) in a fresh kernel, printing the numbers they promise and drawing inline.

Execution takes about 15 s per notebook on 2 CPU cores, so it stays in the default run.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


# What each notebook must print at toy size (regular expressions over its text output).
EXPECTED = {
    "01_quickstart": [r"mu      = 3\.262 req/s", r"mu_sim = \d+\.\d{3} req/s"],
    "02_finding_the_boundary": [r"mu = \d+\.\d{3} req/s", r"lambda\*/mu = \d"],
    "03_calibrating_to_a_trace": [
        r"mu_sim = \d+\.\d{3} req/s vs fitted mu",
        r"fitted b = 0\.\d{4} s \(truth 0\.0400 s\)",
    ],
    "04_sweeps": [r"theory: unstable", r"6 points, \d compilation"],
    "05_policies": [r"reserve-oracle", r"swap: lambda\*/mu = \d\.\d{3}"],
}


def _generator():
    spec = importlib.util.spec_from_file_location(
        "_make_notebooks", ROOT / "notebooks" / "_make_notebooks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stored_notebooks_are_what_the_generator_writes():
    gen = _generator()
    assert sorted(gen.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    assert {p.stem for p in NOTEBOOKS} == set(EXPECTED)
    for path in NOTEBOOKS:
        stored = nbformat.read(path, as_version=4)
        made = gen.NOTEBOOKS[path.name]()
        assert [(c.cell_type, c.source) for c in stored.cells] == [
            (c.cell_type, c.source) for c in made.cells
        ], f"{path.name} is stale: run python notebooks/_make_notebooks.py"
        for i, cell in enumerate(stored.cells):
            if cell.cell_type == "code":
                compile(cell.source, f"{path.name}[{i}]", "exec")
        outputs = [o for c in stored.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], path.name
        assert any("image/png" in o.get("data", {}) for o in outputs), (
            f"{path.name} has no stored figure: run python notebooks/_make_notebooks.py --execute"
        )
        assert "KVSTAB_TOY" not in "".join(c.source for c in stored.cells), path.name


# The default run executes one notebook (the boundary tutorial, the quickest); .ci/run's slow
# pass executes them all. Every notebook's structure is checked in the default run above.
RUN_FAST = ("02_finding_the_boundary",)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.stem, marks=() if p.stem in RUN_FAST else pytest.mark.slow)
        for p in NOTEBOOKS
    ],
)
def test_notebook_runs_at_toy_size(path, tmp_path, monkeypatch):
    monkeypatch.setenv("KVSTAB_TOY", "1")
    monkeypatch.setenv("KVSTAB_REPO", str(ROOT))  # lets notebooks find ../shared/data
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},  # files they write go to tmp
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, errors
    text = "".join(
        out.get("text", "") or out.get("data", {}).get("text/plain", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    for pattern in EXPECTED[path.stem]:
        assert re.search(pattern, text), (pattern, text[-3000:])
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, f"{path.name} drew no inline figure"
    assert os.environ["KVSTAB_TOY"] == "1"
