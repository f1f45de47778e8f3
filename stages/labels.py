"""Labels stage: (tokens, teacher, LabelSpec, BeamConfig) -> label store, via the Beam job.

Thin on purpose: the work is in `pipelines/materialize_labels.py`; this is the stage signature the flow
and the CLI call, plus a dry run that says how big the store would be before anything is written.
"""

from __future__ import annotations

from typing import Any

from pipelines.materialize_labels import Progress, materialize_labels
from pipelines.options import runner_flags
from schemas.config import BeamConfig, LabelSpec, TeacherModelConfig
from store.artifacts import ArtifactRef
from store.label_layout import LabelGeometry, projected_store_bytes


def labels_stage(
    tokens_url: str,
    teacher_url: str,
    spec: LabelSpec,
    beam: BeamConfig,
    root: str,
    progress: Progress | None = None,
    worker_threads: int | None = None,
) -> ArtifactRef:
    """Materialise (or resume, or reuse) the label store of this teacher on these tokens.

    `progress(done_units, total_units)` is called every couple of seconds while Beam runs;
    `worker_threads`: torch threads per Beam worker (the config's `threads`; None = cores shared out).
    """
    return materialize_labels(tokens_url, teacher_url, spec, beam, root, progress, worker_threads)


def dry_run(tokens_url: str, model: TeacherModelConfig, spec: LabelSpec, beam: BeamConfig) -> dict[str, Any]:
    """How many windows/labels the store would hold and its projected size, before any teacher
    exists: reads the tokens index only (no weights, no encoding)."""
    from pipelines.label_units import plan_windows
    from store.tokens import TokensArtifact

    plan = plan_windows(TokensArtifact.open(tokens_url), spec)
    geometry = LabelGeometry.build(spec, model, plan.num_rows)
    counts = geometry.counts()
    return {
        "windows": geometry.num_windows,
        "units": geometry.num_shards,
        "labels": counts["labels"],
        "transitions": counts["transitions"],
        "memory_size": geometry.memory_size,
        "dtype": spec.dtype,
        "projected_bytes": projected_store_bytes(spec, model, geometry.num_windows),
        "bytes_per_label": geometry.window_bytes() / geometry.steps,
        "beam_flags": runner_flags(beam),
    }
