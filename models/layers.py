"""Transformer building blocks shared by the teacher and the Transformer updater.

Pre-norm blocks (RMSNorm -> attention / SwiGLU MLP -> residual), rotary positions, and attention through
`torch.nn.functional.scaled_dot_product_attention` so fused kernels are picked on GPU: a causal block
passes `is_causal=True` (flash), a bidirectional block passes a boolean key mask only when it has padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

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
    """Full-width tables (T, head_dim) for rotary embeddings at the given (T,) positions: (cos, signed sin).

    Pair (i, i + hd/2) turns by angle_i: the cosine is repeated over both halves and the sine carries the
    rotation's sign (-sin on the first half), so `apply_rotary` is two products and a sum. Positions may
    be negative or offset: attention scores depend only on differences of positions.
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) of x (..., T, hd) by the angles of the (T, hd) tables.

    x1' = x1 cos - x2 sin and x2' = x2 cos + x1 sin, written as x * cos + roll(x, hd/2) * signed sin: four
    kernels whatever the leading dimensions, so queries and keys stacked together rotate in one call.
    """
    out = x * cos + x.roll(x.shape[-1] // 2, -1) * sin  # fp32 tables: bf16 inputs are rotated in fp32
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
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        key_mask: Tensor | None = None,
        causal: bool = False,
        queries: slice | None = None,
    ) -> Tensor:
        """x (B, T, W); rope = rotary (cos, signed sin) tables (T, hd), or (B, 1, T, hd) with positions per
        row; key_mask (B, T) bool, True = visible, or (B, T, T), one row of visible keys per query.

        `queries` computes the output for those rows only (every row still serves as key and value): the
        query projection runs on them alone. A causal block takes it only for its last row, which sees
        every key anyway (anything else is refused).
        """
        if causal and key_mask is not None:
            raise ValueError("a causal block takes no key mask (right padding never reaches earlier tokens)")
        b, t, w = x.shape
        hd = w // self.heads
        cos, sin = rope
        if queries is None:
            qkv = self.qkv(x).view(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
            q, k = apply_rotary(qkv[:2], cos, sin)  # queries and keys share the tables: one rotation
            v = qkv[2]
        else:
            w_q, w_kv = self.qkv.weight.split((w, 2 * w))
            q = F.linear(x[:, queries], w_q).view(b, -1, self.heads, hd).transpose(1, 2)
            k, v = F.linear(x, w_kv).view(b, t, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
            q, k = apply_rotary(q, cos[..., queries, :], sin[..., queries, :]), apply_rotary(k, cos, sin)
            if causal and queries.indices(t)[:2] != (t - 1, t):
                raise ValueError("a causal block computes only its last row alone (the others need the mask)")
            causal = False  # the last row sees every key: no mask needed
        if key_mask is None:
            mask = None
        elif key_mask.dim() == 2:
            mask = key_mask[:, None, None, :]
        else:  # (B, T, T): a row per query
            mask = key_mask[:, None] if queries is None else key_mask[:, None, queries]
        y = attention(q, k, v, mask, causal)
        return self.out(y.transpose(1, 2).reshape(b, -1, w))


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(d)) v through SDPA. Training in bf16 on a CPU takes SDPA's math backend: its
    flash kernel's bf16 backward there is ~3x slower than the plain matmuls (a third of a teacher step)."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled():
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


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
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        key_mask: Tensor | None = None,
        causal: bool = False,
        rows: slice | None = None,
    ) -> Tensor:
        """x (B, T, W) -> (B, T, W), or only the given `rows` of the output (B, len(rows), W)."""
        h = self.attn_norm(x)
        if rows is not None:
            x = x[:, rows]
        x = x + self.attn(h, rope, key_mask, causal, rows)
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
        self._rope: dict[tuple, tuple[Tensor, Tensor]] = {}

    def rope(self, offset: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Rotary tables for positions offset .. offset+length-1, made once per shape and device."""
        key = (offset, length, str(device))
        if key not in self._rope:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable by training later
                positions = torch.arange(offset, offset + length, device=device)
                self._rope[key] = rotary_tables(positions, self.head_dim, self.rope_base)
        return self._rope[key]

    def forward(
        self,
        x: Tensor,
        offset: int = 0,
        key_mask: Tensor | None = None,
        causal: bool = False,
        keep: slice = slice(None),
        positions: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, W) at rotary positions offset .. offset+T-1, or at `positions` (B, T), one row of positions
        per sequence; key_mask (B, T) bool or None -> the `keep` rows of the output (B, len(keep), W).

        The last block computes only the kept rows (its other rows feed nothing): the encoder keeps its
        K registers of Tc+K rows, the updater its K memory tokens. A causal stack does that only when
        the one row kept is the last (the readout); otherwise every row is computed and the kept ones
        sliced out. Either way the result equals the full computation up to float rounding.
        """
        b, t = x.shape[:2]
        if positions is None:
            rope = self.rope(offset, t, x.device)
        else:
            cos, sin = rotary_tables(positions.flatten(), self.head_dim, self.rope_base)
            rope = (cos.view(b, 1, t, -1), sin.view(b, 1, t, -1))
        start, stop, step = keep.indices(t)
        trim = step == 1 and (not causal or (start, stop) == (t - 1, t))
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, rope, key_mask, causal, keep if trim and i == last else None)
        if not trim or not self.blocks:
            x = x[:, keep]
        return self.norm(x)
