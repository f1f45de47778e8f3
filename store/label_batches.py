"""Training batches from a label store: shuffled transitions (SMT) and trajectories (DMT).

Both streams read whole shards (one chunk of every array: the cheapest read on any store) and shuffle
within a buffer of `shards_per_buffer` randomly chosen shards; the next buffer is read by a background
thread while the current one is consumed, so training rarely waits for storage.

The buffer keeps memories as stored (float16, or int8 + scales) and each batch gathers its rows and
converts them to float32 (one conversion per row served). device=None gathers on the CPU with numpy;
a `device` gets each buffer copied there once, as stored, and every batch gathered there with torch:
on CUDA each memory crosses the bus once per epoch at 2 bytes a value instead of twice (m_t, m_{t+1})
at 4, and the gather runs on the GPU. Both give the same batches in the same order. On the CPU,
device=None and device="cpu" measured the same; the README's benchmark table has the figures
(`bench/bench_labels.py --reader-windows`), including what `read_shards` alone supplies, the bound on
the GPU path.
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

    @property
    def steps(self) -> int:
        return self.memory.shape[1]

    def indices(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return list(arrays)

    def pick(self, a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> Tensor:
        """Tokens or targets `a[rows, cols]` as long."""
        return torch.from_numpy(a[rows, cols].astype(np.int64))


class DeviceShard(NamedTuple):
    """A `Shard` copied to a torch device as stored: memory (W*(L+1), Z), scale (W*(L+1), K) or None,
    tokens/targets (W, P) int16. Index arrays go there once per buffer (`indices`), so a batch costs
    a few kernels and no host->device traffic."""

    memory: Tensor
    scale: Tensor | None
    tokens: Tensor
    targets: Tensor
    valid: np.ndarray
    steps: int
    stream: torch.cuda.Stream | None  # the side stream of the host->device copies (CUDA only)

    def gather(self, rows: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """As `Shard.gather`, by the same arithmetic, so both give identical values."""
        flat = rows.reshape(-1)
        out = self.memory.index_select(0, flat)
        if self.scale is not None:
            k = self.scale.shape[-1]
            out = out.float().view(len(flat), k, -1) * self.scale.index_select(0, flat)[:, :, None]
        return out.to(dtype).view(*rows.shape, self.memory.shape[-1])

    def indices(self, *arrays: np.ndarray) -> list[Tensor]:
        """Index arrays on the device, in one upload (one wait) per buffer."""
        return _upload(list(arrays), self.memory.device, self.stream)

    def pick(self, a: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        return a[rows, cols].long()


def _upload(arrays: list[np.ndarray], device: torch.device, stream: torch.cuda.Stream | None) -> list[Tensor]:
    """Host arrays as tensors on `device`. CPU: zero-copy views (batches are gathered copies, and the
    storage is only reused once the next buffer is asked for). CUDA: non-blocking copies on a side
    stream, so they do not queue behind training kernels, then a wait on that copy alone: the reader
    refills the (pinned) host storage next, so the copy must have read it (a few ms per buffer, in the
    thread that iterates the stream: the Prefetcher's in the stages). The consumer stream waits for
    the copy on the GPU before gathering."""
    tensors = [torch.from_numpy(a) for a in arrays]
    if device.type == "cpu":
        return tensors
    if stream is None:
        return [t.to(device) for t in tensors]
    with torch.cuda.stream(stream):
        out = [t.to(device, non_blocking=True) for t in tensors]
    done = stream.record_event()
    consumer = torch.cuda.current_stream(device)
    consumer.wait_event(done)
    for t in out:
        t.record_stream(consumer)  # allocated on the side stream, used on the consumer's
    done.synchronize()
    return out


def _on_device(
    buffers: Iterator[tuple[Shard, np.random.Generator]], device: torch.device
) -> Iterator[tuple[DeviceShard, np.random.Generator]]:
    """Each buffer copied to `device` once, as stored (the float32 conversion happens per batch there)."""
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    for buf, rng in buffers:
        z, steps = buf.memory.shape[-1], buf.memory.shape[1]
        host = [buf.memory.reshape(-1, z), buf.tokens, buf.targets]
        if buf.scale is not None:
            host.append(buf.scale.reshape(-1, buf.scale.shape[-1]))
        memory, tokens, targets, *scale = _upload(host, device, stream)
        yield DeviceShard(memory, scale[0] if scale else None, tokens, targets, buf.valid, steps, stream), rng


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


def _stream(
    load: LoadShards, num_shards: int, seed: int, shuffle: bool, epochs: int | None, shards_per_buffer: int,
    device: torch.device | str | None,
) -> Iterator[tuple[Shard | DeviceShard, np.random.Generator]]:
    buffers = _buffers(load, num_shards, seed, shuffle, epochs, shards_per_buffer)
    return buffers if device is None else _on_device(buffers, torch.device(device))


def iter_transitions(
    load: LoadShards, num_shards: int, context_len: int, batch_size: int, seed: int, shuffle: bool,
    epochs: int | None, shards_per_buffer: int, drop_last: bool, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Iterator[Transitions]:
    """Every transition of every window once per epoch, in batches; see `LabelStore.transitions`."""
    carry: Transitions | None = None
    for buf, rng in _stream(load, num_shards, seed, shuffle, epochs, shards_per_buffer, device):
        steps = buf.steps
        pairs = (buf.valid[:, None] * steps + np.arange(steps - 1)[None, :]).reshape(-1)  # w*(L+1)+j, j < L
        if shuffle:
            pairs = pairs[rng.permutation(len(pairs))]
        (pairs,) = buf.indices(pairs)
        start = 0
        while start < len(pairs):
            need = batch_size - (len(carry.m) if carry is not None else 0)
            ids = pairs[start : start + need]
            start += len(ids)
            win, col = ids // steps, context_len + ids % steps
            x_next, y_next = buf.pick(buf.tokens, win, col), buf.pick(buf.targets, win, col)
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
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> Iterator[Trajectories]:
    """Every window once per epoch, cut to `length` transitions at a random (seeded) offset."""
    carry: list[Tensor] | None = None
    span = context_len + length + future_len
    for buf, rng in _stream(load, num_shards, seed, shuffle, epochs, shards_per_buffer, device):
        steps, w = buf.steps, len(buf.valid)
        order = buf.valid[rng.permutation(w)] if shuffle else buf.valid
        slack = steps - 1 - length
        offsets = rng.integers(0, slack + 1, size=w) if shuffle and slack > 0 else np.zeros(w, dtype=np.int64)
        order, offsets, span_ids, step_ids = buf.indices(order, offsets, np.arange(span), np.arange(length + 1))
        for start in range(0, w, batch_size):
            win, off = order[start : start + batch_size], offsets[start : start + batch_size]
            pos = off[:, None] + span_ids[None, :]
            parts = [
                buf.gather(win[:, None] * steps + off[:, None] + step_ids[None, :], dtype),
                buf.pick(buf.tokens, win[:, None], pos),
                buf.pick(buf.targets, win[:, None], pos),
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
