"""Run the stage graph in this process, without Prefect (what `smt <stage> CONFIG` does).

Every stage returns at once when its artifact is already complete, so asking for a late stage
re-uses whatever earlier stages have already published. Stages run one after the other here, with
the thread counts the flow gives them (flows/graph.py), so they publish the flow's bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flows.graph import Stage, run_graph
from schemas.config import PipelineConfig, RNNConfig
from store.artifacts import ArtifactError, ArtifactRef, is_complete
from training.threads import use_threads

DATA_STAGES = ("tokens", "labels")  # not rank-aware: under torchrun they must exist already


class LocalExecutor:
    """Calls each stage at once; `submit` returns its ref."""

    def submit(self, stage: Stage, variant: RNNConfig | None, threads: int, params: dict[str, Any]) -> ArtifactRef:
        if under_torchrun() and stage.name in DATA_STAGES:
            _require_built(stage.name, stage.plan(**params))
        use_threads(threads)
        if stage.name != "labels":
            return stage.run(**params)
        with units_progress("labels (Beam)") as progress:
            return stage.run(**params, progress=progress)

    def result(self, handle: ArtifactRef) -> ArtifactRef:
        return handle


def run_until(
    cfg: PipelineConfig, last: str, variants: list[RNNConfig] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, ArtifactRef]:
    """Build every artifact up to `last` (inclusive); returns role -> ref."""
    return run_graph(cfg, LocalExecutor(), last, variants, log)


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
