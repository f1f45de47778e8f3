"""docs/RESULTS.md from the experiment records in docs/results/ (written by experiments/run.py).

Everything in the page is generated except each experiment's reading, which is prose kept in
`docs/results/<name>.reading.md` beside its record: numbers come from records, judgements from people.

    python -m experiments.render        # rewrite docs/RESULTS.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from experiments.run import RESULTS
from stages.report import cell, markdown_table, role_mode

HEADER = """# Results

Made by `python -m experiments.run CONFIG` (one command per experiment; configs in
`configs/experiments/`), rendered by `python -m experiments.render`. Every table comes from the record
`docs/results/<name>.json`, which also holds the full config and every artifact address. Bits are per scored
token on the held-out split, read from the RNN's own initial memory (`init`) unless the row says `teacher`
(the RNN starts from the teacher's memory of a prefix). Accuracy is on scored tokens only (the answers).
Compute is training FLOPs counted from the shapes (training/flops.py): the BPTT baseline gets the SMT+DMT
student's own budget; the teacher and label job are shown apart (docs/comparison.md).
"""


def students_table(record: dict[str, Any]) -> str:
    """One row per (variant, mode): accuracy and bits from the RNN's initial memory, and accuracy when it
    starts from the teacher's memory of the prefix; mean and [lowest, highest] over seeds."""
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for row in record["summary"]:
        if row["rnn"] != "teacher":
            groups.setdefault((row["variant"], role_mode(row)), {}).setdefault(row["start"], []).append(row)
    rows = []
    for (variant, mode), starts in groups.items():
        init, prefix = starts.get("init", []), starts.get("teacher", [])
        rows.append({
            "variant": variant, "mode": mode, "seeds": len(init),
            "accuracy": _spread(_values(init, "accuracy")), "bits": _spread(_values(init, "mean_bits")),
            "accuracy from the teacher's prefix": _spread(_values(prefix, "accuracy")),
        })
    return markdown_table(rows)  # columns in the rows' key order


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3g}"
    return f"{mean:.3g} [{min(values):.3g}, {max(values):.3g}]"


def teacher_line(record: dict[str, Any]) -> str:
    t = record["teacher"]
    row = next((r for r in record["summary"] if r["rnn"] == "teacher"), {})
    acc = row.get("accuracy")
    steps = f"{t.get('steps')} steps"
    if t.get("init_steps"):  # started from another teacher (teacher.init_from): its steps and seconds too
        steps += f" after a parent teacher's {t['init_steps']} steps and {t.get('init_seconds', 0):.0f} s"
    parts = [f"teacher ({steps}): held-out L_dec0 {cell(t.get('test_dec0_bits'))} bits"]
    if t.get("test_unigram_bits") is not None:
        parts.append(f"unigram {cell(t['test_unigram_bits'])}, chance {cell(t.get('chance_bits'))}")
    if acc is not None:
        parts.append(f"accuracy from its memory on the evaluated positions {acc:.3g}")
    return "; ".join(parts) + "."


def choice_line(record: dict[str, Any]) -> str:
    """Which teacher `teacher_choice` kept and what each candidate's student scored (held-out train documents)."""
    choice = record.get("teacher_choice")
    if not choice:
        return ""
    bits = sorted(choice["held_out_bits"].items(), key=lambda kv: int(kv[0]))
    scores = ", ".join(f"seed {seed}: {b:.3g}" for seed, b in bits)
    return (f"Teacher chosen without test data (`teacher_choice`): the first student's read loss from its own memory "
            f"on unseen train documents, bits per scored token ({scores}); kept seed {choice['chosen_seed']}. The "
            f"candidates left and the checks cost {choice['selection_flops'] / 1e12:.3g} TFLOP, in the shared cost "
            f"below, and {choice['left_seconds']:g} s of recorded training and encoding, not in the wall clock "
            "above.\n")


def compute_table(record: dict[str, Any]) -> str:
    rows = record.get("compute") or []
    if not rows:
        return ""
    return markdown_table(rows)


def _total(record: dict[str, Any]) -> float:
    return round(sum(record.get("stage_seconds", {}).values()), 1)


def section(record: dict[str, Any], folder: Path) -> str:
    name = record["name"]
    m = record["machine"]
    stages = ", ".join(f"{role} {s:g} s" for role, s in sorted(record.get("stage_seconds", {}).items()))
    parts = [
        f"## {name}\n",
        f"Config `{record['config_path']}`, seeds {record['seeds']}, {m['device']}, torch {m['torch']}, "
        f"{record['date']}. Wall clock: {_total(record):g} s summed over the stages that record their time "
        f"({stages}; training, and the label workers' encoding where listed; not the tokens stage, the Beam "
        f"job's own overhead or evaluation); the recording run took {record['wall_clock_s']:g} s "
        "(artifacts that existed already were re-used).\n",
        teacher_line(record) + "\n",
        *([choice_line(record)] if record.get("teacher_choice") else []),
        students_table(record),
    ]
    compute = compute_table(record)
    if compute:
        parts += ["Training compute (TFLOP):\n", compute]
    for figure in record.get("figures", []):
        parts.append(f"![{figure}](results/{figure})\n")
    reading = folder / f"{name}.reading.md"
    if reading.exists():
        parts.append("**Reading.** " + reading.read_text().strip() + "\n")
    return "\n".join(parts)


def load_records(names: list[str], folder: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """The records `folder/<name>.json` by name; a missing one is a one-line usage error."""
    out = {}
    for name in names:
        path = folder / f"{name}.json"
        if not path.exists():
            raise typer.BadParameter(f"no record {path}")
        out[name] = json.loads(path.read_text())
    return out


def render(folder: Path = RESULTS) -> str:
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not records:
        return HEADER + "\n_No experiment recorded yet._\n"
    return HEADER + "\n" + "\n".join(section(r, folder) for r in records)


def write_results(folder: Path = RESULTS, target: Path | None = None) -> Path:
    target = target or folder.parent / "RESULTS.md"
    target.write_text(render(folder))
    return target


if __name__ == "__main__":
    print(write_results())
