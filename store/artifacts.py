"""Content-addressed artifact directories on any fsspec URL, published manifest-last.

Layout: `{root}/{kind}-{hash[:16]}/…files…/manifest.json`. Files are written first; the manifest
is written last (and atomically where the filesystem can rename), so a directory without a
manifest is an unfinished artifact and is never read as valid.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from pydantic import ValidationError

from schemas.config import SCHEMA_VERSION
from schemas.manifest import Manifest, artifact_hash, package_versions, sha256_bytes

MANIFEST = "manifest.json"
CHECKPOINT_DIR = "_checkpoint"  # inside an unfinished artifact (a `_` work dir); removed once published
TMP_MARK = ".tmp-"  # write_bytes_atomic's temporary names: {path}.tmp-{uuid}


class ArtifactError(RuntimeError):
    """An artifact that is missing, unfinished, from a newer schema, or not the one expected."""


class ManifestError(ArtifactError):
    """A manifest.json that exists but cannot be read as one (truncated, edited, missing fields)."""


def describe_validation(err: ValidationError) -> str:
    """One line for pydantic's multi-line report: `field 'hash' is missing; field 'kind': ...`."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"field '{where}' is missing" if e["type"] == "missing" else f"field '{where}': {e['msg']}")
    return "; ".join(parts)


def manifest_problems(url: str, manifest: Manifest) -> list[str]:
    """The manifest against itself: its hash must be the address of its own kind, config and parents
    (an edited lineage or config fails), and a directory named `kind-<16 hex>` must carry that hash."""
    recomputed = artifact_hash(
        manifest.kind, manifest.config, manifest.parents,
        code=manifest.packages.get("smt-pipeline", "unknown"), schema_version=manifest.schema_version,
    )
    problems = []
    if recomputed != manifest.hash:
        problems.append(
            f"{MANIFEST}: hash {manifest.hash[:16]} is not the address of its kind, config and parents "
            f"({recomputed[:16]}): the manifest was edited"
        )
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if re.fullmatch(rf"{manifest.kind}-[0-9a-f]{{16}}", name) and name != f"{manifest.kind}-{manifest.hash[:16]}":
        problems.append(f"{MANIFEST}: hash {manifest.hash[:16]} does not match the directory name {name}")
    return problems


@dataclass(frozen=True)
class ArtifactRef:
    """What stages pass to each other: where an artifact lives and what it is.

    A ref made by `plan_artifact` (a plan) also carries the config and parents its hash was computed
    from: the stage publishes exactly those (`ref.config`, `ref.parents`) instead of rebuilding them,
    and `publish_manifest` re-hashes whatever it is given and refuses a mismatch."""

    url: str
    hash: str
    kind: str
    config: dict[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)
    parents: dict[str, str] | None = field(default=None, compare=False, hash=False, repr=False)

    def join(self, *parts: str) -> str:
        return "/".join([self.url.rstrip("/"), *parts])


def artifact_url(root: str, kind: str, digest: str) -> str:
    """Directory of the artifact with this content hash under `root`."""
    return f"{root.rstrip('/')}/{kind}-{digest[:16]}"


def resolve_under(root: str, name: str) -> str:
    """`name` as given when it is a URL or an absolute path, otherwise the artifact `name` under `root`."""
    if "://" in name or name.startswith("/"):
        return name.rstrip("/")
    return f"{root.rstrip('/')}/{name.strip('/')}"


def plan_artifact(root: str, kind: str, config: dict[str, Any], parents: dict[str, str]) -> ArtifactRef:
    """Compute the content address of an artifact before building it."""
    digest = artifact_hash(kind, config, parents)
    return ArtifactRef(url=artifact_url(root, kind, digest), hash=digest, kind=kind, config=config, parents=parents)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write a file so readers see either the old state or the whole new file."""
    fs, path = url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        _remove_quietly(fs, tmp)  # a full disk or a kill must not leave a 0-byte .tmp- behind
        raise


def _remove_quietly(fs: Any, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError:
        pass


def artifact_files(url: str) -> list[str]:
    """Relative paths of an artifact's published files: not the manifest, `_`-prefixed work files
    (plans, completion records, checkpoints) or leftovers of interrupted atomic writes."""
    fs, path = url_to_fs(url)
    base = path.rstrip("/") + "/"
    names = [str(p)[len(base):] for p in fs.find(path)] if fs.exists(path) else []
    return sorted(
        n for n in names
        if n != MANIFEST and TMP_MARK not in n and not any(part.startswith("_") for part in n.split("/"))
    )


def remove_stray_temporaries(url: str) -> list[str]:
    """Delete `*.tmp-*` files left by interrupted writes (they would ship inside the artifact)."""
    fs, path = url_to_fs(url)
    base = path.rstrip("/") + "/"
    stray = [str(p) for p in fs.find(path) if TMP_MARK in str(p).rsplit("/", 1)[-1]] if fs.exists(path) else []
    for p in stray:
        _remove_quietly(fs, p)
    return [p[len(base):] for p in stray]


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
    """Write the manifest last: after this call the artifact is complete and valid. `config` and
    `parents` must hash to `ref.hash` (pass the plan's own: `ref.config`, `ref.parents`).

    checksums=None records the sha256 of every published file (`artifact_files`), so `smt verify`
    can check any artifact kind; stray temporaries of interrupted writes are removed first."""
    published = artifact_hash(ref.kind, config, parents)
    if published != ref.hash:
        raise ArtifactError(
            f"{ref.url}: refusing to publish a manifest whose config and parents hash to {published[:16]}, "
            f"not to the planned address {ref.hash[:16]} (the stage and its plan disagree: lineage would drift)"
        )
    remove_stray_temporaries(ref.url)
    if checksums is None:
        checksums = {name: file_checksum(ref.join(name)) for name in artifact_files(ref.url)}
    manifest = Manifest(
        kind=ref.kind,  # type: ignore[arg-type]
        hash=ref.hash,
        parents=parents,
        config=config,
        packages=package_versions(),
        counts=counts or {},
        checksums=checksums,
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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{murl} is not valid JSON (truncated or damaged?): {err}") from err
    if not isinstance(raw, dict):
        raise ManifestError(f"{murl} is malformed: a JSON {type(raw).__name__}, expected an object")
    version = raw.get("schema_version")
    if version is None:
        raise ManifestError(f"{murl} is malformed: field 'schema_version' is missing")
    if not isinstance(version, int):
        raise ManifestError(f"{murl} is malformed: field 'schema_version' is {version!r}, expected an integer")
    if version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{url} has schema_version {version}, newer than this code's {SCHEMA_VERSION}: upgrade smt"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        raise ManifestError(f"{murl} is malformed: {describe_validation(err)}") from err
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
