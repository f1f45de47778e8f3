"""The label store reader: `LabelStore.open(url)` checks the manifest, then serves labels to training.

A label store is written by `pipelines/materialize_labels.py`; its layout and alignment are spelled in
`store/label_layout.py` and docs/architecture.md. Opening refuses an unfinished store (no manifest), a
store from another teacher, or one whose memory size differs from the caller's, naming the field, so
an RNN is never trained on labels that do not belong to its teacher. Everything on disk is also
readable without this code: `xarray.open_zarr(url + "/data.zarr")` (named dims) and
`pandas.read_parquet(url + "/index.parquet")`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import zarr
from fsspec.core import url_to_fs
from zarr.core.buffer.cpu import NDBuffer

from schemas.config import LabelSpec
from schemas.layout import (
    INDEX_FILE,
    LABEL_DEC_LOSS_ARRAY,
    LABEL_INDEX_SCHEMA,
    LABEL_MEMORY_ARRAY,
    LABEL_MEMORY_SCALE_ARRAY,
    LABEL_TARGETS_ARRAY,
    LABEL_TOKENS_ARRAY,
    ZARR_GROUP,
)
from schemas.manifest import Manifest, sha256_bytes
from store.artifacts import ArtifactError, ArtifactRef, artifact_url, read_bytes, read_manifest
from store.integrity import IntegrityError, open_verified_group, relative_checksums, verify_reads
from store.label_batches import (
    LoadShards,
    Shard,
    Trajectories,
    Transitions,
    iter_trajectories,
    iter_transitions,
)
from store.label_codecs import codec_for
from store.label_layout import (
    KIND,
    LabelGeometry,
    open_arrays,
    projected_store_bytes,
    read_unit_record,
)

__all__ = ["LabelStore", "Trajectories", "Transitions", "projected_store_bytes"]
STREAM_ARRAYS = (LABEL_MEMORY_ARRAY, LABEL_MEMORY_SCALE_ARRAY, LABEL_TOKENS_ARRAY, LABEL_TARGETS_ARRAY)
READ_THREADS = min(8, os.cpu_count() or 1)  # chunk reads in flight per read_shards call
_SHARD_OF_PATH = re.compile(r"/c/(\d+)(/|$)")


class LabelStore:
    """A complete label store: geometry from the manifest, arrays through Zarr, rows through the index."""

    def __init__(self, ref: ArtifactRef, manifest: Manifest, arrays: dict[str, zarr.Array], index: pa.Table) -> None:
        self.ref, self.manifest, self.arrays, self.index = ref, manifest, arrays, index
        self.geometry = LabelGeometry.from_counts(manifest.counts, str(manifest.config.get("dtype", "float16")))
        self._splits = index.column("split").to_numpy(zero_copy_only=False)

    @classmethod
    def open(
        cls, url: str, expect_teacher: str | None = None, expect_memory_size: int | None = None,
        expect_tokens: str | None = None, verify: bool | None = None,
    ) -> LabelStore:
        """Open a finished store; `expect_*` are lineage/shape checks whose failure names the field.

        verify (default: on unless SMT_VERIFY_READS=0): every chunk read is checked against the
        manifest's sha256 as it is decoded, and a missing chunk is an error (Zarr would serve fill
        values); the measured cost is in the README. verify=False reads as Zarr does."""
        verify = verify_reads() if verify is None else verify
        manifest = read_manifest(url, KIND)
        where = f"label store {url}"
        for field, expected in (("teacher", expect_teacher), ("tokens", expect_tokens)):
            actual = manifest.parents.get(field, "")
            prefix_ok = expected is not None and len(expected) >= 16 and actual.startswith(expected)
            if expected is not None and actual != expected and not prefix_ok:
                raise ArtifactError(
                    f"{where}: field 'parents.{field}' mismatch: made from {field} {actual[:16] or '(none)'}, "
                    f"expected {expected[:16]}: these labels belong to another {field}"
                )
        counts = manifest.counts
        if expect_memory_size is not None and counts.get("memory_size") != expect_memory_size:
            raise ArtifactError(
                f"{where}: field 'memory_size' mismatch: the store holds Z={counts.get('memory_size')} "
                f"(K={counts.get('memory_tokens')} x D={counts.get('memory_dim')}), expected {expect_memory_size}"
            )
        ref = ArtifactRef(url=url.rstrip("/"), hash=manifest.hash, kind=KIND)
        index_bytes = read_bytes(ref.join(INDEX_FILE))
        expected = manifest.checksums.get(INDEX_FILE)
        if verify and expected is not None and sha256_bytes(index_bytes) != expected:
            raise IntegrityError(f"{where}: {INDEX_FILE} checksum mismatch (its bytes changed since it was written)")
        index = pq.read_table(io.BytesIO(index_bytes))
        if verify:
            group = open_verified_group(
                ref.join(ZARR_GROUP), relative_checksums(manifest.checksums, ZARR_GROUP), where
            )
            arrays = {name: arr for name, arr in sorted(group.arrays())}
        else:
            arrays = open_arrays(ref.url, mode="r")
        store = cls(ref, manifest, arrays, index)  # type: ignore[arg-type]
        for name, (shape, _, _) in store.geometry.array_specs().items():
            if name not in store.arrays or store.arrays[name].shape != shape:
                found = store.arrays[name].shape if name in store.arrays else "missing"
                raise ArtifactError(f"{where}: array '{name}' has shape {found}, the manifest says {shape}")
        return store

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        return self.ref.url

    @property
    def hash(self) -> str:
        return self.ref.hash

    @property
    def spec(self) -> LabelSpec:
        return LabelSpec.model_validate(self.manifest.config)

    @property
    def teacher_hash(self) -> str:
        return self.manifest.parents["teacher"]

    @property
    def tokens_hash(self) -> str:
        return self.manifest.parents["tokens"]

    @property
    def tokens_url(self) -> str:
        """The tokens artifact it was made from, under the same root (where the pipeline puts it)."""
        return artifact_url(self.url.rstrip("/").rsplit("/", 1)[0], "tokens", self.tokens_hash)

    @property
    def Z(self) -> int:  # noqa: N802 - the paper's names
        return self.geometry.memory_size

    @property
    def K(self) -> int:  # noqa: N802
        return self.geometry.memory_tokens

    @property
    def D(self) -> int:  # noqa: N802
        return self.geometry.memory_dim

    @property
    def L(self) -> int:  # noqa: N802
        return self.geometry.trajectory_len

    @property
    def Tc(self) -> int:  # noqa: N802
        return self.geometry.context_len

    @property
    def Tf(self) -> int:  # noqa: N802
        return self.geometry.future_len

    @property
    def num_windows(self) -> int:
        return self.geometry.num_windows

    @property
    def num_shards(self) -> int:
        return self.geometry.num_shards

    # ------------------------------------------------------------------ reading

    def memory(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decoded memories of windows [start, stop): (n, L+1, Z) float32."""
        stop = self.num_windows if stop is None else stop
        codec = codec_for(self.geometry.dtype)
        scale = self.arrays[LABEL_MEMORY_SCALE_ARRAY][start:stop] if codec.scaled else None
        return codec.decode(self.arrays[LABEL_MEMORY_ARRAY][start:stop], scale)

    def read_shards(
        self, shards: list[int], split: str | None = None, reuse: Shard | None = None, pin: bool = False
    ) -> Shard:
        """Whole shards as stored, into `reuse`'s storage when it is big enough (no fresh allocation:
        page faults on fresh buffers cost more than the read itself); `Shard.gather` decodes rows.
        pin: allocate page-locked storage (CUDA builds only), so copies to the GPU run asynchronously."""
        ranges = [self.geometry.shard_range(s) for s in sorted(shards)]
        n = sum(b - a for a, b in ranges)
        names = [k for k in STREAM_ARRAYS if k in self.arrays]
        storage = reuse.storage if reuse is not None and len(reuse.storage[LABEL_MEMORY_ARRAY]) >= n else None
        if storage is None:
            rows = max(n, len(shards) * self.geometry.shard_windows)
            storage = {k: _empty((rows, *self.arrays[k].shape[1:]), self.arrays[k].dtype, pin) for k in names}
        starts = np.cumsum([0] + [b - a for a, b in ranges]).tolist()
        jobs = [(k, a, b, pos) for (a, b), pos in zip(ranges, starts, strict=False) for k in names]

        def read(job: tuple[str, int, int, int]) -> None:
            k, a, b, pos = job
            out = NDBuffer.from_numpy_array(storage[k][pos : pos + b - a])
            try:
                self.arrays[k].get_basic_selection(slice(a, b), out=out)
            except ArtifactError:
                raise
            except Exception as err:  # a chunk that does not decompress (unverified reads only)
                shard = a // self.geometry.shard_windows
                raise IntegrityError(
                    f"label store {self.url}: shard {shard}: array '{k}' cannot be decoded "
                    f"({type(err).__name__}: {err})"
                ) from err

        # chunks decode in parallel (Blosc releases the GIL): 2 threads read ~1.7x faster on the 2-core dev VM
        with ThreadPoolExecutor(min(len(jobs), READ_THREADS) or 1, thread_name_prefix="label-read") as pool:
            list(pool.map(read, jobs))
        windows = np.concatenate([np.arange(a, b) for a, b in ranges])
        valid = np.arange(n) if split is None else np.flatnonzero(self._splits[windows] == split)
        view = {k: v[:n] for k, v in storage.items()}
        return Shard(
            view[LABEL_MEMORY_ARRAY], view.get(LABEL_MEMORY_SCALE_ARRAY), view[LABEL_TOKENS_ARRAY],
            view[LABEL_TARGETS_ARRAY], valid, storage,
        )

    def transitions(
        self, batch_size: int, seed: int = 0, shuffle: bool = True, split: str | None = None,
        epochs: int | None = 1, shards_per_buffer: int = 4, drop_last: bool = False,
        dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    ) -> Iterator[Transitions]:
        """Batches of `Transitions` (m_t, x_next, m_next, y_next), every transition once per epoch.

        Shuffling mixes `shards_per_buffer` random shards at a time (a bigger buffer mixes better and
        costs memory: two buffers of shards_per_buffer * shard_windows * (L+1) * Z stored values, 270 MB
        at the published size in float16). epochs=None repeats forever with a new order each epoch; the
        stream is a pure function of (store, seed, shards_per_buffer). dtype=torch.float16 (float16
        stores) skips the float32 conversion on the CPU, for trainers that convert on the GPU.
        device: copy each buffer there once, as stored, and gather and convert every batch there
        (batches come out on `device`): on CUDA each memory crosses the bus once per epoch instead of
        twice per epoch in float32. Same batches, in the same order, as device=None.
        """
        return iter_transitions(
            self._loader(split, device), self.num_shards, self.Tc, batch_size, seed,
            shuffle, epochs, shards_per_buffer, drop_last, dtype, device,
        )

    def trajectories(
        self, batch_size: int, length: int | None = None, seed: int = 0, shuffle: bool = True,
        split: str | None = None, epochs: int | None = 1, shards_per_buffer: int = 4, drop_last: bool = True,
        dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    ) -> Iterator[Trajectories]:
        """Batches of `Trajectories` of `length` (default L) transitions, one per window per epoch.

        A window longer than `length` is cut at a random offset (seeded; offset 0 without shuffle).
        See `Trajectories` for the alignment; `x, y` plug into `training.steps.dmt_step_loss`.
        device: as in `transitions` (buffers copied there once, batches gathered there).
        """
        length = self.L if length is None else length
        if not 1 <= length <= self.L:
            raise ValueError(f"length {length} must be in 1..trajectory_len ({self.L}) of this store")
        return iter_trajectories(
            self._loader(split, device), self.num_shards, self.Tc, self.Tf, length,
            batch_size, seed, shuffle, epochs, shards_per_buffer, drop_last, dtype, device,
        )

    def _loader(self, split: str | None, device: torch.device | str | None) -> LoadShards:
        pin = device is not None and torch.device(device).type == "cuda"  # async copies need pinned memory
        return lambda shards, reuse: self.read_shards(shards, split, reuse, pin)

    # ------------------------------------------------------------------ audit

    def inspect(self) -> dict[str, Any]:
        """What the store is, where it came from, how big it is and what its labels look like."""
        fs, path = url_to_fs(self.url)
        size = int(fs.du(path, total=True))
        projected = self.geometry.window_bytes() * self.num_windows
        m = self.manifest
        return {
            "url": self.url,
            "hash": self.hash,
            "schema_version": m.schema_version,
            "created_at": m.created_at,
            "spec": m.config,
            "geometry": m.counts,
            "size_on_disk_bytes": size,
            "uncompressed_bytes": projected,
            "compression_ratio": projected / size if size else None,
            "windows_per_split": m.stats.get("windows_per_split", {}),
            "label_stats": {k: m.stats.get(k) for k in ("memory", "dec_loss", "teacher_l_dec0")},
            "lineage": dict(m.parents),
            "packages": dict(m.packages),
        }

    def verify(self, scan: bool = True) -> list[str]:
        """Problems found (empty = healthy): chunk checksums against the manifest and completion records,
        the index, and (scan=True) non-finite memories and dec_loss NaNs at scored labels."""
        problems: list[str] = []
        checksums = self.manifest.checksums
        for s in range(self.num_shards):
            record = read_unit_record(self.url, s)
            if record is None:
                problems.append(f"shard {s}: completion record missing")
            elif any(checksums.get(p) != c for p, c in record["checksums"].items()):
                problems.append(f"shard {s}: completion record disagrees with the manifest checksums")
        for path, expected in sorted(checksums.items()):
            match = _SHARD_OF_PATH.search(path)
            where = f"shard {match.group(1)}: " if match else ""
            try:
                actual = sha256_bytes(read_bytes(f"{self.url}/{path}"))
            except FileNotFoundError:
                problems.append(f"{where}{path} is missing")
                continue
            if actual != expected:
                problems.append(f"{where}{path} checksum mismatch (stored bytes changed since it was written)")
        problems += self._check_index()
        if scan:  # values as Zarr decodes them, checksums aside: say what a damaged shard holds too
            raw = open_arrays(self.url, mode="r")
            for s in range(self.num_shards):
                problems += self._scan_shard(raw, s)
        return problems

    def _check_index(self) -> list[str]:
        index, n = self.index, self.num_windows
        if not index.schema.equals(LABEL_INDEX_SCHEMA):
            return [f"{INDEX_FILE}: schema {index.schema} differs from {LABEL_INDEX_SCHEMA}"]
        window = index.column("window").to_numpy()
        if index.num_rows != n or not np.array_equal(window, np.arange(n)):
            return [f"{INDEX_FILE}: {index.num_rows} rows, expected windows 0..{n - 1} in order"]
        if not np.array_equal(index.column("shard").to_numpy(), window // self.geometry.shard_windows):
            return [f"{INDEX_FILE}: shard column does not match window // shard_windows"]
        return []

    def _scan_shard(self, arrays: dict[str, zarr.Array], s: int) -> list[str]:
        w0, w1 = self.geometry.shard_range(s)
        try:
            codec = codec_for(self.geometry.dtype)
            scale = arrays[LABEL_MEMORY_SCALE_ARRAY][w0:w1] if codec.scaled else None
            memory = codec.decode(arrays[LABEL_MEMORY_ARRAY][w0:w1], scale)
            dec_loss = arrays[LABEL_DEC_LOSS_ARRAY][w0:w1]
            targets = arrays[LABEL_TARGETS_ARRAY][w0:w1]
        except Exception as err:  # a corrupted chunk usually fails to decompress
            return [f"shard {s}: cannot be decoded: {type(err).__name__}: {err}"]
        problems = []
        bad = int((~np.isfinite(memory)).sum())
        if bad:
            problems.append(f"shard {s}: memory has {bad} NaN/inf values")
        scored = targets[:, self.Tc - 1 : self.Tc - 1 + self.geometry.steps] >= 0
        if int((np.isnan(dec_loss) & scored).sum()):
            problems.append(f"shard {s}: dec_loss is NaN at {int((np.isnan(dec_loss) & scored).sum())} scored labels")
        return problems


def _empty(shape: tuple[int, ...], dtype: np.dtype, pin: bool) -> np.ndarray:
    """np.empty, or a view of a page-locked torch allocation (the view keeps it alive). torch's pinned
    allocator rounds requests up to a power of two and keeps freed blocks for reuse, so two buffers of
    135 MB (published size) hold about 512 MB of pinned host memory for the life of the process."""
    if not pin:
        return np.empty(shape, dtype)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy().view(dtype).reshape(shape)
