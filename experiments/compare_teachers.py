"""Score the teachers of recorded experiments as `teacher_choice` would, after the fact.

    python -m experiments.compare_teachers retrieval-128-curriculum-whole-long-dmt-keep-best \
        retrieval-128-teacher-seed1-keep-best --root runs/experiments

Each experiment's teacher, label store and first SMT student (from its record in docs/results/, artifacts
under --root) become one candidate; the `teacher_choice` stage reads every student from its own memory on
train documents none of the stores has a window of. For teachers a single config cannot offer as seeds
(curricula from different parents), and to check the choice against what the experiments measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from experiments.render import RESULTS, load_records
from store.artifacts import ArtifactError, artifact_url


def candidates_from_records(names: list[str], root: str, folder: Path = RESULTS) -> dict[str, dict[str, str]]:
    """Candidate i: the teacher, labels and first student ("<variant>/smt" of the first variant) of names[i]."""
    out, records = {}, load_records(names, folder)
    for i, name in enumerate(names):
        record = records[name]
        artifacts = record["artifacts"]
        first = record["config"]["variants"][0]
        smt = f"{first.get('name') or first['kind']}/smt"
        out[str(i)] = {"teacher": artifact_url(root, "teacher", artifacts["teacher"]),
                       "labels": artifact_url(root, "labels", artifacts["labels"]),
                       "rnn": artifact_url(root, "rnn", artifacts[smt])}
    return out


def main(
    experiments: Annotated[list[str], typer.Argument(help="recorded experiment names (docs/results/<name>.json)")],
    root: Annotated[str, typer.Option(help="where their artifacts live")] = "runs/experiments",
    sequences: Annotated[int, typer.Option(help="held-out sequences")] = 256,
    seq_len: Annotated[int, typer.Option(help="tokens per held-out sequence")] = 128,
    records: Annotated[Path, typer.Option(help="folder of experiment records")] = RESULTS,
) -> None:
    from schemas.config import TeacherChoiceConfig
    from stages.teacher_choice import choice_record, teacher_choice_stage

    if len(experiments) < 2:
        raise typer.BadParameter("give at least two experiments")
    candidates = candidates_from_records(experiments, root, records)
    cfg = TeacherChoiceConfig(seeds=list(range(len(candidates))), sequences=sequences, seq_len=seq_len)
    try:
        record = choice_record(teacher_choice_stage(candidates, cfg, root).url)
    except ArtifactError as err:  # e.g. candidates made from different documents: one line, no traceback
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    for i, name in enumerate(experiments):
        kept = " (kept)" if record["chosen_seed"] == i else ""
        print(f"{name}: {record['held_out_bits'][str(i)]:.4f} bits per scored token{kept}")
    print(f"held out: {record['held_out']}")


if __name__ == "__main__":
    typer.run(main)
