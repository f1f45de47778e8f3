"""The one training loop every stage uses: device, AdamW + warm-up schedule, AMP, clipping, logging,
wall-clock budget, resumable checkpoints and data parallelism.

A stage supplies the trained modules, a `loss_fn(batch) -> {"loss": tensor, ...}` and a data stream
factory `batches(start_step) -> iterator`. The loop restarts the stream at the start and after every
checkpoint, seeded by the step it starts at; together with the restored RNG, optimizer and scheduler
state this makes "train N steps" and "train N/2, kill, resume, train N/2" give identical parameters
whenever the kill happens after a periodic checkpoint (tests/test_checkpoint.py). A run stopped by a
signal saves at the step it reached: each step runs with the signals held (training/stopping.py), and the
checkpoint records where the stream started, so the resumed stream skips the batches already trained on.
Streams must draw randomness only from their own seeded generators, never from the global torch RNG.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from models.build import reseed_global
from models.compiled import compile_blocks
from schemas.config import OptimConfig, RunConfig
from training import distributed as distributed_mod
from training import rng
from training.denormals import denormals_flushed
from training.distributed import DistContext, LossModule
from training.early_stop import EarlyStop
from training.stopping import StopForced, StopRequested, signals_held, stop_requested

LossFn = Callable[[Any], dict[str, torch.Tensor]]
BatchStream = Callable[[int], Iterator[Any]]


# ----------------------------------------------------------------------------- device, optimiser, precision


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{spec}' was asked for but CUDA is not available")
    return device


def build_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over every trainable parameter with one weight decay, as published (docs/method.md section 4)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


class WarmupSchedule:
    """LR multiplier: linear warm-up over `warmup_frac` of the steps, then constant or cosine to 0.

    A callable object (not a lambda) so LambdaLR's state_dict carries its settings as plain numbers.
    """

    def __init__(self, total_steps: int, warmup_frac: float, kind: str) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(round(warmup_frac * self.total_steps))
        self.kind = kind

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, WarmupSchedule(total_steps, cfg.warmup_frac, cfg.schedule))


def autocast(device: torch.device, amp: bool, cpu_bf16: bool = False) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when `amp`; on a CPU only when asked (`cpu_bf16`): fast where the CPU has bf16
    matrix instructions (AVX512-BF16, AMX), slow where it has not, and it changes the numerics."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if cpu_bf16 and device.type == "cpu":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return nullcontext()


def progress_enabled(ctx: DistContext | None = None) -> bool:
    """Rich progress bars only on an interactive terminal, on rank 0, and unless SMT_PROGRESS=0."""
    return progress_mode(ctx) == "bar"


def progress_mode(ctx: DistContext | None = None) -> str:
    """'bar' on a terminal; 'lines' (a line per log_every steps, and a heartbeat when quiet) off a terminal
    (Prefect, CI) or with SMT_PROGRESS=0, which turns bars off only; 'off' with SMT_QUIET=1 or on ranks > 0."""
    if os.environ.get("SMT_QUIET", "0") == "1" or (ctx is not None and not ctx.is_main):
        return "off"
    bars = os.environ.get("SMT_PROGRESS", "1") != "0" and sys.stderr.isatty()
    return "bar" if bars else "lines"


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in (nested) tuples / lists / dicts to `device`; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # NamedTuple (Transitions, Trajectories)
        return type(batch)(*(to_device(b, device) for b in batch))
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# ----------------------------------------------------------------------------- the loop


class CheckpointStore(Protocol):
    """Where the loop's checkpoints live (store/checkpoints.py `Checkpoints`)."""

    def exists(self) -> bool: ...

    def load(self) -> tuple[int, dict[str, Any]]: ...

    def save(self, step: int, state: dict[str, Any]) -> None: ...


@dataclass
class LoopResult:
    """What a finished (or budget-stopped) run reports back to its stage."""

    step: int
    seconds: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "steps"  # 'steps' | 'max_seconds' | 'plateau'
    resumed_from: int | None = None
    threads: int = 0  # torch CPU threads it ran with (CPU results depend on them: training/threads.py)

    def last(self, key: str, default: float = float("nan")) -> float:
        for row in reversed(self.metrics):
            if key in row and row[key] is not None:
                return float(row[key])
        return default


class TrainLoop:
    """Runs optimiser steps over `modules` until `run.steps` or the wall-clock budget is reached.

    modules: trained modules by name (their state dicts are checkpointed under those names).
    loss_fn: batch -> dict with 'loss' (backpropagated) and other scalar tensors (logged as means).
    batches: start_step -> iterator of batches (CPU or device tensors, moved here).
    checkpoints: where resumable checkpoints go (store/checkpoints.py `Checkpoints`: exists, load, save);
        None disables them. The loop itself does no I/O.
    items_per_step: transitions / tokens per step per rank, for the throughput column.
    generators: torch.Generators used inside loss_fn, checkpointed with the RNG.
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        loss_fn: LossFn,
        batches: BatchStream,
        run: RunConfig,
        optim: OptimConfig,
        checkpoints: CheckpointStore | None = None,
        device: torch.device | None = None,
        items_per_step: int | None = None,
        generators: dict[str, torch.Generator] | None = None,
        max_seconds: float | None = None,
        name: str = "train",
        early_stop: EarlyStop | None = None,
    ) -> None:
        self.ctx = distributed_mod.current()
        self.device = distributed_mod.rank_device(device or resolve_device(run.device), self.ctx)
        self.modules = modules
        self.run_cfg, self.optim_cfg = run, optim
        self.batches = batches
        self.checkpoints = checkpoints
        self.items_per_step = items_per_step or run.batch_size
        self.generators = generators or {}
        self.max_seconds = max_seconds if max_seconds is not None else run.max_seconds
        self.name = name
        self.early_stop = early_stop
        for m in modules.values():
            m.to(self.device)
        self.params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, run.steps)
        if run.compile:  # the Transformer blocks, on any device (models/compiled.py says why not the whole)
            for m in modules.values():
                compile_blocks(m)
        self.loss_module = distributed_mod.wrap(LossModule(modules, loss_fn), self.ctx, self.device)
        self.step = 0
        self.stream_start = 0  # the step the data stream was last (re)started at: see `_open_stream`
        self.elapsed = 0.0
        self.metrics: list[dict[str, Any]] = []
        self._sums: dict[str, torch.Tensor | float] = {}  # device tensors: no host sync per step
        self._count = 0

    # -- checkpoint state ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self.ctx.gather_objects(rng.capture_rng(self.generators)),
            "loop": {
                "step": self.step,
                "stream_start": self.stream_start,
                "elapsed": self.elapsed,
                "metrics": self.metrics,
                "sums": {k: float(v) for k, v in self._sums.items()},
                "count": self._count,
                **({"early_stop": self.early_stop.state()} if self.early_stop is not None else {}),
                "world_size": self.ctx.world_size,
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        loop = state["loop"]
        self.step, self.elapsed = int(loop["step"]), float(loop["elapsed"])
        self.stream_start = int(loop.get("stream_start", self.step))  # older checkpoints: restart at the step
        self.metrics, self._sums, self._count = list(loop["metrics"]), dict(loop["sums"]), int(loop["count"])
        if self.early_stop is not None:
            self.early_stop.load_state(loop["early_stop"])
        rngs = state["rng"]
        if len(rngs) == self.ctx.world_size:
            rng.restore_rng(rngs[self.ctx.rank], self.generators)
        else:  # resumed on a different world size: continue reproducibly, not identically
            reseed_global(distributed_mod.rank_seed(self.run_cfg.seed, self.ctx.rank, "resume", self.step))

    def save(self) -> None:
        state = self.state()  # every rank takes part (RNG gather); only rank 0 writes
        if self.checkpoints is not None and self.ctx.is_main:
            self.checkpoints.save(self.step, state)
        self.ctx.barrier()

    def try_resume(self) -> int | None:
        if self.checkpoints is None or not self.checkpoints.exists():
            return None
        step, state = self.checkpoints.load()
        self.load_state(state)
        return step

    # -- stepping -----------------------------------------------------------------------------

    def _train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.run_cfg.amp, self.run_cfg.cpu_bf16):
            out = self.loss_module(to_device(batch, self.device))
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.optim_cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {**{k: v.detach() for k, v in out.items()}, "grad_norm": grad_norm.detach()}

    def _accumulate(self, out: dict[str, torch.Tensor]) -> None:
        for k, v in out.items():
            if v.numel() == 1:
                self._sums[k] = self._sums.get(k, 0.0) + v.detach().float().reshape(())
        self._count += 1

    def _log(self, window_seconds: float, window_steps: int) -> dict[str, Any]:
        means = {k: float(v) / max(1, self._count) for k, v in self._sums.items()}
        means = self.ctx.all_reduce_mean(means, self.device)
        if not math.isfinite(means.get("loss", 0.0)):
            raise FloatingPointError(f"{self.name}: loss is {means['loss']} at step {self.step}")
        row = {
            "step": self.step,
            **means,
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": self.elapsed,
            "items_per_s": self.items_per_step * self.ctx.world_size * window_steps / max(window_seconds, 1e-9),
        }
        self.metrics.append(row)
        self._sums, self._count = {}, 0
        return row

    def _open_stream(self) -> Iterator[Any]:
        """The data stream at `self.step`: started at the last periodic checkpoint's step and advanced past
        the batches trained on since, so a run stopped between checkpoints (and saved there) resumes to the
        bytes of a run never stopped; skipping costs the data loading of those batches only."""
        stream = self.batches(self.stream_start)
        for _ in range(self.step - self.stream_start):
            next(stream)
        return stream

    def run(self) -> LoopResult:
        """Train to the end (resuming from the latest checkpoint if there is one), denormals flushed if the
        run config says so (training/denormals.py)."""
        on_cpu = self.device.type == "cpu"  # the setting is about CPU arithmetic
        with denormals_flushed(self.run_cfg.flush_denormal and on_cpu, torch.get_num_threads()):
            return self._run()

    def _run(self) -> LoopResult:
        resumed = self.try_resume()
        total = self.run_cfg.steps
        for m in self.modules.values():
            m.train()
        stream = self._open_stream()
        stopped = "steps"
        progress = _Progress(self.name, total, self.step, progress_mode(self.ctx), self.max_seconds)
        window_t, window_steps = 0.0, 0
        try:
            with progress:
                while self.step < total:
                    if stop_requested():
                        raise StopRequested(f"{self.name}: stopped at step {self.step}")
                    if self.max_seconds is not None and self.ctx.any_true(
                        self.elapsed >= self.max_seconds, self.device
                    ):
                        stopped = "max_seconds"
                        break
                    with signals_held():  # a step is applied whole or not at all: see training/stopping.py
                        t0 = time.perf_counter()
                        batch = next(stream)
                        out = self._train_step(batch)
                        self._accumulate(out)
                        dt = time.perf_counter() - t0
                        self.elapsed += dt
                        window_t, window_steps = window_t + dt, window_steps + 1
                        self.step += 1
                        if self.step % self.run_cfg.log_every == 0 or self.step == total:
                            row = self._log(window_t, window_steps)
                            window_t, window_steps = 0.0, 0
                            progress.update(loss=row["loss"], step=self.step, elapsed=self.elapsed)
                        progress.advance(self.step, self.elapsed)
                        if self.early_stop is not None and self.early_stop.due(self.step):
                            held_out = self.early_stop.check(self.step, self.modules)
                            self.metrics.append({"step": self.step, f"held_out_{self.early_stop.metric}": held_out})
                            if self.early_stop.exhausted:
                                stopped = "plateau"
                                break
                        if self.step % self.run_cfg.checkpoint_every == 0 and self.step < total:
                            self.stream_start = self.step
                            self.save()
                            _close(stream)
                            stream = self._open_stream()  # restart seeded by step: see module doc
        except StopForced:
            raise  # mid-step: the last checkpoint stands
        except KeyboardInterrupt:  # Ctrl-C in this thread, or a stop requested by a signal (StopRequested)
            self.save()  # keep the work done so far; the stage re-runs and resumes
            raise
        finally:
            _close(stream)
        if self._count:
            self._log(window_t, max(window_steps, 1))
        if self.early_stop is not None:
            self.early_stop.restore_best(self.modules)  # the weights of the best held-out check
        self.save()
        return LoopResult(self.step, self.elapsed, self.metrics, stopped, resumed, torch.get_num_threads())


def _close(stream: Iterator[Any]) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


class _Progress:
    """A rich progress bar ('bar'), plain lines ('lines'), or nothing ('off').

    Lines: one when the loop starts, one per logging interval, and a heartbeat when nothing was printed
    for a while (the first after FIRST_HEARTBEAT_S, so a slow start is visible within seconds). Under a
    wall-clock budget (`seconds`) the bar runs over seconds, not over the step cap, which a
    seconds-bounded run rarely reaches. Only what is printed depends on the clock, never the metrics.
    """

    FIRST_HEARTBEAT_S = 10.0
    HEARTBEAT_S = 60.0

    def __init__(self, name: str, total: int, start: int, mode: str, seconds: float | None = None) -> None:
        self.enabled, self.lines = mode == "bar", mode == "lines"
        self.name, self.total, self.start, self.seconds = name, total, start, seconds
        self._bar: Any = None
        self._heartbeat_at = time.monotonic() + self.FIRST_HEARTBEAT_S

    def _print(self, text: str) -> None:
        print(f"{self.name}: {text}", flush=True)
        self._heartbeat_at = time.monotonic() + self.HEARTBEAT_S

    def __enter__(self) -> _Progress:
        if self.lines:
            resumed = f", resuming at step {self.start}" if self.start else ""
            budget = f" within {self.seconds:.0f} s" if self.seconds else ""
            self._print(f"starting, {self.total} steps{budget}{resumed}")
            self._heartbeat_at = time.monotonic() + self.FIRST_HEARTBEAT_S
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            count = TextColumn("step {task.fields[step]}") if self.seconds else MofNCompleteColumn()
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                count,
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
            total, done = (self.seconds, 0.0) if self.seconds else (self.total, self.start)
            self._task = self._bar.add_task(self.name, total=total, completed=done, loss=float("nan"), step=self.start)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, step: int, elapsed: float) -> None:
        if self._bar is not None:
            done = min(elapsed, self.seconds) if self.seconds else step
            self._bar.update(self._task, completed=done, step=step)
        elif self.lines and time.monotonic() >= self._heartbeat_at:
            count, of = self._where(step, elapsed)
            self._print(f"{count} ({of})")

    def update(self, loss: float, step: int, elapsed: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, loss=loss)
        elif self.lines:
            count, of = self._where(step, elapsed)
            self._print(f"{count} loss {loss:.4f} ({of})")

    def _where(self, step: int, elapsed: float) -> tuple[str, str]:
        of = f"{elapsed:.0f}/{self.seconds:.0f} s budget" if self.seconds else f"{elapsed:.0f} s"
        return (f"step {step}" if self.seconds else f"step {step}/{self.total}"), of
