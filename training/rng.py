"""Every random stream a training step may touch, captured into and restored from a checkpoint."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from models.build import GLOBAL_RNG_LOCK


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random stream a training step may touch: torch CPU/CUDA, numpy and python globals,
    plus named `torch.Generator`s the loop owns."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": np_state[0],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
            "state": np.asarray(np_state[1], dtype=np.uint32),
        },
        "python": random.getstate(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Put every stream captured by `capture_rng` back exactly (the global torch stream under the lock
    builds hold, so a resume never lands inside another thread's seeded build)."""
    with GLOBAL_RNG_LOCK:
        torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"], n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise KeyError(f"checkpoint has no state for generator '{name}'")
        g.set_state(state["generators"][name])
