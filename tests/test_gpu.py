"""The GPU paths (bf16 autocast, device-side label batches, torch.compile), skipped without CUDA.

CI has no GPU, so these run only where one is present (`pytest tests/test_gpu.py`, see README
"Measuring on a GPU"). Each stage runs on the GPU over the tiny real pipeline of the other tests and is
checked against its CPU counterpart or for finite, improving losses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _fixtures_labels import IN_MEMORY, TINY_SPEC, make_teacher, make_tokens
from _fixtures_training import DISTILL_CFG, DMT_CFG, EVAL_CFG, TEACHER_CFG, TRANSFORMER

from stages.distill import distill_stage
from stages.dmt import dmt_stage
from stages.evaluate import evaluate_stage
from stages.labels import labels_stage
from stages.teacher import teacher_stage
from store.artifacts import read_manifest
from store.labels import LabelStore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_gpu(cfg, **run):
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"device": "cuda", **run})})


def test_label_job_on_the_gpu_matches_the_cpu_labels(tmp_path):
    root = str(tmp_path)
    tokens = make_tokens(root)
    teacher = make_teacher(root, tokens)
    cpu = LabelStore.open(labels_stage(tokens.url, teacher.url, TINY_SPEC, IN_MEMORY, root).url)
    gpu_spec = TINY_SPEC.model_copy(update={"device": "cuda"})
    gpu = LabelStore.open(labels_stage(tokens.url, teacher.url, gpu_spec, IN_MEMORY, root).url)
    assert gpu.verify() == [] and gpu.hash != cpu.hash
    a, b = cpu.memory(), gpu.memory()
    cosine = (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    assert cosine.min() > 0.99  # bf16 encoder vs fp32: same labels up to bf16 rounding


def test_training_stages_on_the_gpu_with_bf16_and_compile(tmp_path):
    root = str(tmp_path)
    tokens = make_tokens(root)
    teacher = teacher_stage(tokens.url, on_gpu(TEACHER_CFG), root)
    spec = TINY_SPEC.model_copy(update={"device": "cuda"})
    labels = labels_stage(tokens.url, teacher.url, spec, IN_MEMORY, root)
    distill_cfg = on_gpu(DISTILL_CFG, compile=True)
    rnn = distill_stage(labels.url, teacher.url, TRANSFORMER, distill_cfg, root)
    stats = read_manifest(rnn.url, "rnn").stats
    assert stats["device"].startswith("cuda") and stats["transitions"] == 24 * 32
    log = pq.read_table(Path(rnn.url) / "metrics.parquet").to_pylist()
    assert np.isfinite([r["loss"] for r in log]).all() and log[-1]["dyn"] < log[0]["dyn"]
    dmt = dmt_stage(rnn.url, labels.url, teacher.url, on_gpu(DMT_CFG), root)
    assert read_manifest(dmt.url, "rnn").stats["device"].startswith("cuda")
    rnns = {"transformer/smt": rnn.url, "transformer/smt+dmt": dmt.url}
    evaluation = evaluate_stage(
        rnns, tokens.url, teacher.url, labels.url, EVAL_CFG.model_copy(update={"device": "cuda"}), root
    )
    summary = pq.read_table(Path(evaluation.url) / "summary.parquet").to_pylist()
    assert summary and all(np.isfinite(r["mean_bits"]) for r in summary)
