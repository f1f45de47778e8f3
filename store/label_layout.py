"""Label store layout and the writer side: geometry, Zarr template, whole-shard writes, completion records.

The reader (`store/labels.py`) and the Beam job (`pipelines/materialize_labels.py`) both go through this
module, so the on-disk layout is spelled once (docs/architecture.md, "Label store layout"):

    labels-{hash16}/data.zarr/     Zarr v3 group: memory, [memory_scale], tokens, targets, dec_loss
                   /_plan.parquet  planned windows (index schema), written by the launcher
                   /_template.json geometry + plan digest: the template is complete and reusable
                   /_units/shard-XXXXXX.json  completion record of one work unit (chunk sha256, stats)
                   /index.parquet  one row per window, written after every unit finished
                   /manifest.json  written last

Every array is chunked along `window` with `shard_windows` rows per chunk, and one chunk of every array
is one work unit ("shard"). A unit writes its whole chunks and nothing else, so concurrent writers never
share a stored object (Zarr loses writes when two processes update one chunk or shard), and a re-run
overwrites an unfinished unit's chunks with identical bytes. We use plain chunks rather than the
sharding codec: a unit is already a sensible object size (16 windows x 257 x 4096 x 2 B = 34 MB at the
published size), and one stored object per (array, unit) makes its checksum the unit's checksum.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zarr
from fsspec.core import url_to_fs
from zarr.codecs import BloscCodec

from schemas.config import LabelSpec, TeacherModelConfig
from schemas.layout import (
    LABEL_DEC_LOSS_ARRAY,
    LABEL_DEC_LOSS_DIMS,
    LABEL_MEMORY_ARRAY,
    LABEL_MEMORY_DIMS,
    LABEL_MEMORY_SCALE_ARRAY,
    LABEL_MEMORY_SCALE_DIMS,
    LABEL_TARGETS_ARRAY,
    LABEL_TARGETS_DIMS,
    LABEL_TOKENS_ARRAY,
    LABEL_TOKENS_DIMS,
    LABEL_UNITS_DIR,
    NO_TARGET,
    ZARR_GROUP,
    label_unit_name,
)
from schemas.manifest import sha256_bytes
from store.artifacts import ArtifactError, exists, read_bytes, write_bytes_atomic
from store.label_codecs import codec_for

KIND = "labels"
PLAN_FILE = "_plan.parquet"
TEMPLATE_FILE = "_template.json"

ALIGNMENT = (
    "memory[w, j] = encode(tokens[w, j:j+Tc]) (memory after position anchor+j); transition j: "
    "(memory[w, j], tokens[w, Tc+j]) -> memory[w, j+1]; readout target of memory[w, j] is targets[w, Tc-1+j]; "
    "dec_loss[w, j] is the teacher readout cross-entropy of that target (NaN where it is -1)"
)


@dataclass(frozen=True)
class LabelGeometry:
    """Every size of a label store: N windows of L+1 memories of Z = K*D floats, Tc+L+Tf positions."""

    num_windows: int  # N
    trajectory_len: int  # L
    context_len: int  # Tc
    future_len: int  # Tf
    memory_tokens: int  # K
    memory_dim: int  # D
    shard_windows: int  # windows per chunk = per work unit
    dtype: str  # "float16" or "int8"
    vocab_size: int

    @classmethod
    def build(cls, spec: LabelSpec, model: TeacherModelConfig, num_windows: int) -> LabelGeometry:
        return cls(
            num_windows=num_windows,
            trajectory_len=spec.trajectory_len,
            context_len=model.context_len,
            future_len=model.future_len,
            memory_tokens=model.memory_tokens,
            memory_dim=model.memory_dim,
            shard_windows=spec.shard_windows,
            dtype=spec.dtype,
            vocab_size=model.vocab_size,
        )

    @property
    def memory_size(self) -> int:
        return self.memory_tokens * self.memory_dim

    @property
    def steps(self) -> int:
        """L+1 memories per window."""
        return self.trajectory_len + 1

    @property
    def positions(self) -> int:
        """Tc+L+Tf token positions per window."""
        return self.context_len + self.trajectory_len + self.future_len

    @property
    def num_shards(self) -> int:
        return -(-self.num_windows // self.shard_windows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """[w0, w1) windows of one shard; the last shard may be short."""
        w0 = shard * self.shard_windows
        return w0, min(w0 + self.shard_windows, self.num_windows)

    def counts(self) -> dict[str, int]:
        """Integer figures for the manifest (`counts`), from which a reader rebuilds the geometry."""
        n = self.num_windows
        return {
            **{k: v for k, v in asdict(self).items() if isinstance(v, int)},
            "memory_size": self.memory_size,
            "shards": self.num_shards,
            "labels": n * self.steps,
            "transitions": n * self.trajectory_len,
        }

    @classmethod
    def from_counts(cls, counts: dict[str, int], dtype: str) -> LabelGeometry:
        names = [f for f in cls.__dataclass_fields__ if f != "dtype"]
        missing = [k for k in names if k not in counts]
        if missing:
            raise ArtifactError(f"label store manifest is malformed: counts lack {', '.join(missing)}")
        return cls(dtype=dtype, **{k: int(counts[k]) for k in names})

    def array_specs(self) -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]]:
        """name -> (shape, dtype, dimension names) of every array of the store."""
        n, s, p = self.num_windows, self.steps, self.positions
        specs = {
            LABEL_MEMORY_ARRAY: ((n, s, self.memory_size), self.dtype, LABEL_MEMORY_DIMS),
            LABEL_TOKENS_ARRAY: ((n, p), "int16", LABEL_TOKENS_DIMS),
            LABEL_TARGETS_ARRAY: ((n, p), "int16", LABEL_TARGETS_DIMS),
            LABEL_DEC_LOSS_ARRAY: ((n, s), "float32", LABEL_DEC_LOSS_DIMS),
        }
        codec = codec_for(self.dtype)
        specs[LABEL_MEMORY_ARRAY] = ((n, s, self.memory_size), codec.stored_dtype, LABEL_MEMORY_DIMS)
        if codec.scaled:
            specs[LABEL_MEMORY_SCALE_ARRAY] = ((n, s, self.memory_tokens), "float32", LABEL_MEMORY_SCALE_DIMS)
        return specs

    def window_bytes(self) -> int:
        """Uncompressed bytes of one window over all arrays."""
        total = 0
        for shape, dtype, _ in self.array_specs().values():
            total += int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        return total


def projected_store_bytes(spec: LabelSpec, model_cfg: TeacherModelConfig, num_windows: int | None = None) -> int:
    """Uncompressed size of the store `spec` would write (float16 memories barely compress: ~1.06x).

    `num_windows` is needed when the spec labels all windows at a stride (the count depends on the
    tokens); otherwise `spec.num_windows` is used.
    """
    n = num_windows if num_windows is not None else spec.num_windows
    if n is None:
        raise ValueError("spec.num_windows is null (all windows at a stride): pass num_windows")
    return n * LabelGeometry.build(spec, model_cfg, n).window_bytes()


def _codec(dtype: str) -> BloscCodec:
    """lz4 is the fastest Blosc codec on float16 (DEPENDENCIES.md); zstd squeezes the small int arrays."""
    if dtype in ("float16", "float32", "int8"):
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def create_template(url: str, geometry: LabelGeometry, attrs: dict[str, Any]) -> zarr.Group:
    """Create the Zarr group with every array up front (metadata only, no chunks): the template."""
    group = zarr.open_group(store=f"{url}/{ZARR_GROUP}", mode="w", zarr_format=3)
    group.attrs.update({"kind": KIND, "alignment": ALIGNMENT, **asdict(geometry), **attrs})
    for name, (shape, dtype, dims) in geometry.array_specs().items():
        fill = float("nan") if name == LABEL_DEC_LOSS_ARRAY else (NO_TARGET if dtype == "int16" else 0)
        group.create_array(
            name,
            shape=shape,
            chunks=(geometry.shard_windows, *shape[1:]),
            dtype=dtype,
            dimension_names=dims,
            compressors=[_codec(dtype)],
            fill_value=fill,
        )
    return group


def open_arrays(url: str, mode: str = "r") -> dict[str, zarr.Array]:
    """Every array of the store by name. `write_empty_chunks` is a runtime setting (not stored in the
    metadata), so it is switched on here: a unit then stores every one of its chunks, even an all-NaN
    `dec_loss` chunk, and the set of stored objects (and checksums) never depends on the values."""
    group = zarr.open_group(store=f"{url}/{ZARR_GROUP}", mode=mode, zarr_format=3)  # type: ignore[arg-type]
    return {
        name: arr.with_config({"write_empty_chunks": True})  # type: ignore[union-attr]
        for name, arr in sorted(group.arrays())
    }


def chunk_path(arr: zarr.Array, shard: int) -> str:
    """Path, relative to the store root, of the stored object holding `shard` of `arr`."""
    key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))  # type: ignore[union-attr]
    return f"{ZARR_GROUP}/{arr.basename}/{key}"


def chunk_checksums(url: str, arrays: dict[str, zarr.Array], shard: int) -> dict[str, str]:
    """sha256 of the stored (compressed) bytes of every chunk of one shard, keyed by relative path."""
    paths = [chunk_path(arr, shard) for arr in arrays.values()]
    return {p: sha256_bytes(read_bytes(f"{url}/{p}")) for p in paths}


def value_stats(values: np.ndarray) -> dict[str, float | int]:
    """Mergeable figures of an array: sum and sum of squares of finite values, their count, NaNs."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    fv = v[finite]
    return {
        "sum": float(fv.sum()),
        "sum_sq": float(np.square(fv).sum()),
        "count": int(finite.sum()),
        "nan_count": int(np.isnan(v).sum()),
    }


def merge_stats(parts: list[dict[str, float | int]]) -> dict[str, float | int | None]:
    """Add unit stats and derive mean and RMS (None when nothing was counted)."""
    total: dict[str, float | int] = {"sum": 0.0, "sum_sq": 0.0, "count": 0, "nan_count": 0}
    for part in parts:
        for key in total:
            total[key] += part[key]
    n = total["count"]
    mean = total["sum"] / n if n else None
    rms = float(np.sqrt(total["sum_sq"] / n)) if n else None
    return {**total, "mean": mean, "rms": rms}


def unit_record_url(url: str, shard: int) -> str:
    return f"{url}/{LABEL_UNITS_DIR}/{label_unit_name(shard)}"


def write_unit_record(url: str, shard: int, record: dict[str, Any]) -> None:
    """Atomically mark a unit finished: after this, re-runs skip it and its chunks are final."""
    write_bytes_atomic(unit_record_url(url, shard), json.dumps(record, indent=1, sort_keys=True).encode())


def finished_units(url: str) -> set[int]:
    """Shards whose completion record exists: one directory listing, not one request per unit."""
    fs, path = url_to_fs(f"{url}/{LABEL_UNITS_DIR}")
    if not fs.exists(path):
        return set()
    names = (str(p).rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return {int(n[len("shard-") : -len(".json")]) for n in names if n.startswith("shard-") and n.endswith(".json")}


def remove_unit_record(url: str, shard: int) -> None:
    """Mark a unit unfinished again (its chunks are damaged): the next run re-encodes it."""
    fs, path = url_to_fs(unit_record_url(url, shard))
    if fs.exists(path):
        fs.rm(path)


def read_unit_record(url: str, shard: int) -> dict[str, Any] | None:
    """The completion record of a unit, or None when the unit has not finished."""
    record_url = unit_record_url(url, shard)
    if not exists(record_url):
        return None
    try:
        return json.loads(read_bytes(record_url))
    except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged record is no proof the unit finished
        return None
