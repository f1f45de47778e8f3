"""How an MQAR teacher answers: its accuracy, and the probability it puts on the document's values.

    python -m experiments.mqar_binding TEACHER_URL TOKENS_URL

A teacher that stores which values a document holds but not which key each belongs to answers about
1/num_pairs of the queries while putting most of its mass on the document's values; one that binds keys to
values answers them all. It reads the held-out anchors that the teacher stage's L_dec0 scores
(stages/teacher.py), from the teacher's memory of the whole context.
"""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import typer


def binding_stats(probs: np.ndarray, contexts: np.ndarray, answers: np.ndarray, num_pairs: int) -> dict[str, float]:
    """probs (N, V) over the answer; contexts (N, Tc) left-padded with -1, each holding its document from the
    start (`k1 v1 k2 v2 ...`); answers (N,), -1 unscored. Returns accuracy, the mean mass on the document's
    values, and how often the answer is one of them (1.0 for MQAR: a check that the pairs were found)."""
    rows = np.nonzero(answers >= 0)[0]
    if rows.size == 0:
        raise ValueError("no scored answers")
    mass, among = [], []
    for i in rows:
        doc = contexts[i][contexts[i] >= 0]
        values = np.unique(doc[1 : 2 * num_pairs : 2])
        mass.append(float(probs[i, values].sum()))
        among.append(bool(answers[i] in values))
    return {"accuracy": float((probs[rows].argmax(-1) == answers[rows]).mean()),
            "mass_on_document_values": float(np.mean(mass)),
            "answer_among_document_values": float(np.mean(among)),
            "answers": int(rows.size)}


def main(
    teacher_url: Annotated[str, typer.Argument(help="a teacher artifact trained on an mqar tokens artifact")],
    tokens_url: Annotated[str, typer.Argument(help="that tokens artifact (its test split is read)")],
) -> None:
    """Print the binding figures of an MQAR teacher as one JSON line."""
    import torch

    from stages.teacher import held_out_anchors
    from store.teacher import load_teacher
    from store.tokens import TokensArtifact

    teacher, _ = load_teacher(teacher_url)
    tokens = TokensArtifact.open(tokens_url)
    stats = tokens.manifest.stats
    params = stats.get("task_params") or {}
    if stats.get("task") != "mqar" or params.get("length", 0) > teacher.cfg.context_len:
        raise typer.BadParameter("needs an mqar tokens artifact whose documents fit the teacher's context")
    x, y = held_out_anchors(tokens, teacher.cfg.context_len)
    with torch.no_grad():
        probs = teacher.readout(teacher.encode(torch.from_numpy(x))).softmax(-1).numpy()
    print(json.dumps(binding_stats(probs, x, y[:, -1], int(params.get("num_pairs", 4)))))


if __name__ == "__main__":
    typer.run(main)
