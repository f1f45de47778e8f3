"""What `cpu_bf16` costs in quality: a config's teacher, label store and first SMT student, in fp32 and in bf16.

The pipeline runs twice up to the SMT students of the config's first variant (the pipeline's own stages, real
label job), once as configured and once with `cpu_bf16: true` on the teacher, the label job and SMT; both are
then evaluated the same way (in fp32, as the evaluate stage always runs). One JSON line: per precision the
teacher's held-out L_dec0 (bits) and the student's accuracy from its own memory and from the teacher's prefix,
and each stage's recorded time (training, or the label workers' encoding): only a rough speed figure, as the
stages run one after the other, not interleaved. Artifacts are content-addressed: a second call re-uses them.

    python bench/bench_bf16_quality.py configs/demo.yaml --root /tmp/bf16-quality
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from bench.bench_train import cpu_name  # noqa: E402
from experiments.run import recorded_seconds  # noqa: E402
from flows.local import run_until  # noqa: E402
from schemas.config import PipelineConfig, RunConfig, load_config  # noqa: E402
from stages.evaluate import evaluate_stage  # noqa: E402
from store.artifacts import read_manifest  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="pipeline YAML config (its first variant is the student)")
    p.add_argument("--root", required=True, help="artifact root for both runs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    return p.parse_args(argv)


def with_cpu_bf16(cfg: PipelineConfig) -> PipelineConfig:
    """The same pipeline with `cpu_bf16` on the teacher's, the label job's and SMT's."""
    def run(r: RunConfig) -> RunConfig:
        return r.model_copy(update={"cpu_bf16": True})

    return cfg.model_copy(update={
        "teacher": cfg.teacher.model_copy(update={"run": run(cfg.teacher.run)}),
        "labels": cfg.labels.model_copy(update={"cpu_bf16": True}),
        "distill": cfg.distill.model_copy(update={"run": run(cfg.distill.run)}),
    })


def measure(cfg: PipelineConfig) -> dict:
    student = cfg.students[0]
    with contextlib.redirect_stdout(sys.stderr):  # the stages' progress lines: stdout keeps the JSON alone
        refs = run_until(cfg, "distill", variants=[student], log=print)
    smt = refs[f"{student.label}/smt"]
    ev = evaluate_stage({"smt": smt.url}, refs["tokens"].url, refs["teacher"].url, refs["labels"].url,
                        cfg.evaluate, cfg.root)
    rows = {r["start"]: r for r in pq.read_table(f"{ev.url}/summary.parquet").to_pylist() if r["rnn"] == "smt"}
    teacher = read_manifest(refs["teacher"].url).stats
    return {
        "teacher_test_dec0_bits": round(teacher["test_dec0_bits"], 4),
        "smt_accuracy_own_memory": rows["init"]["accuracy"], "smt_accuracy_teacher_prefix": rows["teacher"]["accuracy"],
        "smt_bits_own_memory": round(rows["init"]["mean_bits"], 4),
        "seconds": {role: recorded_seconds(read_manifest(refs[role].url).stats)
                    for role in ("teacher", "labels", f"{student.label}/smt")},
        "artifacts": {role: ref.hash for role, ref in refs.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    cfg = load_config(a.config).model_copy(update={"root": a.root})
    if a.threads is not None:
        cfg = cfg.model_copy(update={"threads": a.threads})
    report = {"device": cpu_name(), "torch": torch.__version__, "threads": cfg.threads,
              "command": " ".join(["bench/bench_bf16_quality.py", *(argv if argv is not None else sys.argv[1:])]),
              "fp32": measure(cfg), "bf16": measure(with_cpu_bf16(cfg))}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
