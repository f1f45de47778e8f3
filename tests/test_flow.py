"""End to end: the demo flow under Prefect's test harness, then again (all cached), then with one
more variant (only that variant trains). Uses the real Beam runner, Zarr store and Prefect API."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.config import PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _small_demo(root: Path, variants: list[dict]) -> dict:
    """The demo config, with fewer steps so the test stays short on 2 cores."""
    cfg = load_config(ROOT / "configs" / "demo.yaml").model_dump(mode="json")
    cfg["root"] = str(root)
    cfg["teacher_margin_bits"] = None  # a 40-step teacher is at chance: these tests are about the wiring
    cfg["tokens"]["num_docs"] = 256
    cfg["teacher"]["run"].update(steps=40, checkpoint_every=20)
    cfg["labels"].update(num_windows=64, shard_windows=16, batch_size=64)
    cfg["distill"]["run"].update(steps=20, checkpoint_every=10)
    cfg["dmt"]["run"].update(steps=4, checkpoint_every=2)
    cfg["bptt"]["run"].update(steps=10, checkpoint_every=5)
    cfg["evaluate"].update(num_sequences=16, num_samples=1, sample_len=8)
    cfg["variants"] = variants
    return cfg


def _task_states(flow_run_id) -> tuple[dict[str, list[str]], set[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    # the report, lineage and link artifacts belong to every run, a fully cached one too
    assert {a.key for a in artifacts} >= {"smt-report", "smt-lineage", "smt-report-file"}, artifacts
    assert all("(file:///" in a.data for a in artifacts if a.key == "smt-report-file")  # an absolute link
    (report,) = [a.data for a in artifacts if a.key == "smt-report"]  # plots inlined for the UI
    assert "](data:image/png;base64," in report and ".png)" not in report, report[:2000]
    states: dict[str, list[str]] = {}
    for run in runs:  # variant tasks are named by role and variant, e.g. 'distill[gru]'; others 'teacher-3fa'
        stage = run.name.split("[")[0] if run.name.endswith("]") else run.name.rsplit("-", 1)[0]
        states.setdefault(stage, []).append(run.state.name)
    return states, {run.name for run in runs}


def _run(cfg: dict):
    from flows.smt_pipeline import smt_pipeline

    state = smt_pipeline(cfg, return_state=True)
    assert state.is_completed(), state
    states, names = _task_states(state.state_details.flow_run_id)
    return state.result(), states, names


def test_demo_flow_runs_then_reuses_every_stage(prefect_api, tmp_path):
    gru = {"kind": "gru", "width": 16, "hidden": 64, "readout": "mlp"}
    transformer = {"kind": "transformer", "width": 64, "depth": 1, "heads": 4, "readout": "teacher_decoder"}
    cfg = _small_demo(tmp_path / "runs", [transformer, gru])
    cfg["bptt_plateau"] = {"max_steps": 8, "eval_every": 4, "patience": 1, "sequences": 8}

    report, first, names = _run(cfg)
    assert Path(report).exists()
    roles = ("distill", "dmt", "bptt", "bptt_plateau")
    assert {f"{role}[{v}]" for role in roles for v in ("gru", "transformer")} <= names
    assert all(s == ["Completed"] * len(s) for s in first.values()), first
    summary = pq.read_table(Path(report).parent.parent.glob("evaluation-*").__next__() / "summary.parquet")
    losses = [v for col in summary.column_names for v in summary.column(col).to_pylist()
              if isinstance(v, float)]
    assert losses and all(math.isfinite(v) for v in losses), summary.to_pylist()
    assert {r["rnn"] for r in summary.to_pylist()} >= {"transformer/smt", "gru/smt+dmt", "gru/bptt", "gru/bptt-plateau"}
    _check_compute_section(report)

    report_again, second, _ = _run(cfg)
    assert report_again == report
    assert all(s == ["Cached"] * len(s) for s in second.values()), second

    mlp = {"kind": "mlp", "width": 16, "depth": 1, "hidden": 64, "readout": "mlp"}
    cfg["variants"] = [transformer, gru, mlp]
    cfg["seeds"] = [0, 1]
    report_seeds, third, names = _run(cfg)
    for stage in ("tokens", "teacher", "labels (Beam)"):
        assert third[stage] == ["Cached"], third
    for stage in ("distill", "dmt", "bptt"):  # the two old students are cached; mlp and every seed 1 train
        assert sorted(third[stage]) == ["Cached"] * 2 + ["Completed"] * 4, (stage, third)
    assert third["evaluate"] == ["Completed"]
    assert {"distill[gru@seed1]", "dmt[mlp@seed1]", "bptt[transformer@seed1]"} <= names
    text = Path(report_seeds).read_text()
    seeds_table = text.split("## Across seeds", 1)[1].split("##", 1)[0]
    assert "| gru | smt+dmt | init | 0,1 |" in seeds_table and "| mlp | bptt | init | 0,1 |" in seeds_table
    assert "| gru | bptt-plateau | init | 0,1 |" in seeds_table and "0,0" not in seeds_table

    # an artifact deleted by hand is rebuilt, not trusted from Prefect's cache
    import shutil

    bptt_url = next(ref["url"] for ref in _lineage(report) if ref["role"] == "gru/bptt")
    shutil.rmtree(bptt_url)
    _, fourth, _ = _run(cfg)
    assert sorted(fourth["bptt"]) == ["Cached"] * 5 + ["Completed"], fourth
    assert Path(bptt_url, "manifest.json").exists()


def _lineage(report: str) -> list[dict[str, str]]:
    """The lineage table of the report's manifest: role -> artifact URL."""
    import json

    manifest = json.loads(Path(report).with_name("manifest.json").read_text())
    root = Path(report).parent.parent
    manifests = [json.loads(m.read_text()) | {"dir": m.parent} for m in root.glob("*/manifest.json")]
    by_hash = {m["hash"]: m for m in manifests}
    return [{"role": role, "url": str(by_hash[h]["dir"]), "kind": by_hash[h]["kind"]}
            for role, h in manifest["parents"].items()]


def _check_compute_section(report: str) -> None:
    """The report counts the teacher and the label job beside each student and its BPTT baseline."""
    import json

    from stages.report import compute_rows

    assert "## Compute" in Path(report).read_text() and Path(report).with_name("compute.png").stat().st_size > 0
    lineage = {r["role"]: {"url": r["url"], "kind": r["kind"]} for r in _lineage(report)}
    stats = {role: json.loads(Path(ref["url"], "manifest.json").read_text())["stats"] for role, ref in lineage.items()}
    teacher, rows = stats["teacher"]["train_flops"], {r["variant"]: r for r in compute_rows(lineage)}
    assert teacher > 0 and set(rows) == {"gru", "transformer"}
    for v, row in rows.items():
        student = stats[f"{v}/smt"]["train_flops"] + stats[f"{v}/smt+dmt"]["train_flops"]
        assert row["student_TFLOP"] == student / 1e12
        assert 0 < row["bptt_TFLOP"] <= row["student_TFLOP"]  # budgeted to the student, whole steps
        assert row["bptt_plateau_TFLOP"] > 0
        shared = row["with_teacher_and_labels_TFLOP"] * 1e12 - student
        assert shared > teacher and row["pays_off_from"] == math.ceil(shared / student - 1e-9)
    from stages.report import compute_points

    evaluation = next(ref["url"] for role, ref in lineage.items() if role == "evaluation")
    plotted = {(p["label"], p["mode"]) for p in compute_points(evaluation, lineage)}
    assert {("gru", m) for m in ("smt", "smt+dmt", "smt+dmt + shared", "bptt", "bptt-plateau")} <= plotted
    _check_compute_curves(lineage, rows["gru"]["bptt_plateau_TFLOP"])


def _check_compute_curves(lineage: dict[str, dict[str, str]], plateau_tflop: float) -> None:
    """The plot's plateau curve is the baseline's logged held-out checks, in bits, at prorated compute."""
    from stages.report import compute_curves
    from store.training_log import read_training_log

    curves = {(c["label"], c["mode"]): c for c in compute_curves(lineage)}
    logged = sorted((r["step"], r["held_out_loss"]) for r in read_training_log(lineage["gru/bptt-plateau"]["url"])
                    if r.get("held_out_loss") is not None)
    curve = curves[("gru", "bptt-plateau")]
    assert len(logged) >= 2 and curve["bits"] == [loss / math.log(2) for _, loss in logged]
    assert curve["tflop"] == sorted(curve["tflop"])
    assert 0 < curve["tflop"][0] < curve["tflop"][-1] <= plateau_tflop * (1 + 1e-9)
    assert ("gru", "bptt") not in curves  # the matched baseline makes no checks


def test_flow_tasks_on_a_dask_cluster_make_the_local_artifacts(prefect_api, tmp_path):
    """task_runner: dask (prefect-dask's DaskTaskRunner on a loopback LocalCluster) trains the variant
    tasks in other processes, and every artifact is the one the in-process runner builds."""
    distributed = pytest.importorskip("distributed", reason="pip install '.[dask]'")
    from flows.local import run_until
    from flows.smt_pipeline import run_pipeline

    gru = {"kind": "gru", "width": 16, "hidden": 64, "readout": "mlp"}
    mlp = {"kind": "mlp", "width": 16, "depth": 1, "hidden": 64, "readout": "mlp"}
    cfg = _small_demo(tmp_path / "dask", [gru, mlp])
    cfg["threads"] = 1
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as cluster:
        cfg["task_runner"] = {"kind": "dask", "address": cluster.scheduler_address}
        report = run_pipeline(PipelineConfig.model_validate(cfg))
    local = run_until(PipelineConfig.model_validate({**cfg, "root": str(tmp_path / "local")}), "evaluate",
                      log=lambda line: None)
    dask_root = Path(report).parent.parent
    for role, ref in local.items():
        here = dask_root / Path(ref.url).name  # the same address under the other root
        for name in ("rnn.safetensors", "summary.parquet", "metrics.parquet", "teacher.safetensors"):
            if (Path(ref.url) / name).exists():
                assert (here / name).read_bytes() == (Path(ref.url) / name).read_bytes(), (role, name)
