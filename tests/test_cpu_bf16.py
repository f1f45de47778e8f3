"""`cpu_bf16`: bf16 autocast on a CPU for training loops and the label job, off by default.

bf16 keeps 8 bits of mantissa, so its results differ from fp32's by rounding (~0.4% per value): losses,
gradients and labels are compared with fp32 within tolerances of that size, and each check also makes
sure bf16 really ran (the results are not fp32's to the bit), so a flag that silently did nothing fails.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _fixtures_labels import IN_MEMORY, TINY_SPEC
from _tiny import tiny_teacher
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile

import pipelines.materialize_labels as ml
from models.build import build_rnn, build_teacher
from models.compiled import compile_blocks
from models.layers import attention
from schemas.config import LabelSpec, OptimConfig, RNNConfig, RunConfig, TeacherTrainConfig
from store.labels import LabelStore
from training.loop import TrainLoop, autocast
from training.steps import teacher_step_loss

V = 7
TCFG = tiny_teacher(vocab_size=V, memory_tokens=2, memory_dim=8, context_len=5, future_len=3, encoder_depth=2)
RCFG = RNNConfig(kind="transformer", width=16, depth=2, heads=2, readout="teacher_decoder")
CPU = torch.device("cpu")


def test_off_by_default_and_out_of_addresses_until_set():
    assert RunConfig().cpu_bf16 is False and LabelSpec().cpu_bf16 is False
    assert "cpu_bf16" not in RunConfig().address_json() and "cpu_bf16" not in LabelSpec().address_json()
    assert RunConfig(cpu_bf16=True).address_json()["cpu_bf16"] is True
    assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, amp=True):  # amp alone is CUDA's: a CPU stays fp32
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, amp=True, cpu_bf16=True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_teacher_step_in_bf16_is_fp32_within_rounding():
    torch.manual_seed(0)
    teacher = build_teacher(TCFG)
    rnn = build_rnn(RCFG, TCFG, teacher)
    cfg = TeacherTrainConfig(model=TCFG, updater=RCFG)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (6, 12), generator=g)
    x[0, 9:] = -1  # padding: the key-mask path runs too
    y = x.roll(-1, 1)
    anchors = torch.tensor([3, 8, 11, 0, 5, 10])
    params = [*teacher.parameters(), *rnn.updater_parameters()]
    results = []
    for bf16 in (False, True):
        with autocast(CPU, amp=True, cpu_bf16=bf16):
            out = teacher_step_loss(teacher, rnn, x, y, cfg, anchors=anchors)
        grads = torch.autograd.grad(out["loss"], params, allow_unused=True)
        results.append((out, torch.cat([g.flatten() for g in grads if g is not None])))
    (fp32, g32), (bf16, g16) = results
    for name in ("loss", "dec", "dyn"):
        torch.testing.assert_close(bf16[name].float(), fp32[name], rtol=3e-2, atol=1e-3, msg=name)
    assert not torch.equal(bf16["loss"].float(), fp32["loss"]), "bf16 did not run"
    assert F.cosine_similarity(g16.float(), g32, dim=0) > 0.999


def test_training_attention_in_bf16_on_a_cpu_takes_the_math_kernel():
    """The CPU flash kernel's bf16 backward is slow (README, Benchmarks); the math backend gives the same
    attention within bf16 rounding, and inference keeps the flash kernel."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., 7:] = False
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for grad in (True, False):
        qb, kb, vb = (t.to(torch.bfloat16).requires_grad_(grad) for t in (q, k, v))
        with torch.set_grad_enabled(grad), profile(activities=[ProfilerActivity.CPU]) as prof:
            got = attention(qb, kb, vb, mask, causal=False)
        flash = any("flash_attention" in e.key for e in prof.key_averages())
        assert flash is not grad
        torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)


def test_train_loop_runs_its_loss_in_bf16_only_when_asked():
    seen = []

    def loss(batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return {"loss": (weight * batch).sum()}

    weight = torch.nn.Parameter(torch.ones(3))
    module = torch.nn.Module()
    module.weight = weight
    for flag in (False, True):
        run = RunConfig(steps=1, device="cpu", cpu_bf16=flag, log_every=1, checkpoint_every=1)
        TrainLoop({"m": module}, loss, lambda start: iter([torch.ones(3)] * 2), run, OptimConfig()).run()
    assert seen == [False, True]


def test_label_job_in_bf16_writes_the_fp32_labels_within_rounding(label_env, tmp_path):
    spec = TINY_SPEC.model_copy(update={"cpu_bf16": True})
    ref = ml.materialize_labels(label_env.tokens.url, label_env.teacher.url, spec, IN_MEMORY, str(tmp_path))
    assert ref.hash != label_env.store.hash
    fp32, bf16 = LabelStore.open(label_env.store.url), LabelStore.open(ref.url)
    a, b = fp32.memory(), bf16.memory()
    assert not np.array_equal(a, b), "bf16 did not run"
    np.testing.assert_allclose(b, a, atol=0.1, rtol=0.05)
    assert np.abs(b - a).mean() < 0.02 * np.abs(a).mean()
    loss32, loss16 = fp32.arrays["dec_loss"][:], bf16.arrays["dec_loss"][:]
    np.testing.assert_allclose(loss16, loss32, rtol=3e-2, atol=1e-2)
    assert np.array_equal(bf16.arrays["tokens"][:], fp32.arrays["tokens"][:])


@pytest.mark.slow  # compiles for ~10-30 s on 2 CPU cores
def test_compiled_blocks_train_in_bf16_on_a_cpu():
    """`compile` and `cpu_bf16` together: the compiled blocks (their attention takes the math backend under
    grad) give the eager bf16 loss and gradients within bf16 rounding."""
    torch.manual_seed(0)
    teacher = build_teacher(TCFG)
    rnn = build_rnn(RCFG, TCFG, teacher)
    teacher_c, rnn_c = copy.deepcopy(teacher), copy.deepcopy(rnn)
    assert compile_blocks(teacher_c) + compile_blocks(rnn_c) > 0
    cfg = TeacherTrainConfig(model=TCFG, updater=RCFG)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (6, 12), generator=g)
    y = x.roll(-1, 1)
    anchors = torch.tensor([3, 8, 11, 0, 5, 10])
    before = counters["stats"]["unique_graphs"]
    grads = []
    for t, r in ((teacher, rnn), (teacher_c, rnn_c)):
        with autocast(CPU, amp=True, cpu_bf16=True):
            out = teacher_step_loss(t, r, x, y, cfg, anchors=anchors)
        params = [*t.parameters(), *r.updater_parameters()]
        flat = torch.cat([p.flatten() for p in torch.autograd.grad(out["loss"], params, allow_unused=True)
                          if p is not None])
        grads.append((out["loss"].float(), flat.float()))
    assert counters["stats"]["unique_graphs"] > before, "nothing was compiled"
    (eager, g_eager), (compiled, g_compiled) = grads
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=1e-3)
    assert F.cosine_similarity(g_compiled, g_eager, dim=0) > 0.999
