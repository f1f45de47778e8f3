"""Content-addressed artifact directories on any fsspec URL, published manifest-last.

Layout: `{root}/{kind}-{hash[:16]}/…files…/manifest.json`. Files are written first; the manifest
is written last (and atomically where the filesystem can rename), so a directory without a
manifest is an unfinished artifact and is never read as valid.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from schemas.config import SCHEMA_VERSION
from schemas.manifest import Manifest, artifact_hash, package_versions, sha256_bytes

MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """An artifact that is missing, unfinished, from a newer schema, or not the one expected."""


@dataclass(frozen=True)
class ArtifactRef:
    """What stages pass to each other: where an artifact lives and what it is."""

    url: str
    hash: str
    kind: str

    def join(self, *parts: str) -> str:
        return "/".join([self.url.rstrip("/"), *parts])


def artifact_url(root: str, kind: str, digest: str) -> str:
    """Directory of the artifact with this content hash under `root`."""
    return f"{root.rstrip('/')}/{kind}-{digest[:16]}"


def plan_artifact(root: str, kind: str, config: dict[str, Any], parents: dict[str, str]) -> ArtifactRef:
    """Compute the content address of an artifact before building it."""
    digest = artifact_hash(kind, config, parents)
    return ArtifactRef(url=artifact_url(root, kind, digest), hash=digest, kind=kind)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write a file so readers see either the old state or the whole new file."""
    fs, path = url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def is_complete(url: str) -> bool:
    """True when the artifact at `url` has its manifest (it finished publishing)."""
    return exists(f"{url.rstrip('/')}/{MANIFEST}")


def publish_manifest(
    ref: ArtifactRef,
    config: dict[str, Any],
    parents: dict[str, str],
    counts: dict[str, int] | None = None,
    checksums: dict[str, str] | None = None,
    stats: dict[str, Any] | None = None,
) -> Manifest:
    """Write the manifest last: after this call the artifact is complete and valid."""
    manifest = Manifest(
        kind=ref.kind,  # type: ignore[arg-type]
        hash=ref.hash,
        parents=parents,
        config=config,
        packages=package_versions(),
        counts=counts or {},
        checksums=checksums or {},
        stats=stats or {},
    )
    write_bytes_atomic(ref.join(MANIFEST), manifest.model_dump_json(indent=2).encode())
    return manifest


def read_manifest(url: str, kind: str | None = None) -> Manifest:
    """Load and check an artifact's manifest; every refusal names the problem."""
    murl = f"{url.rstrip('/')}/{MANIFEST}"
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        raise ArtifactError(f"no artifact at {url}")
    if not fs.exists(f"{path.rstrip('/')}/{MANIFEST}"):
        raise ArtifactError(f"{url} is incomplete: it has no {MANIFEST} (an interrupted run?)")
    try:
        raw = json.loads(read_bytes(murl))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{murl} is not valid JSON: {err}") from err
    version = raw.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{url} has schema_version {version}, newer than this code's {SCHEMA_VERSION}: upgrade smt"
        )
    manifest = Manifest.model_validate(raw)
    if kind is not None and manifest.kind != kind:
        raise ArtifactError(f"{url} is a '{manifest.kind}' artifact, expected '{kind}'")
    return manifest


def open_artifact(url: str, kind: str) -> tuple[ArtifactRef, Manifest]:
    """Reference + manifest of an existing, complete artifact of the given kind."""
    manifest = read_manifest(url, kind)
    return ArtifactRef(url=url.rstrip("/"), hash=manifest.hash, kind=manifest.kind), manifest


def require_parent(manifest: Manifest, role: str, expected_hash: str, what: str) -> None:
    """Refuse an artifact made from a different parent than the caller's (lineage check)."""
    actual = manifest.parents.get(role)
    if actual != expected_hash:
        raise ArtifactError(
            f"{what} was made from {role} {str(actual)[:16]}, but {expected_hash[:16]} was given: "
            "they do not belong together"
        )


def file_checksum(url: str) -> str:
    return sha256_bytes(read_bytes(url))
