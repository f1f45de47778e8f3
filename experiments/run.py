"""One command per experiment: run a config's whole pipeline, then record what docs/RESULTS.md shows.

    python -m experiments.run configs/experiments/retrieval-64.yaml            # the full experiment
    python -m experiments.run configs/experiments/retrieval-64.yaml --smoke    # minutes: CI's version

The pipeline runs in this process with the local executor (the stages and bytes of `smt run`, without a
Prefect server), then the report artifact is written as the flow writes it. The record
(`docs/results/<name>.json`) holds every number with what it depends on: the config, the seeds, the
device, the torch build and the wall clock of each stage; the report's figures are copied beside it.
`experiments/render.py` turns all records into docs/RESULTS.md.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from fsspec.core import url_to_fs

from schemas.config import PipelineConfig, load_config
from training.machine import cpu_model, cpu_vendor
from training.threads import available_cores

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
REPORT_FIGURES = ("compute.png",)
TEACHER_STATS = ("test_dec0_bits", "test_unigram_bits", "chance_bits", "steps", "train_flops",
                 "init_steps", "init_seconds", "init_flops")  # init_*: a teacher started from another


def smoke_config(cfg: PipelineConfig) -> PipelineConfig:
    """The same pipeline at a size that runs in about a minute on 2 cores: few documents and steps, no
    quality gate (a teacher of a few steps is at chance; the smoke checks the wiring, not the numbers), small
    batches, and eager (no `compile`: a cold inductor cache spends ~50 s per config building kernels on 2 cores, which
    made CI's smokes 3x slower; compiled paths are checked in tests/test_compiled.py)."""
    data = cfg.model_dump(mode="json")
    data["name"] = f"{cfg.name}-smoke"
    data["teacher_margin_bits"] = data["teacher_min_accuracy"] = None
    if data["tokens"]["source"] == "synthetic":
        data["tokens"]["num_docs"] = min(data["tokens"]["num_docs"], 256)
    else:
        data["tokens"]["max_docs"] = min(data["tokens"]["max_docs"] or 256, 256)
    chain = data["teacher"].get("chain", 1)
    data["teacher"]["run"].update(steps=6, checkpoint_every=6, log_every=3, compile=False,
                                  batch_size=min(data["teacher"]["run"]["batch_size"], max(chain, 16)))
    data["teacher"]["init_from"] = None  # its parent is another experiment's full teacher, absent in a smoke root
    data["labels"].update(num_windows=8, shard_windows=4, compile=False)
    for stage, steps, batch in (("distill", 6, 16), ("dmt", 2, 4), ("bptt", 4, 4)):
        batch = min(data[stage]["run"]["batch_size"], batch)
        data[stage]["run"].update(steps=steps, checkpoint_every=steps, log_every=2, batch_size=batch, compile=False)
    if data.get("bptt_plateau"):
        data["bptt_plateau"].update(max_steps=4, eval_every=2, sequences=8)
    if data["dmt"].get("keep_best"):
        data["dmt"]["keep_best"].update(eval_every=1, sequences=8)
    if data.get("teacher_choice"):
        data["teacher_choice"].update(sequences=8)
    data["evaluate"].update(num_sequences=8, num_samples=1)
    return PipelineConfig.model_validate(data)


def machine() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU: {cpu_model()} ({torch.get_num_threads()} threads of {available_cores()} cores)"
    return {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_vendor": cpu_vendor()}


def run_experiment(cfg: PipelineConfig, config_path: str) -> tuple[dict[str, Any], str]:
    """Run (or re-use) every artifact of `cfg`, write its report; returns (record, report URL)."""
    from flows.local import run_until
    from stages.report import compute_rows, report_stage, seed_rows, summary_rows
    from store.artifacts import read_manifest

    start = time.monotonic()
    refs = run_until(cfg, "evaluate", log=lambda line: print(line, flush=True))
    seconds = time.monotonic() - start
    lineage = {role: {"url": ref.url, "hash": ref.hash, "kind": ref.kind} for role, ref in refs.items()}
    report_url, _ = report_stage(refs["evaluation"].url, lineage, cfg.name)
    stats = {role: read_manifest(ref.url).stats for role, ref in refs.items()}
    summary = summary_rows(refs["evaluation"].url)
    record = {
        "name": cfg.name,
        "config_path": config_path,
        "config": cfg.model_dump(mode="json"),
        "seeds": cfg.seeds,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "wall_clock_s": round(seconds, 1),  # this invocation only: re-used artifacts cost it nothing
        "stage_seconds": {role: t for role, s in stats.items() if (t := recorded_seconds(s)) is not None},
        "teacher": {k: stats["teacher"][k] for k in TEACHER_STATS if k in stats["teacher"]},
        **({"teacher_choice": choice_summary(refs["teacher_choice"].url)} if "teacher_choice" in refs else {}),
        "summary": summary,
        "across_seeds": seed_rows(summary),
        "compute": compute_rows(lineage),
        "report": report_url,
        "evaluation": refs["evaluation"].url,
        "artifacts": {role: ref.hash[:16] for role, ref in refs.items()},
    }
    return record, report_url


def choice_summary(url: str) -> dict[str, Any]:
    """teacher_choice's stats, plus the recorded seconds of the candidates it left: they are not among the
    stages whose seconds the record sums, so the results page states them beside the choice."""
    from stages.teacher_choice import choice_record
    from store.artifacts import read_manifest

    record = choice_record(url)
    left = sum(t for seed, t in record["candidate_seconds"].items() if int(seed) != record["chosen_seed"])
    return {**read_manifest(url, "teacher_choice").stats, "left_seconds": round(left, 1)}


def recorded_seconds(stats: dict[str, Any]) -> float | None:
    """A stage's recorded time: training (teacher, students) or encoding (the label job's workers)."""
    value = stats.get("train_seconds", stats.get("seconds", stats.get("encode_seconds")))
    return round(float(value), 1) if isinstance(value, int | float) else None


def save(record: dict[str, Any], report_url: str, out: Path) -> Path:
    """Write `<out>/<name>.json` and copy the report's figures to `<out>/<name>/`."""
    from stages.report import listing

    out.mkdir(parents=True, exist_ok=True)
    figures = out / record["name"]
    figures.mkdir(exist_ok=True)
    copied = []
    sources = [(record["evaluation"], name) for name in listing(record["evaluation"], ".png")]
    sources += [(report_url.rsplit("/", 1)[0], name) for name in REPORT_FIGURES]
    for folder, name in sources:  # read-loss plots and samples are the evaluation's, the compute plot the report's
        fs, path = url_to_fs(f"{folder.rstrip('/')}/{name}")
        if fs.exists(path):
            (figures / name).write_bytes(fs.cat_file(path))
            copied.append(f"{record['name']}/{name}")
    record = {**record, "figures": copied}
    path = out / f"{record['name']}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path


app = typer.Typer(add_completion=False)


@app.command()
def main(
    config: Annotated[Path, typer.Argument(help="an experiment config, e.g. configs/experiments/mqar-64x4.yaml")],
    smoke: Annotated[bool, typer.Option(help="a minutes-long version of it (CI), recorded apart")] = False,
    root: Annotated[str | None, typer.Option(help="artifact root (default: the config's)")] = None,
    out: Annotated[Path | None, typer.Option(help="where records go (default docs/results, smoke: under root)")] = None,
    data: Annotated[str | None, typer.Option(help="read this file instead of tokens.url (and no test_url)")] = None,
) -> None:
    """Run one experiment and record it; then re-render docs/RESULTS.md from every record (not for --smoke)."""
    from experiments.render import write_results

    cfg = load_config(config)
    if root is not None:
        cfg = cfg.model_copy(update={"root": root})
    if data is not None:
        cfg = cfg.model_copy(update={"tokens": cfg.tokens.model_copy(update={"url": data, "test_url": None})})
    if smoke:
        cfg = smoke_config(cfg)
    record, report_url = run_experiment(cfg, str(config))
    target = out or (Path(url_to_fs(cfg.root)[1]) / "results" if smoke else RESULTS)
    path = save(record, report_url, target)
    print(f"record: {path}")
    if not smoke and out is None:
        print(f"results: {write_results(RESULTS)}")


if __name__ == "__main__":
    app()
