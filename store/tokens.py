"""The tokens artifact: every document concatenated in a Zarr v3 group, found through index.parquet.

Layout under `{root}/tokens-{hash[:16]}/`:
    data.zarr/            Zarr v3 group: `tokens` (position,) int16 and `targets` (position,) int16
    index.parquet         doc_id, offset, length, split, source (schemas.layout.TOKENS_INDEX_SCHEMA)
    manifest.json         written last; without it the directory is an unfinished artifact

One flat array (not one row per document) because documents have any length and readers slice
windows out of them; int16 because vocabularies here are small and -1 marks "no target".
Everything is readable without this code: pyarrow/pandas for the index, xarray for the group.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec.core import url_to_fs

from schemas.config import TokensConfig
from schemas.layout import (
    INDEX_FILE,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLITS,
    TARGETS_ARRAY,
    TOKENS_ARRAY,
    TOKENS_CHUNK,
    TOKENS_DIMS,
    TOKENS_DTYPE,
    TOKENS_INDEX_SCHEMA,
    ZARR_GROUP,
)
from schemas.manifest import Manifest, sha256_bytes
from sources.errors import expand_urls
from sources.read import DocumentSet, DocumentStream, next_token_targets, stream_documents
from store.artifacts import (
    ArtifactError,
    ArtifactRef,
    is_complete,
    open_artifact,
    plan_artifact,
    publish_manifest,
    read_bytes,
    write_bytes_atomic,
)
from store.integrity import IntegrityError, open_verified_group, relative_checksums, verify_reads
from store.locks import one_writer

KIND = "tokens"
log = logging.getLogger("smt.tokens")
INT16_MAX = np.iinfo(np.int16).max


def split_documents(num_docs: int, test_fraction: float, seed: int) -> np.ndarray:
    """(num_docs,) bool, True = test. Seeded permutation, so the split depends only on (n, f, seed).

    At least one test document when test_fraction > 0 and there are two or more documents, and
    always at least one training document.
    """
    n_test = int(round(num_docs * test_fraction))
    if test_fraction > 0 and num_docs > 1:
        n_test = max(n_test, 1)
    n_test = min(n_test, num_docs - 1)
    is_test = np.zeros(num_docs, dtype=bool)
    is_test[np.random.default_rng(seed).permutation(num_docs)[:n_test]] = True
    return is_test


def input_fingerprint(cfg: TokensConfig) -> str | None:
    """Identity of the input files (path, size, modification time or ETag), not their bytes.

    Part of the tokens address, so an input file changed in place yields a new artifact instead of
    silently re-using the old one; cheap because only file metadata is read.
    """
    if cfg.source == "synthetic":
        return None
    entries = []
    for url in [*expand_urls(cfg.url or ""), *(expand_urls(cfg.test_url) if cfg.test_url else [])]:
        fs, path = url_to_fs(url)
        info = fs.info(path)
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        entries.append(f"{url}|{info.get('size')}|{stamp}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _parents(cfg: TokensConfig) -> dict[str, str]:
    fingerprint = input_fingerprint(cfg)
    return {"inputs": fingerprint} if fingerprint else {}


def plan_tokens_artifact(cfg: TokensConfig, root: str) -> ArtifactRef:
    """Address of the tokens artifact: the config plus the identity of the input files."""
    return plan_artifact(root, KIND, cfg.address_json(), _parents(cfg))


def tokens_damage(url: str) -> list[str]:
    """Why a complete tokens artifact cannot be trusted (empty: it can): an unreadable manifest, or a
    recorded file or chunk missing or changed (one sha256 pass over the stored bytes)."""
    from store.verify import file_problems

    try:
        _, manifest = open_artifact(url, KIND)
    except ArtifactError as err:
        return [str(err)]
    return file_problems(url, manifest)


def _tokens_intact(url: str) -> bool:
    return not verify_reads() or not tokens_damage(url)  # SMT_VERIFY_READS=0 trusts what it finds


def _documents_and_split(cfg: TokensConfig) -> tuple[list[DocumentStream], Callable[[int], np.ndarray]]:
    """The documents to store, as streams read one after the other, and which of them are held out once
    they are counted: a seeded `test_fraction`, or, with `test_url`, exactly those of that separate set."""
    docs = stream_documents(cfg)
    if isinstance(docs, DocumentSet):  # synthetic: in memory, the split first (test documents get clean targets)
        is_test = split_documents(len(docs), cfg.test_fraction, cfg.seed)
        items = ((docs.sources[i], docs.tokens[i], docs.target(i, clean=bool(is_test[i]))) for i in range(len(docs)))
        return [DocumentStream(items, docs.stats, docs.vocab_size)], lambda n: is_test
    if not cfg.test_url:
        return [docs], lambda n: split_documents(n, cfg.test_fraction, cfg.seed)
    held_out = stream_documents(cfg.model_copy(update={"url": cfg.test_url, "max_docs": None}))
    assert isinstance(held_out, DocumentStream)  # test_url is for file sources (TokensConfig)
    return [docs, held_out], lambda n: np.arange(n) >= docs.count


@one_writer(plan_tokens_artifact, intact=_tokens_intact)
def build_tokens_artifact(cfg: TokensConfig, root: str) -> ArtifactRef:
    """Read the documents of `cfg` and publish them as a tokens artifact under `root`.

    Content-addressed on the config and the input files' identity (`input_fingerprint`): a
    complete artifact with the same hash whose stored files match their checksums is returned as is
    (one read of the stored bytes, no input read). A leftover directory without a manifest (an
    interrupted run), or a damaged one, is removed and rebuilt. Documents are written as they are
    read (`_Column`), so the peak memory is about one document, not the corpus.
    """
    ref = plan_tokens_artifact(cfg, root)
    if is_complete(ref.url):
        damage = tokens_damage(ref.url)
        if not damage:
            return ref
        log.warning("tokens artifact %s is damaged (%s): building it again", ref.url, "; ".join(damage[:3]))
    fs, path = url_to_fs(ref.url)
    if fs.exists(path):
        fs.rm(path, recursive=True)

    streams, split = _documents_and_split(cfg)
    items = (item for stream in streams for item in stream.items)
    group = zarr.open_group(store=ref.join(ZARR_GROUP), mode="w")
    columns = {name: _Column(group, ref.join(ZARR_GROUP), name) for name in (TOKENS_ARRAY, TARGETS_ARRAY)}
    names, lengths_list = [], []
    for i, (name, x, y) in enumerate(items):
        y = next_token_targets(x, np.int16) if y is None else y
        if len(x) != len(y):
            raise ArtifactError(f"document {i} ({name}) has {len(x)} tokens but {len(y)} targets")
        _check_int16(i, name, x, y, streams[0].fixed_vocab)
        columns[TOKENS_ARRAY].append(x)
        columns[TARGETS_ARRAY].append(y)
        names.append(name)
        lengths_list.append(len(x))
    vocab_size = max(s.vocab_size for s in streams)
    if vocab_size > INT16_MAX:
        raise ArtifactError(f"vocab_size {vocab_size} does not fit the int16 token store (max {INT16_MAX})")
    group.attrs.update({"kind": KIND, "vocab_size": int(vocab_size)})
    chunk_sums = {k: v for column in columns.values() for k, v in column.close().items()}
    lengths = np.array(lengths_list, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    is_test = split(len(names))
    index = pa.table(
        {
            "doc_id": np.arange(len(names), dtype=np.int64),
            "offset": offsets,
            "length": lengths,
            "split": np.where(is_test, SPLIT_TEST, SPLIT_TRAIN).tolist(),
            "source": names,
        },
        schema=TOKENS_INDEX_SCHEMA,
    )
    buf = io.BytesIO()
    pq.write_table(index, buf)
    index_bytes = buf.getvalue()
    write_bytes_atomic(ref.join(INDEX_FILE), index_bytes)

    n_test = int(is_test.sum())
    counts = {
        "documents": len(names),
        "tokens": int(lengths.sum()),
        "train_documents": len(names) - n_test,
        "test_documents": n_test,
        "train_tokens": int(lengths[~is_test].sum()),
        "test_tokens": int(lengths[is_test].sum()),
    }
    stats: dict[str, Any] = {"vocab_size": int(vocab_size), **streams[0].stats}
    if len(streams) > 1:
        stats.update(test_set=streams[1].stats, test_url=cfg.test_url)
    checksums = {
        INDEX_FILE: sha256_bytes(index_bytes),
        f"{ZARR_GROUP}/{TOKENS_ARRAY} (int16 values)": columns[TOKENS_ARRAY].values_digest,
        f"{ZARR_GROUP}/{TARGETS_ARRAY} (int16 values)": columns[TARGETS_ARRAY].values_digest,
        **{f"{ZARR_GROUP}/{key}": digest for key, digest in chunk_sums.items()},  # checked on every read
    }
    publish_manifest(ref, ref.config, ref.parents, counts=counts, checksums=checksums, stats=stats)
    return ref


def _check_int16(i: int, name: str, x: np.ndarray, y: np.ndarray, vocab: int | None) -> None:
    """Tokens are stored as int16: refuse values that would wrap instead of storing garbage."""
    top = INT16_MAX if vocab is None else vocab - 1
    if len(x) and (x.min() < 0 or x.max() > top):
        raise ArtifactError(f"document {i} ({name}) has tokens outside [0, {top + 1})")
    if len(y) and (y.min() < -1 or y.max() > top):
        raise ArtifactError(f"document {i} ({name}) has targets outside [-1, {top + 1})")


class _Column:
    """One int16 array of the tokens group, written chunk by chunk as documents arrive, so the corpus is
    never held whole. The stored bytes are a one-shot write's: the same chunks (a corpus shorter than
    one chunk is one chunk of its own length), the same final shape, and the values hashed on the way.

    write_empty_chunks: an all-zero chunk is stored too, so every chunk has a checksum and a missing
    one is always damage, never "fill value"."""

    def __init__(self, group: zarr.Group, url: str, name: str) -> None:
        self.group, self.url, self.name = group, url, name
        self.buffer = np.empty(TOKENS_CHUNK, dtype=TOKENS_DTYPE)
        self.filled, self.written = 0, 0
        self.array: zarr.Array | None = None
        self._values = hashlib.sha256()

    def append(self, values: np.ndarray) -> None:
        values = values.astype("<i2", copy=False)
        self._values.update(values.tobytes())
        start = 0
        while start < len(values):
            take = min(TOKENS_CHUNK - self.filled, len(values) - start)
            self.buffer[self.filled : self.filled + take] = values[start : start + take]
            self.filled, start = self.filled + take, start + take
            if self.filled == TOKENS_CHUNK:
                self._write(TOKENS_CHUNK)

    def _write(self, chunk: int) -> None:
        if self.array is None:
            self.array = self.group.create_array(
                self.name, shape=(self.filled,), chunks=(chunk,), dtype=TOKENS_DTYPE,
                dimension_names=TOKENS_DIMS, config={"write_empty_chunks": True},
            )
        else:
            self.array.resize((self.written + self.filled,))
        self.array[self.written : self.written + self.filled] = self.buffer[: self.filled]
        self.written, self.filled = self.written + self.filled, 0

    @property
    def values_digest(self) -> str:
        return self._values.hexdigest()

    def close(self) -> dict[str, str]:
        """Write what is left; returns sha256 of every stored chunk by store key (`tokens/c/0` ...)."""
        if self.filled or self.array is None:
            self._write(TOKENS_CHUNK if self.array is not None else max(self.filled, 1))
        assert self.array is not None
        sums = {}
        for i in range(self.array.nchunks):
            key = f"{self.name}/{self.array.metadata.encode_chunk_key((i,))}"  # type: ignore[union-attr]
            sums[key] = sha256_bytes(read_bytes(f"{self.url}/{key}"))
        return sums


class TokensArtifact:
    """Reader of a complete tokens artifact: the index, and documents as (x, y) int64 arrays.

    Opening goes through `read_manifest`, so unfinished artifacts and newer schema versions are
    refused before any array is touched. Whole arrays are loaded on first use (tokens corpora here
    fit in memory; per-document Zarr reads would cost one request each on object stores).
    """

    def __init__(self, ref: ArtifactRef, manifest: Manifest, index: pa.Table, group: zarr.Group) -> None:
        self.ref = ref
        self.manifest = manifest
        self.index = index
        self._group = group
        self._offsets = index.column("offset").to_numpy()
        self._lengths = index.column("length").to_numpy()
        self._splits = np.asarray(index.column("split").to_pylist())
        self._tokens: np.ndarray | None = None
        self._targets: np.ndarray | None = None

    @classmethod
    def open(cls, url: str) -> TokensArtifact:
        ref, manifest = open_artifact(url, KIND)
        index_bytes = read_bytes(ref.join(INDEX_FILE))
        expected = manifest.checksums.get(INDEX_FILE)
        if expected is not None and sha256_bytes(index_bytes) != expected:
            raise ArtifactError(f"{ref.join(INDEX_FILE)} does not match its manifest checksum (corrupted?)")
        index = pq.read_table(io.BytesIO(index_bytes))
        chunk_sums = relative_checksums(manifest.checksums, ZARR_GROUP)
        if chunk_sums and verify_reads():  # every chunk checked as it is decoded (older artifacts: values only)
            group = open_verified_group(ref.join(ZARR_GROUP), chunk_sums, f"tokens artifact {ref.url}")
        else:
            group = zarr.open_group(store=ref.join(ZARR_GROUP), mode="r")
        return cls(ref, manifest, index, group)

    def load_checked(self, name: str) -> np.ndarray:
        """A whole array, checked against the manifest's checksum of its int16 values."""
        values = np.asarray(self._group[name][:])
        key = f"{ZARR_GROUP}/{name} (int16 values)"
        expected = self.manifest.checksums.get(key)
        if expected is not None and sha256_bytes(values.astype("<i2").tobytes()) != expected:
            raise IntegrityError(
                f"tokens artifact {self.ref.url}: array '{name}' does not match its manifest checksum "
                "(a chunk was damaged or removed): run `smt verify` on it, then rebuild it"
            )
        return values

    @property
    def vocab_size(self) -> int:
        return int(self.manifest.stats["vocab_size"])

    @property
    def num_documents(self) -> int:
        return self.index.num_rows

    @property
    def tokens(self) -> np.ndarray:
        """All documents concatenated, (positions,) int16 as stored (a quarter of int64's memory)."""
        if self._tokens is None:
            self._tokens = self.load_checked(TOKENS_ARRAY)
        return self._tokens

    @property
    def targets(self) -> np.ndarray:
        """Targets aligned with `tokens`, (positions,) int16, -1 where nothing is scored."""
        if self._targets is None:
            self._targets = self.load_checked(TARGETS_ARRAY)
        return self._targets

    def doc_ids(self, split: str | None = None) -> np.ndarray:
        """Document ids of one split ('train' / 'test'), or all when split is None."""
        if split is None:
            return np.arange(self.num_documents, dtype=np.int64)
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}', expected one of {SPLITS}")
        return np.flatnonzero(self._splits == split).astype(np.int64)

    def lengths(self, split: str | None = None) -> np.ndarray:
        """Token counts of the documents of `doc_ids(split)`."""
        return self._lengths[self.doc_ids(split)]

    def document(self, doc_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of one document, each (T,) int64."""
        if not 0 <= doc_id < self.num_documents:
            raise IndexError(f"doc_id {doc_id} out of range: the artifact has {self.num_documents} documents")
        start = int(self._offsets[doc_id])
        stop = start + int(self._lengths[doc_id])
        return self.tokens[start:stop].astype(np.int64), self.targets[start:stop].astype(np.int64)

    def documents(self, split: str | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(doc_id, x, y) for every document of the split, in doc_id order."""
        for doc_id in self.doc_ids(split):
            x, y = self.document(int(doc_id))
            yield int(doc_id), x, y
