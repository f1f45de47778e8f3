"""Training compute of one optimiser step, counted from the shapes: the unit baselines are matched in.

A wall-clock budget follows the machine's load (BPTT got 7 to 99 steps for one config), so budgets are
FLOPs instead. Every count runs the real loss function forward and backward on the meta device under
`torch.utils.flop_counter.FlopCounterMode`: no data, no weights, no arithmetic, so the figure is a pure
function of (variant, teacher shape, stage config). It counts torch's own FLOP formulas (matmuls,
linear layers, attention, convolutions); elementwise ops, norms and the optimiser update are left out,
the same way for every mode.

Sequential parts are counted once and multiplied (each of their steps has the same shapes, so this is
exact, and `tests/test_flops.py` checks it): a BPTT step of T tokens costs T times a step of one token,
and DMT's rollout costs Td no-grad updates. Counting them step by step on the meta device would take
minutes at the published sizes (Python-level dispatch per op); this way it takes about a second.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from models.build import build_rnn, build_teacher, seeded_init
from models.rnn import RNN
from models.teacher import Decoder
from schemas.config import BPTTConfig, DistillConfig, DMTConfig, RNNConfig, TeacherModelConfig, TeacherTrainConfig
from training.steps import bptt_step_loss, dmt_step_loss, smt_step_loss, teacher_step_loss

META = torch.device("meta")


def count_flops(fn: Callable[[], Tensor], backward: bool = True) -> int:
    """FLOPs of `fn()` (and of its backward pass if `backward`), as torch's flop counter sees them."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
        if backward:
            out.backward()
    return int(counter.get_total_flops())


def _rnn(variant: RNNConfig, model: TeacherModelConfig) -> RNN:
    with META:
        return build_rnn(variant, model)  # a fresh decoder readout has the trained one's shape


def distill_step_flops(variant: RNNConfig, model: TeacherModelConfig, cfg: DistillConfig) -> int:
    """One SMT step: `batch_size` stored transitions; the readout only when the stage trains it."""
    rnn, b, z = _rnn(variant, model), cfg.run.batch_size, model.memory_size
    train_readout = variant.readout != "teacher_decoder" and cfg.readout_weight > 0
    if not train_readout:
        rnn.readout_head.requires_grad_(False)
    with META:
        m, m_next = torch.zeros(b, z), torch.zeros(b, z)
        x_next = torch.zeros(b, dtype=torch.long)
        y_next = torch.zeros(b, dtype=torch.long) if train_readout else None
    return count_flops(lambda: smt_step_loss(rnn, m, x_next, m_next, y_next, cfg.readout_weight)["loss"])


def dmt_step_flops(variant: RNNConfig, model: TeacherModelConfig, cfg: DMTConfig) -> int:
    """One DMT step: Td gradient-free rollout updates, then the pulled steps' batched recompute and losses."""
    rnn, b, td, z = _rnn(variant, model), cfg.run.batch_size, cfg.rollout_len, model.memory_size
    with META:
        decoder = Decoder(model).requires_grad_(False) if cfg.dec_weight > 0 else None
        memories = torch.zeros(b, td + 1, z)
        own = torch.zeros(b, td, z)
        x = torch.zeros(b, td + model.future_len, dtype=torch.long)
        token = torch.zeros(b, dtype=torch.long)
    with torch.no_grad():
        rollout_step = count_flops(lambda: rnn.update(memories[:, 0], token), backward=False)
    rest = count_flops(lambda: dmt_step_loss(rnn, memories, x, x, cfg, decoder, own=own)["loss"])
    return td * rollout_step + rest


def bptt_step_flops(variant: RNNConfig, model: TeacherModelConfig, cfg: BPTTConfig) -> int:
    """One BPTT step: `batch_size` sequences unrolled over `seq_len` tokens, backpropagated through all."""
    return _unroll_flops(variant, model, cfg.run.batch_size, cfg.seq_len, backward=True)


def bptt_matched_steps(variant: RNNConfig, model: TeacherModelConfig, cfg: BPTTConfig, budget: int) -> int:
    """The most BPTT steps whose FLOPs fit in `budget`, with `keep_best`'s checks paid from it as the
    student pays for its own (at least one step)."""
    step = bptt_step_flops(variant, model, cfg)
    check = _bptt_check_flops(variant, model, cfg)
    steps = max(1, budget // step)
    while steps > 1 and steps * step + bptt_selection_checks(cfg, steps) * check > budget:
        steps -= 1
    return steps


def bptt_selection_flops(variant: RNNConfig, model: TeacherModelConfig, cfg: BPTTConfig, steps: int) -> int:
    """`bptt.keep_best`'s checks over `steps` steps: forward passes from the initial memory (0 without it)."""
    return bptt_selection_checks(cfg, steps) * _bptt_check_flops(variant, model, cfg)


def bptt_selection_checks(cfg: BPTTConfig, steps: int) -> int:
    """How many checks `bptt.keep_best` makes in `steps` steps: one before the first, then one every
    `every(steps)` (0 without it)."""
    return 0 if cfg.keep_best is None else 1 + steps // cfg.keep_best.every(steps)


def _bptt_check_flops(variant: RNNConfig, model: TeacherModelConfig, cfg: BPTTConfig) -> int:
    if cfg.keep_best is None:
        return 0
    return check_flops(variant, model, cfg.keep_best.sequences, cfg.keep_best.seq_len)


def check_flops(variant: RNNConfig, model: TeacherModelConfig, sequences: int, seq_len: int) -> int:
    """One held-out check: `sequences` sequences read from the initial memory over `seq_len` tokens, no backward."""
    return _unroll_flops(variant, model, sequences, seq_len, backward=False)


def _unroll_flops(variant: RNNConfig, model: TeacherModelConfig, batch: int, length: int, backward: bool) -> int:
    """`batch` sequences read from the initial memory over `length` tokens: one token counted, times `length`."""
    rnn = _rnn(variant, model)
    with META:
        x = torch.zeros(batch, 1, dtype=torch.long)
    with torch.set_grad_enabled(backward):
        return length * count_flops(lambda: bptt_step_loss(rnn, x, x)["loss"], backward=backward)


def student_training_flops(
    variant: RNNConfig, model: TeacherModelConfig, distill: DistillConfig, dmt: DMTConfig
) -> int:
    """What an SMT+DMT student of `variant` costs to train: every distill step plus every DMT step (and
    DMT's held-out checks when it keeps its best weights).

    The teacher and the label job are not in it: they are shared by every variant trained from one store
    (the comparison protocol counts them separately). From the configured step counts, so a fixed config
    always gives the same figure.
    """
    return (distill.run.steps * distill_step_flops(variant, model, distill)
            + dmt.run.steps * dmt_step_flops(variant, model, dmt)
            + dmt_selection_flops(variant, model, dmt, dmt.run.steps))


def dmt_selection_flops(variant: RNNConfig, model: TeacherModelConfig, cfg: DMTConfig, steps: int) -> int:
    """`dmt.keep_best`'s held-out checks over `steps` DMT steps (one before the first step, then one every
    `eval_every`): forward passes from the initial memory, counted as the student's work (0 without it)."""
    if cfg.keep_best is None:
        return 0
    check = check_flops(variant, model, cfg.keep_best.sequences, cfg.keep_best.seq_len or cfg.rollout_len)
    return (1 + steps // cfg.keep_best.eval_every) * check


COUNT_BATCH = 2  # the teacher is counted on the CPU (its padding trim reads data), at a small batch


def teacher_step_flops(cfg: TeacherTrainConfig) -> int:
    """One teacher step (encoder chain+1 times per chain of anchors, decoder, reference updater, backward)
    at the configured batch. The encoder trims padding by reading its input, which the meta device cannot,
    so this one runs on the CPU at COUNT_BATCH full-context crops and scales linearly (an upper bound:
    real crops near a document's start are padded and cost less)."""
    mc = cfg.model
    with seeded_init(0):  # real weights, but the global generator is left as it was
        teacher = build_teacher(mc)
        updater = build_rnn(cfg.updater, mc, teacher)
    x = torch.zeros(COUNT_BATCH, mc.context_len + mc.future_len + cfg.chain, dtype=torch.long)
    anchors = torch.full((COUNT_BATCH,), mc.context_len - 1, dtype=torch.long)
    small = count_flops(lambda: teacher_step_loss(teacher, updater, x, x, cfg, anchors=anchors)["loss"])
    return small * cfg.run.batch_size // (COUNT_BATCH * cfg.chain)


def teacher_training_flops(cfg: TeacherTrainConfig) -> int:
    """The whole teacher: `run.steps` teacher steps."""
    return cfg.run.steps * teacher_step_flops(cfg)


def label_flops(model: TeacherModelConfig, labels: int) -> int:
    """The label job: one encoder pass over a full context per stored memory (forward only)."""
    with seeded_init(0):
        teacher = build_teacher(model)
    x = torch.zeros(COUNT_BATCH, model.context_len, dtype=torch.long)
    with torch.no_grad():
        per = count_flops(lambda: teacher.encode(x), backward=False) // COUNT_BATCH
    return labels * per
