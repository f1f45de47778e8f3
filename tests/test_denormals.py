"""`run.flush_denormal`: denormals flushed to zero while a training loop runs, off by default."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_teacher
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from models.build import build_rnn, build_teacher
from schemas.config import ConfigError, OptimConfig, RNNConfig, RunConfig
from training.denormals import denormals_flushed
from training.loop import TrainLoop
from training.steps import bptt_step_loss


def denormal_product() -> float:
    return float(torch.tensor(1e-30) * 1e-10)


def test_flush_denormal_is_off_by_default_and_out_of_the_address():
    assert RunConfig().flush_denormal is False and "flush_denormal" not in RunConfig().address_json()
    assert RunConfig(flush_denormal=True).address_json()["flush_denormal"] is True


def test_train_loop_flushes_denormals_only_while_it_runs_and_only_when_asked():
    seen = []

    def loss(batch):
        seen.append(denormal_product())
        return {"loss": (weight * batch).sum()}

    weight = torch.nn.Parameter(torch.ones(3))
    module = torch.nn.Module()
    module.weight = weight
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # flushing needs one thread (the last test)
    try:
        for flag in (False, True):
            run = RunConfig(steps=1, device="cpu", flush_denormal=flag, log_every=1, checkpoint_every=1)
            TrainLoop({"m": module}, loss, lambda start: iter([torch.ones(3)] * 2), run, OptimConfig()).run()
    finally:
        torch.set_num_threads(threads)
    assert seen[0] > 0 and seen[1] == 0.0, seen
    assert denormal_product() > 0  # off again after the loop


class CountDenormals(TorchDispatchMode):
    """Counts the denormal entries of every floating tensor an op produces, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                a = t.abs()
                self.count += int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())
        return out


def test_flushing_removes_the_denormals_of_a_bptt_step_and_changes_nothing_above_them():
    """A 256-token sequence scored at its last position only, as retrieval is: the gradient flowing back
    through the unscored stretch meets denormals, flushed or not the loss and gradients agree."""
    teacher_cfg = tiny_teacher(vocab_size=7, width=32, memory_tokens=2, memory_dim=8, context_len=5, future_len=3)
    torch.manual_seed(0)
    teacher = build_teacher(teacher_cfg)
    rnn = build_rnn(RNNConfig(kind="transformer", width=32, depth=1, heads=2, hidden=16, readout="teacher_decoder"),
                    teacher_cfg, teacher)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (4, 256), generator=g)
    y = torch.full_like(x, -1)
    y[:, -1] = x[:, 0]
    results = []
    for flag in (False, True):
        with denormals_flushed(flag), CountDenormals() as seen:
            rnn.zero_grad(set_to_none=True)
            loss = bptt_step_loss(rnn, x, y)["loss"]
            loss.backward()
        results.append((seen.count, loss.detach(), [p.grad.clone() for p in rnn.parameters() if p.grad is not None]))
    (denormals_off, loss_off, grads_off), (denormals_on, loss_on, grads_on) = results
    assert denormals_off > 0 and denormals_on == 0, (denormals_off, denormals_on)
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-6, atol=0)
    assert len(grads_on) == len(grads_off) > 0
    for on, off in zip(grads_on, grads_off, strict=True):
        torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-30)


def test_flush_denormal_refuses_more_than_one_cpu_thread():
    """The flush mode is per thread: worker threads would keep it after the loop, so the loop refuses."""
    with pytest.raises(ConfigError, match="threads: 1"), denormals_flushed(True, threads=2):
        pass
    with denormals_flushed(False, threads=2) as flushing:
        assert flushing is False
