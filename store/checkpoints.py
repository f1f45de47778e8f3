"""Resumable training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is any nested structure of dicts, lists, tuples, scalars and tensors (model and
optimizer state dicts, scheduler state, step, RNG states, loop bookkeeping). `encode` splits it into
a flat tensor dict (safetensors) and a JSON skeleton that points at the tensors, so loading never
executes code, and equal states give equal files.

Directory layout (any fsspec URL):

    {dir}/ckpt-{step:09d}.safetensors   tensors
    {dir}/ckpt-{step:09d}.json          skeleton + scalars
    {dir}/latest.json                   {"step": n, "tensors": ..., "skeleton": ...}  written LAST

`latest.json` is replaced atomically after both files exist, so a kill at any moment leaves either
the previous checkpoint or the new one readable, never half of one. Older checkpoints are removed.
The RNG states a checkpoint carries are captured and restored by training/rng.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fsspec.core import url_to_fs

from store.artifacts import exists, read_bytes, write_bytes_atomic
from store.weights import load_tensors, tensors_to_bytes

LATEST = "latest.json"
FORMAT = "smt-checkpoint/1"


# ----------------------------------------------------------------------------- structure <-> (tensors, json)


def encode(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace tensors by {"__tensor__": key}; tag tuples and non-string dict keys so JSON round-trips."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            key = f"t{len(tensors):06d}"
            tensors[key] = v
            return {"__tensor__": key}
        if isinstance(v, np.ndarray):
            key = f"t{len(tensors):06d}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(v))
            return {"__ndarray__": key}
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v):
                return {"__map__": {k: walk(x) for k, x in v.items()}}
            return {"__items__": [[walk(k), walk(x)] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {"__tuple__": [walk(x) for x in v]}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        if v is None or isinstance(v, bool | int | float | str):
            return v
        raise TypeError(f"cannot checkpoint a {type(v).__name__} without pickle")

    return walk(value), tensors


def decode(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode`."""

    def walk(v: Any) -> Any:
        if isinstance(v, list):
            return [walk(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__tensor__" in v:
            return tensors[v["__tensor__"]]
        if "__ndarray__" in v:
            return tensors[v["__ndarray__"]].numpy()
        if "__map__" in v:
            return {k: walk(x) for k, x in v["__map__"].items()}
        if "__items__" in v:
            return {walk(k): walk(x) for k, x in v["__items__"]}
        if "__tuple__" in v:
            return tuple(walk(x) for x in v["__tuple__"])
        raise ValueError(f"unknown checkpoint node {sorted(v)}")

    return walk(skeleton)


# ----------------------------------------------------------------------------- save / load


def _join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def save_checkpoint(url: str, step: int, state: dict[str, Any]) -> str:
    """Write `state` as checkpoint `step` under directory `url`, publish it via latest.json, prune old ones.

    Returns the URL of the tensors file.
    """
    skeleton, tensors = encode(state)
    stem = f"ckpt-{step:09d}"
    write_bytes_atomic(_join(url, f"{stem}.safetensors"), tensors_to_bytes(tensors))
    write_bytes_atomic(_join(url, f"{stem}.json"), json.dumps({"format": FORMAT, "state": skeleton}).encode())
    latest = {"format": FORMAT, "step": step, "tensors": f"{stem}.safetensors", "skeleton": f"{stem}.json"}
    write_bytes_atomic(_join(url, LATEST), json.dumps(latest).encode())
    _prune(url, keep=stem)
    return _join(url, f"{stem}.safetensors")


def _prune(url: str, keep: str) -> None:
    fs, path = url_to_fs(url)
    for p in fs.ls(path, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("ckpt-") and not name.startswith(keep + "."):
            fs.rm(p)


def has_checkpoint(url: str) -> bool:
    return exists(_join(url, LATEST))


def load_checkpoint(url: str) -> tuple[int, dict[str, Any]]:
    """(step, state) of the latest complete checkpoint under `url`."""
    latest = json.loads(read_bytes(_join(url, LATEST)))
    if latest.get("format") != FORMAT:
        raise ValueError(f"{url}: unknown checkpoint format {latest.get('format')!r}")
    skeleton = json.loads(read_bytes(_join(url, latest["skeleton"])))["state"]
    tensors = load_tensors(_join(url, latest["tensors"]))
    return int(latest["step"]), decode(skeleton, tensors)


def remove_checkpoints(url: str) -> None:
    """Delete a checkpoint directory once the artifact it was resuming is published."""
    fs, path = url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@dataclass(frozen=True)
class Checkpoints:
    """One stage's checkpoint directory, as the training loop uses it (training/ does no I/O itself)."""

    url: str

    def exists(self) -> bool:
        return has_checkpoint(self.url)

    def load(self) -> tuple[int, dict[str, Any]]:
        return load_checkpoint(self.url)

    def save(self, step: int, state: dict[str, Any]) -> None:
        save_checkpoint(self.url, step, state)
