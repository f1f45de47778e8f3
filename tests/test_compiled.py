"""`run.compile`: Transformer blocks and the DMT rollout through torch.compile give the eager numbers.

Compiled kernels fuse element-wise work and may sum in another order, so values and gradients are compared
within 1e-4; the checks also make sure compiled code ran (dynamo's graph counter moved), so a
compile_blocks that silently compiled nothing fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _tiny import tiny_teacher
from torch._dynamo.utils import counters

from models.build import build_rnn, build_teacher
from models.compiled import compile_blocks, compiled_update
from models.layers import Block
from schemas.config import DMTConfig, OptimConfig, RNNConfig, RunConfig, TeacherModelConfig, TeacherTrainConfig
from training.loop import TrainLoop
from training.steps import dmt_step_loss, teacher_step_loss

pytestmark = pytest.mark.slow  # each test compiles for ~10-30 s on 2 CPU cores

V = 7
TCFG = tiny_teacher(vocab_size=V, memory_tokens=2, memory_dim=8, context_len=5, future_len=3, encoder_depth=2)
RCFG = RNNConfig(kind="transformer", width=16, depth=2, heads=2, readout="teacher_decoder")
TOL = dict(rtol=1e-4, atol=1e-4)


def pair() -> tuple[tuple, tuple]:
    """(teacher, rnn) twice with the same weights: the first stays eager, the second gets compiled."""
    torch.manual_seed(0)
    teacher = build_teacher(TCFG)
    rnn = build_rnn(RCFG, TCFG, teacher)
    return (teacher, rnn), (copy.deepcopy(teacher), copy.deepcopy(rnn))


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def blocks(*modules: torch.nn.Module) -> list[Block]:
    return [b for m in modules for b in m.modules() if isinstance(b, Block)]


def test_compiled_blocks_give_the_eager_teacher_loss_and_gradients():
    (teacher, rnn), (teacher_c, rnn_c) = pair()
    assert compile_blocks(teacher_c) + compile_blocks(rnn_c) == len(blocks(teacher, rnn)) > 0
    cfg = TeacherTrainConfig(model=TCFG, updater=RCFG)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (6, 12), generator=g)
    x[0, 9:] = -1  # one padded sequence: the encoder's key mask path is compiled too
    y = x.roll(-1, 1)
    anchors = torch.tensor([3, 8, 11, 0, 5, 10])
    before = graphs()
    for _ in range(2):  # the second call reuses what the first compiled
        eager = teacher_step_loss(teacher, rnn, x, y, cfg, anchors=anchors)
        compiled = teacher_step_loss(teacher_c, rnn_c, x, y, cfg, anchors=anchors)
    assert graphs() > before, "nothing was compiled"
    for name in ("loss", "dec", "dyn", "unif"):
        torch.testing.assert_close(compiled[name], eager[name], **TOL, msg=name)
    params = [*teacher.parameters(), *rnn.updater_parameters()]
    params_c = [*teacher_c.parameters(), *rnn_c.updater_parameters()]
    grads = torch.autograd.grad(eager["loss"], params, allow_unused=True)
    grads_c = torch.autograd.grad(compiled["loss"], params_c, allow_unused=True)
    assert sum(g is not None for g in grads) == sum(g is not None for g in grads_c) > 0
    for a, b in zip(grads, grads_c, strict=True):
        if a is not None:
            torch.testing.assert_close(b, a, **TOL)


def test_a_compiled_rollout_gives_the_eager_dmt_step():
    (teacher, rnn), (teacher_c, rnn_c) = pair()
    for t in (teacher, teacher_c):
        t.requires_grad_(False)
    compile_blocks(rnn_c)
    update = compiled_update(rnn_c.update)
    cfg = DMTConfig(rollout_len=6, pull_every=2)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, V, (3, 6 + TCFG.future_len), generator=g)
    targets = torch.nn.functional.normalize(torch.randn(3, 7, TCFG.memory_size, generator=g), dim=-1) * 4
    before = graphs()
    eager = dmt_step_loss(rnn, targets, x, x, cfg, teacher, torch.Generator().manual_seed(0))
    compiled = dmt_step_loss(rnn_c, targets, x, x, cfg, teacher_c, torch.Generator().manual_seed(0),
                             rollout_update=update)
    assert graphs() > before, "nothing was compiled"
    for name in ("loss", "dyn", "readout", "dec", "unif"):
        torch.testing.assert_close(compiled[name], eager[name], **TOL, msg=name)
    grads = torch.autograd.grad(eager["loss"], list(rnn.updater_parameters()), allow_unused=True)
    grads_c = torch.autograd.grad(compiled["loss"], list(rnn_c.updater_parameters()), allow_unused=True)
    assert [g is None for g in grads] == [g is None for g in grads_c] and any(g is not None for g in grads)
    for a, b in zip(grads, grads_c, strict=True):
        if a is not None:
            torch.testing.assert_close(b, a, **TOL)


def test_train_loop_compiles_blocks_on_the_cpu_only_when_asked():
    (_, rnn), (_, rnn_c) = pair()
    gru = build_rnn(RNNConfig(kind="gru", width=8, readout="mlp"), TCFG, None)
    for run, modules in ((RunConfig(steps=1, device="cpu"), {"rnn": rnn}),
                         (RunConfig(steps=1, device="cpu", compile=True), {"rnn": rnn_c, "gru": gru})):
        TrainLoop(modules, lambda batch: {"loss": torch.zeros(())}, lambda start: iter(()), run, OptimConfig())
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in blocks(rnn))
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks(rnn_c))
    assert not blocks(gru)  # a GRU with an MLP readout has no blocks: nothing to compile, nothing breaks


def test_compiled_teachers_of_two_lengths_train_in_one_process():
    """Every Block shares one compiled code object, and one teacher step alone meets several shapes (encoder,
    decoder, updater). With dynamo's automatic dynamic shapes the backward of a re-used graph failed an
    inductor stride assertion at these sizes (torch 2.13: "expected size 16==16, stride 48==80"), already in
    the first teacher, and for the second, shorter one in a process that trained a longer one first (a
    curriculum, a long-lived worker, the experiment smoke tests). compile_blocks compiles static shapes."""
    for context_len, future_len in ((12, 8), (6, 4)):
        model = TeacherModelConfig(vocab_size=9, width=16, heads=2, encoder_depth=2, decoder_depth=1,
                                   memory_tokens=2, memory_dim=8, context_len=context_len, future_len=future_len)
        updater = RNNConfig(kind="transformer", width=16, depth=2, heads=2)
        torch.manual_seed(0)
        teacher = build_teacher(model)
        rnn = build_rnn(updater, model, teacher)
        compile_blocks(teacher)
        compile_blocks(rnn)
        cfg = TeacherTrainConfig(model=model, updater=updater)
        anchors = torch.full((16,), context_len - 1)
        for _ in range(2):
            x = torch.randint(0, 8, (16, context_len + future_len + 1))
            teacher_step_loss(teacher, rnn, x, x, cfg, anchors=anchors)["loss"].backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in teacher.encoder.parameters())
