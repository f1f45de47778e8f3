"""Data-parallel training under `torchrun`, and a no-op single-process context without it.

`torchrun --nproc_per_node=N` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; we
read those, start a process group (gloo on CPU, nccl on CUDA), give each rank its own data seed, and
let only rank 0 write artifacts. Without those variables every call here is a cheap no-op, so stages
and tests run unchanged in one process.

Why a `LossModule` is wrapped in DDP rather than the model itself: our step functions call methods
such as `rnn.update` / `rnn.readout`, not `forward`; DDP only synchronises gradients for work done
inside the wrapper's `forward`, so the whole loss computation becomes that forward.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly one-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files, logs and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Average scalar metrics over ranks (same keys on every rank, order fixed by sorting)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on any rank: ranks must agree on when to stop."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_objects(self, obj: Any) -> list[Any]:
        """One object per rank (used for per-rank RNG states in checkpoints)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's value on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


_CONTEXT: DistContext | None = None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: torch.device | None = None) -> DistContext:
    """Start the process group once per process (idempotent); a 1-rank context without torchrun.

    The backend follows the device: nccl for CUDA, gloo for CPU.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    if not launched_by_torchrun():
        _CONTEXT = DistContext()
        return _CONTEXT
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local)
    return _CONTEXT


def current() -> DistContext:
    """The context of this process (initialising a 1-rank one if nothing else did)."""
    return _CONTEXT if _CONTEXT is not None else init_distributed()


def shutdown() -> None:
    """Tear the process group down (end of a torchrun job)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Under torchrun on CUDA each rank owns `cuda:{local_rank}`."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def rank_seed(seed: int, rank: int, *salt: int | str) -> int:
    """A 63-bit seed per (seed, rank, salt...): different ranks read different data, reproducibly."""
    text = ":".join(str(p) for p in (seed, rank, *salt))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class LossModule(nn.Module):
    """Holds the trained modules and computes the loss dict in `forward` (see module docstring)."""

    def __init__(self, modules: dict[str, nn.Module], loss_fn: Callable[[Any], dict[str, torch.Tensor]]):
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.loss_fn(batch)


def wrap(module: LossModule, ctx: DistContext, device: torch.device) -> nn.Module:
    """DDP-wrap under torchrun; unchanged otherwise.

    find_unused_parameters=True because some steps leave parts idle (e.g. a copied readout when its
    loss weight is 0), which would otherwise hang the gradient all-reduce.
    """
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=True)
