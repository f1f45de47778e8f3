"""Tiny tokens + teacher artifacts for the label store tests (a few KB, built in well under a second).

The teacher is random (untrained): the label job only needs encode/readout, and a random teacher gives
labels with the same shapes, normalisation and determinism properties as a trained one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.build import build_teacher
from schemas.config import BeamConfig, LabelSpec, TeacherModelConfig, TeacherTrainConfig, TokensConfig
from store.artifacts import ArtifactRef, plan_artifact, publish_manifest
from store.teacher import TEACHER_FILE
from store.tokens import build_tokens_artifact
from store.weights import save_module

TEXT = Path(__file__).parent / "data" / "pride_and_prejudice_excerpt.txt"
TINY_MODEL = TeacherModelConfig(
    vocab_size=256, width=32, heads=2, encoder_depth=1, decoder_depth=1, mlp_ratio=2,
    memory_tokens=4, memory_dim=16, context_len=16, future_len=4,
)
# 24 windows in shards of 4 -> 6 units; L=8 -> 9 memories per window, 216 labels in all.
TINY_SPEC = LabelSpec(trajectory_len=8, num_windows=24, shard_windows=4, batch_size=64, device="cpu", seed=0)
IN_MEMORY = BeamConfig(runner="FnApiRunner", num_workers=1)
MULTI_PROCESS = BeamConfig(runner="DirectRunner", num_workers=2)


def make_tokens(root: str, num_docs: int = 24, seed: int = 0) -> ArtifactRef:
    """Character-level documents of 4..90 bytes cut from the excerpt (JSONL, one per line).

    Language data (y = next byte, -1 at a document's end) so dec_loss has both scored labels and NaNs,
    and some documents are shorter than L+1 so the planner must skip them.
    """
    text = TEXT.read_text(encoding="utf-8").replace("\n", " ")
    rng = np.random.default_rng(seed)
    lines, pos = [], 0
    for length in rng.integers(4, 91, size=num_docs):
        lines.append(json.dumps({"text": text[pos : pos + int(length)]}))
        pos += int(length)
    path = Path(root) / f"docs-{seed}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    cfg = TokensConfig(source="jsonl", url=str(path), test_fraction=0.25, seed=seed)
    return build_tokens_artifact(cfg, root)


def make_teacher(root: str, tokens: ArtifactRef, model: TeacherModelConfig = TINY_MODEL, seed: int = 0) -> ArtifactRef:
    """Publish a random teacher in the teacher artifact layout (store/teacher.py)."""
    config = TeacherTrainConfig(model=model).address_json()
    config["run"]["seed"] = seed  # different seeds -> different teacher hashes
    parents = {"tokens": tokens.hash}
    ref = plan_artifact(root, "teacher", config, parents)
    torch.manual_seed(seed)
    teacher = build_teacher(model)
    save_module(ref.join(TEACHER_FILE), teacher)
    publish_manifest(ref, config, parents, stats={"random": True})
    return ref


@dataclass(frozen=True)
class LabelEnv:
    """Artifacts shared by the label tests: tokens, a random teacher, and a float16 store built in-process."""

    root: str
    tokens: ArtifactRef
    teacher: ArtifactRef
    store: ArtifactRef


def build_label_env(root: str) -> LabelEnv:
    from pipelines.materialize_labels import materialize_labels

    tokens = make_tokens(root)
    teacher = make_teacher(root, tokens)
    store = materialize_labels(tokens.url, teacher.url, TINY_SPEC, IN_MEMORY, root)
    return LabelEnv(root, tokens, teacher, store)
