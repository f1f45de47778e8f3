"""Before a label store is trusted: re-check what an earlier run finished, and say what is damaged.

A completion record says a unit finished, not that its chunks are still intact: a chunk can be deleted
or flipped after the run, and a manifest can be truncated. The launcher (pipelines/materialize_labels.py)
calls these before resuming or reporting a store done: damaged units lose their record and are encoded
again (encoding is deterministic, so the repaired chunks are the bytes first written).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from fsspec.core import url_to_fs

from schemas.layout import INDEX_FILE
from schemas.manifest import sha256_bytes
from store.artifacts import MANIFEST, ArtifactError, read_bytes, read_manifest
from store.label_layout import finished_units, read_unit_record, remove_unit_record
from store.labels import READ_THREADS

log = logging.getLogger("smt.labels")


def complete_store_damage(url: str, fix: bool = False) -> list[str]:
    """Why a published store cannot be trusted as is (empty: it can): an unreadable manifest, or a
    unit whose record, chunks or manifest checksums disagree. fix=True (under the store's lock):
    damaged units also lose their completion record, so the resume that follows re-encodes them;
    fix=False writes nothing (a clean store on a read-only root is still usable)."""
    try:
        manifest = read_manifest(url, "labels")
    except ArtifactError as err:
        return [str(err)]
    recorded = finished_units(url)
    shards = int(manifest.counts.get("shards", 0))
    damage = [f"shard {s}: completion record missing" for s in range(shards) if s not in recorded]
    for s in sorted(recorded):
        record = read_unit_record(url, s)
        if record is not None and any(manifest.checksums.get(p) != c for p, c in record["checksums"].items()):
            damage.append(f"shard {s}: completion record disagrees with the manifest")
            if fix:
                remove_unit_record(url, s)
    kept = recheck_finished_units(url, recorded, fix)
    damage += [f"shard {s}: chunks missing or changed" for s in sorted(recorded - kept)]
    index = manifest.checksums.get(INDEX_FILE)
    try:
        if index is not None and sha256_bytes(read_bytes(f"{url}/{INDEX_FILE}")) != index:
            damage.append(f"{INDEX_FILE} changed")
    except FileNotFoundError:
        damage.append(f"{INDEX_FILE} missing")
    return damage


def recheck_finished_units(url: str, finished: set[int], fix: bool = True) -> set[int]:
    """The finished units whose recorded chunks all exist with their recorded sha256; with fix, the
    record of every other one is removed (logged), so the unit is encoded again instead of trusted."""
    def intact(shard: int) -> tuple[int, str | None]:
        record = read_unit_record(url, shard)
        if record is None:
            return shard, "no record"
        for path, expected in record.get("checksums", {}).items():
            try:
                if sha256_bytes(read_bytes(f"{url}/{path}")) != expected:
                    return shard, f"{path} changed"
            except FileNotFoundError:
                return shard, f"{path} missing"
        return shard, None

    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="label-recheck") as pool:
        results = list(pool.map(intact, sorted(finished)))
    for shard, problem in results:
        if problem is not None and fix:
            log.warning("label store %s: unit %d is damaged (%s): encoding it again", url, shard, problem)
            remove_unit_record(url, shard)
    return {shard for shard, problem in results if problem is None}


def unpublish(url: str) -> None:
    """Remove a store's manifest (and index) so it is an unfinished store until `finalize` runs."""
    fs, path = url_to_fs(url)
    for name in (MANIFEST, INDEX_FILE):
        if fs.exists(f"{path}/{name}"):
            fs.rm(f"{path}/{name}")
