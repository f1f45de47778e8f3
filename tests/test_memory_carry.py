"""experiments/memory_carry.py: accuracy by distance from the teacher's memory under an updater's own rollout."""

from __future__ import annotations

import json
import math

import pytest
import typer
from _fixtures_labels import make_tokens
from _fixtures_training import TEACHER_CFG
from typer.testing import CliRunner

from experiments.memory_carry import by_distance, main
from stages.teacher import teacher_stage

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_by_distance_pools_steps_weighted_by_their_targets() -> None:
    rows = [
        {"step": 0, "accuracy": 1.0, "loss_bits": 0.0, "count": 3},
        {"step": 1, "accuracy": 0.0, "loss_bits": 4.0, "count": 1},
        {"step": 2, "accuracy": math.nan, "loss_bits": math.nan, "count": 0},  # nothing scored: skipped
        {"step": 4, "accuracy": 0.5, "loss_bits": 2.0, "count": 2},
    ]
    assert by_distance(rows, 2) == [
        {"from_step": 0, "accuracy": 0.75, "bits": 1.0, "count": 4},
        {"from_step": 4, "accuracy": 0.5, "bits": 2.0, "count": 2},
    ]
    assert [b["from_step"] for b in by_distance(rows, 1)] == [0, 1, 4]


def test_memory_carry_rolls_the_teachers_own_updater(tmp_path: pytest.TempPathFactory) -> None:
    root = str(tmp_path)
    tokens = make_tokens(root)
    teacher = teacher_stage(tokens.url, TEACHER_CFG, root)
    app = typer.Typer()
    app.command()(main)
    result = CliRunner().invoke(app, [teacher.url, tokens.url, "--prefix", "4", "--length", "12", "--bucket", "4",
                                      "--sequences", "4"])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(s) for s in result.output.splitlines() if s.startswith("{")]
    assert line["updater"] == "teacher_updater" and line["prefix"] == 4
    assert [b["from_step"] for b in line["by_distance"]] == [0, 4]  # 8 steps after a prefix of 4
    assert 0 < sum(b["count"] for b in line["by_distance"]) <= 4 * 8
    assert all(0.0 <= b["accuracy"] <= 1.0 and b["bits"] > 0 for b in line["by_distance"])
    steps = line["after_own_steps"]
    assert [e["k"] for e in steps] == [0, 1, 2, 4, 8] and len({e["count"] for e in steps}) == 1  # the same targets
    assert steps[0]["accuracy"] == pytest.approx(_teacher_accuracy_after(teacher.url, tokens.url, 8, 12))
    bad = CliRunner().invoke(app, [teacher.url, tokens.url, "--prefix", "8", "--length", "8"])
    assert bad.exit_code != 0 and "must exceed" in bad.output


def _teacher_accuracy_after(teacher_url: str, tokens_url: str, first: int, length: int) -> float:
    """The teacher's own readout accuracy on the scored targets at positions >= first of the CLI's sequences,
    from the evaluation stage's ceiling rows (another path: every position encoded at once)."""
    import torch

    from schemas.config import EvalConfig
    from stages.evaluate import evaluation_sequences, teacher_ceiling_rows
    from store.crops import DocumentCrops
    from store.teacher import load_teacher
    from store.tokens import TokensArtifact

    teacher, _ = load_teacher(teacher_url)
    cfg = EvalConfig(prefix_len=4, steps=length - 4, num_sequences=4, num_samples=0)
    crops = DocumentCrops(TokensArtifact.open(tokens_url), "test")
    x, y = (torch.from_numpy(a) for a in evaluation_sequences(crops, cfg))
    rows = [r for r in teacher_ceiling_rows(teacher, x, y, cfg) if r["position"] >= first and r["count"]]
    return sum(r["accuracy"] * r["count"] for r in rows) / sum(r["count"] for r in rows)
