"""The teacher: a bidirectional encoder writes memory, a causal decoder reads it (docs/method.md section 3).

Positions. Rotary positions are counted from the right end of the context window: context token `i` of
`Tc` sits at position `i - Tc` (the last real token is always at -1) and the `K` registers follow at
`0 .. K-1`. Pad keys (-1) are masked out of attention and embed to zero, so a window's memory depends only
on its real tokens: `encode([-1, -1, a, b])` equals `encode([-1, a, b])` and `encode([a, b])` up to float
rounding, whatever `Tc` is. With `encoder_memory: persistent` (a causal encoder) they count from the window's
first real token (0, 1, ...) and every register sits at `Tc`: a token's rotation and a register's never change as
tokens are appended, so neither does what a register reads of it.

The decoder sees `[m as K tokens ; embed(x_fut)]` causally at positions `0 .. K+F-1`; the output at the
last memory token (index K-1) is the readout, so `readout(m) == decode(m, empty)[:, 0]`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.layers import Stack, TokenEmbedding, rms_normalize
from schemas.config import TeacherModelConfig


def fsq_quantize(m: Tensor, step: float) -> Tensor:
    """Round to a grid of `step` with a straight-through gradient (identity in the backward pass)."""
    return m + (torch.round(m / step) * step - m).detach()


TRIM_STEP = 16  # all-padding columns are cut in multiples of this


def trim_left_padding(x_ctx: Tensor) -> tuple[Tensor, bool]:
    """Drop leading columns that are padding in every row (a multiple of TRIM_STEP of them).

    Returns (the trimmed contexts, whether any padding is left). One host sync per call: the shape
    depends on the data.
    """
    real = x_ctx >= 0
    leading_pad = (~real).all(0).int().cumprod(0).sum()  # columns before the first real token of any row
    lead, any_pad = torch.stack((leading_pad, (~real).sum())).tolist()
    cut = lead // TRIM_STEP * TRIM_STEP
    return x_ctx[:, cut:], any_pad > (cut * x_ctx.shape[0])


def causal_mask(key_mask: Tensor | None, b: int, t: int, device: torch.device) -> Tensor:
    """(B, T, T) bool: row i sees the visible keys at or before i, and itself (a pad's row sees only itself,
    so no row is empty; no real row sees a pad, so what pads compute reaches nothing)."""
    own = torch.eye(t, dtype=torch.bool, device=device)
    before = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    visible = before if key_mask is None else before & key_mask[:, None, :]
    return (visible | own).expand(b, t, t)


class Encoder(nn.Module):
    """Transformer over `[embed(x_ctx) ; K registers]`; registers' outputs are the memory. Bidirectional, or
    causal (`encoder_attention`): the registers come last, so they still see the whole context."""

    def __init__(self, cfg: TeacherModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.width)
        self.registers = nn.Parameter(torch.randn(cfg.memory_tokens, cfg.width) * 0.02)
        self.stack = Stack(cfg.width, cfg.heads, cfg.encoder_depth, cfg.mlp_ratio, cfg.rope_base, cfg.mlp)
        same = cfg.memory_dim == cfg.width
        self.proj = nn.Identity() if same else nn.Linear(cfg.width, cfg.memory_dim, bias=False)

    def forward(self, x_ctx: Tensor) -> Tensor:
        """x_ctx (B, Tc) long, left-padded with -1 -> m (B, Z), each memory token with unit RMS.

        Columns that are padding in every row are cut off first (in steps of TRIM_STEP, so few distinct
        shapes reach the kernels), and a batch left with no padding runs without a key mask, which lets
        SDPA pick its flash kernel. Neither changes the result beyond float rounding: pads are masked and
        positions are anchored at the right end.
        """
        x_ctx, padded = trim_left_padding(x_ctx)
        b, tc = x_ctx.shape
        k = self.cfg.memory_tokens
        h = torch.cat((self.embed(x_ctx), self.registers.expand(b, k, -1)), 1)
        key_mask = None
        if padded:
            key_mask = torch.cat((x_ctx >= 0, torch.ones(b, k, dtype=torch.bool, device=x_ctx.device)), 1)
        if self.cfg.encoder_attention == "causal":
            key_mask = causal_mask(key_mask, b, tc + k, x_ctx.device)
        if self.cfg.encoder_memory == "persistent":
            out = self.persistent_memory(h, x_ctx, key_mask)
        else:
            out = self.stack(h, -tc, key_mask, keep=slice(tc, None))
        m = rms_normalize(self.proj(out).float())
        if self.cfg.fsq_step is not None:
            m = fsq_quantize(m, self.cfg.fsq_step)
        return m.flatten(1)

    def persistent_memory(self, h: Tensor, x_ctx: Tensor, key_mask: Tensor) -> Tensor:
        """`encoder_memory: persistent`: the stack at positions counted from each window's first real token,
        registers at Tc; out (B, K, W) = the first K-1 registers and the last context token (the last
        register where the context is empty)."""
        b, tc = x_ctx.shape
        k = self.cfg.memory_tokens
        real = x_ctx >= 0
        columns = torch.arange(tc, device=x_ctx.device).expand(b, tc)
        registers = torch.full((b, k), self.cfg.context_len, device=x_ctx.device)
        positions = torch.cat((columns - (~real).sum(1, keepdim=True), registers), 1)
        out = self.stack(h, key_mask=key_mask, keep=slice(max(tc - 1, 0), None), positions=positions)
        if tc == 0:  # every context empty
            return out
        last = torch.where(real[:, -1:, None], out[:, :1], out[:, -1:])
        return torch.cat((out[:, 1:k], last), 1)


class Decoder(nn.Module):
    """Causal Transformer over `[m as K tokens ; embed(x_fut)]` plus the output layer to V.

    Self-contained (own token embedding and output layer) so an RNN can take a deep copy as its readout.
    """

    def __init__(self, cfg: TeacherModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.memory_tokens = cfg.memory_tokens
        same = cfg.memory_dim == cfg.width
        self.memory_in = nn.Identity() if same else nn.Linear(cfg.memory_dim, cfg.width, bias=False)
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.width)
        self.stack = Stack(cfg.width, cfg.heads, cfg.decoder_depth, cfg.mlp_ratio, cfg.rope_base, cfg.mlp)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)

    def forward(self, m: Tensor, x_fut: Tensor | None = None) -> Tensor:
        """m (B, Z), x_fut (B, F) long or None -> logits (B, F+1, V); [:, j] predicts y_{t+j}."""
        b, k = m.shape[0], self.memory_tokens
        h = self.memory_in(m.view(b, k, -1).to(self.embed.weight.dtype))
        if x_fut is not None and x_fut.shape[1] > 0:
            h = torch.cat((h, self.embed(x_fut)), 1)
        out = self.stack(h, 0, causal=True, keep=slice(k - 1, None))
        return self.head(out)

    def readout(self, m: Tensor) -> Tensor:
        """Next-token logits from memory alone: m (B, Z) -> (B, V)."""
        return self.forward(m)[:, 0]


class Teacher(nn.Module):
    """Encoder + decoder; `encode` makes memory labels, `decode` scores the future from them."""

    def __init__(self, cfg: TeacherModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def memory_size(self) -> int:
        return self.cfg.memory_size

    def encode(self, x_ctx: Tensor) -> Tensor:
        """x_ctx (B, Tc) long, -1 = left pad -> m (B, Z)."""
        return self.encoder(x_ctx)

    def decode(self, m: Tensor, x_fut: Tensor | None = None) -> Tensor:
        """m (B, Z), x_fut (B, F) -> logits (B, F+1, V); logits[:, 0] predicts y_t."""
        return self.decoder(m, x_fut)

    def readout(self, m: Tensor) -> Tensor:
        """m (B, Z) -> logits (B, V) for y_t."""
        return self.decoder.readout(m)

    def forward(self, x_ctx: Tensor, x_fut: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x_ctx), x_fut)
