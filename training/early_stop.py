"""Early stopping on a held-out loss: train until it has not improved for `patience` checks, keep the best
(with patience None: train to the end, keep the best: DMT's `keep_best`).

For the BPTT baseline trained to a plateau (docs/comparison.md): the matched baseline shows what BPTT
does with the student's compute, this one the best BPTT does at all. The held-out batch is fixed, so
every check is a pure function of the weights, and the state (best loss, its step, its weights, the
checks without improvement) travels in the checkpoint: a resumed run stops where an unbroken one does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from training.steps import bptt_step_loss, own_memory_error

if TYPE_CHECKING:
    from store.crops import DocumentCrops


class EarlyStop:
    """validate() -> held-out loss (or error: lower is better) of the current weights; called every `every`
    steps. Ties keep the earlier weights."""

    def __init__(self, validate: Callable[[], float], every: int, patience: int | None, metric: str = "loss") -> None:
        self.validate, self.every, self.patience, self.metric = validate, every, patience, metric
        self.best, self.best_step, self.bad = float("inf"), 0, 0
        self.best_state: dict[str, dict[str, torch.Tensor]] = {}

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def check(self, step: int, modules: dict[str, nn.Module]) -> float:
        """Score the weights at `step`; remember them if they are the best so far. Returns the loss."""
        for m in modules.values():
            m.eval()
        with torch.no_grad():
            loss = float(self.validate())
        for m in modules.values():
            m.train()
        if loss < self.best:
            self.best, self.best_step, self.bad = loss, step, 0
            self.best_state = {k: {n: t.detach().clone() for n, t in m.state_dict().items()}
                               for k, m in modules.items()}
        else:
            self.bad += 1
        return loss

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def restore_best(self, modules: dict[str, nn.Module]) -> None:
        """Put the best weights back (nothing to do before the first check)."""
        for k, state in self.best_state.items():
            modules[k].load_state_dict(state)

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "best_state": self.best_state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad = float(state["best"]), int(state["best_step"]), int(state["bad"])
        self.best_state = state["best_state"]


def own_memory_stop(
    rnn: nn.Module, crops: DocumentCrops, seed: int, sequences: int, seq_len: int, device: torch.device,
    every: int, patience: int | None, metric: str = "loss",
) -> EarlyStop:
    """Checks on one fixed batch of `sequences` crops of `seq_len` tokens (drawn once with `seed`), read from
    the RNN's own initial memory, as BPTT trains it and the evaluation reads it, with no gradient: the readout
    loss (`metric` 'loss') or 1 - top-1 accuracy on the scored targets ('error')."""
    x, y = crops.windows(np.random.default_rng(seed), sequences, seq_len)
    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    if metric == "error":
        return EarlyStop(lambda: own_memory_error(rnn, x_t, y_t), every, patience, metric)
    if metric != "loss":
        raise ValueError(f"unknown selection metric {metric!r}: 'loss' or 'error'")
    return EarlyStop(lambda: bptt_step_loss(rnn, x_t, y_t)["loss"], every, patience, metric)
