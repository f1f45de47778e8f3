"""The Prefect flow: the stage graph (flows/graph.py) run as Prefect tasks, then the report.

The flow only executes the graph. Every stage is content-addressed, so a task's cache key is the hash of
the artifact it would produce: a re-run with the same config finds every artifact complete and
does no work, and adding a variant trains only that variant against the existing label store.
A deleted artifact is rebuilt (the key is only used while the artifact is complete on disk).
"""

from __future__ import annotations

import base64
import functools
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture

from flows.graph import STAGES, Stage, run_graph
from schemas.config import PipelineConfig, RNNConfig, load_config
from stages.report import plan_report, report_stage
from store.artifacts import ArtifactRef, is_complete, read_bytes, read_manifest
from training.stopping import stop_first_on_sigterm
from training.threads import use_threads

RETRIES = 2  # transient failures (a flaky object store, a preempted worker) are retried
RETRY_DELAY_S = 5
WAIT_SLICE_S = 0.25  # the flow's main thread waits on a task in slices this long (see `wait_for`)


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

    The key is known before the task runs (`store/plans.py`), so the first run stores its result
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


class PrefectExecutor:
    """Submits each stage of the graph as a Prefect task (flows/graph.py), keyed on its artifact; the
    variant tasks are named by role and variant (`distill[gru]`), so the UI tells them apart."""

    def __init__(self, results: Path) -> None:
        self.results = results

    def submit(self, stage: Stage, variant: RNNConfig | None, threads: int, params: dict[str, Any]) -> PrefectFuture:
        run_name = f"{stage.name}[{variant.label}]" if variant is not None else None
        return STAGE_TASKS[stage.name].submit(self.results, run_name, threads=threads, **params)

    def result(self, handle: PrefectFuture) -> ArtifactRef:
        wait_for(handle)
        ref = handle.result()
        return ArtifactRef(url=ref["url"], hash=ref["hash"], kind=ref["kind"])


def wait_for(handle: PrefectFuture) -> None:
    """Wait until the task behind `handle` has finished, in slices of WAIT_SLICE_S.

    Why not one blocking wait: Python runs a signal's handler in the main thread, between bytecodes. When
    the kernel delivers SIGTERM to one of the task threads, the main thread blocked in a plain
    `result()` is not interrupted and runs the handler only when the task ends: the stop request
    (training/stopping.py) then reaches the training loops after they have finished (seen as a run that
    went on for minutes after `docker stop`). Waking every slice runs a pending handler within a slice."""
    wrapped = getattr(handle, "wrapped_future", None)  # thread-pool and Dask futures both wrap one
    if wrapped is None:
        handle.wait()
        return
    while not wrapped.done():
        handle.wait(timeout=WAIT_SLICE_S)


STAGE_TASKS = {name: _stage_task(_as_dict(stage.run), stage.plan, "labels (Beam)" if name == "labels" else name)
               for name, stage in STAGES.items()}


def _report(evaluation_url: str, lineage: dict[str, dict[str, str]], name: str) -> str:
    """Write the run report (an artifact like the others); returns the URL of report.md."""
    report_url, _ = report_stage(evaluation_url, lineage, name)
    return report_url


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s:]+\.png)\)")  # relative links only


def with_inline_images(report_url: str) -> str:
    """The report's Markdown with its plots inlined as data: URIs: the Prefect UI cannot follow the
    relative links that work beside report.md on disk (report.md itself keeps them)."""
    base = report_url.rsplit("/", 1)[0]

    def inline(match: re.Match[str]) -> str:
        parts = [p for p in match.group(2).split("/") if p != "."]
        url = base
        for part in parts:
            url = url.rsplit("/", 1)[0] if part == ".." else f"{url}/{part}"
        data = base64.b64encode(read_bytes(url)).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return _IMAGE.sub(inline, read_bytes(report_url).decode())


def publish_prefect_artifacts(report_url: str, lineage: dict[str, dict[str, str]], name: str) -> None:
    """The report, a lineage table and a link as Prefect artifacts, on every run (a cached one too:
    they belong to the flow run, not to the task that first wrote the report)."""
    create_markdown_artifact(markdown=with_inline_images(report_url), key="smt-report",
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
    results = _result_dir(cfg.root)
    refs = run_graph(cfg, PrefectExecutor(results))
    lineage = {role: _ref_dict(ref) for role, ref in refs.items()}
    report = report_task(results, evaluation_url=refs["evaluation"].url, lineage=lineage, name=cfg.name)
    publish_prefect_artifacts(report, lineage, cfg.name)
    print(f"report: {report}")
    return report


def run_pipeline(cfg: PipelineConfig) -> str:
    """Run the flow for `cfg` on the task runner it names (flows/task_runners.py); returns the report path."""
    from flows.task_runners import task_runner_for

    flow_for_config = smt_pipeline.with_options(task_runner=task_runner_for(cfg.task_runner))
    return flow_for_config(cfg.model_dump(mode="json"))
