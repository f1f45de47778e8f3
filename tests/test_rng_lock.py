"""The flow's stages run as threads of one process and share torch's global CPU generator: a reseed in one
must wait for a seeded build in another. stages/dmt.py once reseeded unlocked and moved the demo's
Transformer BPTT student in about 1 flow of 4 (its weights were drawn half from each seed)."""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from models.build import reseed_global, seeded_init

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("cli", "experiments", "flows", "models", "pipelines", "schemas", "sources", "stages", "store",
                    "training")
ALLOWED = {"models/build.py", "training/rng.py"}  # the two places that take GLOBAL_RNG_LOCK around a reset
GLOBAL_RESETS = {"manual_seed", "seed", "set_rng_state"}


def _draw_in_two_halves(between: Callable[[], None]) -> torch.Tensor:
    with seeded_init(7):
        first = torch.randn(64)
        between()
        second = torch.randn(64)
    return torch.cat([first, second])


def test_a_reseed_in_another_thread_waits_for_a_seeded_build() -> None:
    expected = _draw_in_two_halves(lambda: None)
    build_started, reseeded = threading.Event(), threading.Event()

    def other_stage() -> None:
        build_started.wait()
        reseed_global(123)
        reseeded.set()

    thread = threading.Thread(target=other_stage)
    thread.start()

    def between() -> None:
        build_started.set()
        reseeded.wait(timeout=0.5)  # an unlocked reseed lands here, between the two draws

    drawn = _draw_in_two_halves(between)
    thread.join()
    assert reseeded.is_set()
    assert torch.equal(drawn, expected)


def _global_resets(path: Path) -> list[str]:
    """`torch.manual_seed(...)`-style calls on the global generator (not on a torch.Generator object)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if node.func.attr in GLOBAL_RESETS and isinstance(owner, ast.Name) and owner.id == "torch":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_locked_helpers_reset_the_global_generator() -> None:
    offenders = [
        hit
        for package in PRODUCT_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in ALLOWED
        for hit in _global_resets(path)
    ]
    assert offenders == [], f"reset torch's global generator through models.build.reseed_global: {offenders}"
