"""RNN students: an updater `(m_t, x_{t+1}) -> m_{t+1}` plus a readout `m_t -> logits` (docs/method.md section 5).

Every variant keeps its whole state in the memory `m` (B, Z) and RMS-normalises each of its K memory tokens
over D after every update, exactly like the encoder's labels, so SMT can regress updates onto labels and
an RNN can continue from any teacher memory. Readout heads live in `rnn.readout_head`; everything else is
the updater (`rnn.updater_parameters()`), which lets a loop give them separate optimiser groups and lets
tests check that readout losses never reach the updater.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from models.layers import RMSNorm, Stack, TokenEmbedding, normalize_memory
from models.teacher import Decoder
from schemas.config import RNNConfig, TeacherModelConfig


class DecoderReadout(nn.Module):
    """The teacher's decoder (+ output layer) used with no future tokens: m (B, Z) -> (B, V)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, m: Tensor) -> Tensor:
        return self.decoder.readout(m)


class MLPReadout(nn.Module):
    """A small head trained by cross-entropy on stored memories: m (B, Z) -> (B, V)."""

    def __init__(self, memory_size: int, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(memory_size, hidden), nn.GELU(), nn.Linear(hidden, vocab_size))

    def forward(self, m: Tensor) -> Tensor:
        return self.net(m)


class RNN(nn.Module):
    """Base class: learned initial memory, normalised update, readout. Subclasses implement `step`."""

    def __init__(self, cfg: RNNConfig, teacher_cfg: TeacherModelConfig, readout_head: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = teacher_cfg.vocab_size
        self.memory_tokens = teacher_cfg.memory_tokens
        self.memory_dim = teacher_cfg.memory_dim
        self.memory_size = teacher_cfg.memory_size
        self.initial = nn.Parameter(torch.randn(1, self.memory_size))
        self.readout_head = readout_head

    def init_memory(self, batch_size: int) -> Tensor:
        """The learned initial memory m_{-1} (before any token), (B, Z), normalised like labels."""
        return normalize_memory(self.initial, self.memory_tokens).expand(batch_size, -1)

    def step(self, m: Tensor, x: Tensor) -> Tensor:
        """Unnormalised next memory (B, Z) from m (B, Z) and x (B,) long; -1 embeds to zero."""
        raise NotImplementedError

    def update(self, m: Tensor, x: Tensor) -> Tensor:
        """m_{t+1} = normalise(step(m_t, x_{t+1})): (B, Z), (B,) -> (B, Z), unit RMS per memory token."""
        return normalize_memory(self.step(m, x).float(), self.memory_tokens)

    def readout(self, m: Tensor) -> Tensor:
        """Logits (B, V) for y_t from m_t (B, Z)."""
        return self.readout_head(m)

    def forward(self, m: Tensor, x: Tensor) -> Tensor:
        return self.update(m, x)

    def inference_step(self, compiled: bool = False) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """One token of reading, (m_{t-1}, x_t) -> (m_t, readout logits of m_t), for no-grad loops.

        compiled=True hands it to torch.compile (inductor, shapes fixed): at batch 1 a Transformer updater
        and decoder readout run ~240 tiny kernels per token, and fusing them is what makes CPU generation
        fast (bench/vs_reference.py's `infer_b1_compiled`). The first two calls per batch size compile (seconds
        on a CPU); the results equal the eager step's up to float rounding (tests/test_rnn.py).
        """

        def step(m: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
            m = self.update(m, x)
            return m, self.readout(m)

        return torch.compile(step, dynamic=False) if compiled else step

    def updater_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the update path (everything except the readout head)."""
        return (p for name, p in self.named_parameters() if not name.startswith("readout_head."))


class TransformerUpdater(RNN):
    """The published updater: bidirectional Transformer over `[m as K tokens ; embed(x)]`, first K out."""

    def __init__(self, cfg: RNNConfig, teacher_cfg: TeacherModelConfig, readout_head: nn.Module) -> None:
        super().__init__(cfg, teacher_cfg, readout_head)
        same = teacher_cfg.memory_dim == cfg.width
        self.embed = TokenEmbedding(teacher_cfg.vocab_size, cfg.width)
        self.memory_in = nn.Identity() if same else nn.Linear(teacher_cfg.memory_dim, cfg.width, bias=False)
        self.stack = Stack(cfg.width, cfg.heads, cfg.depth, rope_base=teacher_cfg.rope_base, mlp=cfg.mlp)
        self.memory_out = nn.Identity() if same else nn.Linear(cfg.width, teacher_cfg.memory_dim, bias=False)

    def step(self, m: Tensor, x: Tensor) -> Tensor:
        b, k = m.shape[0], self.memory_tokens
        h = torch.cat((self.memory_in(m.view(b, k, -1)), self.embed(x)[:, None]), 1)
        out = self.stack(h, 0, keep=slice(None, k))
        return self.memory_out(out).flatten(1)


class GRUUpdater(RNN):
    """A GRU cell whose hidden state is the memory Z; input is embed(x)."""

    def __init__(self, cfg: RNNConfig, teacher_cfg: TeacherModelConfig, readout_head: nn.Module) -> None:
        super().__init__(cfg, teacher_cfg, readout_head)
        self.embed = TokenEmbedding(teacher_cfg.vocab_size, cfg.width)
        self.cell = nn.GRUCell(cfg.width, self.memory_size)

    def step(self, m: Tensor, x: Tensor) -> Tensor:
        return self.cell(self.embed(x), m)


class LSTMUpdater(RNN):
    """LSTM-style cell whose cell state is the memory: c' = f * c + i * tanh(g), gates from (embed(x), tanh(c)).

    The hidden input is tanh(c), an LSTM's output without its output gate (which would be extra state).
    An earlier layout stored [h ; c] as the memory, which forces the teacher's memory halves into the
    relation h = o * tanh(c) that they do not have: on the demo store SMT plateaued at MSE 0.10 that way
    and reaches 0.011 this way (1,200 steps; GRU 0.009).
    """

    def __init__(self, cfg: RNNConfig, teacher_cfg: TeacherModelConfig, readout_head: nn.Module) -> None:
        super().__init__(cfg, teacher_cfg, readout_head)
        self.embed = TokenEmbedding(teacher_cfg.vocab_size, cfg.width)
        self.gates = nn.Linear(cfg.width + self.memory_size, 3 * self.memory_size)

    def step(self, m: Tensor, x: Tensor) -> Tensor:
        i, f, g = self.gates(torch.cat((self.embed(x), torch.tanh(m)), -1)).chunk(3, dim=-1)
        return torch.sigmoid(f) * m + torch.sigmoid(i) * torch.tanh(g)


class MLPUpdater(RNN):
    """Residual MLP: m + MLP(concat(m, embed(x))); a small output layer starts it near the identity."""

    def __init__(self, cfg: RNNConfig, teacher_cfg: TeacherModelConfig, readout_head: nn.Module) -> None:
        super().__init__(cfg, teacher_cfg, readout_head)
        self.embed = TokenEmbedding(teacher_cfg.vocab_size, cfg.width)
        self.inp = nn.Linear(self.memory_size + cfg.width, cfg.hidden)
        self.hidden = nn.ModuleList(
            nn.Sequential(RMSNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU())
            for _ in range(cfg.depth - 1)
        )
        self.norm = RMSNorm(cfg.hidden)
        self.out = nn.Linear(cfg.hidden, self.memory_size)
        with torch.no_grad():  # start near the identity update, but not exactly (keep token dependence)
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def step(self, m: Tensor, x: Tensor) -> Tensor:
        h = torch.nn.functional.gelu(self.inp(torch.cat((m, self.embed(x)), -1)))
        for layer in self.hidden:
            h = h + layer(h)
        return m + self.out(self.norm(h))


class GatedLinearUpdater(RNN):
    """minGRU-like cell: m' = (1 - z) * m + z * c, gate z and candidate c linear in (m, embed(x))."""

    def __init__(self, cfg: RNNConfig, teacher_cfg: TeacherModelConfig, readout_head: nn.Module) -> None:
        super().__init__(cfg, teacher_cfg, readout_head)
        self.embed = TokenEmbedding(teacher_cfg.vocab_size, cfg.width)
        self.gate_candidate = nn.Linear(self.memory_size + cfg.width, 2 * self.memory_size)

    def step(self, m: Tensor, x: Tensor) -> Tensor:
        gate, candidate = self.gate_candidate(torch.cat((m, self.embed(x)), -1)).chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        return (1 - z) * m + z * candidate
