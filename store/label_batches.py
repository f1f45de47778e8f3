"""Training batches from a label store: shuffled transitions (SMT) and trajectories (DMT).

Both streams read whole shards (one chunk of every array: the cheapest read on any store) and shuffle
within a buffer of `shards_per_buffer` randomly chosen shards; the next buffer is read by a background
thread while the current one is consumed, so training rarely waits for storage. Batches are CPU tensors
(pin and move them in the training loop).

The buffer keeps memories as stored (float16, or int8 + scales) and each batch gathers its rows and
converts them to float32 (one conversion per row served). Measured on the 2-core dev VM at Z=4096:
converting a whole 64-window buffer to float32 up front and gathering from it ran ~50k transitions/s
(the fresh float32 buffer is page-fault bound), gathering float16 rows per batch 50k-150k/s, at half the
buffer memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class Transitions(NamedTuple):
    """B independent transitions `(m_t, x_{t+1}) -> m_{t+1}` and the readout target of `m_{t+1}`.

    m (B, Z) float32, x_next (B,) long, m_next (B, Z) float32, y_next (B,) long (-1 = unscored).
    readout(m) predicts y_t, so y_next is what readout(m_next) should predict.
    """

    m: Tensor
    x_next: Tensor
    m_next: Tensor
    y_next: Tensor


class Trajectories(NamedTuple):
    """B windows cut to Td transitions, aligned like the store (docs/architecture.md).

    memory (B, Td+1, Z) float32: memory[:, j] = encode(tokens[:, j : j+Tc]), the memory after reading
        tokens[:, Tc-1+j].
    tokens, targets (B, Tc+Td+Tf) long: positions a-Tc+1 .. a+Td+Tf of the document (-1 = padding).
        Transition j: (memory[:, j], tokens[:, Tc+j]) -> memory[:, j+1]; readout(memory[:, j]) predicts
        targets[:, Tc-1+j]; the decoder from memory[:, j] with future tokens[:, Tc+j : Tc+j+f] predicts
        targets[:, Tc-1+j+f].
    x, y (B, Td+Tf+1) long: tokens/targets[:, Tc-1:], i.e. positions a .. a+Td+Tf, the layout of
        `training.steps.dmt_step_loss(rnn, memory, x, y, cfg)` (x[:, 0] is the last token read for
        memory[:, 0]; the update into memory[:, s] reads x[:, s]; readout of memory[:, s] targets y[:, s]).
    """

    memory: Tensor
    tokens: Tensor
    targets: Tensor
    x: Tensor
    y: Tensor


class Shard(NamedTuple):
    """Windows of one or more shards as stored: memory (W, L+1, Z) float16/int8, scale (W, L+1, K)
    float32 for int8 stores (else None), tokens/targets (W, P) int16; `valid` lists the rows to serve
    (all, or one split's). The arrays are views of `storage`, which the next read may reuse."""

    memory: np.ndarray
    scale: np.ndarray | None
    tokens: np.ndarray
    targets: np.ndarray
    valid: np.ndarray
    storage: dict[str, np.ndarray]

    def gather(self, rows: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
        """Memories of flat row ids `w*(L+1)+j` as `dtype`: shape rows.shape + (Z,). Copies, never views.

        dtype=torch.float16 on a float16 store skips the conversion (do it on the GPU instead)."""
        w, steps, z = self.memory.shape
        flat = rows.reshape(-1)
        out = torch.from_numpy(np.take(self.memory.reshape(w * steps, z), flat, axis=0))
        if self.scale is not None:
            k = self.scale.shape[-1]
            scale = torch.from_numpy(np.take(self.scale.reshape(w * steps, k), flat, axis=0))
            out = out.float().view(len(flat), k, -1) * scale[:, :, None]
        return out.to(dtype).view(*rows.shape, z)


# (shard ids, a Shard whose storage may be reused or None) -> the shards' windows
LoadShards = Callable[[list[int], "Shard | None"], Shard]


def _schedule(
    num_shards: int, seed: int, shuffle: bool, epochs: int | None, shards_per_buffer: int
) -> Iterator[tuple[list[int], np.random.Generator]]:
    """(shard ids of one buffer, the epoch's generator), epoch after epoch (forever if epochs is None)."""
    epoch = 0
    while epochs is None or epoch < epochs:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(num_shards) if shuffle else np.arange(num_shards)
        for start in range(0, num_shards, shards_per_buffer):
            yield [int(s) for s in order[start : start + shards_per_buffer]], rng
        epoch += 1


def _buffers(
    load: LoadShards, num_shards: int, seed: int, shuffle: bool, epochs: int | None, shards_per_buffer: int
) -> Iterator[tuple[Shard, np.random.Generator]]:
    """Decoded buffers in schedule order; the next buffer is read on a thread while this one is used."""
    schedule = _schedule(num_shards, seed, shuffle, epochs, shards_per_buffer)
    spare: list[Shard | None] = [None, None]  # two buffers: one served, one being filled
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="label-prefetch") as pool:
        upcoming = next(schedule, None)
        future = pool.submit(load, upcoming[0], spare.pop()) if upcoming is not None else None
        while upcoming is not None and future is not None:
            rng = upcoming[1]
            buffer = future.result()
            upcoming = next(schedule, None)
            if upcoming is not None:
                future = pool.submit(load, upcoming[0], spare.pop())
            yield buffer, rng
            spare.append(buffer)  # the consumer asked for more: batches are copies, so it is free


def iter_transitions(
    load: LoadShards, num_shards: int, context_len: int, batch_size: int, seed: int, shuffle: bool,
    epochs: int | None, shards_per_buffer: int, drop_last: bool, dtype: torch.dtype = torch.float32,
) -> Iterator[Transitions]:
    """Every transition of every window once per epoch, in batches; see `LabelStore.transitions`."""
    carry: Transitions | None = None
    for buf, rng in _buffers(load, num_shards, seed, shuffle, epochs, shards_per_buffer):
        steps = buf.memory.shape[1]
        pairs = (buf.valid[:, None] * steps + np.arange(steps - 1)[None, :]).reshape(-1)  # w*(L+1)+j, j < L
        if shuffle:
            pairs = pairs[rng.permutation(len(pairs))]
        start = 0
        while start < len(pairs):
            need = batch_size - (len(carry.m) if carry is not None else 0)
            ids = pairs[start : start + need]
            start += len(ids)
            win, col = ids // steps, context_len + ids % steps
            x_next, y_next = (torch.from_numpy(a[win, col].astype(np.int64)) for a in (buf.tokens, buf.targets))
            part = Transitions(buf.gather(ids, dtype), x_next, buf.gather(ids + 1, dtype), y_next)
            if carry is not None:
                part = Transitions(*(torch.cat([a, b]) for a, b in zip(carry, part, strict=True)))
            carry = None
            if len(part.m) == batch_size:
                yield part
            else:
                carry = part  # the buffer ran out: top this batch up from the next buffer
    if carry is not None and not drop_last:
        yield carry


def iter_trajectories(
    load: LoadShards, num_shards: int, context_len: int, future_len: int, length: int, batch_size: int,
    seed: int, shuffle: bool, epochs: int | None, shards_per_buffer: int, drop_last: bool,
    dtype: torch.dtype = torch.float32,
) -> Iterator[Trajectories]:
    """Every window once per epoch, cut to `length` transitions at a random (seeded) offset."""
    carry: list[Tensor] | None = None
    span = context_len + length + future_len
    for buf, rng in _buffers(load, num_shards, seed, shuffle, epochs, shards_per_buffer):
        steps, w = buf.memory.shape[1], len(buf.valid)
        order = buf.valid[rng.permutation(w)] if shuffle else buf.valid
        slack = steps - 1 - length
        offsets = rng.integers(0, slack + 1, size=w) if shuffle and slack > 0 else np.zeros(w, dtype=np.int64)
        for start in range(0, w, batch_size):
            win, off = order[start : start + batch_size], offsets[start : start + batch_size]
            pos = off[:, None] + np.arange(span)[None, :]
            parts = [
                buf.gather(win[:, None] * steps + off[:, None] + np.arange(length + 1)[None, :], dtype),
                torch.from_numpy(np.take_along_axis(buf.tokens[win], pos, axis=1).astype(np.int64)),
                torch.from_numpy(np.take_along_axis(buf.targets[win], pos, axis=1).astype(np.int64)),
            ]
            if carry is not None:
                parts = [torch.cat([a, b]) for a, b in zip(carry, parts, strict=True)]
            if len(parts[0]) >= batch_size:
                yield _trajectories(*(p[:batch_size] for p in parts), context_len=context_len)
                parts = [p[batch_size:] for p in parts]
            carry = parts if len(parts[0]) else None
    if carry is not None and not drop_last:
        yield _trajectories(*carry, context_len=context_len)


def _trajectories(memory: Tensor, tokens: Tensor, targets: Tensor, context_len: int) -> Trajectories:
    return Trajectories(memory, tokens, targets, tokens[:, context_len - 1 :], targets[:, context_len - 1 :])
