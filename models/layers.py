"""Transformer building blocks shared by the teacher and the Transformer updater.

Pre-norm blocks (RMSNorm -> attention / SwiGLU MLP -> residual), rotary positions, and attention through
`torch.nn.functional.scaled_dot_product_attention` so fused kernels are picked on GPU: a causal block
passes `is_causal=True` (flash), a bidirectional block passes a boolean key mask only when it has padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from schemas.registry import BLOCK_MLPS, resolve


def rms_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Scale the last dimension to unit root-mean-square, with no learned gain.

    This is the label normalisation: each memory token (..., D) gets RMS 1, so the encoder's labels
    and every RNN update live on the same sphere of radius sqrt(D).
    """
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def normalize_memory(m: Tensor, memory_tokens: int) -> Tensor:
    """RMS-normalise a flat memory (B, Z) per memory token: view (B, K, D), normalise over D, flatten."""
    return rms_normalize(m.view(*m.shape[:-1], memory_tokens, -1)).flatten(-2)


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-channel gain (used inside blocks, not on labels)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.eps) * self.weight


class TokenEmbedding(nn.Embedding):
    """Token embedding where -1 (padding) maps to the zero vector instead of indexing out of range."""

    def forward(self, tokens: Tensor) -> Tensor:
        valid = tokens >= 0
        emb = super().forward(tokens.clamp(min=0))
        return emb * valid.unsqueeze(-1).to(emb.dtype)


def rotary_tables(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables (T, head_dim/2) for rotary embeddings at the given (T,) positions.

    Positions may be negative or offset: attention scores depend only on differences of positions.
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) of x (B, H, T, hd) by the angles of the (T, hd/2) tables."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions on queries and keys."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads or (width // heads) % 2:
            raise ValueError(f"width {width} / heads {heads} must give an even head size")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], key_mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """x (B, T, W); rope = rotary (cos, sin) tables (T, hd/2); key_mask (B, T) bool, True = visible."""
        if causal and key_mask is not None:
            raise ValueError("a causal block takes no key mask (right padding never reaches earlier tokens)")
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, t, w))


class SwiGLU(nn.Module):
    """Gated MLP: W2 (silu(W1 x) * W3 x), hidden = mlp_ratio * width."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """Plain MLP: W2 gelu(W1 x), hidden = mlp_ratio * width (the reference's block MLP: 2/3 of SwiGLU's FLOPs)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, mlp: str = "swiglu") -> None:
        super().__init__()
        self.attn_norm = RMSNorm(width)
        self.attn = Attention(width, heads)
        self.mlp_norm = RMSNorm(width)
        self.mlp = resolve(BLOCK_MLPS[mlp])(width, mlp_ratio * width)  # schemas/registry.py

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], key_mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, key_mask, causal)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """`depth` blocks followed by a final RMSNorm; either bidirectional (optional key mask) or causal."""

    def __init__(
        self, width: int, heads: int, depth: int, mlp_ratio: int = 4, rope_base: float = 10000.0, mlp: str = "swiglu"
    ) -> None:
        super().__init__()
        self.head_dim = width // heads
        self.rope_base = rope_base
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, mlp) for _ in range(depth))
        self.norm = RMSNorm(width)

    def forward(self, x: Tensor, positions: Tensor, key_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, T, W); positions (T,) rotary positions; key_mask (B, T) bool or None -> (B, T, W)."""
        rope = rotary_tables(positions, self.head_dim, self.rope_base)
        for block in self.blocks:
            x = block(x, rope, key_mask, causal)
        return self.norm(x)
