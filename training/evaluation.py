"""Read and write evaluation of an RNN, and the teacher's ceiling L_dec0 (docs/method.md section 7).

All functions run under `torch.no_grad()`. Losses are in nats (divide by ln 2 for bits per token).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from models.rnn import RNN
from models.teacher import Teacher
from training.losses import token_cross_entropy
from training.windows import context_windows


@torch.no_grad()
def read_metrics_per_position(
    rnn: RNN,
    x: Tensor,
    y: Tensor,
    start: str = "teacher",
    teacher: Teacher | None = None,
    prefix_len: int = 0,
    steps: int | None = None,
) -> dict[str, Tensor]:
    """Teacher-forced next-token loss and accuracy of the RNN at positions prefix_len .. prefix_len+N-1.

    x, y (B, T). start="teacher": the RNN starts from the teacher memory m_{P-1} of the prefix x[:P]
    (P = prefix_len >= 1); start="init": it starts from its initial memory and reads the prefix itself
    (unscored), so both starts score the same positions. Then for each scored position t the RNN does
    m_t = update(m_{t-1}, x_t) and readout(m_t) is scored against y_t.
    Returns 'loss' and 'accuracy' (N,) (NaN where no target is scored) and 'count' (N,) scored targets.
    """
    b, t_total = x.shape
    n = t_total - prefix_len if steps is None else min(steps, t_total - prefix_len)
    if start == "teacher":
        if teacher is None or prefix_len < 1:
            raise ValueError("start='teacher' needs a teacher and prefix_len >= 1")
        ends = torch.full((b,), prefix_len - 1, dtype=torch.long, device=x.device)
        m = teacher.encode(context_windows(x, ends, teacher.cfg.context_len)).float()
    elif start == "init":
        m = rnn.init_memory(b)
        for s in range(prefix_len):
            m = rnn.update(m, x[:, s])
    else:
        raise ValueError(f"start must be 'teacher' or 'init', got {start!r}")
    loss_sum, correct, count = (torch.zeros(n, device=x.device) for _ in range(3))
    step = rnn.inference_step()
    for i in range(n):
        t = prefix_len + i
        m, logits = step(m, x[:, t])
        ce, valid = token_cross_entropy(logits, y[:, t])
        loss_sum[i] = ce.sum()
        correct[i] = ((logits.argmax(-1) == y[:, t]) & valid).sum()
        count[i] = valid.sum()
    denom = torch.where(count > 0, count, torch.full_like(count, math.nan))
    return {"loss": loss_sum / denom, "accuracy": correct / denom, "count": count}


@torch.no_grad()
def teacher_dec0(teacher: Teacher, x: Tensor, y: Tensor, batch_size: int = 1024) -> Tensor:
    """Mean L_dec0 (readout CE from the encoder memory m_t against y_t) over every scored position.

    x, y (B, T); the ceiling an RNN's read loss can approach. Windows are encoded `batch_size` at a time.
    """
    rows, cols = (y >= 0).nonzero(as_tuple=True)
    total = torch.zeros((), device=x.device)
    for i in range(0, rows.numel(), batch_size):
        r, c = rows[i : i + batch_size], cols[i : i + batch_size]
        m = teacher.encode(context_windows(x[r], c, teacher.cfg.context_len))
        ce, _ = token_cross_entropy(teacher.readout(m), y[r, c])
        total += ce.sum()
    return total / max(rows.numel(), 1)


@torch.no_grad()
def sample(
    rnn: RNN,
    memory: Tensor | None,
    steps: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 1,
) -> Tensor:
    """Sample `steps` tokens autoregressively: readout -> token -> update, (B, steps) long.

    Starts from `memory` (B, Z) (e.g. a teacher prefix memory m_t, whose readout predicts x_{t+1}) or,
    if None, from the RNN's initial memory for `batch_size` sequences. The generator must live on the
    memory's device.
    """
    m = rnn.init_memory(batch_size) if memory is None else memory
    tokens = []
    for _ in range(steps):
        probs = torch.softmax(rnn.readout(m).float() / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator)[:, 0]
        tokens.append(token)
        m = rnn.update(m, token)
    return torch.stack(tokens, 1)


def unigram_bits(targets: np.ndarray) -> float:
    """Entropy in bits of the scored targets' own frequencies (-1 = unscored, ignored): the loss of the best
    predictor that ignores the context, on these very targets. A teacher whose L_dec0 does not beat it
    has learned nothing from the context; its memories are not worth materialising."""
    scored = targets[targets >= 0]
    if scored.size == 0:
        return float("nan")
    p = np.bincount(scored) / scored.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())
