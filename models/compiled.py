"""torch.compile for training, one Transformer block at a time (`run.compile: true`, any device).

Why blocks and not the whole model: every `Block` runs the same code, so inductor compiles it once per
input shape and every block of the encoder, decoder and updater reuses the result ("regional
compilation"). Shapes are static (one graph per shape): with dynamo's automatic dynamic shapes, the
backward of a re-used graph failed an inductor stride assertion in torch 2.13 (tests/test_compiled.py).
On the 2-core CPU that is ~30 s of compiling against ~90 s for the whole teacher, and it is where the
time goes: a block's RMSNorms, rotary products, MLP activation and residual adds (and their
backward) become a few fused kernels instead of dozens of memory passes (bench/vs_reference.py --compile).
Compiled results equal the eager ones up to float rounding (tests/test_compiled.py), so a compiled run
gets its own artifact address (`compile` is part of the run config).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.layers import Block

# Graphs one code object may hold. Shapes are static, and every Block of every model in the process shares
# Block.forward's cache: one training step meets several (encoder blocks with and without the kept
# registers, causal decoder blocks, updater blocks, a readout's last row, a last smaller batch), and a
# long-lived process (a worker that runs many flows, pytest) trains models of other lengths after it. Past
# the limit dynamo silently runs the new shapes eager (slower, never wrong); torch's default is 8.
RECOMPILE_LIMIT = 256


def compile_blocks(module: nn.Module) -> int:
    """Compile every Transformer `Block` inside `module` in place (static shapes: a graph per input shape);
    returns how many. Modules without blocks (GRU, LSTM, MLP updaters) are left as they are."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, RECOMPILE_LIMIT)
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:  # compiling twice would nest the two
            block.compile(dynamic=False)
    return len(blocks)


def compiled_update(update: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """A whole RNN update (m, x) -> m' through torch.compile with fixed shapes, for gradient-free loops.

    A DMT rollout is Td sequential updates of a small batch: each one is hundreds of tiny kernels when
    eager, so fusing the whole update (not only its blocks) is what halves the rollout on a CPU.
    """
    return torch.compile(update, dynamic=False)
