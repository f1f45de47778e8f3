"""The flow's task runner from the config: Prefect's own threads, or Prefect's Dask integration.

    task_runner: {kind: dask, address: tcp://scheduler:8786}    # tasks on a running Dask cluster
    task_runner: {kind: dask, workers: 4}                       # a local cluster of 4 worker processes

Each Dask worker process runs one task per worker thread; start workers with `--nthreads 1` (the
local cluster does) so a task's torch threads (training/threads.py) have the cores they count on.
Workers need this project installed and must reach the artifact root (a shared fsspec URL).
"""

from __future__ import annotations

from typing import Any

from schemas.config import TaskRunnerConfig


def task_runner_for(cfg: TaskRunnerConfig) -> Any:
    """A Prefect task runner instance for `cfg` (prefect-dask is imported only when asked for)."""
    if cfg.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise RuntimeError("task_runner kind 'dask' needs prefect-dask: pip install '.[dask]'") from err
    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": cfg.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
    })
