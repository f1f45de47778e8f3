"""Smoke versions of the experiments behind docs/RESULTS.md: each config in configs/experiments/ runs its
whole pipeline at a few steps (experiments/run.py --smoke) and its record renders into the results page.
The full runs are made by hand and their records committed; these check that every one still runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from experiments.render import render
from experiments.run import app
from schemas.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
# file-based experiments read full public datasets; their smoke runs read the samples bundled in tests/data
BUNDLED = {"mnist_idx": "tests/data/sample-1000-images-idx3-ubyte.gz",
           "text": "tests/data/pride_and_prejudice_excerpt.txt"}
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_experiment_smoke_runs_and_renders(config: Path, tmp_path: Path, one_thread) -> None:
    out = tmp_path / "results"
    source = load_config(config).tokens.source
    data = ["--data", str(ROOT / BUNDLED[source])] if source in BUNDLED else []
    args = [str(config), "--smoke", "--root", str(tmp_path / "runs"), "--out", str(out), *data]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.json")
    record = json.loads(path.read_text())
    modes = {(r["variant"], r["mode"]) for r in record["summary"]}
    variants = {v.get("name") or v["kind"] for v in record["config"]["variants"]}
    assert {(v, m) for v in variants for m in ("smt", "smt+dmt", "bptt")} <= modes
    assert record["machine"]["device"] and record["machine"]["cpu_vendor"]
    assert record["wall_clock_s"] > 0 and record["stage_seconds"]["teacher"] >= 0
    runs = [record["config"][stage]["run"] for stage in ("teacher", "distill", "dmt", "bptt")]
    assert not any(run["compile"] for run in runs) and not record["config"]["labels"]["compile"]  # CI's minutes
    page = render(out)
    assert f"## {record['name']}" in page and "| variant | mode | seeds | accuracy | bits |" in page
    if record["config"].get("teacher_choice"):  # the choice is recorded and shown
        assert record["teacher_choice"]["chosen_seed"] in record["config"]["teacher_choice"]["seeds"]
        assert "Teacher chosen without test data" in page
        assert record["teacher_choice"]["left_seconds"] > 0 and "not in the wall clock above" in page
    for figure in record["figures"]:
        assert (out / figure).stat().st_size > 0


def test_committed_records_render_into_results_md() -> None:
    """docs/RESULTS.md is what the committed records render to (re-run experiments/render.py after a run)."""
    folder = ROOT / "docs" / "results"
    assert (ROOT / "docs" / "RESULTS.md").read_text() == render(folder)

