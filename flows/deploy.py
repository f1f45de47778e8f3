"""Scheduled runs: `smt serve CONFIG --cron ...` keeps a process that runs the flow on schedule.

Start a server first (`prefect server start --host 127.0.0.1`) and point PREFECT_API_URL at it;
runs then appear in the UI. `prefect.yaml` at the repository root is the declarative equivalent
for `prefect deploy` with a work pool.
"""

from __future__ import annotations

from flows.smt_pipeline import smt_pipeline
from schemas.config import PipelineConfig


def serve_pipeline(cfg: PipelineConfig, cron: str | None, name: str, interval: int | None = None) -> None:
    """Block, serving one deployment of the flow with this config as its parameters, on a cron schedule or
    every `interval` seconds."""
    from flows.task_runners import task_runner_for

    served = smt_pipeline.with_options(task_runner=task_runner_for(cfg.task_runner))
    schedule = {"interval": interval} if interval else {"cron": cron}
    served.serve(name=name, parameters={"config": cfg.model_dump(mode="json")}, **schedule)
