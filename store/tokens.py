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
from collections.abc import Iterator
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
from sources.read import DocumentSet, read_documents
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


def read_split_documents(cfg: TokensConfig) -> tuple[DocumentSet, np.ndarray]:
    """The documents and which of them are held out (bool per document): a random `test_fraction` of
    `url`, or, with `test_url`, exactly the documents of that separate set, used as they are."""
    docs = read_documents(cfg)
    if not cfg.test_url:
        return docs, split_documents(len(docs), cfg.test_fraction, cfg.seed)
    held_out = read_documents(cfg.model_copy(update={"url": cfg.test_url, "max_docs": None}))
    joined = docs.joined(held_out)
    joined.stats["test_url"] = cfg.test_url
    return joined, np.arange(len(joined)) >= len(docs)


@one_writer(plan_tokens_artifact, intact=_tokens_intact)
def build_tokens_artifact(cfg: TokensConfig, root: str) -> ArtifactRef:
    """Read the documents of `cfg` and publish them as a tokens artifact under `root`.

    Content-addressed on the config and the input files' identity (`input_fingerprint`): a
    complete artifact with the same hash whose stored files match their checksums is returned as is
    (one read of the stored bytes, no input read). A leftover directory without a manifest (an
    interrupted run), or a damaged one, is removed and rebuilt.
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

    docs, is_test = read_split_documents(cfg)
    _check_int16(docs)
    lengths = np.array([len(t) for t in docs.tokens], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ys = [docs.target(i, clean=bool(is_test[i])) for i in range(len(docs))]
    for i, (x, y) in enumerate(zip(docs.tokens, ys, strict=True)):
        if len(x) != len(y):
            raise ArtifactError(f"document {i} ({docs.sources[i]}) has {len(x)} tokens but {len(y)} targets")
    # straight to int16 (values were checked against the vocabulary): no int64 copy of the corpus
    tokens = np.concatenate(docs.tokens, dtype=np.int16, casting="unsafe")
    targets = np.concatenate(ys, dtype=np.int16, casting="unsafe")

    chunk_sums = _write_group(ref.join(ZARR_GROUP), tokens, targets, docs.vocab_size)
    index = pa.table(
        {
            "doc_id": np.arange(len(docs), dtype=np.int64),
            "offset": offsets,
            "length": lengths,
            "split": np.where(is_test, SPLIT_TEST, SPLIT_TRAIN).tolist(),
            "source": docs.sources,
        },
        schema=TOKENS_INDEX_SCHEMA,
    )
    buf = io.BytesIO()
    pq.write_table(index, buf)
    index_bytes = buf.getvalue()
    write_bytes_atomic(ref.join(INDEX_FILE), index_bytes)

    n_test = int(is_test.sum())
    counts = {
        "documents": len(docs),
        "tokens": int(lengths.sum()),
        "train_documents": len(docs) - n_test,
        "test_documents": n_test,
        "train_tokens": int(lengths[~is_test].sum()),
        "test_tokens": int(lengths[is_test].sum()),
    }
    stats: dict[str, Any] = {"vocab_size": docs.vocab_size, **docs.stats}
    checksums = {
        INDEX_FILE: sha256_bytes(index_bytes),
        f"{ZARR_GROUP}/{TOKENS_ARRAY} (int16 values)": sha256_bytes(tokens.astype("<i2").tobytes()),
        f"{ZARR_GROUP}/{TARGETS_ARRAY} (int16 values)": sha256_bytes(targets.astype("<i2").tobytes()),
        **{f"{ZARR_GROUP}/{key}": digest for key, digest in chunk_sums.items()},  # checked on every read
    }
    publish_manifest(ref, ref.config, ref.parents, counts=counts, checksums=checksums, stats=stats)
    return ref


def _check_int16(docs: DocumentSet) -> None:
    """Tokens are stored as int16: refuse values that would wrap instead of storing garbage."""
    if docs.vocab_size > INT16_MAX:
        raise ArtifactError(
            f"vocab_size {docs.vocab_size} does not fit the int16 token store (max {INT16_MAX})"
        )
    if docs.targets is None:  # file readers produce tokens in [0, vocab) by construction
        return
    for i, (x, y) in enumerate(zip(docs.tokens, docs.targets, strict=True)):
        if len(x) and (x.min() < 0 or x.max() >= docs.vocab_size):
            raise ArtifactError(f"document {i} ({docs.sources[i]}) has tokens outside [0, {docs.vocab_size})")
        if len(y) and (y.min() < -1 or y.max() >= docs.vocab_size):
            raise ArtifactError(
                f"document {i} ({docs.sources[i]}) has targets outside [-1, {docs.vocab_size})"
            )


def _write_group(url: str, tokens: np.ndarray, targets: np.ndarray, vocab_size: int) -> dict[str, str]:
    """Write both arrays; returns sha256 of every stored chunk by store key (`tokens/c/0` ...).

    write_empty_chunks: an all-zero chunk is stored too, so every chunk has a checksum and a missing
    one is always damage, never "fill value"."""
    group = zarr.open_group(store=url, mode="w")
    group.attrs.update({"kind": KIND, "vocab_size": int(vocab_size)})
    chunk = min(TOKENS_CHUNK, len(tokens))
    sums: dict[str, str] = {}
    for name, values in ((TOKENS_ARRAY, tokens), (TARGETS_ARRAY, targets)):
        arr = group.create_array(
            name, shape=values.shape, chunks=(chunk,), dtype=TOKENS_DTYPE, dimension_names=TOKENS_DIMS,
            config={"write_empty_chunks": True},
        )
        arr[:] = values
        for i in range(arr.nchunks):
            key = f"{name}/{arr.metadata.encode_chunk_key((i,))}"  # type: ignore[union-attr]
            sums[key] = sha256_bytes(read_bytes(f"{url}/{key}"))
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
