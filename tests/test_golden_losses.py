"""The tiny chain's logged losses, step by step, equal tests/golden/tiny_losses.json (see
tests/golden_losses.py; regenerate on purpose with `python tests/golden_losses.py --write`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden_losses import GOLDEN, REL_TOL, _machine, differences, run_tiny


def test_every_logged_loss_matches_the_golden_file(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    if golden["machine"] != _machine():
        pytest.skip(f"golden losses were made on {golden['machine']}, this is {_machine()}: regenerate to compare")
    assert differences(golden, run_tiny(str(tmp_path))) == []


def test_a_moved_loss_is_caught() -> None:
    golden = json.loads(GOLDEN.read_text())
    moved = json.loads(json.dumps(golden))
    moved["losses"]["gru/bptt"][-1]["loss"] *= 1 + 10 * REL_TOL
    assert differences(golden, golden) == []
    assert differences(golden, moved) == [f"gru/bptt step {golden['losses']['gru/bptt'][-1]['step']} loss: "
                                          f"{golden['losses']['gru/bptt'][-1]['loss']} -> "
                                          f"{moved['losses']['gru/bptt'][-1]['loss']}"]
