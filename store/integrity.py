"""Verify on read: every stored chunk a stage decodes is checked against the checksum its manifest recorded.

Zarr returns the fill value for a chunk that is not there, and decodes a chunk whose bytes changed
into other numbers without complaint, so a damaged store would otherwise train (or label) quietly on
zeros or garbage. `open_verified_group` wraps the store so that each chunk's bytes are hashed as they
arrive (sha256, per chunk, before decoding; hashlib releases the GIL so parallel chunk reads hash in
parallel) and a missing or unrecorded chunk is an error instead of fill values.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterable, Mapping

import zarr
from fsspec.core import url_to_fs
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from store.artifacts import ArtifactError

_CHUNK_KEY = re.compile(r"(^|/)c(/\d+)+$")  # Zarr v3 default chunk keys: <array>/c/<i>/<j>...
_SHARD_OF_KEY = re.compile(r"/c/(\d+)")


def verify_reads() -> bool:
    """Verify on read is on unless SMT_VERIFY_READS=0 (for trusted storage where read speed is all);
    off, complete label stores and tokens artifacts are also used as found, without a checksum pass."""
    return os.environ.get("SMT_VERIFY_READS", "1").strip() != "0"


class IntegrityError(ArtifactError):
    """Stored bytes that differ from what the artifact's manifest recorded (or are gone)."""


def shard_of(key: str) -> str:
    """'shard 5' for `memory/c/5/0/0`: the first chunk index, which is the work unit of a label store."""
    match = _SHARD_OF_KEY.search(key)
    return f"shard {match.group(1)}" if match else "metadata"


class VerifyingStore(WrapperStore[Store]):
    """A read-only Zarr store that checks every chunk it serves against `checksums` (key -> sha256).

    Each chunk is hashed the first time this reader serves it; later reads of the same chunk (the
    next epoch) are checked for presence and size only, so a multi-epoch stage pays the hash once per
    chunk (a store at rest is what this guards; files are not rewritten under a reader, since
    builders hold the artifact's lock). Metadata (`zarr.json`) passes through unchecked: the reader
    compares shapes with the manifest. `what` names the artifact in error messages.
    """

    def __init__(self, store: Store, checksums: Mapping[str, str], what: str) -> None:
        super().__init__(store)
        self.checksums, self.what = dict(checksums), what
        self.verified: dict[str, int] = {}  # key -> size of the bytes that matched, this process

    def _with_store(self, store: Store) -> VerifyingStore:
        return type(self)(store, self.checksums, self.what)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if not _CHUNK_KEY.search(key):
            return await self._store.get(key, prototype, byte_range)
        expected = self.checksums.get(key)
        if expected is None:
            raise IntegrityError(f"{self.what}: {shard_of(key)}: chunk {key} is not recorded in the manifest")
        data = await self._store.get(key, prototype, None)
        if data is None:
            raise IntegrityError(f"{self.what}: {shard_of(key)}: chunk {key} is missing")
        if self.verified.get(key) == len(data):  # re-read of a chunk this reader already checked
            return data if byte_range is None else await self._store.get(key, prototype, byte_range)
        # off Zarr's event loop thread, so chunks hash in parallel (hashlib releases the GIL)
        digest = await asyncio.to_thread(_sha256_of, data)
        if digest != expected:
            raise IntegrityError(
                f"{self.what}: {shard_of(key)}: chunk {key} checksum mismatch "
                "(its bytes changed since it was written): run `smt verify` on it, then rebuild it"
            )
        self.verified[key] = len(data)
        if byte_range is not None:  # plain chunks are read whole; a range is cut after the check
            return await self._store.get(key, prototype, byte_range)
        return data

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]


def _sha256_of(data: Buffer) -> str:
    return hashlib.sha256(memoryview(data.as_numpy_array())).hexdigest()  # no copy of the chunk


def base_store(url: str, read_only: bool = True) -> Store:
    """The Zarr store of a directory URL: LocalStore for local paths, FsspecStore for the rest."""
    fs, path = url_to_fs(url)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(url, read_only=read_only)


def relative_checksums(checksums: Mapping[str, str], prefix: str) -> dict[str, str]:
    """Manifest checksums of chunks keyed `data.zarr/memory/c/0/0/0` -> store keys `memory/c/0/0/0`
    (other entries, such as tokens' checksums of decoded values, are not stored objects)."""
    head = prefix.rstrip("/") + "/"
    return {k[len(head):]: v for k, v in checksums.items() if k.startswith(head) and _CHUNK_KEY.search(k)}


def open_verified_group(url: str, checksums: Mapping[str, str], what: str) -> zarr.Group:
    """The Zarr group at `url`, read-only, every chunk checked against `checksums` (store keys)."""
    return zarr.open_group(store=VerifyingStore(base_store(url), checksums, what), mode="r", zarr_format=3)


def check_recorded_file(url: str, checksums: Mapping[str, str], name: str, what: str) -> None:
    """Refuse a file of an artifact whose bytes differ from the sha256 its manifest recorded (weights:
    a damaged teacher would otherwise label a store published under the clean address). Files of
    artifacts published before checksums were recorded pass unchecked."""
    expected = checksums.get(name)
    if expected is None or not verify_reads():
        return
    from store.artifacts import file_checksum

    if file_checksum(f"{url.rstrip('/')}/{name}") != expected:
        raise IntegrityError(f"{what} {url}: {name} checksum mismatch (its bytes changed since it was written)")
