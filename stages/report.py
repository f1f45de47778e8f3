"""The run report: one Markdown page with the comparison table, plots, samples and full lineage.

It is an artifact like any other (kind "report", parents = everything it describes), so a report
is never overwritten by a different run, and re-running the same config re-uses it.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from store.artifacts import ArtifactRef, is_complete, plan_artifact, publish_manifest, read_manifest
from store.artifacts import write_bytes_atomic as write
from store.evaluation import plot_loss_vs_compute
from store.training_log import read_training_log

SUMMARY = "summary.parquet"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of one shape as a Markdown table, columns in the first row's key order."""
    if not rows:
        return "_(no rows)_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def cell(value: Any) -> str:
    if value is None:
        return "-"  # e.g. a quarter of positions where the task scores nothing (retrieval scores the end)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _ceiling_note(lineage: dict[str, dict[str, str]], ceiling: float) -> str:
    """What the ceiling means, next to what guessing without context and chance get."""
    teacher = lineage.get("teacher")
    stats = read_manifest(teacher["url"]).stats if teacher else {}
    lines = []
    if "test_unigram_bits" in stats:
        lines.append(
            f"On held-out data the teacher scores {stats['test_dec0_bits']:.4f} bits against "
            f"{stats['test_unigram_bits']:.4f} for the targets' unigram entropy (guessing from frequencies alone) "
            f"and {stats['chance_bits']:.4f} for chance"
            + (f"; its top-1 accuracy there is {stats['test_dec0_accuracy']:.4f}." if "test_dec0_accuracy" in stats
               else ".")
        )
    lines.append(
        "L_dec0 is the teacher's readout of its own memory of a full context: an RNN that reads the teacher's "
        "memory space through the teacher's decoder can approach it, not pass it. It is no bound for an RNN "
        "with a readout of its own, which may find structure the teacher's memory dropped."
    )
    return " ".join(lines) + "\n"


def _flag_below_ceiling(rows: list[dict[str, Any]], ceiling: float | None) -> list[dict[str, Any]]:
    """Mark students whose loss is below the teacher's ceiling (see `_ceiling_note`)."""
    if ceiling is None:
        return rows
    flagged = []
    for row in rows:
        below = row["rnn"] != "teacher" and row.get("mean_bits") is not None and row["mean_bits"] < ceiling
        flagged.append({**row, "vs_ceiling": "below" if below else ""})
    return flagged


def role_mode(row: dict[str, Any]) -> str:
    """The student's mode as its role names it (`smt`, `smt+dmt`, `bptt`, `bptt-plateau`): the summary's
    `mode` column says how it was trained, which is `bptt` for both BPTT baselines."""
    return row["rnn"].rsplit("/", 1)[-1]


def seed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and range over seeds of each (variant, mode, start) trained with more than one seed."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["rnn"] != "teacher":
            groups.setdefault((row["variant"], role_mode(row), row["start"]), []).append(row)
    out = []
    for (variant, mode, start), group in groups.items():
        if len(group) < 2:
            continue
        entry: dict[str, Any] = {"variant": variant, "mode": mode, "start": start,
                                 "seeds": ",".join(str(r.get("seed") or 0) for r in group)}
        for key, short in (("mean_bits", "bits"), ("accuracy", "accuracy")):
            values = [r[key] for r in group if r.get(key) is not None]
            mean = sum(values) / len(values) if values else None
            entry.update({f"{short}_mean": mean, f"{short}_min": min(values, default=None),
                          f"{short}_max": max(values, default=None)})
        out.append(entry)
    return out


def seeds_section(rows: list[dict[str, Any]]) -> str:
    table = seed_rows(rows)
    if not table:
        return ""
    return (
        "## Across seeds\n\nEach variant trained once per seed from the same teacher and label store (the seed "
        "sets the students' init and data order): mean, lowest and highest over the seeds.\n\n"
        + markdown_table(table)
    )


def compute_rows(lineage: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Training FLOPs per variant (counted from the shapes, training/flops.py): the SMT+DMT student alone,
    its BPTT baseline (budgeted to the student), and the student with the teacher and the label job, whole
    or shared over the variants trained from this store; `pays_off_from` is the number of variants from
    which that shared cost per variant is below the student's own."""
    stats = {role: read_manifest(ref["url"]).stats for role, ref in lineage.items()}
    shared = shared_flops(lineage)
    variants = sorted({role.split("/")[0] for role in lineage if role.endswith("/smt")})
    rows = []
    for v in variants:
        student = stats[f"{v}/smt"].get("train_flops", 0) + stats.get(f"{v}/smt+dmt", {}).get("train_flops", 0)
        rows.append({
            "variant": v,
            "student_TFLOP": student / 1e12,
            "bptt_TFLOP": stats.get(f"{v}/bptt", {}).get("train_flops", 0) / 1e12,
            **({"bptt_plateau_TFLOP": stats[f"{v}/bptt-plateau"].get("train_flops", 0) / 1e12}
               if f"{v}/bptt-plateau" in stats else {}),
            "with_teacher_and_labels_TFLOP": (student + shared) / 1e12,
            f"shared_over_{len(variants)}_TFLOP": (student + shared / len(variants)) / 1e12,
            "pays_off_from": math.ceil(shared / student) if student else None,
        })
    return rows


def shared_flops(lineage: dict[str, dict[str, str]]) -> int:
    """What every variant on this store shares: the teacher, the label job and, with `teacher_choice`, the
    candidates it trained and left (their teachers, label jobs and students) and its checks."""
    choice = lineage.get("teacher_choice")
    selection = int(read_manifest(choice["url"], "teacher_choice").stats["selection_flops"]) if choice else 0
    return _teacher_flops(lineage) + _label_flops(lineage) + selection


def _teacher_flops(lineage: dict[str, dict[str, str]]) -> int:
    from store.teacher import recorded_train_flops

    return recorded_train_flops(read_manifest(lineage["teacher"]["url"], "teacher"))


def _label_flops(lineage: dict[str, dict[str, str]]) -> int:
    from store.teacher import teacher_config
    from training.flops import label_flops

    labels = read_manifest(lineage["labels"]["url"], "labels")
    model = teacher_config(read_manifest(lineage["teacher"]["url"], "teacher")).model
    return label_flops(model, int(labels.counts["labels"]))


def compute_points(evaluation_url: str, lineage: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """(variant, mode, TFLOP, held-out bits from the initial memory) for the loss-vs-compute plot."""
    bits = {r["rnn"]: r["mean_bits"] for r in summary_rows(evaluation_url) if r["start"] == "init"}
    columns = {"smt": "student_TFLOP", "bptt": "bptt_TFLOP", "bptt-plateau": "bptt_plateau_TFLOP"}
    points = []
    for row in compute_rows(lineage):
        v = row["variant"]
        smt = lineage_stats_flops(lineage, f"{v}/smt") / 1e12
        candidates = [("smt", smt), ("smt+dmt", row["student_TFLOP"]),
                      ("smt+dmt + shared", next(x for k, x in row.items() if k.startswith("shared_over"))),
                      ("bptt", row[columns["bptt"]]), ("bptt-plateau", row.get(columns["bptt-plateau"]))]
        for mode, tflop in candidates:
            role = f"{v}/{mode.split(' ')[0]}"
            if tflop and bits.get(role) is not None:
                points.append({"label": v, "mode": mode, "tflop": tflop, "bits": bits[role]})
    return points


CURVE_MODES = ("smt+dmt", "bptt", "bptt-plateau")


def compute_curves(lineage: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """The held-out checks each student made while it trained (DMT's keep_best, the baselines' keep_best or
    plateau), each at the compute spent by its step: the stage's counted FLOPs prorated by step, DMT's on top
    of its SMT student's. Loss checks only (nats per scored token, drawn in bits); error checks are in other
    units. The checks read documents held out from training (see `checked_on` in Model selection), the plot's
    markers the test split. The step-0 checks (made before the loop) are not logged, so a line starts at the
    first check inside it."""
    curves = []
    for role, ref in lineage.items():
        variant, _, mode = role.partition("/")
        if ref.get("kind") != "rnn" or mode not in CURVE_MODES:
            continue
        stats = read_manifest(ref["url"]).stats
        if "held_out_loss" not in stats or not stats.get("steps") or not stats.get("train_flops"):
            continue
        base = lineage_stats_flops(lineage, f"{variant}/smt") if mode == "smt+dmt" else 0
        per_step = int(stats["train_flops"]) / int(stats["steps"])
        checks = sorted((int(r["step"]), float(r["held_out_loss"])) for r in read_training_log(ref["url"])
                        if r.get("held_out_loss") is not None and math.isfinite(r["held_out_loss"]))
        if checks:
            curves.append({"label": variant, "mode": mode,
                           "tflop": [(base + step * per_step) / 1e12 for step, _ in checks],
                           "bits": [loss / math.log(2) for _, loss in checks]})
    return curves


def lineage_stats_flops(lineage: dict[str, dict[str, str]], role: str) -> int:
    return int(read_manifest(lineage[role]["url"]).stats.get("train_flops", 0)) if role in lineage else 0


def compute_section(lineage: dict[str, dict[str, str]]) -> str:
    if not {"teacher", "labels"} <= set(lineage) or not any(r.endswith("/smt") for r in lineage):
        return ""
    rows = compute_rows(lineage)
    shared = shared_flops(lineage) / 1e12
    chosen = " (with the teacher candidates trained and left: Teacher choice)" if "teacher_choice" in lineage else ""
    return (
        "## Compute\n\n"
        f"Training FLOPs counted from the shapes (training/flops.py). The teacher and the label job{chosen} cost "
        f"{shared:.4g} TFLOP once, for every variant trained from this label store; the BPTT baseline gets "
        "the student's own budget. `pays_off_from`: from that many variants on one store, the shared cost "
        "per variant is below the student's own training cost. In the plot, markers are the test split's "
        "figures; lines are the held-out checks each student made while training (DMT's `keep_best`, the "
        "baselines' `keep_best` or plateau), on the documents Model selection names: train-split documents "
        "carry the train split's label noise where the task adds any.\n\n" + markdown_table(rows)
        + "\n![held-out loss against training compute](compute.png)\n"
    )


def teacher_choice_section(lineage: dict[str, dict[str, str]]) -> str:
    """Which teacher seed `teacher_choice` kept, and every candidate's score."""
    if "teacher_choice" not in lineage:
        return ""
    from stages.teacher_choice import choice_record

    record = choice_record(lineage["teacher_choice"]["url"])
    kept = str(record["chosen_seed"])
    rows = [{"teacher_seed": int(seed), "student_held_out_bits": bits, "TFLOP": record["candidate_flops"][seed] / 1e12,
             "kept": "yes" if seed == kept else "", "teacher": record["candidates"][seed]["teacher"]}
            for seed, bits in sorted(record["held_out_bits"].items(), key=lambda kv: int(kv[0]))]
    return ("## Teacher choice\n\nOne teacher per seed, each with its label store and the first variant's SMT "
            "student; the teacher kept is the one whose student reads best from its own memory (bits per scored "
            f"token on {record['held_out']}; the test split plays no part). `TFLOP`: a candidate's own teacher, "
            "label job and student; those of the candidates left are in the shared cost below.\n\n"
            + markdown_table(rows))


SELECTED_ON = {"validation": "validation documents set aside from the train split",
               "test": "the test split (flatters the baseline)",
               "unseen_train": "train documents with no window in the label store",
               None: "train documents with no window in the label store"}  # DMT artifacts before 2026-12-06


def selection_rows(lineage: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """One row per student that published the weights of its best held-out check instead of its last ones
    (DMT's keep_best, the baselines' keep_best and plateau): which step won, out of how many."""
    rows = []
    for role, ref in lineage.items():
        if ref.get("kind") != "rnn":
            continue
        stats = read_manifest(ref["url"]).stats
        if "best_step" in stats:
            metric = "error" if "held_out_error" in stats else "loss"
            rows.append({"rnn": role, "steps": stats.get("steps"), "best_step": stats["best_step"], "metric": metric,
                         "held_out": stats.get(f"held_out_{metric}"),
                         "checked_on": SELECTED_ON.get(stats.get("held_out"), stats.get("held_out"))})
    return rows


def selection_section(lineage: dict[str, dict[str, str]]) -> str:
    rows = selection_rows(lineage)
    if not rows:
        return ""
    return ("## Model selection\n\nThese students publish the weights of their best held-out check (`metric` loss: "
            "nats per scored token; error: 1 - top-1 accuracy on the scored targets; read from the RNN's own initial "
            "memory), not their last ones; none was checked on what the evaluation scores unless it says so.\n\n"
            + markdown_table(rows))


def listing(url: str, suffix: str) -> list[str]:
    """Names of the files directly under `url` ending in `suffix`, sorted."""
    fs, path = url_to_fs(url)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(suffix))


def summary_rows(evaluation_url: str) -> list[dict[str, Any]]:
    """The evaluation's one-row-per-RNN summary (what the report's main table shows)."""
    fs, path = url_to_fs(evaluation_url)
    with fs.open(f"{path}/{SUMMARY}", "rb") as f:
        return pq.read_table(f).to_pylist()


def build_markdown(evaluation_url: str, lineage: dict[str, dict[str, str]], name: str, rel: str) -> str:
    """Markdown text of the report; `rel` is the evaluation directory relative to the report."""
    evaluation = read_manifest(evaluation_url, "evaluation")
    parts = [f"# SMT run report: {name}\n", f"Evaluation artifact: `{evaluation_url}`\n"]
    ceiling = evaluation.stats.get("teacher_dec0_bits")
    if ceiling is not None:
        parts.append(f"Teacher ceiling (L_dec0): **{ceiling:.4f} bits/token**\n")
        parts.append(_ceiling_note(lineage, ceiling))
    parts.append("## SMT, SMT+DMT and BPTT side by side\n")
    parts.append(markdown_table(_flag_below_ceiling(summary_rows(evaluation_url), ceiling)))
    parts.append("Bits are per scored token; `-` marks a span of positions where the task scores nothing.\n")
    parts.append(seeds_section(summary_rows(evaluation_url)))
    parts.append(teacher_choice_section(lineage))
    parts.append(compute_section(lineage))
    parts.append(selection_section(lineage))
    plots = listing(evaluation_url, ".png")
    if plots:
        parts.append("## Plots\n")
        parts.extend(f"![{p}]({rel}/{p})\n" for p in plots)
    samples = listing(evaluation_url, ".txt")
    if samples:
        parts.append("## Samples\n")
        fs, path = url_to_fs(evaluation_url)
        for sample in samples:
            text = fs.cat_file(f"{path}/{sample}").decode(errors="replace")
            parts.append(f"**{sample}**\n\n```\n{text[:2000]}\n```\n")
    parts.append("## Lineage (every artifact of this run)\n")
    rows = [{"role": role, "kind": ref["kind"], "hash": ref["hash"][:16], "url": ref["url"]}
            for role, ref in lineage.items()]
    parts.append(markdown_table(rows))
    parts.append("Check any label store with `smt store verify URL`; every artifact has a `manifest.json`.\n")
    return "\n".join(parts)


def plan_report(evaluation_url: str, lineage: dict[str, dict[str, str]], name: str, **_: Any) -> ArtifactRef:
    """The report sits beside the evaluation; its parents are every artifact it describes."""
    root = evaluation_url.rstrip("/").rsplit("/", 1)[0]
    return plan_artifact(root, "report", {"name": name}, {role: ref["hash"] for role, ref in lineage.items()})


def report_stage(evaluation_url: str, lineage: dict[str, dict[str, str]], name: str) -> tuple[str, str]:
    """Publish the report artifact; returns (URL of report.md, its Markdown)."""
    ref = plan_report(evaluation_url, lineage, name)
    rel = "../" + evaluation_url.rstrip("/").rsplit("/", 1)[1]
    markdown = build_markdown(evaluation_url, lineage, name, rel)
    if not is_complete(ref.url):
        if "(compute.png)" in markdown:
            plot_loss_vs_compute(ref.join("compute.png"), compute_points(evaluation_url, lineage),
                                 compute_curves(lineage))
        write(ref.join("report.md"), markdown.encode())
        publish_manifest(ref, ref.config, ref.parents, counts={"artifacts": len(lineage)})
    return ref.join("report.md"), markdown
