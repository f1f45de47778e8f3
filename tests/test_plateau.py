"""Model selection on held-out loss, never on the test split: the BPTT baseline trained to a plateau keeps
its best weights, checked on validation documents it does not train on; DMT's `keep_best` keeps its best
weights, checked on train documents the label store has no window of; the state survives a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from _fixtures_training import BPTT_CFG, DISTILL_CFG, DMT_CFG, GRU, build_chain

from schemas.config import BaselineSelectionConfig, KeepBestConfig, PlateauConfig
from schemas.layout import SPLIT_TEST, SPLIT_TRAIN
from stages.bptt import bptt_stage, held_out_documents, held_out_early_stop, training_documents
from stages.distill import distill_stage
from stages.dmt import dmt_stage, held_out_selection
from stages.report import SELECTED_ON, selection_rows
from store.checkpoints import decode, encode
from store.crops import split_off_validation, unseen_train_documents
from store.labels import LabelStore
from store.rnn import load_rnn
from store.tokens import TokensArtifact
from training.early_stop import EarlyStop

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PLATEAU = BPTT_CFG.model_copy(update={
    "budget": "plateau",
    "plateau": PlateauConfig(max_steps=48, eval_every=4, patience=2, sequences=8),
    "run": BPTT_CFG.run.model_copy(update={"steps": 48}),
})


def test_plateau_baseline_keeps_its_best_held_out_weights(tmp_path: Path) -> None:
    chain = build_chain(str(tmp_path))
    ref = bptt_stage(chain.tokens.url, GRU, chain.teacher.url, PLATEAU, chain.root)
    stats = json.loads(Path(ref.url, "manifest.json").read_text())["stats"]
    checks = [r for r in pq.read_table(Path(ref.url) / "metrics.parquet").to_pylist() if r.get("held_out_loss")]
    assert [r["step"] for r in checks] == list(range(4, stats["steps"] + 1, 4))
    best = min(checks, key=lambda r: r["held_out_loss"])
    assert stats["held_out_loss"] == best["held_out_loss"] and stats["best_step"] == best["step"]
    assert stats["stopped"] in ("plateau", "steps")
    if stats["stopped"] == "plateau":  # stopped after `patience` checks without improvement
        assert stats["steps"] == best["step"] + 2 * 4
    # the published weights are the best check's: scoring them again gives its loss, bit for bit
    rnn, _ = load_rnn(ref.url)
    again = held_out_early_stop(rnn, TokensArtifact.open(chain.tokens.url), PLATEAU, torch.device("cpu"), 48)
    assert again.check(0, {"rnn": rnn}) == stats["held_out_loss"]
    matched = bptt_stage(chain.tokens.url, GRU, chain.teacher.url, BPTT_CFG, chain.root)
    assert matched.url != ref.url  # two artifacts: the matched baseline and the plateau one
    assert stats["held_out"] == "validation"
    on_test = PLATEAU.model_copy(update={"plateau": PLATEAU.plateau.model_copy(update={"held_out": "test"})})
    assert bptt_stage(chain.tokens.url, GRU, chain.teacher.url, on_test, chain.root).url != ref.url


def test_the_plateau_selects_on_validation_documents_it_never_trains_on(tmp_path: Path) -> None:
    tokens = TokensArtifact.open(build_chain(str(tmp_path)).tokens.url)
    train_ids = tokens.doc_ids(SPLIT_TRAIN)
    kept, validation = split_off_validation(tokens, 0.25, seed=7)
    assert validation.size == round(0.25 * train_ids.size) > 0
    assert sorted([*kept, *validation]) == sorted(train_ids)  # a partition of the train split
    assert all((a == b).all() for a, b in zip(split_off_validation(tokens, 0.25, seed=7), (kept, validation),
                                                strict=True))  # seeded

    def offsets(crops) -> set[int]:  # a document's first position in the artifact names it
        return set(crops.offsets.tolist())

    test = set(tokens.index.column("offset").to_numpy()[tokens.doc_ids(SPLIT_TEST)].tolist())
    trained_on, selected_on = offsets(training_documents(tokens, PLATEAU)), offsets(held_out_documents(tokens, PLATEAU))
    assert selected_on and not selected_on & trained_on and not selected_on & test
    assert len(trained_on | selected_on) == train_ids.size
    matched = offsets(training_documents(tokens, BPTT_CFG))  # no selection: the whole train split
    assert len(matched) == train_ids.size
    on_test = PLATEAU.model_copy(update={"plateau": PLATEAU.plateau.model_copy(update={"held_out": "test"})})
    assert offsets(held_out_documents(tokens, on_test)) == test
    assert offsets(training_documents(tokens, on_test)) == matched


def test_a_matched_baseline_whose_student_selects_keeps_its_best_validation_weights(tmp_path: Path) -> None:
    """bptt.keep_best: checks before the first step and every `every(steps)` steps on validation documents it
    does not train on; it publishes the best check's weights and counts the checks in its FLOPs."""
    chain = build_chain(str(tmp_path))
    steps = 12
    cfg = BPTT_CFG.model_copy(update={
        "run": BPTT_CFG.run.model_copy(update={"steps": steps}),
        "keep_best": BaselineSelectionConfig(checks=3, sequences=8, seq_len=6, validation_fraction=0.25)})
    ref = bptt_stage(chain.tokens.url, GRU, chain.teacher.url, cfg, chain.root)
    stats = json.loads(Path(ref.url, "manifest.json").read_text())["stats"]
    checks = [r for r in pq.read_table(Path(ref.url) / "metrics.parquet").to_pylist() if r.get("held_out_loss")]
    assert [r["step"] for r in checks] == [4, 8, 12] and stats["steps"] == steps  # every step runs
    assert stats["selection_checks"] == 4 and stats["held_out"] == "validation"
    rnn, _ = load_rnn(ref.url)
    tokens = TokensArtifact.open(chain.tokens.url)
    again = held_out_early_stop(rnn, tokens, cfg, torch.device("cpu"), steps)
    assert again.check(0, {"rnn": rnn}) == stats["held_out_loss"]  # the published weights are the best check's
    assert stats["held_out_loss"] <= min(r["held_out_loss"] for r in checks)
    trained_on = set(training_documents(tokens, cfg).offsets.tolist())
    selected_on = set(held_out_documents(tokens, cfg).offsets.tolist())
    assert selected_on and not selected_on & trained_on
    assert stats["train_documents"] == len(trained_on) == tokens.doc_ids(SPLIT_TRAIN).size - len(selected_on)
    assert stats["train_flops"] > steps * stats["step_flops"]  # the checks are paid for
    row, = selection_rows({"gru/bptt": {"kind": "rnn", "url": ref.url}, "tokens": {"kind": "tokens"}})
    assert row == {"rnn": "gru/bptt", "steps": steps, "best_step": stats["best_step"], "metric": "loss",
                   "held_out": stats["held_out_loss"], "checked_on": SELECTED_ON["validation"]}  # the report
    assert bptt_stage(chain.tokens.url, GRU, chain.teacher.url, BPTT_CFG.model_copy(
        update={"run": cfg.run}), chain.root).url != ref.url


def test_dmt_keeps_its_best_weights_on_documents_the_student_never_saw(tmp_path: Path) -> None:
    chain = build_chain(str(tmp_path))
    smt = distill_stage(chain.labels.url, chain.teacher.url, GRU, DISTILL_CFG, chain.root)
    cfg = DMT_CFG.model_copy(update={"run": DMT_CFG.run.model_copy(update={"steps": 8}),
                                     "keep_best": KeepBestConfig(eval_every=2, sequences=8)})
    ref = dmt_stage(smt.url, chain.labels.url, chain.teacher.url, cfg, chain.root)
    stats = json.loads(Path(ref.url, "manifest.json").read_text())["stats"]
    checks = [r for r in pq.read_table(Path(ref.url) / "metrics.parquet").to_pylist() if r.get("held_out_loss")]
    assert [r["step"] for r in checks] == [2, 4, 6, 8] and stats["steps"] == 8  # no early stop: every step runs
    assert stats["held_out"] == "unseen_train"
    rnn, _ = load_rnn(ref.url)
    store = LabelStore.open(chain.labels.url)
    again = held_out_selection(rnn, store, cfg, torch.device("cpu"))
    assert again.check(0, {"rnn": rnn}) == stats["held_out_loss"]  # the published weights are the best check's
    if stats["best_step"] > 0:
        assert stats["held_out_loss"] == min(r["held_out_loss"] for r in checks)
    else:  # the distilled weights were never beaten: DMT publishes them unchanged
        init, _ = load_rnn(smt.url)
        assert all(torch.equal(a, b) for a, b in zip(rnn.state_dict().values(), init.state_dict().values(),
                                                        strict=True))
    plain = dmt_stage(smt.url, chain.labels.url, chain.teacher.url, cfg.model_copy(update={"keep_best": None}),
                      chain.root)
    assert plain.url != ref.url
    tokens = TokensArtifact.open(chain.tokens.url)
    in_store = store.index.column("doc_id").to_numpy()
    unseen = unseen_train_documents(tokens, in_store)
    assert unseen.size and not set(unseen.tolist()) & set(in_store.tolist())
    assert set(unseen.tolist()) <= set(tokens.doc_ids(SPLIT_TRAIN).tolist())


def test_dmt_stops_after_patience_checks_without_a_better_figure(tmp_path: Path) -> None:
    """keep_best.patience: DMT stops at the first check that makes `patience` in a row without a lower figure,
    publishes the best check's weights and counts only the steps it ran; left out of the address at null."""
    chain = build_chain(str(tmp_path))
    smt = distill_stage(chain.labels.url, chain.teacher.url, GRU, DISTILL_CFG, chain.root)
    keep = KeepBestConfig(eval_every=2, sequences=8)
    assert "patience" not in keep.address_json()
    steps = 16
    cfg = DMT_CFG.model_copy(update={"run": DMT_CFG.run.model_copy(update={"steps": steps, "checkpoint_every": 4}),
                                     "optim": DMT_CFG.optim.model_copy(update={"lr": 0.3}),  # too high: it worsens
                                     "keep_best": keep.model_copy(update={"patience": 2})})
    ref = dmt_stage(smt.url, chain.labels.url, chain.teacher.url, cfg, chain.root)
    stats = json.loads(Path(ref.url, "manifest.json").read_text())["stats"]
    checks = [r for r in pq.read_table(Path(ref.url) / "metrics.parquet").to_pylist() if r.get("held_out_loss")]
    plain = dmt_stage(smt.url, chain.labels.url, chain.teacher.url,
                      cfg.model_copy(update={"keep_best": keep}), chain.root)
    distilled, _ = load_rnn(smt.url)
    first = held_out_selection(distilled, LabelStore.open(chain.labels.url), cfg, torch.device("cpu"))
    best, bad, stop = first.check(0, {"rnn": distilled}), 0, steps
    for r in checks:  # replay the rule on the recorded checks
        best, bad = (r["held_out_loss"], 0) if r["held_out_loss"] < best else (best, bad + 1)
        if bad == 2:
            stop = r["step"]
            break
    assert stats["steps"] == stop < steps and checks[-1]["step"] == stop  # it did stop, where the rule says
    assert stats["train_flops"] < json.loads(Path(plain.url, "manifest.json").read_text())["stats"]["train_flops"]
    rnn, _ = load_rnn(ref.url)
    again = held_out_selection(rnn, LabelStore.open(chain.labels.url), cfg, torch.device("cpu"))
    assert again.check(0, {"rnn": rnn}) == stats["held_out_loss"] == best


def test_dmt_can_keep_the_weights_that_answer_most_often(tmp_path: Path) -> None:
    """keep_best.metric 'error': the checks compare 1 - accuracy on the scored targets; the manifest and the
    metrics name it, the default (loss) keeps its address, and the report says which metric chose."""
    chain = build_chain(str(tmp_path))
    smt = distill_stage(chain.labels.url, chain.teacher.url, GRU, DISTILL_CFG, chain.root)
    keep = KeepBestConfig(eval_every=2, sequences=8)
    cfg = DMT_CFG.model_copy(update={"run": DMT_CFG.run.model_copy(update={"steps": 4}),
                                     "keep_best": keep.model_copy(update={"metric": "error"})})
    assert cfg.keep_best.address_json() != keep.address_json()
    assert keep.address_json() == KeepBestConfig.model_validate({"eval_every": 2, "sequences": 8}).address_json()
    assert "metric" not in keep.address_json()  # stores made before the option keep their addresses
    ref = dmt_stage(smt.url, chain.labels.url, chain.teacher.url, cfg, chain.root)
    stats = json.loads(Path(ref.url, "manifest.json").read_text())["stats"]
    checks = [r for r in pq.read_table(Path(ref.url) / "metrics.parquet").to_pylist()
              if r.get("held_out_error") is not None]
    assert [r["step"] for r in checks] == [2, 4] and "held_out_loss" not in stats
    assert 0 <= stats["held_out_error"] <= min(r["held_out_error"] for r in checks) <= 1
    rnn, _ = load_rnn(ref.url)
    again = held_out_selection(rnn, LabelStore.open(chain.labels.url), cfg, torch.device("cpu"))
    assert again.check(0, {"rnn": rnn}) == stats["held_out_error"]  # the published weights are the best check's
    row, = selection_rows({"gru/smt+dmt": {"kind": "rnn", "url": ref.url}})
    assert row["metric"] == "error" and row["held_out"] == stats["held_out_error"]
    with pytest.raises(ValueError):
        KeepBestConfig(metric="accuracy")


def test_early_stop_state_survives_a_checkpoint() -> None:
    net = torch.nn.Linear(2, 1)
    losses = iter([3.0, 2.0, 2.5, 1.0])
    stop = EarlyStop(lambda: next(losses), every=1, patience=2)
    for step in (1, 2, 3):
        stop.check(step, {"net": net})
    skeleton, tensors = encode(stop.state())
    resumed = EarlyStop(lambda: next(losses), every=1, patience=2)
    resumed.load_state(decode(json.loads(json.dumps(skeleton)), tensors))
    assert (resumed.best, resumed.best_step, resumed.bad) == (2.0, 2, 1)
    assert not resumed.exhausted
    resumed.check(4, {"net": net})
    assert (resumed.best, resumed.best_step, resumed.bad) == (1.0, 4, 0)
