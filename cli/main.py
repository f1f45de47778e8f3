"""The `smt` command: the whole flow, one subcommand per stage, store tools and reports.

User mistakes (a bad path, a corrupt file, a store from another teacher, a config typo) print one
line and exit with status 2; set SMT_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from schemas.config import ConfigError, PipelineConfig, load_config
from store.artifacts import ArtifactError

# Beam's GCP module warns at import that it lacks the BigQuery client (irrelevant to local runners).
logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())

app = typer.Typer(help="Supervised Memory Training: pretrain RNNs from stored teacher memories.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
store_app = typer.Typer(help="Inspect and verify label stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")
console = Console(stderr=True)

ConfigArg = Annotated[str, typer.Argument(help="pipeline YAML config, e.g. configs/demo.yaml")]
RootOpt = Annotated[str | None, typer.Option("--root", help="override the config's artifact root URL")]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="torch CPU threads per task (overrides the config's threads)")
]


def _user_errors() -> tuple[type[BaseException], ...]:
    from sources.errors import SourceError

    return (ConfigError, ArtifactError, SourceError, FileNotFoundError)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one red line and exit status 2; a stop (Ctrl-C, SIGTERM) into one line,
    no process left behind, and status 130 / 143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        handle_stop_signals()
        try:
            return fn(*args, **kwargs)
        except (*_user_errors(), OSError, ValidationError) as err:  # OSError: permissions, full disk, ...
            if os.environ.get("SMT_DEBUG"):
                raise
            from store.artifacts import describe_validation
            from store.environment import describe_os_error

            if isinstance(err, ValidationError):  # a stored record (manifest, recipe) that no longer validates
                line = f"invalid {err.title}: {describe_validation(err)}"
            elif isinstance(err, _user_errors()) and not (isinstance(err, OSError) and err.errno):
                line = str(err)
            else:
                line = describe_os_error(err)  # type: ignore[arg-type]
            console.print(f"[red]error:[/red] {line.splitlines()[0] if line else type(err).__name__}",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print(f"stopped ({_signal_name()}): finished work is kept; run the same command again to resume",
                          highlight=False)
            raise typer.Exit(128 + _STOPPED_BY[0]) from None

    return wrapper


_STOPPED_BY = [signal.SIGINT]  # the signal that stopped this run


def _signal_name() -> str:
    return signal.Signals(_STOPPED_BY[0]).name


def handle_stop_signals() -> None:
    """SIGINT and SIGTERM: ask every training loop to stop at its next step (training/stopping.py) and
    interrupt the main thread, wherever it waits (a Beam job, a Prefect future)."""
    from training.stopping import clear_stop, request_stop

    clear_stop()  # a stop requested during an earlier command in this process is not this command's

    def on_signal(signum: int, _frame: Any) -> None:
        _STOPPED_BY[0] = signum
        request_stop()
        raise KeyboardInterrupt

    on_signal.requests_stop = True  # type: ignore[attr-defined]  (see training.stopping.stop_first_on_sigterm)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
    if not _CHILDREN_STOPPED_AT_EXIT:
        # registered before Prefect registers its server's stop, so it runs after it (atexit is LIFO)
        atexit.register(stop_children)
        _CHILDREN_STOPPED_AT_EXIT.append(True)


_CHILDREN_STOPPED_AT_EXIT: list[bool] = []


def stop_children(grace_s: float = 5.0) -> None:
    """Terminate what this run started (Prefect's temporary server, Beam's worker processes)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _config(path: str, root: str | None, threads: int | None = None) -> PipelineConfig:
    cfg = load_config(path)
    update = {"root": root, "threads": threads}
    return cfg.model_copy(update={k: v for k, v in update.items() if v is not None})


@app.command()
@friendly
def run(config: ConfigArg, root: RootOpt = None, threads: ThreadsOpt = None) -> None:
    """Run the whole Prefect flow (local ephemeral API unless PREFECT_API_URL is set)."""
    from flows.smt_pipeline import run_pipeline

    cfg = _config(config, root, threads)
    report = run_pipeline(cfg)
    typer.echo(f"report: {report}")


def _stage_command(stage: str) -> Callable[..., None]:
    def command(
        config: ConfigArg,
        root: RootOpt = None,
        variant: Annotated[
            list[str] | None, typer.Option(help="only these variant names (`gru`: every seed of it, `gru@seed1`: one)")
        ] = None,
        threads: ThreadsOpt = None,
    ) -> None:
        from flows.local import run_until

        cfg = _config(config, root, threads)
        chosen = [v for v in cfg.students if not variant or v.label in variant or v.base_label in variant]
        if variant and not chosen:
            raise ConfigError(f"no variant named {variant}; the config has {[v.label for v in cfg.students]}")
        from training.distributed import shutdown

        try:
            run_until(cfg, stage, chosen, log=lambda line: console.print(line, highlight=False))
        finally:
            shutdown()  # a no-op unless torchrun started a process group

    command.__doc__ = f"Build the {stage} artifact (and whatever it needs) without Prefect."
    return friendly(command)


for _stage in ("tokens", "teacher", "distill", "dmt", "bptt", "evaluate"):
    app.command(name=_stage)(_stage_command(_stage))


@app.command()
@friendly
def labels(
    config: ConfigArg,
    root: RootOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the projected store size only")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Materialise the label store with Beam (after tokens and teacher), or project its size."""
    from flows.local import run_until

    cfg = _config(config, root, threads)
    if dry_run:
        from stages.labels import dry_run as project
        from stages.tokens import tokens_stage

        tokens = tokens_stage(cfg=cfg.tokens, root=cfg.root)
        info = project(tokens.url, cfg.teacher.model, cfg.labels, cfg.beam)
        console.print(f"projected label store: {info['projected_bytes'] / 1e9:.3f} GB "
                      f"({info['windows']} windows, {info['labels']} labels, {info['units']} units)")
        typer.echo(json.dumps(info, indent=2))
        return
    run_until(cfg, "labels", log=lambda line: console.print(line, highlight=False))


@store_app.command("inspect")
@friendly
def store_inspect(url: Annotated[str, typer.Argument(help="label store URL")]) -> None:
    """Spec, size, counts, label statistics and lineage of a label store."""
    from store.labels import LabelStore

    info = LabelStore.open(url).inspect()
    table = Table(title=f"label store {url}", show_header=False)
    for key, value in info.items():
        shown = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
        table.add_row(str(key), shown)
    Console().print(table)


@store_app.command("verify")
@friendly
def store_verify(url: Annotated[str, typer.Argument(help="label store URL")]) -> None:
    """Recompute chunk checksums and scan for NaNs; exit 1 when anything is wrong."""
    verify(url)


@app.command()
@friendly
def verify(url: Annotated[str, typer.Argument(help="artifact URL (any kind)")]) -> None:
    """Check an artifact's files against its manifest and the manifest against its own hash; exit 1
    when anything is wrong."""
    from store.verify import verify_artifact

    manifest, problems, notes = verify_artifact(url)
    for note in notes:
        typer.echo(f"note: {note}")
    for problem in problems:
        typer.echo(f"problem: {problem}")
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: {manifest.kind if manifest else 'artifact'} {url}")


@app.command()
@friendly
def report(run: Annotated[str, typer.Argument(help="report directory or report.md path/URL")]) -> None:
    """Print a run's Markdown report in the terminal."""
    from store.artifacts import read_bytes

    url = run if run.endswith(".md") else f"{run.rstrip('/')}/report.md"
    try:
        text = read_bytes(url).decode()
    except FileNotFoundError:
        raise ArtifactError(f"no report at {url}") from None
    Console().print(Markdown(text))


DEPLOYMENT_NAME = "smt-nightly"  # prefect.yaml names its deployment the same


@app.command()
@friendly
def serve(
    config: ConfigArg,
    cron: Annotated[str, typer.Option(help="schedule in cron syntax")] = "0 3 * * *",
    interval: Annotated[
        int | None, typer.Option(min=1, help="run every this many seconds instead of the cron schedule")
    ] = None,
    name: Annotated[str, typer.Option(help="deployment name (prefect.yaml uses the same)")] = DEPLOYMENT_NAME,
) -> None:
    """Serve a scheduled deployment of the flow (needs a Prefect server, see the README)."""
    from flows.deploy import serve_pipeline

    serve_pipeline(_config(config, None), cron=None if interval else cron, name=name, interval=interval)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
