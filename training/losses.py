"""The SMT objectives (docs/method.md section 4): decoding, dynamics, uniformity, plus masked cross-entropy.

All losses return scalar tensors; targets equal to -1 are ignored, and a batch with no valid target gives
an exact zero that still carries the graph (so `backward()` never fails on an unlucky batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def token_cross_entropy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token CE in nats and the validity mask: logits (..., V), targets (...) -> (...), (...) bool."""
    valid = targets >= 0
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.clamp(min=0).reshape(-1), reduction="none"
    ).view(targets.shape)
    return ce * valid, valid


def masked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean CE over targets != -1: logits (..., V), targets (...) long -> scalar."""
    ce, valid = token_cross_entropy(logits, targets)
    return ce.sum() / valid.sum().clamp(min=1)


def decoding_loss(logits: Tensor, targets: Tensor, gamma: float = 1.0) -> tuple[Tensor, Tensor]:
    """L_dec and L_dec0 for decoder predictions of the future.

    logits (B, F, V), targets (B, F) with -1 = unscored. L_dec is the mean CE with position j weighted by
    gamma**j (normalised by the weight of the valid targets); L_dec0 is the plain mean CE at j = 0, the
    best next-token loss an RNN reading this memory can reach.
    """
    ce, valid = token_cross_entropy(logits, targets)
    weights = gamma ** torch.arange(targets.shape[1], device=targets.device, dtype=ce.dtype)
    dec = (ce * weights).sum() / (valid * weights).sum().clamp(min=1e-12)
    dec0 = ce[:, 0].sum() / valid[:, 0].sum().clamp(min=1)
    return dec, dec0


def dynamics_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between predicted and label memories (B, Z); `mask` (B,) bool keeps only valid transitions."""
    if mask is None:
        return F.mse_loss(pred.float(), target.float())
    sq = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (sq * mask).sum() / mask.sum().clamp(min=1)


def uniformity_loss(
    memory: Tensor,
    memory_tokens: int,
    samples: int = 512,
    t: float = 2.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log mean_{i != j} exp(-t ||u_i - u_j||^2) over a random sample of L2-normalised memory tokens.

    memory (..., Z) is split into tokens (N, D); at most `samples` tokens are drawn without replacement
    (with `generator`, on its device). Lower is more uniform; keeps the memory space from collapsing.
    """
    tokens = memory.reshape(-1, memory.shape[-1] // memory_tokens).float()
    n = tokens.shape[0]
    if n > samples:
        device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randperm(n, generator=generator, device=device)[:samples].to(tokens.device)
        tokens = tokens[idx]
        n = samples
    if n < 2:
        return memory.sum() * 0.0
    u = F.normalize(tokens, dim=-1)
    sq_dist = (2.0 - 2.0 * u @ u.T).clamp(min=0.0)
    # the diagonal (i == j) is masked to -inf rather than indexed out: no data-dependent shape, so no
    # host sync on a GPU, and the step's FLOPs can be counted on the meta device (training/flops.py)
    diagonal = torch.eye(n, dtype=torch.bool, device=u.device)
    logits = (-t * sq_dist).masked_fill(diagonal, float("-inf"))
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1))
