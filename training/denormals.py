"""Flushing denormal floats to zero for a training loop (`run.flush_denormal`).

Why: on x86 CPUs arithmetic on denormals (|x| < 1.2e-38 in fp32) is many times slower than on normal
numbers. A task that scores few positions (retrieval's answer, MQAR's values) back-propagates through
long stretches of its sequence with gradients decaying towards zero, and they end up denormal: a BPTT step
at length 256 on retrieval ran 5.4x faster flushed on the development CPU (README, "On a GPU";
bench/bench_denormals.py). Values below 1.2e-38 become zero and later figures can differ in their last
bits, so the setting is part of an artifact's address and off by default (the artifacts made before it
keep theirs).

The CPU's flush mode is per thread, and torch's intra-op worker threads keep the mode they were started
with: switching it on and off in the loop's thread would leave them out, or leave them flushing for
whatever runs next in the process under a config that says it does not. So on a CPU it needs one torch
thread (`threads: 1`, as the experiment configs run), and a loop with more refuses to start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from schemas.config import ConfigError

log = logging.getLogger(__name__)


@contextmanager
def denormals_flushed(on: bool, threads: int = 1) -> Iterator[bool]:
    """Flush denormals in this thread while the block runs (when `on`), then stop flushing. Yields whether
    flushing is in effect (False where the CPU cannot: then nothing changes, and a warning says so)."""
    if not on:
        yield False
        return
    if threads > 1:
        raise ConfigError(f"run.flush_denormal needs one torch thread on a CPU (threads: 1), not {threads}: the "
                          "flush mode is per thread (training/denormals.py)")
    supported = torch.set_flush_denormal(True)
    if not supported:
        log.warning("run.flush_denormal: this CPU cannot flush denormals; training runs unflushed")
    try:
        yield supported
    finally:
        torch.set_flush_denormal(False)
