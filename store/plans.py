"""Content addresses of every stage's output, computable before the stage runs.

Each stage publishes under the ref its plan function returns, and the Prefect flow uses the same
function as its cache key, so "same inputs + same config" means "same artifact" in exactly one place.
Plan functions take the stage's own keyword arguments (extra ones are ignored).
"""

from __future__ import annotations

from typing import Any

from schemas.config import (
    BeamConfig,
    BPTTConfig,
    DistillConfig,
    DMTConfig,
    EvalConfig,
    LabelSpec,
    RNNConfig,
    TeacherChoiceConfig,
    TeacherTrainConfig,
    TokensConfig,
)
from store.artifacts import ArtifactError, ArtifactRef, plan_artifact, read_manifest, resolve_under


def _json(model: Any) -> Any:
    return model.address_json()  # schemas/config.py: fields added later stay out while unset


def parent_hash(url: str) -> str:
    """Hash of a complete artifact (its manifest must exist)."""
    return read_manifest(url).hash


def plan_tokens(cfg: TokensConfig, root: str, **_: Any) -> ArtifactRef:
    from store.tokens import plan_tokens_artifact

    return plan_tokens_artifact(cfg, root)


def plan_teacher(tokens_url: str, cfg: TeacherTrainConfig, root: str, **_: Any) -> ArtifactRef:
    """A teacher started from another (`init_from`) has that one's hash among its parents, as "init"."""
    parents = {"tokens": parent_hash(tokens_url)}
    if cfg.init_from is not None:
        url = resolve_under(root, cfg.init_from)
        try:
            parents["init"] = read_manifest(url, "teacher").hash
        except ArtifactError as err:
            raise ArtifactError(f"teacher.init_from: {err} (train that teacher first)") from err
    return plan_artifact(root, "teacher", _json(cfg), parents)


def plan_labels(
    tokens_url: str, teacher_url: str, spec: LabelSpec, root: str, beam: BeamConfig | None = None, **_: Any
) -> ArtifactRef:
    """The runner (BeamConfig) does not change the labels, so it is not part of the address."""
    parents = {"tokens": parent_hash(tokens_url), "teacher": parent_hash(teacher_url)}
    return plan_artifact(root, "labels", _json(spec), parents)


def plan_distill(
    labels_url: str, teacher_url: str, variant: RNNConfig, cfg: DistillConfig, root: str, **_: Any
) -> ArtifactRef:
    config = {"stage": "distill", "variant": _json(variant), "train": _json(cfg)}
    parents = {"labels": parent_hash(labels_url), "teacher": parent_hash(teacher_url)}
    return plan_artifact(root, "rnn", config, parents)


def plan_dmt(rnn_url: str, labels_url: str, teacher_url: str, cfg: DMTConfig, root: str, **_: Any) -> ArtifactRef:
    init = read_manifest(rnn_url)
    config = {"stage": "dmt", "variant": init.config.get("variant"), "train": _json(cfg)}
    parents = {"init": init.hash, "labels": parent_hash(labels_url), "teacher": parent_hash(teacher_url)}
    return plan_artifact(root, "rnn", config, parents)


def plan_bptt(
    tokens_url: str,
    variant: RNNConfig,
    teacher_url: str,
    cfg: BPTTConfig,
    root: str,
    smt_seconds: float | None = None,
    smt_flops: int | None = None,
    **_: Any,
) -> ArtifactRef:
    config = {"stage": "bptt", "variant": _json(variant), "train": _json(cfg), "smt_seconds": smt_seconds}
    if smt_flops is not None:  # absent for the other budgets, whose addresses stay as they were
        config["smt_flops"] = smt_flops
    parents = {"tokens": parent_hash(tokens_url), "teacher": parent_hash(teacher_url)}
    return plan_artifact(root, "rnn", config, parents)


def plan_teacher_choice(candidates: dict[str, dict[str, str]], cfg: TeacherChoiceConfig, root: str,
                        **_: Any) -> ArtifactRef:
    """candidates: teacher seed -> {"teacher", "labels", "rnn"} URLs (the rnn: that teacher's first SMT student)."""
    parents = {f"{role}@{seed}": parent_hash(urls[role])
               for seed, urls in sorted(candidates.items()) for role in ("teacher", "labels", "rnn")}
    return plan_artifact(root, "teacher_choice", _json(cfg), parents)


def plan_evaluate(
    rnn_urls: dict[str, str],
    tokens_url: str,
    teacher_url: str,
    labels_url: str,
    cfg: EvalConfig,
    root: str,
    **_: Any,
) -> ArtifactRef:
    parents = {f"rnn:{name}": parent_hash(url) for name, url in sorted(rnn_urls.items())}
    parents.update(
        tokens=parent_hash(tokens_url), teacher=parent_hash(teacher_url), labels=parent_hash(labels_url)
    )
    return plan_artifact(root, "evaluation", _json(cfg), parents)
