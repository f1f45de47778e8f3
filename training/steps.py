"""One optimisation step's losses for each training mode (docs/method.md section 6), as pure functions.

Each returns a dict of scalar tensors with the total under 'loss'; the caller owns backward, clipping and
the optimiser. Indexing follows docs/architecture.md: `m_t` is the memory after reading x_t,
`update(m_t, x_{t+1}) = m_{t+1}`, `readout(m_t)` predicts y_t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from models.rnn import RNN
from models.teacher import Decoder, Teacher
from schemas.config import DMTConfig, TeacherTrainConfig
from training.losses import decoding_loss, dynamics_loss, masked_cross_entropy, uniformity_loss
from training.windows import context_windows, encode_positions, future_slices, gather_span


def sample_anchors(x: Tensor, generator: torch.Generator | None = None, chain: int = 1) -> Tensor:
    """One anchor t per sequence, uniform over all real positions: x (B, T) -> (B,) long.

    Sequences are right-padded with -1; a sequence of length n gets t in [0, n-1]. The last position
    is included on purpose: tasks that score the final token (retrieval's answer) need the readout
    trained on the memory after it; there is no next token there, so L_dyn masks that row out.
    With `chain` > 1, t is the first of `chain` consecutive anchors, kept to [0, n-chain] so the chain
    stays inside the sequence where it can.
    """
    lengths = (x >= 0).sum(dim=1)
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(x.shape[0], generator=generator, device=device).to(x.device)
    return (u * (lengths - chain + 1).clamp(min=1)).long().clamp(max=(lengths - chain).clamp(min=0))


def teacher_step_loss(
    teacher: Teacher,
    updater: RNN,
    x: Tensor,
    y: Tensor,
    cfg: TeacherTrainConfig,
    generator: torch.Generator | None = None,
    anchors: Tensor | None = None,
) -> dict[str, Tensor]:
    """Joint teacher objective dec_weight*L_dec + dyn_weight*L_dyn + unif_weight*L_unif.

    x, y (B, T) long with -1 pads. Each sequence gives `cfg.chain` consecutive anchors t .. t+chain-1 (t
    sampled, or given as (B,)), so B * chain transitions: their chain+1 memories m_t .. m_{t+chain} are
    encoded in one batch from left-padded windows, each inner memory serving as the target of one
    transition and the start of the next (chain+1 encodes per chain transitions instead of 2 per transition).
    L_dyn = MSE(updater.update(m_s, x_{s+1}), m_{s+1}) sends gradient into the encoder through both
    memories (Markov shaping) and into the updater; L_dec and L_unif read every m_s of a chain but its last.
    With `cfg.dyn_rollout` the prediction of m_{s+1} is the updater's own rollout from the chain's first memory.
    """
    mc, chain = cfg.model, cfg.chain
    t = sample_anchors(x, generator, chain) if anchors is None else anchors
    ends = t[:, None] + torch.arange(chain + 1, device=t.device)  # (B, chain+1): every memory's last token
    contexts = context_windows(x, ends, mc.context_len)  # (B, chain+1, Tc)
    memories = teacher.encode(contexts.flatten(0, 1)).view(x.shape[0], chain + 1, -1)
    m_t, m_next = memories[:, :-1].flatten(0, 1), memories[:, 1:].flatten(0, 1)  # (B*chain, Z) each
    x_fut, y_fut = future_slices(x, y, ends[:, :-1], mc.future_len)
    dec, dec0 = decoding_loss(teacher.decode(m_t, x_fut.flatten(0, 1)), y_fut.flatten(0, 1), cfg.gamma)
    x_next = gather_span(x, t + 1, chain).flatten()
    dyn = dynamics_loss(own_rollout(updater, memories[:, 0], x_next.view(-1, chain)) if cfg.dyn_rollout
                        else updater.update(m_t, x_next), m_next, mask=x_next >= 0)
    unif = uniformity_loss(m_t, mc.memory_tokens, cfg.unif_samples, cfg.unif_t, generator)
    loss = cfg.dec_weight * dec + cfg.dyn_weight * dyn + cfg.unif_weight * unif
    return {"loss": loss, "dec": dec, "dec0": dec0, "dyn": dyn, "unif": unif}


def own_rollout(rnn: RNN, start: Tensor, tokens: Tensor) -> Tensor:
    """The RNN's own steps from `start` (B, Z) over `tokens` (B, T): its memories after 1..T steps, (B*T, Z) in
    (b, t) order (a chain's transitions for teacher.dyn_rollout; BPTT's unroll from the initial memory)."""
    return unroll(rnn.update, start, tokens).flatten(0, 1)


def unroll(update: Callable[[Tensor, Tensor], Tensor], m: Tensor, x: Tensor) -> Tensor:
    """Memories after each of x's (B, T) tokens, stepping `update` from m (B, Z) on its own output: (B, T, Z)."""
    steps = []
    for s in range(x.shape[1]):
        m = update(m, x[:, s])
        steps.append(m)
    return torch.stack(steps, 1)


def smt_step_loss(
    rnn: RNN,
    m_t: Tensor,
    x_next: Tensor,
    m_next: Tensor,
    y_next: Tensor | None = None,
    readout_weight: float = 1.0,
) -> dict[str, Tensor]:
    """SMT on stored transitions: MSE(update(m_t, x_next), m_next) (+ readout CE on the label m_next).

    m_t, m_next (B, Z) labels; x_next (B,) long (-1 = no transition, excluded); y_next (B,) or None.
    Both memories are treated as float32 labels (detached), so no gradient reaches whatever produced them; the
    readout reads the label m_next, not the prediction, so its loss never reaches the updater.
    """
    m_t, m_next = m_t.detach().float(), m_next.detach().float()  # store labels may be float16
    dyn = dynamics_loss(rnn.update(m_t, x_next), m_next, mask=x_next >= 0)
    out = {"dyn": dyn}
    loss = dyn
    if y_next is not None:
        readout = masked_cross_entropy(rnn.readout(m_next), y_next)
        out["readout"] = readout
        loss = loss + readout_weight * readout
    out["loss"] = loss
    return out


def smt_all_positions_loss(
    teacher: Teacher,
    rnn: RNN,
    x: Tensor,
    y: Tensor,
    readout_weight: float = 1.0,
    encode_batch_size: int | None = None,
) -> dict[str, Tensor]:
    """SMT over every transition of short sequences in one batched pass.

    x, y (B, T). The frozen teacher encodes m_0 .. m_{T-1} (no grad); the RNN regresses all T-1
    transitions (m_t, x_{t+1}) -> m_{t+1} at once and its readout learns y_t from m_t at every position.
    The B*T encoder windows go through the teacher `encode_batch_size` at a time (all at once if None).
    """
    b, t = x.shape
    with torch.no_grad():
        ends = torch.arange(t, device=x.device).expand(b, t)
        memories = encode_positions(teacher, x, ends, encode_batch_size).float()  # (B, T, Z)
    z = memories.shape[-1]
    x_next = x[:, 1:].reshape(-1)
    pred = rnn.update(memories[:, :-1].reshape(-1, z), x_next)
    dyn = dynamics_loss(pred, memories[:, 1:].reshape(-1, z), mask=x_next >= 0)
    readout = masked_cross_entropy(rnn.readout(memories.reshape(-1, z)), y.reshape(-1))
    return {"loss": dyn + readout_weight * readout, "dyn": dyn, "readout": readout}


def dmt_step_loss(
    rnn: RNN,
    memories_target: Tensor,
    x: Tensor,
    y: Tensor,
    cfg: DMTConfig,
    decoder_readout: Teacher | Decoder | None = None,
    generator: torch.Generator | None = None,
    own: Tensor | None = None,
    rollout_update: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """DAgger Memory Training: roll the RNN on its own memories, pull them toward the encoder's.

    memories_target (B, Td+1, Z): encoder memories after reading positions a .. a+Td (from the teacher or a
    label store). x, y (B, S): tokens and targets at positions a .. a+S-1 (x[:, 0] is the last token read
    for memories_target[:, 0]); S >= Td+1, and S >= Td+Tf gives the decoder loss its full future.
    Td = min(cfg.rollout_len, memories_target.shape[1]-1, S-1).

    Rollout from m_0 = memories_target[:, 0]: m_s = update(m_{s-1}.detach(), x[:, s]), so each update gets
    one-step credit only. That makes the rollout itself gradient-free: it runs under no_grad (Td small
    sequential steps with no autograd bookkeeping), and the pulled steps are recomputed afterwards with
    grad in ONE batched update over (B * Td/k) rows, whose gradients equal the step-by-step ones up to
    float rounding (another batch shape may pick another matmul kernel).
    Losses (weights from cfg):
      pull:    MSE(m_s, memories_target[:, s]) at every k-th step (s = k, 2k, ...; with pull_phase 'random'
               s = r, r+k, ... for an offset r in 1..k drawn per rollout from `generator`);
      forced:  the same from the encoder's m_{s-1} (SMT's loss) at those steps, only with teacher_forced_weight;
      readout: CE of readout(m_s.detach()) vs y[:, s] at every step (never reaches the updater);
      dec:     frozen decoder L_dec from own m_s at pull steps (only with `decoder_readout`);
      unif:    L_unif over own memories at pull steps.
    own: the rollout's memories (B, Td, Z) when the caller already has them (training/flops.py counts the
    rollout apart: its Td steps are identical); None rolls out here, through `rollout_update` when given (a
    compiled copy of `rnn.update`, models/compiled.py) and `rnn.update` otherwise.
    """
    memories_target = memories_target.detach().float()  # store labels may be float16
    td = min(cfg.rollout_len, memories_target.shape[1] - 1, x.shape[1] - 1)
    if own is None:
        own = rollout(rollout_update or rnn.update, memories_target[:, 0], x[:, 1 : td + 1])  # (B, Td, Z)
    # weight casts cached by autocast under no_grad must not be reused with grad (older torch reused
    # them and silently cut the updater's gradient: pytorch#112583)
    torch.clear_autocast_cache()
    b, _, z = own.shape
    readout = masked_cross_entropy(rnn.readout(own.reshape(-1, z)), y[:, 1 : td + 1].reshape(-1))
    zero = readout * 0.0
    pull = forced = dec = unif = zero
    steps = pull_steps(b, td, cfg, generator, x.device)  # (B, P) or None
    if steps is not None:
        rows, n = torch.arange(b, device=x.device)[:, None], steps.shape[1]
        before = torch.cat((memories_target[:, :1], own), 1)[rows, steps - 1]  # m_{s-1} of each pull step s
        tokens = x[rows, steps]
        target, valid = memories_target[rows, steps].reshape(-1, z), (tokens >= 0).reshape(-1)
        if cfg.teacher_forced_weight > 0:  # one batched update over own and encoder m_{s-1}
            both = rnn.update(torch.cat((before, memories_target[rows, steps - 1])).reshape(-1, z),
                              tokens.repeat(2, 1).reshape(-1))
            pred, from_encoder = both.view(2, b, n, z)
            forced = dynamics_loss(from_encoder.reshape(-1, z), target, valid)
        else:
            pred = rnn.update(before.reshape(-1, z), tokens.reshape(-1)).view(b, n, z)
        pull = dynamics_loss(pred.reshape(-1, z), target, valid)
        unif = uniformity_loss(pred, rnn.memory_tokens, generator=generator)
        if decoder_readout is not None:
            decoder = decoder_readout.decoder if isinstance(decoder_readout, Teacher) else decoder_readout
            x_fut, y_fut = future_slices(x, y, steps, decoder.cfg.future_len)
            logits = decoder(pred.view(-1, z), x_fut.reshape(-1, x_fut.shape[-1]))
            dec, _ = decoding_loss(logits, y_fut.reshape(-1, y_fut.shape[-1]))
    loss = (cfg.dyn_weight * pull + cfg.teacher_forced_weight * forced + cfg.readout_weight * readout
            + cfg.dec_weight * dec + cfg.unif_weight * unif)
    return {"loss": loss, "dyn": pull, "forced": forced, "readout": readout, "dec": dec, "unif": unif}


def pull_steps(
    b: int, td: int, cfg: DMTConfig, generator: torch.Generator | None, device: torch.device,
) -> Tensor | None:
    """The pulled steps of each of b rollouts of td steps: (B, td // k) long, or None when td < k.

    fixed: k, 2k, ... for every rollout; random: r, r+k, ... with r in 1..k per rollout (from `generator`).
    """
    k, n = cfg.pull_every, td // cfg.pull_every
    if n == 0:
        return None
    steps = torch.arange(1, n + 1, device=device).mul(k).expand(b, n)
    if cfg.pull_phase == "random":
        steps = steps - torch.randint(0, k, (b, 1), generator=generator, device=device)
    return steps


@torch.no_grad()
def rollout(update: Callable[[Tensor, Tensor], Tensor], m: Tensor, x: Tensor) -> Tensor:
    """`unroll` without a graph (DMT's rollout), in m's dtype: (B, T, Z)."""
    return unroll(update, m, x).to(m.dtype)


def bptt_step_loss(rnn: RNN, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Baseline: unroll from the initial memory over all T tokens, readout CE at every step, full backprop.

    x, y (B, T): m_0 = update(init, x_0), ..., readout(m_t) scored against y_t.
    """
    readout = masked_cross_entropy(own_memory_logits(rnn, x), y.reshape(-1))
    return {"loss": readout, "readout": readout}


def own_memory_logits(rnn: RNN, x: Tensor) -> Tensor:
    """The readout at every step of x (B, T) unrolled from the initial memory: (B*T, V), rows in (b, t) order."""
    return rnn.readout(own_rollout(rnn, rnn.init_memory(x.shape[0]), x))


def own_memory_error(rnn: RNN, x: Tensor, y: Tensor) -> Tensor:
    """1 - top-1 accuracy of the readout on the scored targets (y >= 0), unrolled as `bptt_step_loss` is."""
    scored = y.reshape(-1) >= 0
    hits = own_memory_logits(rnn, x).argmax(-1)[scored] == y.reshape(-1)[scored]
    return 1 - hits.float().mean()
