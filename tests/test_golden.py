"""The golden run: the demo, run as a user runs it, gives the numbers stored in tests/golden/demo.json.

A change that moves any result of the report's table (or a BPTT budget) fails here until the file is
regenerated on purpose with `python tests/golden_demo.py --write`. CPU results depend on the CPU's
vendor and kernels (AVX2 / AVX-512) and the torch build, so each kind of machine has its own file
(tests/golden/demo*.json); on a kind without one the test says so and skips instead of comparing. The
README's table is checked against tests/golden/demo.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden_demo import GOLDEN, KERNEL_KEYS, differences, golden_path, machine, markdown, run_demo

ROOT = Path(__file__).resolve().parents[1]


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.slow
def test_demo_reproduces_the_golden_numbers(tmp_path: Path) -> None:
    here = machine()
    path = golden_path(here)
    if not path.exists():
        made = [json.loads(p.read_text())["machine"] for p in sorted(path.parent.glob("demo*.json"))]
        pytest.skip(f"golden numbers were made on {made}, this is {here}: `--write` makes this kind's file")
    golden = json.loads(path.read_text())
    assert all(golden["machine"][k] == here[k] for k in KERNEL_KEYS)
    fresh, _ = run_demo(tmp_path / "runs")
    assert differences(golden, fresh) == []


def test_readme_results_table_is_the_golden_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown(_golden()) in readme


def test_golden_comparison_catches_a_moved_number() -> None:
    golden = _golden()
    moved = json.loads(json.dumps(golden))
    row = next(iter(moved["summary"]))
    moved["summary"][row]["mean_bits"] *= 1.001
    assert differences(golden, golden) == [] and len(differences(golden, moved)) == 1
