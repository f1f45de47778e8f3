"""Accuracy against state size across recorded experiments: the Zoology view of MQAR.

    python -m experiments.state_size mqar-64x4-curriculum mqar-64x4-curriculum-mem512 \
        --png docs/results/mqar-64x4-state-size.png

Each record (docs/results/<name>.json) gives one state size, the teacher's memory (memory_tokens x memory_dim
numbers), which every student and its BPTT baseline carry as their memory too. Prints a Markdown table of
accuracy on scored tokens per mode (mean and range over seeds, read from the RNN's own initial memory; the
teacher from its memory of the evaluated prefix) and draws the same as a PNG. Same records, same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from experiments.render import load_records
from experiments.run import RESULTS
from stages.report import markdown_table
from store.evaluation import plt, png_bytes


def state_size(record: dict[str, Any]) -> int:
    """Numbers in the memory the students carry: the teacher's memory_tokens x memory_dim."""
    model = record["config"]["teacher"]["model"]
    return int(model["memory_tokens"]) * int(model["memory_dim"])


def accuracy_rows(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (experiment, variant, mode) from the RNN's own memory, plus one for each teacher."""
    rows = []
    for name, record in records.items():
        size = state_size(record)
        teacher = next((r for r in record["summary"] if r["rnn"] == "teacher"), {})
        if teacher.get("accuracy") is not None:
            acc = teacher["accuracy"]
            rows.append({"experiment": name, "state_size": size, "model": "teacher", "seeds": "-",
                         "accuracy": acc, "min": acc, "max": acc})
        for r in record["across_seeds"]:
            if r["start"] != "init" or r.get("accuracy_mean") is None:
                continue
            rows.append({"experiment": name, "state_size": size, "model": f"{r['variant']} {r['mode']}",
                         "seeds": r["seeds"], "accuracy": r["accuracy_mean"], "min": r["accuracy_min"],
                         "max": r["accuracy_max"]})
    return sorted(rows, key=lambda r: (r["model"], r["state_size"]))


def figure_png(rows: list[dict[str, Any]]) -> bytes:
    """Accuracy (mean, min-max bars) against state size, one line per model, as PNG bytes."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        points = [r for r in rows if r["model"] == model]
        x = [r["state_size"] for r in points]
        y = [r["accuracy"] for r in points]
        err = [[r["accuracy"] - r["min"] for r in points], [r["max"] - r["accuracy"] for r in points]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("state size (numbers in the memory)")
    ax.set_ylabel("accuracy on scored tokens")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def main(
    experiments: Annotated[list[str], typer.Argument(help="recorded experiment names (docs/results/<name>.json)")],
    png: Annotated[Path | None, typer.Option(help="write the figure here")] = None,
    records: Annotated[Path, typer.Option(help="folder of experiment records")] = RESULTS,
) -> None:
    rows = accuracy_rows(load_records(experiments, records))
    print(markdown_table(rows), end="")
    if png is not None:
        png.write_bytes(figure_png(rows))


if __name__ == "__main__":
    typer.run(main)
