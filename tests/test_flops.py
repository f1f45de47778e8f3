"""FLOP budgets: counted from the shapes, exact where sequential parts are multiplied, and what BPTT gets."""

from __future__ import annotations

import pytest
import torch
from _fixtures_labels import TINY_MODEL
from _fixtures_training import BPTT_CFG, DISTILL_CFG, DMT_CFG, GRU, TRANSFORMER

from flows.graph import matched_config
from models.teacher import Decoder
from schemas.config import BaselineSelectionConfig, BPTTConfig, KeepBestConfig, PipelineConfig
from stages.bptt import bptt_budget, budget_inputs
from training import flops
from training.steps import bptt_step_loss, dmt_step_loss

VARIANTS = [TRANSFORMER, GRU]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.kind)
def test_bptt_count_is_the_step_by_step_count(variant) -> None:
    """T times a one-token step is exactly what counting the whole unrolled step gives."""
    rnn = flops._rnn(variant, TINY_MODEL)
    with flops.META:
        x = torch.zeros(BPTT_CFG.run.batch_size, BPTT_CFG.seq_len, dtype=torch.long)
    whole = flops.count_flops(lambda: bptt_step_loss(rnn, x, x)["loss"])
    assert flops.bptt_step_flops(variant, TINY_MODEL, BPTT_CFG) == whole > 0


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.kind)
def test_dmt_count_is_the_step_by_step_count(variant) -> None:
    """The rollout counted once and multiplied by Td equals counting the real rollout."""
    rnn, b, td = flops._rnn(variant, TINY_MODEL), DMT_CFG.run.batch_size, DMT_CFG.rollout_len
    with flops.META:
        decoder = Decoder(TINY_MODEL).requires_grad_(False)
        memories = torch.zeros(b, td + 1, TINY_MODEL.memory_size)
        x = torch.zeros(b, td + TINY_MODEL.future_len, dtype=torch.long)
    whole = flops.count_flops(lambda: dmt_step_loss(rnn, memories, x, x, DMT_CFG, decoder)["loss"])
    assert flops.dmt_step_flops(variant, TINY_MODEL, DMT_CFG) == whole > 0


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.kind)
def test_keep_best_checks_are_counted_as_the_students_work(variant) -> None:
    """DMT's held-out checks (one before the first step, one every eval_every) are forward passes over the
    whole batch of held-out sequences, and they enter the budget BPTT is matched to."""
    keep = DMT_CFG.model_copy(update={"keep_best": KeepBestConfig(eval_every=2, sequences=6, seq_len=5)})
    rnn = flops._rnn(variant, TINY_MODEL)
    with flops.META:
        x = torch.zeros(6, 5, dtype=torch.long)
    with torch.no_grad():
        one_check = flops.count_flops(lambda: bptt_step_loss(rnn, x, x)["loss"], backward=False)
    assert flops.dmt_selection_flops(variant, TINY_MODEL, keep, 4) == 3 * one_check > 0
    assert flops.dmt_selection_flops(variant, TINY_MODEL, DMT_CFG, 4) == 0
    plain = flops.student_training_flops(variant, TINY_MODEL, DISTILL_CFG, DMT_CFG)
    assert flops.student_training_flops(variant, TINY_MODEL, DISTILL_CFG, keep) == plain + (
        1 + keep.run.steps // 2) * one_check


def test_counts_follow_the_shapes() -> None:
    """Twice the batch is twice the work; a frozen readout (teacher decoder in SMT) is not counted."""
    def count(cfg):
        return flops.distill_step_flops(GRU, TINY_MODEL, cfg)

    double = DISTILL_CFG.model_copy(update={"run": DISTILL_CFG.run.model_copy(update={"batch_size": 64})})
    assert count(double) == 2 * count(DISTILL_CFG)
    assert count(DISTILL_CFG.model_copy(update={"readout_weight": 0.0})) < count(DISTILL_CFG)


def test_a_chain_of_anchors_saves_exactly_the_encoder_passes_it_shares() -> None:
    """teacher.chain c encodes c+1 windows per c transitions instead of 2c; nothing else changes per
    transition (the uniformity sample held at its minimum), so the counted step shrinks by the encodes saved."""
    from schemas.config import RunConfig, TeacherTrainConfig

    model = TINY_MODEL.model_copy(update={"future_len": 4})
    def step(chain: int) -> int:
        return flops.teacher_step_flops(TeacherTrainConfig(model=model, chain=chain, unif_samples=2,
                                                           run=RunConfig(batch_size=12)))

    teacher = flops.build_teacher(model)
    x = torch.zeros(1, model.context_len, dtype=torch.long)
    window = flops.count_flops(lambda: teacher.encode(x).sum())  # one window, forward and backward
    for chain in (2, 3):
        saved = 12 * 2 - 12 // chain * (chain + 1)
        assert step(1) - step(chain) == pytest.approx(saved * window, rel=1e-3)


def test_flops_budget_gives_bptt_the_students_work() -> None:
    cfg = PipelineConfig(
        teacher={"model": TINY_MODEL.model_dump()}, variants=[GRU.model_dump()],
        distill=DISTILL_CFG.model_dump(), dmt=DMT_CFG.model_dump(),
        bptt=BPTT_CFG.model_copy(update={"budget": "match_smt_flops"}).model_dump(),
    )
    inputs = budget_inputs(cfg, GRU)
    student = DISTILL_CFG.run.steps * flops.distill_step_flops(GRU, TINY_MODEL, DISTILL_CFG)
    student += DMT_CFG.run.steps * flops.dmt_step_flops(GRU, TINY_MODEL, DMT_CFG)
    assert inputs == {"smt_flops": student}
    steps, seconds = bptt_budget(cfg.bptt, GRU, TINY_MODEL, smt_flops=inputs["smt_flops"])
    per_step = flops.bptt_step_flops(GRU, TINY_MODEL, cfg.bptt)
    assert seconds is None and steps == student // per_step and steps * per_step <= student
    assert budget_inputs(cfg, GRU) == inputs  # a pure function of the config: same figure every time


def test_a_selecting_student_gives_its_matched_baseline_as_many_checks_paid_from_the_same_budget() -> None:
    """With dmt.keep_best the flow's matched baseline gets bptt.keep_best: as many checks after the first step
    as the student makes, the same batch shape; its steps are the most whose FLOPs, checks included, fit."""
    keep = KeepBestConfig(eval_every=2, sequences=6, seq_len=5)
    dmt = DMT_CFG.model_copy(update={"keep_best": keep, "run": DMT_CFG.run.model_copy(update={"steps": 8})})
    cfg = PipelineConfig(
        teacher={"model": TINY_MODEL.model_dump()}, variants=[GRU.model_dump()],
        distill=DISTILL_CFG.model_dump(), dmt=dmt.model_dump(),
        bptt=BPTT_CFG.model_copy(update={"budget": "match_smt_flops"}).model_dump(),
    )
    matched = matched_config(cfg)
    assert matched.keep_best == BaselineSelectionConfig(checks=4, sequences=6, seq_len=5)
    by_error = cfg.model_copy(update={"dmt": dmt.model_copy(update={"keep_best": keep.model_copy(
        update={"metric": "error"})})})
    assert matched_config(by_error).keep_best.metric == "error"  # the baseline selects as its student does
    assert matched_config(cfg.model_copy(update={"dmt": DMT_CFG})) == cfg.bptt  # no selection: as configured
    with pytest.raises(ValueError, match="known number of steps"):
        BPTTConfig.model_validate({**BPTT_CFG.model_dump(), "budget": "seconds",
                                   "keep_best": matched.keep_best.model_dump()})
    budget = budget_inputs(cfg, GRU)["smt_flops"]
    steps, _ = bptt_budget(matched, GRU, TINY_MODEL, smt_flops=budget)
    step = flops.bptt_step_flops(GRU, TINY_MODEL, matched)
    rnn = flops._rnn(GRU, TINY_MODEL)
    with flops.META:
        x = torch.zeros(6, 5, dtype=torch.long)
    with torch.no_grad():
        one_check = flops.count_flops(lambda: bptt_step_loss(rnn, x, x)["loss"], backward=False)

    def cost(n: int) -> int:
        return n * step + (1 + n // max(1, n // 4)) * one_check

    assert flops.bptt_selection_flops(GRU, TINY_MODEL, matched, steps) == cost(steps) - steps * step
    assert cost(steps) <= budget < cost(steps + 1)
    assert steps < bptt_budget(cfg.bptt, GRU, TINY_MODEL, smt_flops=budget)[0]  # fewer steps than unselected


def test_other_budgets() -> None:
    steps_cfg = BPTT_CFG
    assert bptt_budget(steps_cfg, GRU, TINY_MODEL) == (BPTT_CFG.run.steps, None)
    seconds = BPTT_CFG.model_copy(update={"budget": "match_smt_seconds"})
    assert bptt_budget(seconds, GRU, TINY_MODEL, smt_seconds=12.5) == (BPTT_CFG.run.steps, 12.5)
    with pytest.raises(ValueError, match="smt_seconds"):
        bptt_budget(seconds, GRU, TINY_MODEL)
    with pytest.raises(ValueError, match="smt_flops"):
        bptt_budget(BPTT_CFG.model_copy(update={"budget": "match_smt_flops"}), GRU, TINY_MODEL)
