"""The work of the label job without Beam: choose windows, cut their tokens, encode one unit, write it.

Kept apart from the Beam wiring so each step runs (and is tested) on plain arrays, and so the DoFn is
a few lines that call `run_unit`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
import zarr
from torch import nn

from schemas.config import LabelSpec
from schemas.layout import (
    LABEL_DEC_LOSS_ARRAY,
    LABEL_INDEX_SCHEMA,
    LABEL_MEMORY_ARRAY,
    LABEL_MEMORY_SCALE_ARRAY,
    LABEL_TARGETS_ARRAY,
    LABEL_TOKENS_ARRAY,
    NO_TARGET,
)
from store.artifacts import ArtifactError
from store.label_codecs import codec_for
from store.label_layout import (
    LabelGeometry,
    chunk_checksums,
    value_stats,
    write_unit_record,
)
from store.tokens import TokensArtifact
from training.loop import autocast


def plan_windows(tokens: TokensArtifact, spec: LabelSpec) -> pa.Table:
    """Choose every window deterministically: (window, doc_id, anchor, split, shard), sorted by doc, anchor.

    A window with anchor `a` needs memories at `a .. a+L`, so a document of `n` tokens offers anchors
    `0 .. n-1-L` (anchors near the start are kept: their contexts are left-padded, as the RNN sees them),
    and with `spec.from_empty` also `-1`: the memory of the empty context, the one every RNN starts from
    (`rnn.initial`), so students are trained on their first updates too.
    `num_windows` draws that many anchors uniformly over all offered ones without replacement (seeded
    by `spec.seed`); null takes every `stride`-th anchor of every document.
    """
    split = None if spec.split == "all" else spec.split
    doc_ids = tokens.doc_ids(split)
    first = -1 if spec.from_empty else 0
    offered = np.maximum(tokens.lengths(split) - spec.trajectory_len - first, 0).astype(np.int64)
    if spec.num_windows is None:
        per_doc = -(-offered // spec.stride)
        doc_of = np.repeat(np.arange(len(doc_ids)), per_doc)
        starts = np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
        anchors = (np.arange(len(doc_of)) - starts) * spec.stride
    else:
        total = int(offered.sum())
        rng = np.random.default_rng(spec.seed)
        picks = np.sort(rng.choice(total, size=min(spec.num_windows, total), replace=False))
        ends = np.cumsum(offered)
        doc_of = np.searchsorted(ends, picks, side="right")
        anchors = picks - (ends - offered)[doc_of]
    anchors = anchors + first
    if len(doc_of) == 0:
        need = spec.trajectory_len + 1 + first
        raise ArtifactError(
            f"no document of split '{spec.split}' is long enough for trajectory_len {spec.trajectory_len} "
            f"(a window needs {need} tokens)"
        )
    n = len(doc_of)
    windows = np.arange(n, dtype=np.int64)
    splits = tokens.index.column("split").to_numpy(zero_copy_only=False)
    return pa.table(
        {
            "window": windows,
            "doc_id": doc_ids[doc_of].astype(np.int64),
            "anchor": anchors.astype(np.int64),
            "split": splits[doc_ids[doc_of]].tolist(),
            "shard": (windows // spec.shard_windows).astype(np.int32),
        },
        schema=LABEL_INDEX_SCHEMA,
    )


def window_tokens(
    tokens: TokensArtifact, doc_ids: np.ndarray, anchors: np.ndarray, geometry: LabelGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and targets of windows, each (n, Tc+L+Tf) int64: positions a-Tc+1 .. a+L+Tf, -1 outside
    (anchors from -1: the window of the empty memory)."""
    tc, p = geometry.context_len, geometry.positions
    x_out = np.full((len(doc_ids), p), NO_TARGET, dtype=np.int64)
    y_out = np.full_like(x_out, NO_TARGET)
    for doc in np.unique(doc_ids):
        rows = np.flatnonzero(doc_ids == doc)
        x, y = tokens.document(int(doc))
        pad_left, pad_right = np.full(tc, NO_TARGET), np.full(p, NO_TARGET)
        xp = np.concatenate([pad_left, x, pad_right])
        yp = np.concatenate([pad_left, y, pad_right])
        idx = anchors[rows, None] + 1 + np.arange(p)[None, :]  # xp[a + 1 + i] is position a - Tc + 1 + i
        x_out[rows], y_out[rows] = xp[idx], yp[idx]
    return x_out, y_out


def encode_windows(
    teacher: nn.Module, x: np.ndarray, y: np.ndarray, geometry: LabelGeometry, batch_size: int,
    device: torch.device, cpu_bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Memories (n, L+1, Z) float32 and readout losses (n, L+1) float32 of windows (n, Tc+L+Tf).

    The unit's contexts are encoded in fixed slices of `batch_size` after a stable sort by how many
    real tokens they hold, so contexts near document starts share batches and the encoder can cut
    their common padding; the order (hence every batch, and the CPU float results) is the same on
    every run. Results stay on the device until the unit is done: one copy back per unit, no host
    sync per batch beyond the encoder's padding check. bf16 autocast on CUDA, and on a CPU with `cpu_bf16`.
    """
    tc, steps = geometry.context_len, geometry.steps
    n = x.shape[0]
    contexts = np.lib.stride_tricks.sliding_window_view(x, tc, axis=1)[:, :steps].reshape(n * steps, tc)
    targets = y[:, tc - 1 : tc - 1 + steps].reshape(-1)
    order = np.argsort((contexts >= 0).sum(1), kind="stable")
    contexts = torch.from_numpy(np.ascontiguousarray(contexts[order]))
    label_targets = torch.from_numpy(np.ascontiguousarray(targets[order]))
    if device.type == "cuda":
        contexts, label_targets = contexts.pin_memory(), label_targets.pin_memory()
    memory = torch.empty((n * steps, geometry.memory_size), dtype=torch.float32, device=device)
    loss = torch.empty(n * steps, dtype=torch.float32, device=device)
    with torch.inference_mode(), autocast(device, amp=True, cpu_bf16=cpu_bf16):
        for start in range(0, n * steps, batch_size):
            ctx = contexts[start : start + batch_size].to(device, non_blocking=True)
            tgt = label_targets[start : start + batch_size].to(device, non_blocking=True)
            m = teacher.encode(ctx)
            ce = F.cross_entropy(teacher.readout(m).float(), tgt.clamp_min(0), reduction="none")
            memory[start : start + len(ctx)] = m
            loss[start : start + len(ctx)] = torch.where(tgt >= 0, ce, torch.full_like(ce, float("nan")))
    unsorted = np.empty_like(order)
    unsorted[order] = np.arange(len(order))
    memory_np, loss_np = memory.cpu().numpy()[unsorted], loss.cpu().numpy()[unsorted]
    return memory_np.reshape(n, steps, -1), loss_np.reshape(n, steps)


def write_unit(
    url: str, arrays: dict[str, zarr.Array], geometry: LabelGeometry, shard: int, x: np.ndarray, y: np.ndarray,
    memory: np.ndarray, dec_loss: np.ndarray, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one shard's whole chunks of every array, then its completion record; returns the record.

    Stats are taken from the values as stored (after the codec's rounding, store/label_codecs.py), so the
    manifest describes what readers get.
    """
    w0, w1 = geometry.shard_range(shard)
    codec = codec_for(geometry.dtype)
    encoded, scale = codec.encode(memory, geometry.memory_tokens)
    arrays[LABEL_MEMORY_ARRAY][w0:w1] = encoded
    if scale is not None:
        arrays[LABEL_MEMORY_SCALE_ARRAY][w0:w1] = scale
    stored = codec.decode(encoded, scale)
    arrays[LABEL_TOKENS_ARRAY][w0:w1] = x.astype(np.int16)
    arrays[LABEL_TARGETS_ARRAY][w0:w1] = y.astype(np.int16)
    arrays[LABEL_DEC_LOSS_ARRAY][w0:w1] = dec_loss.astype(np.float32)
    record = {
        "shard": shard,
        "windows": [w0, w1],
        "labels": (w1 - w0) * geometry.steps,
        "checksums": chunk_checksums(url, arrays, shard),
        "stats": {"memory": value_stats(stored), "dec_loss": value_stats(dec_loss)},
        **(extra or {}),
    }
    write_unit_record(url, shard, record)
    return record


def run_unit(
    url: str, arrays: dict[str, zarr.Array], geometry: LabelGeometry, plan: pa.Table, shard: int,
    teacher: nn.Module, tokens: TokensArtifact, batch_size: int, device: torch.device,
    extra: dict[str, Any] | None = None, cpu_bf16: bool = False,
) -> dict[str, Any]:
    """Cut, encode and write one shard; the record notes how long encoding took (and `extra`)."""
    w0, w1 = geometry.shard_range(shard)
    rows = plan.slice(w0, w1 - w0)
    x, y = window_tokens(tokens, rows.column("doc_id").to_numpy(), rows.column("anchor").to_numpy(), geometry)
    start = time.perf_counter()
    memory, dec_loss = encode_windows(teacher, x, y, geometry, batch_size, device, cpu_bf16)
    seconds = time.perf_counter() - start
    info = {"encode_seconds": seconds, **(extra or {})}
    return write_unit(url, arrays, geometry, shard, x, y, memory, dec_loss, info)
