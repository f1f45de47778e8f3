"""Run the stages in order without Prefect, up to a chosen one (what `smt <stage> CONFIG` does).

Every stage returns at once when its artifact is already complete, so asking for a late stage
re-uses whatever earlier stages have already published.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from schemas.config import PipelineConfig, RNNConfig
from stages.plans import plan_labels, plan_tokens
from store.artifacts import ArtifactError, ArtifactRef, is_complete
from training.threads import threads_for, use_threads

STAGES = ("tokens", "teacher", "labels", "distill", "dmt", "bptt", "evaluate")


def run_until(
    cfg: PipelineConfig, last: str, variants: list[RNNConfig] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, ArtifactRef]:
    """Build every artifact up to `last` (inclusive); returns role -> ref."""
    if last not in STAGES:
        raise ValueError(f"unknown stage '{last}', expected one of {', '.join(STAGES)}")
    from stages.bptt import bptt_stage, budget_inputs
    from stages.distill import distill_stage
    from stages.dmt import dmt_stage
    from stages.evaluate import evaluate_stage
    from stages.labels import labels_stage
    from stages.teacher import require_useful_teacher, teacher_stage
    from stages.tokens import tokens_stage

    wanted = STAGES[: STAGES.index(last) + 1]
    variants = variants or list(cfg.variants)
    root = cfg.root
    refs: dict[str, ArtifactRef] = {}

    def done(role: str, ref: ArtifactRef) -> ArtifactRef:
        refs[role] = ref
        log(f"{role}: {ref.url}")
        return ref

    def threads(stage: str) -> None:  # the flow's counts, so one by one gives its bytes (training/threads.py)
        use_threads(threads_for(cfg.threads, stage, len(cfg.variants)))

    if under_torchrun():  # data stages are not rank-aware: every rank would build them at once
        _require_built("tokens", plan_tokens(cfg=cfg.tokens, root=root))
    threads("tokens")
    tokens = done("tokens", tokens_stage(cfg=cfg.tokens, root=root))
    if "teacher" not in wanted:
        return refs
    threads("teacher")
    teacher = done("teacher", teacher_stage(tokens_url=tokens.url, cfg=cfg.teacher, root=root))
    if "labels" not in wanted:
        return refs
    require_useful_teacher(teacher.url, tokens.url, cfg.teacher_margin_bits)  # before the expensive label job
    if under_torchrun():
        planned = plan_labels(tokens_url=tokens.url, teacher_url=teacher.url, spec=cfg.labels, root=root)
        _require_built("labels", planned)
    threads("labels")
    with units_progress("labels (Beam)") as progress:
        labels = done("labels", labels_stage(
            tokens_url=tokens.url, teacher_url=teacher.url, spec=cfg.labels, beam=cfg.beam, root=root,
            progress=progress, worker_threads=cfg.threads))
    if last == "labels":
        return refs
    threads("distill")  # the same count for DMT and BPTT
    for variant in variants:
        if "distill" in wanted:
            smt = done(f"{variant.label}/smt", distill_stage(
                labels_url=labels.url, teacher_url=teacher.url, variant=variant, cfg=cfg.distill, root=root))
        if "dmt" in wanted:
            done(f"{variant.label}/smt+dmt", dmt_stage(
                rnn_url=smt.url, labels_url=labels.url, teacher_url=teacher.url, cfg=cfg.dmt, root=root))
        if "bptt" in wanted:
            done(f"{variant.label}/bptt", bptt_stage(
                tokens_url=tokens.url, variant=variant, teacher_url=teacher.url, cfg=cfg.bptt, root=root,
                **budget_inputs(cfg, variant, smt.url)))
    if last == "evaluate":
        threads("evaluate")
        rnn_urls = {role: ref.url for role, ref in refs.items() if ref.kind == "rnn"}
        done("evaluation", evaluate_stage(
            rnn_urls=rnn_urls, tokens_url=tokens.url, teacher_url=teacher.url, labels_url=labels.url,
            cfg=cfg.evaluate, root=root))
    return refs


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _require_built(role: str, ref: ArtifactRef) -> None:
    if not is_complete(ref.url):
        raise ArtifactError(
            f"under torchrun the {role} artifact must exist already ({ref.url}): "
            "run `smt labels CONFIG` once, then launch the training stage with torchrun"
        )


@contextmanager
def units_progress(title: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar fed by `progress(done, total)` calls (silent off a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from training.loop import progress_enabled

    if not progress_enabled():
        yield lambda done, total: None
        return
    columns = (TextColumn(title), BarColumn(), MofNCompleteColumn(), TextColumn("units"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(title, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
