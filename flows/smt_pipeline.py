"""The Prefect flow: tokens -> teacher -> Beam labels -> per variant (distill -> DMT, BPTT) -> evaluate.

The flow only wires stages. Every stage is content-addressed, so a task's cache key is the hash of
the artifact it would produce: a re-run with the same config finds every artifact complete and
does no work, and adding a variant trains only that variant against the existing label store.
A deleted artifact is rebuilt (the key is only used while the artifact is complete on disk).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture

from schemas.config import PipelineConfig, load_config
from stages import plans
from stages.bptt import bptt_stage, budget_inputs
from stages.distill import distill_stage
from stages.dmt import dmt_stage
from stages.evaluate import evaluate_stage
from stages.labels import labels_stage
from stages.report import plan_report, report_stage
from stages.teacher import require_useful_teacher, teacher_stage
from stages.tokens import tokens_stage
from store.artifacts import ArtifactRef, is_complete, read_bytes, read_manifest
from training.stopping import stop_first_on_sigterm
from training.threads import threads_for, use_threads

RETRIES = 2  # transient failures (a flaky object store, a preempted worker) are retried
RETRY_DELAY_S = 5


def _result_dir(root: str) -> Path:
    """Prefect's persisted task results: beside local artifacts, else under PREFECT_HOME."""
    if "://" not in root or root.startswith("file://"):
        path = Path(root.removeprefix("file://")).resolve() / ".prefect-results"
    else:
        path = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")) / "smt-results"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class StageTask:
    """A stage as a Prefect task whose cache key is the hash of the artifact it will publish.

    The key is known before the task runs (`stages/plans.py`), so the first run stores its result
    under it and any later run with the same inputs and config is a cache hit. If the artifact has
    been deleted since, the cached result is refreshed instead of trusted.
    """

    task: Task
    plan: Callable[..., ArtifactRef]

    def prepared(self, results: Path, run_name: str | None = None, **params: Any) -> Task:
        """The task keyed on the artifact these params will produce, planned once here; `run_name` names
        the task run in the UI (e.g. `distill[gru]`, so the variants can be told apart)."""
        ref = self.plan(**params)
        return self.task.with_options(
            result_storage=results,
            cache_key_fn=lambda _ctx, _params: ref.hash,
            refresh_cache=not is_complete(ref.url),
            **({"task_run_name": run_name} if run_name else {}),
        )

    def __call__(self, results: Path, run_name: str | None = None, **params: Any) -> Any:
        return self.prepared(results, run_name, **params)(**params)

    def submit(self, results: Path, run_name: str | None = None, **params: Any) -> PrefectFuture:
        return self.prepared(results, run_name, **params).submit(**params)


def _stage_task(fn: Callable[..., Any], plan: Callable[..., ArtifactRef], name: str) -> StageTask:
    prefect_task = task(
        fn,
        name=name,
        persist_result=True,
        result_serializer="json",
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAY_S,
    )
    return StageTask(prefect_task, plan)


def _ref_dict(ref: ArtifactRef) -> dict[str, str]:
    return {"url": ref.url, "hash": ref.hash, "kind": ref.kind}


def _as_dict(stage):
    """Tasks return plain dicts so Prefect persists them as JSON (no pickle anywhere), after setting the
    task's torch thread count (`threads`: decided by the flow, see training/threads.py)."""

    @functools.wraps(stage)
    def run(*args: Any, threads: int | None = None, **kwargs: Any) -> dict[str, str]:
        if threads is not None:
            use_threads(threads)
        return _ref_dict(stage(*args, **kwargs))

    # Prefect binds the call against this signature: the stage's own parameters, plus `threads`
    signature = inspect.signature(stage)
    extra = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="int | None")
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), extra])
    return run


tokens_task = _stage_task(_as_dict(tokens_stage), plans.plan_tokens, "tokens")
teacher_task = _stage_task(_as_dict(teacher_stage), plans.plan_teacher, "teacher")
labels_task = _stage_task(_as_dict(labels_stage), plans.plan_labels, "labels (Beam)")
distill_task = _stage_task(_as_dict(distill_stage), plans.plan_distill, "distill")
dmt_task = _stage_task(_as_dict(dmt_stage), plans.plan_dmt, "dmt")
bptt_task = _stage_task(_as_dict(bptt_stage), plans.plan_bptt, "bptt")
evaluate_task = _stage_task(_as_dict(evaluate_stage), plans.plan_evaluate, "evaluate")


def _report(evaluation_url: str, lineage: dict[str, dict[str, str]], name: str) -> str:
    """Write the run report (an artifact like the others); returns the URL of report.md."""
    report_url, _ = report_stage(evaluation_url, lineage, name)
    return report_url


def publish_prefect_artifacts(report_url: str, lineage: dict[str, dict[str, str]], name: str) -> None:
    """The report, a lineage table and a link as Prefect artifacts, on every run (a cached one too:
    they belong to the flow run, not to the task that first wrote the report)."""
    create_markdown_artifact(markdown=read_bytes(report_url).decode(), key="smt-report",
                             description=f"SMT report: {name}")
    rows = []
    for role, ref in lineage.items():
        manifest = read_manifest(ref["url"])
        rows.append({"stage": role, "kind": ref["kind"], "hash": ref["hash"][:16], "url": ref["url"],
                     "counts": ", ".join(f"{k}={v}" for k, v in manifest.counts.items())})
    create_table_artifact(table=rows, key="smt-lineage", description="every artifact of this run")
    link = report_url if "://" in report_url else Path(report_url).resolve().as_uri()
    create_link_artifact(link=link, link_text="report.md", key="smt-report-file")


report_task = _stage_task(_report, plan_report, "report")


@flow(name="smt-pipeline", log_prints=True)
def smt_pipeline(config: dict[str, Any] | str) -> str:
    """Run the whole pipeline for one config (a dict or a YAML path); returns the report path."""
    stop_first_on_sigterm()  # a SIGTERM must also stop the variant tasks' loops (training/stopping.py)
    cfg = load_config(config) if isinstance(config, str) else PipelineConfig.model_validate(config)
    root = cfg.root
    results = _result_dir(root)

    def threads(stage: str) -> int:
        return threads_for(cfg.threads, stage, len(cfg.variants))

    tokens = tokens_task(results, cfg=cfg.tokens, root=root, threads=threads("tokens"))
    teacher = teacher_task(results, tokens_url=tokens["url"], cfg=cfg.teacher, root=root, threads=threads("teacher"))
    require_useful_teacher(teacher["url"], tokens["url"], cfg.teacher_margin_bits)
    labels = labels_task(
        results, tokens_url=tokens["url"], teacher_url=teacher["url"], spec=cfg.labels, beam=cfg.beam, root=root,
        threads=threads("labels"), worker_threads=cfg.threads,
    )

    distilled: dict[str, PrefectFuture] = {}
    for variant in cfg.variants:
        distilled[variant.label] = distill_task.submit(
            results, f"distill[{variant.label}]", labels_url=labels["url"], teacher_url=teacher["url"],
            variant=variant, cfg=cfg.distill, root=root, threads=threads("distill"),
        )
    finals: dict[str, PrefectFuture] = {}
    for variant in cfg.variants:
        smt = distilled[variant.label].result()
        finals[f"{variant.label}/smt+dmt"] = dmt_task.submit(
            results, f"dmt[{variant.label}]", rnn_url=smt["url"], labels_url=labels["url"],
            teacher_url=teacher["url"], cfg=cfg.dmt, root=root, threads=threads("dmt"),
        )
        finals[f"{variant.label}/bptt"] = bptt_task.submit(
            results, f"bptt[{variant.label}]", tokens_url=tokens["url"], variant=variant,
            teacher_url=teacher["url"], cfg=cfg.bptt, root=root, threads=threads("bptt"),
            **budget_inputs(cfg, variant, smt["url"]),
        )
    rnns = {f"{label}/smt": fut.result() for label, fut in distilled.items()}
    rnns.update({key: fut.result() for key, fut in finals.items()})

    evaluation = evaluate_task(
        results, rnn_urls={k: v["url"] for k, v in rnns.items()}, tokens_url=tokens["url"],
        teacher_url=teacher["url"], labels_url=labels["url"], cfg=cfg.evaluate, root=root, threads=threads("evaluate"),
    )
    lineage = {"tokens": tokens, "teacher": teacher, "labels": labels, **rnns, "evaluation": evaluation}
    report = report_task(results, evaluation_url=evaluation["url"], lineage=lineage, name=cfg.name)
    publish_prefect_artifacts(report, lineage, cfg.name)
    print(f"report: {report}")
    return report
