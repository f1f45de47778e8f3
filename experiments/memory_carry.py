"""How far the teacher's memory carries when an updater rolls it forward on its own.

    python -m experiments.memory_carry TEACHER_URL TOKENS_URL [RNN_URL ...] [--prefix 8] [--bucket 8]

Each updater (the reference updater trained beside the teacher, then any RNN artifacts given) starts from the
teacher's memory of the first `prefix` tokens of held-out documents and rolls it forward on the true tokens,
reading out every step. Printed per updater, one JSON line: accuracy and bits on the scored targets by steps
since the start, in buckets of `bucket` steps (`by_distance`), and the accuracy on the same targets after k =
0, 1, 2, 4, 8, 16 own steps from the teacher's memory k positions earlier (`after_own_steps`). A teacher whose
memory even its own updater cannot carry far (accuracy falling with distance while the teacher itself answers
from a full context) gives labels that one-step regression learns and a rollout loses: the students' low
accuracy from their own memory is then the method's limit on that task, not their training.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer


def by_distance(rows: list[dict[str, Any]], bucket: int) -> list[dict[str, Any]]:
    """Per-position rows (`step`, `loss_bits`, `accuracy`, `count`, as stages.evaluate makes them) pooled into
    buckets of `bucket` steps, weighted by their scored targets; buckets without one are left out."""
    pooled: dict[int, list[float]] = {}
    for row in rows:
        if row["count"]:
            acc = pooled.setdefault(row["step"] // bucket * bucket, [0.0, 0.0, 0])
            acc[0] += row["accuracy"] * row["count"]
            acc[1] += row["loss_bits"] * row["count"]
            acc[2] += row["count"]
    return [{"from_step": start, "accuracy": correct / count, "bits": bits / count, "count": count}
            for start, (correct, bits, count) in sorted(pooled.items())]


def after_own_steps(rnn: Any, teacher: Any, x: Any, y: Any, ks: tuple[int, ...], readout: Any) -> list[dict[str, Any]]:
    """Accuracy on every scored target at position p >= max(ks) after k of the updater's own steps from the
    teacher's memory at p-k (k = 0: the teacher's memory itself), the same targets for every k. A fall from k=0
    to k=1 is what one update loses; a fall that grows with k is drift."""
    import torch

    from training.windows import context_windows

    first = max(ks)
    rows, cols = (y[:, first:] >= 0).nonzero(as_tuple=True)
    cols = cols + first
    out = []
    with torch.no_grad():
        for k in ks:
            m = teacher.encode(context_windows(x[rows], cols - k, teacher.cfg.context_len)).float()
            for back in range(k - 1, -1, -1):
                m = rnn.update(m, x[rows, cols - back])
            correct = (readout(m).argmax(-1) == y[rows, cols]).float().mean().item() if rows.numel() else math.nan
            out.append({"k": k, "accuracy": correct, "count": int(rows.numel())})
    return out


def main(
    teacher_url: Annotated[str, typer.Argument(help="a teacher artifact (its reference updater is read too)")],
    tokens_url: Annotated[str, typer.Argument(help="a tokens artifact whose test split is read")],
    rnn_urls: Annotated[list[str] | None, typer.Argument(help="RNN artifacts to roll out beside it")] = None,
    prefix: Annotated[int, typer.Option(min=1, help="tokens the teacher reads before the rollout starts")] = 8,
    bucket: Annotated[int, typer.Option(min=1, help="steps pooled per printed figure")] = 8,
    sequences: Annotated[int, typer.Option(min=1, help="held-out sequences")] = 256,
    length: Annotated[int, typer.Option(min=2, help="tokens per sequence, prefix included")] = 64,
) -> None:
    """Print one JSON line per updater: its accuracy and bits by distance from the teacher's memory."""
    import torch

    from schemas.config import EvalConfig
    from schemas.layout import SPLIT_TEST
    from stages.evaluate import evaluation_sequences, read_loss_rows
    from store.crops import DocumentCrops
    from store.rnn import load_rnn
    from store.teacher import load_reference_updater, load_teacher
    from store.tokens import TokensArtifact

    if length <= prefix:
        raise typer.BadParameter(f"--length ({length}) must exceed --prefix ({prefix})")
    teacher, _ = load_teacher(teacher_url)
    updaters = {"teacher_updater": load_reference_updater(teacher_url, teacher=teacher)[0]}
    updaters.update({url: load_rnn(url)[0] for url in rnn_urls or []})
    cfg = EvalConfig(prefix_len=prefix, steps=length - prefix, num_sequences=sequences, num_samples=0)
    crops = DocumentCrops(TokensArtifact.open(tokens_url), SPLIT_TEST)
    x, y = (torch.from_numpy(a) for a in evaluation_sequences(crops, cfg))
    ks = tuple(k for k in (0, 1, 2, 4, 8, 16) if k < length)
    for name, rnn in updaters.items():
        buckets = by_distance(read_loss_rows(rnn, teacher, x, y, cfg, "teacher"), bucket)
        overall = sum(b["accuracy"] * b["count"] for b in buckets) / max(1, sum(b["count"] for b in buckets))
        readout = teacher.readout if name == "teacher_updater" else rnn.readout  # the reference's is the teacher's
        print(json.dumps({"updater": name, "prefix": prefix, "accuracy": overall if buckets else math.nan,
                          "by_distance": buckets, "after_own_steps": after_own_steps(rnn, teacher, x, y, ks, readout)}))


if __name__ == "__main__":
    typer.run(main)
