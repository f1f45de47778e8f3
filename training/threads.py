"""How many CPU threads torch may use per task, decided once per config.

Two reasons to fix it rather than take torch's default (one thread per core, per process):
- Oversubscription: the flow trains every variant at once, and each task (or Beam worker process)
  asking for every core ran 11x slower on 2 shared cores than with one thread each.
- Reproducibility: CPU reductions split their work by thread count, so the count changes float
  rounding. The same config must give the same bytes whether the variants run concurrently (the flow)
  or one by one (the CLI), so both take the count from `threads_for`, never from the load.
Manifests record the count a stage ran with (`stats.torch_threads`).
"""

from __future__ import annotations

import os

import torch

SHARED_STAGES = frozenset({"distill", "dmt", "bptt", "bptt_plateau"})  # one task per variant, all at once in the flow


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's CPU set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_for(setting: int | None, stage: str, variants: int) -> int:
    """Threads for one task of `stage`: the config's `threads`, else the cores shared among the tasks
    that train at once (every variant's distill / DMT / BPTT; the other stages run alone)."""
    if setting is not None:
        return setting
    concurrent = max(1, variants) if stage in SHARED_STAGES else 1
    return max(1, available_cores() // concurrent)


def use_threads(count: int) -> None:
    """Apply a thread count to this process (torch's pool is per process, shared by its threads)."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
