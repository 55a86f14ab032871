"""Every figure and table script draws from small results files, in seconds.

The results files in tests/data/results are a quick reproduction's, shrunk by
tests/data/make_small_results.py (long arrays thinned). Running every paper_figures script on
them checks, without simulating, that each writes a plausible PNG and PDF or a Markdown and
JSON table with the expected rows and the paper's numbers. The full quick reproduction, which
also runs the experiments, is tests/test_reproduce.py (marked slow).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kvstab import paper
from kvstab import reproduce as rp

ROOT = Path(__file__).resolve().parents[1]
SMALL_RESULTS = Path(__file__).resolve().parent / "data" / "results"

FIGURES = [
    "fig1_batch_time_cdf",
    "fig2_queue_one_gpu",
    "fig3_trace_lengths",
    "fig4_queue_eight_gpus",
    "fig5_batch_time_pd",
    "fig6_waiting_cdf",
    "fig7_batch_time_heavy_tail",
    "fig8_trimming",
    "fig9_stability_map",
    "fig10_routers",
    "fig11_policies",
]
TABLES = ["table1", "table2_trace", "table3_replicas", "table4_heavy_tail"]
EXPERIMENTS = [
    "table1",
    "table2_trace",
    "table3_replicas",
    "table4_heavy_tail",
    "fig2_queue_one_gpu",
    "fig4_queue_eight_gpus",
    "fig6_waiting_cdf",
    "fig3_trace_lengths",
    "batch_time_figs",
    "stability_map",
    "routers",
    "policies",
]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Draw every figure and table script into a temporary directory."""
    out = tmp_path_factory.mktemp("out")
    results = tmp_path_factory.mktemp("results")
    for p in SMALL_RESULTS.glob("*.json"):
        shutil.copy(p, results / p.name)
    scripts = {m.NAME: m for m in rp.discover(ROOT / "paper_figures")}
    written = {
        name: rp.draw_figure(m, results_dir=results, out_dir=out) for name, m in scripts.items()
    }
    return out, written


def test_the_scripts_are_the_ones_the_paper_needs():
    figs = {m.NAME: m for m in rp.discover(ROOT / "paper_figures")}
    exps = {m.NAME: m for m in rp.discover(ROOT / "experiments")}
    assert set(figs) == set(FIGURES) | set(TABLES)
    assert set(exps) == set(EXPERIMENTS)
    for m in figs.values():  # every input a figure reads is an experiment's results file
        assert m.INPUTS and set(m.INPUTS) <= set(exps), (m.NAME, m.INPUTS)
    for m in exps.values():  # both sizes build a JSON config with a seed, without simulating
        for quick in (True, False):
            cfg = m.config(quick)
            assert "seed" in cfg and rp.config_digest(cfg)


@pytest.mark.parametrize("name", FIGURES)
def test_figure_is_a_plausible_png_and_pdf(drawn, name):
    out, written = drawn
    assert {p.name for p in written[name]} == {f"{name}.png", f"{name}.pdf"}
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    # a real plot (75 kB and up here), not the placeholder a missing results file gives (< 25 kB)
    assert 50_000 < png.stat().st_size < 2_000_000, png.stat().st_size
    assert 8_000 < pdf.stat().st_size < 2_000_000, pdf.stat().st_size


def test_provenance_in_png_metadata_and_footer_can_be_switched_off(drawn, tmp_path, monkeypatch):
    from PIL import Image

    out, _ = drawn
    with Image.open(out / "fig2_queue_one_gpu.png") as im:
        on_text, on_size = im.info.get("Description", ""), im.size
    assert "seed" in on_text and "kvstab" in on_text
    monkeypatch.setenv("KVSTAB_FIGURE_FOOTER", "0")
    scripts = {m.NAME: m for m in rp.discover(ROOT / "paper_figures")}
    results = tmp_path / "results"
    shutil.copytree(SMALL_RESULTS, results)
    rp.draw_figure(scripts["fig2_queue_one_gpu"], results_dir=results, out_dir=tmp_path)
    with Image.open(tmp_path / "fig2_queue_one_gpu.png") as im:
        assert im.info.get("Description") == on_text  # provenance kept in the metadata
        assert im.size == on_size
    # the same figure without the footer: the footer is the figure's supxlabel
    import importlib.util

    spec = importlib.util.spec_from_file_location("_style", ROOT / "paper_figures" / "_style.py")
    style = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(style)
    for on in ("1", "0"):
        monkeypatch.setenv("KVSTAB_FIGURE_FOOTER", on)
        fig, _ = style.new_figure()
        style.footer(fig, "provenance", {"seed": 3, "kvstab_version": "x"})
        assert "seed 3" in fig._kvstab_provenance
        assert (fig._supxlabel is not None) == (on == "1")


@pytest.mark.parametrize("name", TABLES)
def test_table_is_markdown_and_json(drawn, name):
    out, written = drawn
    assert {p.name for p in written[name]} == {f"{name}.md", f"{name}.json"}
    md = (out / f"{name}.md").read_text()
    table = json.loads((out / f"{name}.json").read_text())
    assert md.startswith("### ")
    assert table["rows_text"] and table["source"]["experiment"] == name
    for row in table["rows_text"]:  # every row of the JSON is in the Markdown
        assert "| " + " | ".join(row) + " |" in md
        assert len(row) == len(table["columns"])


def test_table1_rows_and_the_papers_numbers(drawn):
    out, _ = drawn
    rows = {r["workload"]: r for r in json.loads((out / "table1.json").read_text())["data"]}
    assert list(rows) == ["1:1", "2:1", "1:2", "Mixed"]
    for published in paper.PAPER_TABLE1:
        r = rows[published["workload"]]
        assert r["paper_mu_gpu"] == published["mu_gpu"]
        assert r["paper_mu_theory"] == published["mu_theory"]
        assert r["mu_sim_ci"][0] <= r["mu_sim"] <= r["mu_sim_ci"][1]
    for name in ("1:1", "2:1", "1:2"):  # the closed form with the paper's g: the paper's μ
        assert abs(rows[name]["mu_theory_paper_form"] - rows[name]["paper_mu_theory"]) < 6e-4


def test_table3_and_table4_carry_the_papers_numbers(drawn):
    out, _ = drawn
    t3 = json.loads((out / "table3_replicas.json").read_text())
    md3 = (out / "table3_replicas.md").read_text()
    assert "26.71" in md3 and "25.808" in md3
    assert "8" in json.dumps(t3["data"])
    t4 = json.loads((out / "table4_heavy_tail.json").read_text())
    by_estimator = {r["estimator"]: r for r in t4["data"]}
    for published in paper.PAPER_TABLE4["rows"]:
        assert by_estimator[published["estimator"]]["paper_mu_theory"] == published["mu_theory"]
