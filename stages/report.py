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

SUMMARY = "summary.parquet"


def _table_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_(no rows)_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
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
            f"and {stats['chance_bits']:.4f} for chance."
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


def _listing(url: str, suffix: str) -> list[str]:
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
    parts.append(_table_markdown(_flag_below_ceiling(summary_rows(evaluation_url), ceiling)))
    parts.append("Bits are per scored token; `-` marks a span of positions where the task scores nothing.\n")
    plots = _listing(evaluation_url, ".png")
    if plots:
        parts.append("## Plots\n")
        parts.extend(f"![{p}]({rel}/{p})\n" for p in plots)
    samples = _listing(evaluation_url, ".txt")
    if samples:
        parts.append("## Samples\n")
        fs, path = url_to_fs(evaluation_url)
        for sample in samples:
            text = fs.cat_file(f"{path}/{sample}").decode(errors="replace")
            parts.append(f"**{sample}**\n\n```\n{text[:2000]}\n```\n")
    parts.append("## Lineage (every artifact of this run)\n")
    rows = [{"role": role, "kind": ref["kind"], "hash": ref["hash"][:16], "url": ref["url"]}
            for role, ref in lineage.items()]
    parts.append(_table_markdown(rows))
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
        write(ref.join("report.md"), markdown.encode())
        publish_manifest(ref, ref.config, ref.parents, counts={"artifacts": len(lineage)})
    return ref.join("report.md"), markdown
