"""The Beam label job end to end on a tiny teacher: layout, values, re-runs, runners, kill + resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from _fixtures_labels import IN_MEMORY, MULTI_PROCESS, TINY_MODEL, TINY_SPEC, make_tokens
from torch._dynamo.utils import counters

import pipelines.materialize_labels as ml
from pipelines.label_units import plan_windows
from pipelines.options import runner_flags
from schemas.config import BeamConfig, LabelSpec
from schemas.layout import LABEL_INDEX_SCHEMA, LABEL_UNITS_DIR
from stages.labels import dry_run, labels_stage
from store.artifacts import read_manifest
from store.labels import LabelStore
from store.plans import plan_labels
from store.teacher import load_teacher
from store.tokens import TokensArtifact


def _chunk_files(url: str) -> dict[str, bytes]:
    root = Path(url) / "data.zarr"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and ".partial" not in p.name}


def test_store_is_readable_without_our_code(label_env):
    url = label_env.store.url
    ds = xr.open_zarr(f"{url}/data.zarr", consolidated=False)
    assert ds["memory"].dims == ("window", "step", "feature")
    assert ds["memory"].shape == (24, 9, 64) and ds["memory"].dtype == np.float16
    assert ds["tokens"].dims == ("window", "position") and ds["tokens"].shape == (24, 16 + 8 + 4)
    assert ds["dec_loss"].dims == ("window", "step")
    assert pq.read_schema(f"{url}/index.parquet").equals(LABEL_INDEX_SCHEMA)
    index = pd.read_parquet(f"{url}/index.parquet")
    assert list(index["window"]) == list(range(24)) and set(index["split"]) == {"train"}
    assert (index["shard"] == index["window"] // TINY_SPEC.shard_windows).all()
    manifest = read_manifest(url, "labels")
    assert manifest.parents == {"tokens": label_env.tokens.hash, "teacher": label_env.teacher.hash}
    assert manifest.counts["labels"] == 24 * 9 and len(list((Path(url) / LABEL_UNITS_DIR).glob("*.json"))) == 6


def _reference_window(x: np.ndarray, a: int, tc: int, length: int) -> np.ndarray:
    """Positions a-tc+1 .. a-tc+length of x, -1 outside (written independently of the pipeline)."""
    return np.array([x[p] if 0 <= p < len(x) else -1 for p in range(a - tc + 1, a - tc + 1 + length)])


def test_values_equal_a_direct_encode(label_env):
    store = LabelStore.open(label_env.store.url)
    teacher, _ = load_teacher(label_env.teacher.url)
    tokens = TokensArtifact.open(label_env.tokens.url)
    index = store.index.to_pandas()
    tc, steps, p = store.Tc, store.L + 1, store.Tc + store.L + store.Tf
    memory = store.memory()
    for w in (0, 7, 23):
        x, y = tokens.document(int(index.doc_id[w]))
        a = int(index.anchor[w])
        assert np.array_equal(store.arrays["tokens"][w], _reference_window(x, a, tc, p))
        assert np.array_equal(store.arrays["targets"][w], _reference_window(y, a, tc, p))
        ctx = torch.tensor(np.stack([_reference_window(x, a + j, tc, tc) for j in range(steps)]))
        with torch.inference_mode():
            m = teacher.encode(ctx)
            target = torch.tensor(y[a : a + steps])
            ce = F.cross_entropy(teacher.readout(m), target.clamp_min(0), reduction="none")
        np.testing.assert_allclose(memory[w], m.numpy(), atol=4e-3, rtol=1e-3)  # float16 storage
        expected = np.where(target.numpy() >= 0, ce.numpy(), np.nan)
        np.testing.assert_allclose(store.arrays["dec_loss"][w], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_workers_write_the_eager_labels(label_env, tmp_path):
    """labels.compile: the workers' teacher blocks go through torch.compile; another address (and an
    unset flag keeps the old one), the same memories and readout losses up to float rounding."""
    spec = TINY_SPEC.model_copy(update={"compile": True})
    assert "compile" not in TINY_SPEC.address_json() and spec.address_json()["compile"] is True
    before = counters["stats"]["unique_graphs"]  # one worker, in this process
    ref = ml.materialize_labels(label_env.tokens.url, label_env.teacher.url, spec, IN_MEMORY, str(tmp_path))
    assert ref.hash != label_env.store.hash and counters["stats"]["unique_graphs"] > before
    eager, compiled = LabelStore.open(label_env.store.url), LabelStore.open(ref.url)
    np.testing.assert_allclose(compiled.memory(), eager.memory(), atol=4e-3, rtol=1e-3)  # float16 storage
    np.testing.assert_allclose(compiled.arrays["dec_loss"][:], eager.arrays["dec_loss"][:], rtol=1e-3, atol=1e-4)
    assert np.array_equal(compiled.arrays["tokens"][:], eager.arrays["tokens"][:])


def test_rerun_is_free_and_content_addressed(label_env, monkeypatch):
    def no_pipeline(*args, **kwargs):
        raise AssertionError("a complete store must not start Beam")

    monkeypatch.setattr(ml.beam, "Pipeline", no_pipeline)
    start = time.perf_counter()
    ref = labels_stage(label_env.tokens.url, label_env.teacher.url, TINY_SPEC, IN_MEMORY, label_env.root)
    assert ref == label_env.store and time.perf_counter() - start < 2
    info = dry_run(label_env.tokens.url, TINY_MODEL, TINY_SPEC, IN_MEMORY)
    assert info["windows"] == 24 and info["labels"] == 24 * 9
    assert info["projected_bytes"] == 24 * (9 * 64 * 2 + 2 * 28 * 2 + 9 * 4)
    assert plan_labels(tokens_url=label_env.tokens.url, teacher_url=label_env.teacher.url, spec=TINY_SPEC,
                       root=label_env.root).url == ref.url


def test_plan_is_seeded_and_covers_documents(label_env):
    tokens = TokensArtifact.open(label_env.tokens.url)
    plan = plan_windows(tokens, TINY_SPEC).to_pandas()
    assert plan.equals(plan_windows(tokens, TINY_SPEC).to_pandas())
    assert not plan.equals(plan_windows(tokens, TINY_SPEC.model_copy(update={"seed": 3})).to_pandas())
    lengths = tokens.index.column("length").to_numpy()
    assert ((plan.anchor + TINY_SPEC.trajectory_len) < lengths[plan.doc_id]).all()
    assert plan[["doc_id", "anchor"]].drop_duplicates().shape[0] == 24
    assert (plan.anchor >= -1).all()
    strided = plan_windows(tokens, LabelSpec(trajectory_len=8, num_windows=None, stride=5, split="all")).to_pandas()
    expected = sum(len(range(-1, max(n - 8, 0), 5)) for n in lengths if n >= 8)
    assert len(strided) == expected and set(strided.split) == {"train", "test"}
    assert (strided.groupby("doc_id").anchor.min() == -1).all()  # each document from its empty memory on
    old = plan_windows(tokens, LabelSpec(trajectory_len=8, num_windows=None, stride=5, split="all", from_empty=False))
    assert old.to_pandas().anchor.min() == 0
    assert len(old) == sum(len(range(0, max(n - 8, 0), 5)) for n in lengths)


def test_a_window_from_the_empty_memory_starts_at_the_rnns_initial_memory(label_env):
    """Anchor -1: the first stored memory is the teacher's encoding of an empty context, which is what
    distill copies into `rnn.initial`; its first transition reads the document's first token."""
    import torch

    from pipelines.label_units import window_tokens
    from store.label_layout import LabelGeometry
    from store.teacher import load_teacher, teacher_config

    tokens = TokensArtifact.open(label_env.tokens.url)
    teacher, manifest = load_teacher(label_env.teacher.url)
    model = teacher_config(manifest).model
    geometry = LabelGeometry.build(TINY_SPEC, model, 1)
    x, _ = window_tokens(tokens, np.array([0, 0]), np.array([-1, 0]), geometry)
    tc = model.context_len
    assert (x[0, :tc] == -1).all() and x[0, tc] == tokens.document(0)[0][0]
    assert (x[0, 1:] == x[1, :-1]).all()  # anchor 0 is the same window one position later
    with torch.no_grad():
        empty = teacher.encode(torch.full((1, tc), -1, dtype=torch.long))
        first = teacher.encode(torch.from_numpy(x[:1, :tc]))
    torch.testing.assert_close(first, empty)


def test_multiprocess_runner_and_stride_store(label_env, tmp_path):
    """DirectRunner-style multi-processing (2 worker processes) on a strided, all-splits store."""
    spec = LabelSpec(trajectory_len=8, num_windows=None, stride=7, split="all", shard_windows=8, batch_size=32,
                     device="cpu")
    ref = ml.materialize_labels(label_env.tokens.url, label_env.teacher.url, spec, MULTI_PROCESS, str(tmp_path))
    store = LabelStore.open(ref.url)
    assert store.verify() == []
    assert set(store.index.column("split").to_pylist()) == {"train", "test"}
    # memories ending on a document's last token have no target: NaN exactly where targets are -1
    targets = store.arrays["targets"][:, store.Tc - 1 : store.Tc + store.L]
    dec_loss = store.arrays["dec_loss"][:]
    assert np.array_equal(np.isnan(dec_loss), targets < 0) and np.isnan(dec_loss).any()
    # the same windows encoded in-process give the same labels (float16 storage)
    single = ml.materialize_labels(label_env.tokens.url, label_env.teacher.url, spec, IN_MEMORY,
                                   str(tmp_path / "single"))
    other = LabelStore.open(single.url)
    np.testing.assert_allclose(other.memory(), store.memory(), atol=2e-3)
    assert np.array_equal(other.arrays["tokens"][:], store.arrays["tokens"][:])


def test_int8_round_trip(label_env, tmp_path):
    spec = TINY_SPEC.model_copy(update={"dtype": "int8"})
    calls: list[tuple[int, int]] = []
    ref = labels_stage(label_env.tokens.url, label_env.teacher.url, spec, IN_MEMORY, str(tmp_path),
                       progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (6, 6)
    q, f16 = LabelStore.open(ref.url), LabelStore.open(label_env.store.url)
    assert q.arrays["memory"].dtype == np.int8 and q.arrays["memory_scale"].shape == (24, 9, TINY_MODEL.memory_tokens)
    a, b = q.memory(), f16.memory()
    assert np.sqrt(np.mean((a - b) ** 2)) < 0.01  # labels have unit RMS: < 1% error
    absmax = np.abs(b.reshape(24, 9, 4, 16)).max(-1, keepdims=True)
    assert (np.abs(a - b).reshape(24, 9, 4, 16) <= absmax / 127 * 0.5 + 2e-3).all()
    assert q.verify() == []
    batch = next(q.transitions(batch_size=24 * 8, shuffle=False))  # the stream decodes int8 the same way
    np.testing.assert_allclose(batch.m.numpy(), a[:, :-1].reshape(-1, 64), rtol=1e-6)


SCRIPT = """
import sys, time
import pipelines.materialize_labels as ml
real = ml.run_unit
def slow_unit(*args, **kwargs):  # widen the window in which the test kills the job
    time.sleep(0.4)
    return real(*args, **kwargs)
ml.run_unit = slow_unit
ml.main(sys.argv[1:])
"""


def test_resume_after_sigkill_is_byte_identical(label_env, tmp_path):
    spec = TINY_SPEC.model_copy(update={"shard_windows": 2})  # 12 units
    args = ["--tokens", label_env.tokens.url, "--teacher", label_env.teacher.url, "--root", str(tmp_path / "killed"),
            "--spec", spec.model_dump_json(), "--beam", IN_MEMORY.model_dump_json()]
    script = tmp_path / "run_labels.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=Path(__file__).parents[1],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = sorted((tmp_path / "killed").glob(f"labels-*/{LABEL_UNITS_DIR}/*.json"))
            if found:
                units = found[0].parent
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: Beam may have started helpers
        proc.wait()
    assert units is not None, "the job never finished a unit"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in units.glob("*.json")}
    assert 1 <= len(before) < 12 and not (units.parent / "manifest.json").exists()
    with pytest.raises(Exception, match="incomplete"):
        LabelStore.open(str(units.parent))

    resumed = ml.materialize_labels(label_env.tokens.url, label_env.teacher.url, spec, IN_MEMORY, str(units.parents[1]))
    for name, (content, mtime) in before.items():  # finished units were not recomputed
        assert (units / name).read_bytes() == content and (units / name).stat().st_mtime_ns == mtime
    clean = ml.materialize_labels(label_env.tokens.url, label_env.teacher.url, spec, IN_MEMORY, str(tmp_path / "clean"))
    assert _chunk_files(resumed.url) == _chunk_files(clean.url)
    assert read_manifest(resumed.url).checksums == read_manifest(clean.url).checksums
    assert LabelStore.open(resumed.url).verify() == []


def test_runner_flags():
    assert runner_flags(BeamConfig(runner="DirectRunner", num_workers=2)) == [
        "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing",
        "--default_sdk_harness_log_level=WARNING"]
    assert "--direct_running_mode=in_memory" in runner_flags(IN_MEMORY)
    chatty = runner_flags(BeamConfig(runner="DirectRunner", options=["--default_sdk_harness_log_level=INFO"]))
    assert chatty.count("--default_sdk_harness_log_level=INFO") == 1 and len(chatty) == 4  # the user's wins
    flink = runner_flags(BeamConfig(runner="FlinkRunner", options=["--flink_master=h:8081",
                                                                   "--environment_type=LOOPBACK"]))
    assert flink == ["--runner=FlinkRunner", "--flink_master=h:8081", "--environment_type=LOOPBACK"]
    dataflow = runner_flags(BeamConfig(runner="DataflowRunner", options=["--project=p"]), job_name="smt-labels-x")
    assert any(f.startswith("--setup_file=") and f.endswith("pyproject.toml") for f in dataflow)
    assert "--job_name=smt-labels-x" in dataflow
    own = runner_flags(BeamConfig(runner="DataflowRunner", options=["--extra_package=dist/x.tar.gz"]))
    assert not any(f.startswith("--setup_file") for f in own)


def test_process_local_root_refused_for_worker_processes(label_env):
    with pytest.raises(Exception, match="memory://"):
        ml.materialize_labels(label_env.tokens.url, label_env.teacher.url, TINY_SPEC, MULTI_PROCESS, "memory://x")


def test_windows_longer_than_every_document_fail_clearly(label_env, tmp_path):
    tokens = make_tokens(str(tmp_path), num_docs=3, seed=5)
    with pytest.raises(Exception, match="trajectory_len"):
        plan_windows(TokensArtifact.open(tokens.url), LabelSpec(trajectory_len=500, num_windows=4))


def test_project_packages_for_cluster_workers(tmp_path):
    """What Beam ships to Flink/Spark/Dataflow workers: the sdist its own Stager builds from the
    `--setup_file` we pass. It must hold every package the label job imports."""
    import tarfile

    from apache_beam.runners.portability.stager import Stager

    flags = runner_flags(BeamConfig(runner="DataflowRunner", options=["--project=p"]))
    setup_file = next(f.split("=", 1)[1] for f in flags if f.startswith("--setup_file="))
    sdist = Stager._build_setup_package(setup_file, str(tmp_path))
    names = tarfile.open(sdist).getnames()
    for module in ("pipelines/materialize_labels.py", "pipelines/label_units.py", "models/teacher.py",
                   "store/label_layout.py", "schemas/config.py", "training/windows.py", "store/teacher.py"):
        assert any(n.endswith(module) for n in names), module
