"""Checkpoints round-trip without pickle, and a killed run resumes to the same parameters bit for bit."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from schemas.config import OptimConfig, RunConfig
from store import checkpoints as ckpt
from store.weights import load_tensors
from training import rng
from training.loop import TrainLoop, WarmupSchedule, resolve_device
from training.stopping import clear_stop, request_stop

ROOT = Path(__file__).resolve().parents[1]


class _Killed(RuntimeError):
    """Stands in for SIGKILL: no exit checkpoint is written."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))


def _train(
    ckpt_dir: str, steps: int, kill_at: int | None = None, signal_at: int | None = None, signals: int = 1,
) -> dict[str, torch.Tensor]:
    """Train a small regression net; the loss uses dropout (global RNG) and a named generator,
    the data come from a stream seeded by its start step, lr follows warm-up + cosine.
    signal_at: the loss of that step sends `signals` SIGINTs to this process, after drawing its noise."""
    model = _model()
    noise = torch.Generator().manual_seed(1)
    calls = [0]

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        jitter = 0.01 * torch.randn(x.shape, generator=noise)
        calls[0] += 1
        if calls[0] - 1 == signal_at:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        err = (model(x + jitter) - y).pow(2).mean()
        return {"loss": err, "err": err}

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(1000 + start)
        step = start
        while True:
            if kill_at is not None and step >= kill_at:
                raise _Killed(f"killed at step {step}")
            x = rng.standard_normal((8, 6)).astype(np.float32)
            yield torch.from_numpy(x), torch.from_numpy(x[:, :3] * 2.0)
            step += 1

    run = RunConfig(steps=steps, batch_size=8, device="cpu", log_every=3, checkpoint_every=4)
    optim = OptimConfig(lr=1e-2, warmup_frac=0.25, schedule="cosine")
    checkpoints = ckpt.Checkpoints(ckpt_dir)
    loop = TrainLoop({"net": model}, loss_fn, batches, run, optim, checkpoints, generators={"noise": noise})
    try:
        loop.run()
    except (_Killed, KeyboardInterrupt):
        pass
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_encode_decode_round_trip() -> None:
    state = {
        "a": torch.arange(5),
        "opt": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 2)}, 1: {}},
        "groups": [{"betas": (0.9, 0.95), "lr": 1e-3, "foreach": None, "params": [0, 1]}],
        "np": np.arange(4, dtype=np.uint32),
        "py": (3, tuple(range(5)), None),
        "flag": True,
    }
    skeleton, tensors = ckpt.encode(state)
    json.dumps(skeleton)  # plain JSON: no pickle anywhere
    back = ckpt.decode(json.loads(json.dumps(skeleton)), tensors)
    assert back["opt"][0]["exp_avg"].equal(torch.ones(2, 2)) and set(back["opt"]) == {0, 1}
    assert back["groups"][0]["betas"] == (0.9, 0.95) and back["py"] == (3, (0, 1, 2, 3, 4), None)
    assert back["np"].dtype == np.uint32 and back["flag"] is True
    with pytest.raises(TypeError):
        ckpt.encode({"x": object()})


def test_rng_capture_restore() -> None:
    g = torch.Generator().manual_seed(5)
    state = rng.capture_rng({"g": g})
    first = (torch.rand(3), np.random.rand(3), torch.rand(2, generator=g))
    skeleton, tensors = ckpt.encode(state)
    rng.restore_rng(ckpt.decode(json.loads(json.dumps(skeleton)), tensors), {"g": g})
    again = (torch.rand(3), np.random.rand(3), torch.rand(2, generator=g))
    assert first[0].equal(again[0]) and np.array_equal(first[1], again[1]) and first[2].equal(again[2])


def test_latest_is_published_last_and_old_checkpoints_pruned(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ckpt.save_checkpoint(url, 4, {"w": torch.ones(2)})
    ckpt.save_checkpoint(url, 8, {"w": torch.full((2,), 2.0)})
    # a half-written newer checkpoint (killed before latest.json moved) is ignored
    (tmp_path / "ck" / "ckpt-000000012.safetensors").write_bytes(b"garbage")
    step, state = ckpt.load_checkpoint(url)
    assert step == 8 and state["w"].equal(torch.full((2,), 2.0))
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert "ckpt-000000004.json" not in names and "latest.json" in names


def test_killed_run_resumes_identically_in_a_new_process(tmp_path: Path) -> None:
    straight = _train(str(tmp_path / "straight"), steps=10)
    killed = _train(str(tmp_path / "resumed"), steps=10, kill_at=6)  # last periodic checkpoint: step 4
    assert not all(killed[k].equal(straight[k]) for k in straight)
    out = tmp_path / "resumed.safetensors"
    code = (
        "import runpy, sys; from store.weights import save_tensors; "
        f"ns = runpy.run_path({str(Path(__file__))!r}); "
        f"save_tensors({str(out)!r}, ns['_train']({str(tmp_path / 'resumed')!r}, steps=10))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SMT_PROGRESS": "0"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)
    resumed = load_tensors(str(out))
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    # the metrics of the resumed run continue those of the killed one
    step, state = ckpt.load_checkpoint(str(tmp_path / "resumed"))
    assert step == 10 and [r["step"] for r in state["loop"]["metrics"]] == [3, 6, 9, 10]


@pytest.fixture
def cli_signals() -> Iterator[None]:
    """SIGINT handled as the CLI does (cli/main.py): request a stop and interrupt the main thread."""
    def on_signal(_signum: int, _frame: object) -> None:
        request_stop()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_signal)
    yield
    signal.signal(signal.SIGINT, previous)
    clear_stop()


@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_mid_step_resumes_to_the_unbroken_run(tmp_path: Path, cli_signals: None, signals: int) -> None:
    """Ctrl-C inside step 6's loss, after it drew from the seeded generator (periodic checkpoints at 4, 8):
    one signal finishes that step and saves at 7, the resumed stream skipping the 3 batches since 4; a
    second signal stops mid-step without saving, so the run resumes from 4. Either way: the unbroken bytes."""
    straight = _train(str(tmp_path / "straight"), steps=10)
    _train(str(tmp_path / "resumed"), steps=10, signal_at=6, signals=signals)
    step, state = ckpt.load_checkpoint(str(tmp_path / "resumed"))
    assert (step, state["loop"]["stream_start"]) == ((7, 4) if signals == 1 else (4, 4))
    clear_stop()
    resumed = _train(str(tmp_path / "resumed"), steps=10)
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k


def test_warmup_then_cosine_and_constant() -> None:
    cos = WarmupSchedule(total_steps=100, warmup_frac=0.1, kind="cosine")
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    const = WarmupSchedule(total_steps=100, warmup_frac=0.0, kind="constant")
    assert const(0) == 1.0 and const(99) == 1.0
    assert resolve_device("auto").type in ("cpu", "cuda") and resolve_device("cpu").type == "cpu"


def test_budget_stops_and_metrics_are_logged() -> None:
    model = nn.Linear(2, 1)

    def batches(_: int) -> Iterator[torch.Tensor]:
        while True:
            yield torch.ones(4, 2)

    run = RunConfig(steps=10_000, batch_size=4, device="cpu", log_every=5, checkpoint_every=10_000)
    loop = TrainLoop(
        {"m": model},
        lambda x: {"loss": model(x).pow(2).mean()},
        batches,
        run,
        OptimConfig(),
        None,
        max_seconds=1e-9,
    )
    result = loop.run()
    assert result.stopped == "max_seconds" and result.step == 1  # the first step always runs
    assert result.metrics and math.isfinite(result.metrics[-1]["loss"]) and "items_per_s" in result.metrics[-1]
