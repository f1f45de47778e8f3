"""`teacher_choice`: a teacher per seed, each with its store and first SMT student; the student that reads best
from its own memory on train documents no store has a window of decides; the flow goes on with that teacher
(re-using its artifacts), and the candidates left count in the shared cost."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixtures_labels import IN_MEMORY, TINY_SPEC, make_tokens
from _fixtures_training import DISTILL_CFG, DMT_CFG, GRU, TEACHER_CFG

from experiments.compare_teachers import candidates_from_records
from experiments.compare_teachers import main as compare_teachers
from flows.local import run_until
from schemas.config import PipelineConfig, TeacherChoiceConfig
from schemas.layout import SPLIT_TRAIN
from stages.report import shared_flops, teacher_choice_section
from stages.teacher import TeacherQualityError
from stages.teacher_choice import choice_record, chosen_seed
from store.artifacts import read_manifest
from store.crops import DocumentCrops, unseen_train_documents
from store.labels import LabelStore
from store.rnn import load_rnn
from store.tokens import TokensArtifact
from training.distributed import rank_seed
from training.steps import bptt_step_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CHOICE = TeacherChoiceConfig(seeds=[0, 1], sequences=8)


def _config(root: Path, **overrides) -> PipelineConfig:
    tokens = read_manifest(make_tokens(str(root)).url).config
    return PipelineConfig(root=str(root), tokens=tokens, teacher=TEACHER_CFG, teacher_margin_bits=None,
                          labels=TINY_SPEC, beam=IN_MEMORY, variants=[GRU], seeds=[0, 1], distill=DISTILL_CFG,
                          dmt=DMT_CFG, **overrides)


def test_the_flow_goes_on_with_the_teacher_whose_student_reads_best_and_pays_for_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = _config(tmp_path, teacher_choice=CHOICE)
    refs = run_until(cfg, "distill")
    record = choice_record(refs["teacher_choice"].url)
    assert sorted(record["held_out_bits"]) == ["0", "1"]
    kept = str(chosen_seed(refs["teacher_choice"].url))
    assert record["held_out_bits"][kept] == min(record["held_out_bits"].values())
    left = next(s for s in record["held_out_bits"] if s != kept)
    # the candidates are distinct teachers, and the flow re-uses the kept one's teacher, store and student
    assert record["candidates"][kept]["teacher"] != record["candidates"][left]["teacher"]
    assert refs["teacher"].url == record["candidates"][kept]["teacher"]
    assert refs["labels"].url == record["candidates"][kept]["labels"]
    assert refs["gru/smt"].url == record["candidates"][kept]["rnn"]
    assert "gru@seed1/smt" in refs  # the other students train from the kept teacher only
    assert read_manifest(refs["gru@seed1/smt"].url).parents["teacher"] == refs["teacher"].hash
    # the same run with only the kept seed gives the same artifacts (no choice: plain teacher.run.seed)
    alone = run_until(cfg.with_teacher_seed(int(kept)), "distill")
    assert alone["teacher"].url == refs["teacher"].url and alone["gru@seed1/smt"].url == refs["gru@seed1/smt"].url
    assert "teacher_choice" not in alone

    # every score is the student's read loss from its own memory on one fixed batch of unseen train documents
    tokens = TokensArtifact.open(refs["tokens"].url)
    seen = [LabelStore.open(c["labels"]).index.column("doc_id").to_numpy() for c in record["candidates"].values()]
    unseen = unseen_train_documents(tokens, np.concatenate(seen))
    assert unseen.size and f"from {unseen.size} unseen train documents" in record["held_out"]
    x, y = DocumentCrops(tokens, SPLIT_TRAIN, unseen).windows(_rng(), CHOICE.sequences, DMT_CFG.rollout_len)
    for seed, urls in record["candidates"].items():
        rnn, _ = load_rnn(urls["rnn"])
        with torch.no_grad():
            bits = float(bptt_step_loss(rnn, torch.from_numpy(x), torch.from_numpy(y))["loss"]) / math.log(2)
        assert bits == pytest.approx(record["held_out_bits"][seed], rel=1e-6)

    # the candidates left are counted in the shared cost
    lineage = {role: {"url": r.url, "hash": r.hash, "kind": r.kind} for role, r in refs.items()}
    without = {k: v for k, v in lineage.items() if k != "teacher_choice"}
    left_flops = sum(f for s, f in record["candidate_flops"].items() if int(s) != record["chosen_seed"])
    extra = shared_flops(lineage) - shared_flops(without)
    assert left_flops > 0 and extra > left_flops  # the candidate left, plus every candidate's held-out check
    assert extra == read_manifest(refs["teacher_choice"].url).stats["selection_flops"]
    section = teacher_choice_section(lineage)
    assert "## Teacher choice" in section and section.count("| yes |") == 1

    # experiments/compare_teachers.py scores recorded experiments' teachers the same way (here: the same choice)
    records = tmp_path / "records"
    records.mkdir()
    for seed, urls in record["candidates"].items():
        artifacts = {role: Path(urls[kind]).name.split("-")[1]
                     for role, kind in (("teacher", "teacher"), ("labels", "labels"), ("gru/smt", "rnn"))}
        config = {"variants": [GRU.model_dump()]}
        (records / f"seed{seed}.json").write_text(json.dumps({"artifacts": artifacts, "config": config}))
    assert candidates_from_records(["seed0", "seed1"], str(tmp_path), records) == record["candidates"]
    capsys.readouterr()  # drop the runs' logs
    compare_teachers(["seed0", "seed1"], root=str(tmp_path), sequences=CHOICE.sequences, seq_len=DMT_CFG.rollout_len,
                     records=records)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[int(kept)].endswith("(kept)") and not lines[int(left)].endswith("(kept)")
    assert f"{record['held_out_bits'][kept]:.4f} bits" in lines[int(kept)]


def _rng() -> np.random.Generator:
    return np.random.default_rng(rank_seed(0, 0, "teacher-choice"))


def test_the_flow_stops_only_when_every_candidate_fails_the_quality_gate(tmp_path: Path) -> None:
    cfg = _config(tmp_path, teacher_choice=CHOICE).model_copy(update={"teacher_margin_bits": 100.0})
    with pytest.raises(TeacherQualityError, match="no teacher_choice candidate passed the quality gate"):
        run_until(cfg, "distill")


def test_teacher_choice_seeds_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        TeacherChoiceConfig(seeds=[1, 1])
    with pytest.raises(ValueError):
        TeacherChoiceConfig(seeds=[0])
