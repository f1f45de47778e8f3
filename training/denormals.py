"""Flushing denormal floats to zero for a training loop (`run.flush_denormal`).

Why: on x86 CPUs arithmetic on denormals (|x| < 1.2e-38 in fp32) is many times slower than on normal
numbers. A task that scores few positions (retrieval's answer, MQAR's values) back-propagates through
long stretches of its sequence with gradients decaying towards zero, and they end up denormal: a BPTT step
at length 256 on retrieval took 16-21 s for a freshly initialised RNN and 3.4-3.5 s with denormals flushed,
the same shapes on random fully scored tokens 2.9-3.6 s either way (bench/bench_denormals.py). Flushing
changes the numbers only below 1.2e-38, yet it changes bytes, so the setting is part of an artifact's
address and off by default (the artifacts made before it keep theirs).

The CPU's flush mode is per thread: torch's intra-op worker threads take the mode of the thread that
started them, so a run on more than one torch thread flushes in all of them only if the mode was on before
torch first ran in parallel in that process; the loop's own thread always flushes. With `threads: 1` (the
experiment configs) it is complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def denormals_flushed(on: bool) -> Iterator[bool]:
    """Flush denormals in this thread while the block runs (when `on`), then stop flushing. Yields whether
    flushing is in effect (False where the CPU cannot: then nothing changes)."""
    if not on:
        yield False
        return
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(False)
