"""Tiny configs and a tiny real pipeline (tokens -> trained teacher -> label store) for training tests.

Everything is the real code path: the teacher is trained by `teacher_stage` for a few steps and the
store is written by the Beam label job (in-memory runner), so the training stages read exactly what
they read in production, only smaller (width 32, depth 1, K=4, D=16, Tc=16, L=8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from _fixtures_labels import IN_MEMORY, TINY_MODEL, TINY_SPEC, make_tokens

from schemas.config import (
    BPTTConfig,
    DistillConfig,
    DMTConfig,
    EvalConfig,
    OptimConfig,
    RNNConfig,
    RunConfig,
    TeacherTrainConfig,
)
from stages.labels import labels_stage
from stages.teacher import teacher_stage
from store.artifacts import ArtifactRef


def run_cfg(steps: int, batch: int, **kw: Any) -> RunConfig:
    settings = {"device": "cpu", "log_every": 4, "checkpoint_every": 6, **kw}
    return RunConfig(steps=steps, batch_size=batch, **settings)


TEACHER_CFG = TeacherTrainConfig(
    model=TINY_MODEL,
    updater=RNNConfig(kind="transformer", width=32, depth=1, heads=2, hidden=64),
    run=run_cfg(12, 16),
    optim=OptimConfig(lr=3e-3),
)
TRANSFORMER = RNNConfig(kind="transformer", width=32, depth=1, heads=2, hidden=64, readout="teacher_decoder")
GRU = RNNConfig(kind="gru", width=16, hidden=32, readout="mlp")
DISTILL_CFG = DistillConfig(run=run_cfg(24, 32), optim=OptimConfig(lr=3e-3))
DMT_CFG = DMTConfig(run=run_cfg(4, 4, checkpoint_every=2), rollout_len=8, pull_every=4)
BPTT_CFG = BPTTConfig(run=run_cfg(8, 8), seq_len=16, optim=OptimConfig(lr=3e-3), budget="steps")
EVAL_CFG = EvalConfig(prefix_len=4, steps=8, num_sequences=4, num_samples=1, sample_len=8, batch_size=4, device="cpu")


@dataclass(frozen=True)
class Chain:
    """The upstream artifacts every training stage needs."""

    root: str
    tokens: ArtifactRef
    teacher: ArtifactRef
    labels: ArtifactRef


def build_chain(root: str, teacher_cfg: TeacherTrainConfig = TEACHER_CFG) -> Chain:
    tokens = make_tokens(root)
    teacher = teacher_stage(tokens.url, teacher_cfg, root)
    labels = labels_stage(tokens.url, teacher.url, TINY_SPEC, IN_MEMORY, root)
    return Chain(root, tokens, teacher, labels)


def state_equal(a: torch.nn.Module | dict[str, torch.Tensor], b: torch.nn.Module | dict[str, torch.Tensor]) -> bool:
    sa = a.state_dict() if isinstance(a, torch.nn.Module) else a
    sb = b.state_dict() if isinstance(b, torch.nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
