"""Vectorised slicing of token sequences into encoder contexts and decoder futures.

Shared by the training steps, evaluation and the label pipeline, so every consumer agrees on the
indexing convention of docs/architecture.md: `m_t = encode(x[t-Tc+1 .. t])` (left-padded with -1 near the
start), and the decoder from `m_t` reads `x[t+1 .. t+Tf-1]` to predict `y[t .. t+Tf-1]` (Tf predictions).
Everything is a gather with out-of-range positions set to -1; no Python loops over positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.teacher import Teacher


def gather_span(x: Tensor, starts: Tensor, length: int) -> Tensor:
    """Spans `x[b, s .. s+length-1]` for each start, -1 outside `[0, T)`.

    x (B, T) long; starts (B, ...) long, leading dim matching x -> (B, ..., length).
    """
    b, t = x.shape
    idx = starts[..., None] + torch.arange(length, device=x.device)
    valid = (idx >= 0) & (idx < t)
    out = x.gather(1, idx.clamp(0, max(t - 1, 0)).reshape(b, -1)).view(idx.shape)
    return torch.where(valid, out, torch.full_like(out, -1))


def context_windows(x: Tensor, ends: Tensor, context_len: int) -> Tensor:
    """Left-padded encoder contexts ending at (and including) each end position.

    x (B, T) long; ends (B, ...) long -> (B, ..., Tc); row is `x[b, end-Tc+1 .. end]`, -1 before 0.
    """
    return gather_span(x, ends - context_len + 1, context_len)


def future_slices(x: Tensor, y: Tensor, anchors: Tensor, future_len: int) -> tuple[Tensor, Tensor]:
    """Decoder inputs and targets for memories at the anchors.

    x, y (B, T) long; anchors (B, ...) long -> x_fut (B, ..., Tf-1) = x[t+1 .. t+Tf-1] and
    y_fut (B, ..., Tf) = y[t .. t+Tf-1]; `decode(m_t, x_fut)[:, j]` is scored against `y_fut[:, j]`.
    """
    return gather_span(x, anchors + 1, future_len - 1), gather_span(y, anchors, future_len)


def encode_positions(teacher: Teacher, x: Tensor, ends: Tensor, batch_size: int | None = None) -> Tensor:
    """Teacher memories after reading each end position: x (B, T), ends (B, ...) -> (B, ..., Z).

    Contexts are encoded in chunks of `batch_size` windows (all at once if None). Gradients flow as
    usual; wrap in `torch.no_grad()` for labels.
    """
    ctx = context_windows(x, ends, teacher.cfg.context_len)
    flat = ctx.reshape(-1, ctx.shape[-1])
    step = batch_size or max(flat.shape[0], 1)
    memories = [teacher.encode(flat[i : i + step]) for i in range(0, flat.shape[0], step)]
    return torch.cat(memories).view(*ends.shape, -1)
