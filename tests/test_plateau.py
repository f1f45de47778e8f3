"""The BPTT baseline trained to a plateau: early stopping on a fixed held-out batch keeps the best weights,
and its state survives a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from _fixtures_training import BPTT_CFG, GRU, build_chain

from schemas.config import PlateauConfig
from stages.bptt import bptt_stage, held_out_early_stop
from store.checkpoints import decode, encode
from store.rnn import load_rnn
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
    again = held_out_early_stop(rnn, chain.tokens.url, PLATEAU, torch.device("cpu"))
    assert again.check(0, {"rnn": rnn}) == stats["held_out_loss"]
    matched = bptt_stage(chain.tokens.url, GRU, chain.teacher.url, BPTT_CFG, chain.root)
    assert matched.url != ref.url  # two artifacts: the matched baseline and the plateau one


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
