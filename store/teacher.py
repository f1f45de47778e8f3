"""The teacher artifact's files, read and written in one place (the teacher stage trains it).

    teacher-{hash16}/teacher.safetensors    Teacher state_dict
                    /updater.safetensors    reference updater (RNN) state_dict
                    /metrics.parquet        step, loss terms, lr (one row per log_every)
                    /timings.parquet        step, seconds, items_per_s (store/training_log.py)
                    /manifest.json          config = TeacherTrainConfig, parents {"tokens": hash} (+ "init":
                                            the teacher it started from, with `init_from`)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.build import build_rnn, build_teacher
from schemas.config import TeacherTrainConfig
from schemas.manifest import Manifest
from store.artifacts import CHECKPOINT_DIR, ArtifactError, ArtifactRef, open_artifact, publish_manifest
from store.checkpoints import remove_checkpoints
from store.integrity import check_recorded_file
from store.training_log import write_training_log
from store.weights import load_module, save_module

TEACHER_FILE = "teacher.safetensors"
UPDATER_FILE = "updater.safetensors"


def teacher_config(manifest: Manifest) -> TeacherTrainConfig:
    """The training config a teacher artifact was made with (its manifest.config)."""
    try:
        return TeacherTrainConfig.model_validate(manifest.config)
    except Exception as err:  # pydantic ValidationError: name the artifact, not just the field
        raise ArtifactError(f"teacher artifact {manifest.hash[:16]} has an unreadable config: {err}") from err


def load_teacher(url: str, device: str | torch.device = "cpu") -> tuple[nn.Module, Manifest]:
    """Rebuild the Teacher from its manifest config and load its safetensors weights (eval mode).

    Returns (teacher, manifest); the manifest's hash is what lineage checks compare against.
    """
    ref, manifest = open_artifact(url, "teacher")
    cfg = teacher_config(manifest)
    teacher = build_teacher(cfg.model)
    check_recorded_file(ref.url, manifest.checksums, TEACHER_FILE, "teacher")
    load_module(ref.join(TEACHER_FILE), teacher, device)
    teacher.eval()
    return teacher, manifest


def load_reference_updater(
    url: str, device: str | torch.device = "cpu", teacher: nn.Module | None = None
) -> tuple[nn.Module, Manifest]:
    """Rebuild the reference Transformer updater trained alongside the teacher (eval mode)."""
    ref, manifest = open_artifact(url, "teacher")
    cfg = teacher_config(manifest)
    if teacher is None:
        teacher = build_teacher(cfg.model)
    updater = build_rnn(cfg.updater, cfg.model, teacher)
    load_module(ref.join(UPDATER_FILE), updater, device)
    updater.eval()
    return updater, manifest


def recorded_train_flops(manifest: Manifest) -> int:
    """What a teacher artifact cost to train (its parents included), as recorded; teachers published before
    it was recorded get it counted from their config (training/flops.py)."""
    if "train_flops" in manifest.stats:
        return int(manifest.stats["train_flops"])
    from training.flops import teacher_training_flops

    return teacher_training_flops(teacher_config(manifest))


# not weight shapes, so they may differ from the parent: the crop lengths, and how the encoder reads its memory
FREE_FIELDS = ("context_len", "future_len", "encoder_memory")


def load_init_weights(
    url: str, cfg: TeacherTrainConfig, teacher: nn.Module, updater: nn.Module, device: str | torch.device = "cpu"
) -> Manifest:
    """Copy a parent teacher artifact's weights (teacher and reference updater) into fresh modules.

    Refuses a parent of another shape: every model field but FREE_FIELDS (crop lengths, memory layout), and the
    updater config, must match. Returns the parent's manifest (its stats carry the cost to count).
    """
    ref, manifest = open_artifact(url, "teacher")
    parent = teacher_config(manifest)
    ours = cfg.model.model_dump(exclude=set(FREE_FIELDS))
    theirs = parent.model.model_dump(exclude=set(FREE_FIELDS))
    differ = sorted(k for k in ours if ours[k] != theirs.get(k))
    if parent.updater != cfg.updater:
        differ.append("updater")
    if differ:
        raise ArtifactError(
            f"teacher.init_from {url} has another shape ({', '.join(differ)} differ): only "
            f"{', '.join(FREE_FIELDS)} may change"
        )
    for name, module in ((TEACHER_FILE, teacher), (UPDATER_FILE, updater)):
        check_recorded_file(ref.url, manifest.checksums, name, "teacher")
        load_module(ref.join(name), module, device)
    return manifest


def publish_teacher(
    ref: ArtifactRef, teacher: nn.Module, updater: nn.Module, metrics: list[dict[str, Any]], stats: dict[str, Any]
) -> Manifest:
    """Write both weights and the training log, then the manifest (last), then drop the checkpoint."""
    save_module(ref.join(TEACHER_FILE), teacher)
    save_module(ref.join(UPDATER_FILE), updater)
    write_training_log(ref, metrics)
    counts = {"parameters": sum(p.numel() for p in teacher.parameters())}
    manifest = publish_manifest(ref, ref.config, ref.parents, counts=counts, stats=stats)
    remove_checkpoints(ref.join(CHECKPOINT_DIR))
    return manifest
