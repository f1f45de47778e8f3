"""The `manifest.json` every artifact carries: what it is, where it came from, how to check it.

A directory is a valid artifact only once its manifest exists (the manifest is written last).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.config import SCHEMA_VERSION

ArtifactKind = Literal["tokens", "teacher", "labels", "rnn", "teacher_choice", "evaluation", "report"]
TRACKED_PACKAGES = ("smt-pipeline", "torch", "apache-beam", "zarr", "pyarrow", "prefect", "fsspec", "numpy")


class Manifest(BaseModel):
    """Provenance and integrity record of one artifact."""

    model_config = ConfigDict(extra="forbid")

    kind: ArtifactKind = Field(description="what the artifact is")
    schema_version: int = Field(SCHEMA_VERSION, description="layout version; readers refuse newer ones")
    hash: str = Field(description="content address: sha256 of kind, schema version, config and parents")
    parents: dict[str, str] = Field(default_factory=dict, description="role -> parent artifact hash")
    config: dict[str, Any] = Field(default_factory=dict, description="the config that produced it")
    packages: dict[str, str] = Field(default_factory=dict, description="package versions at creation")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    counts: dict[str, int] = Field(default_factory=dict, description="rows, elements, windows …")
    checksums: dict[str, str] = Field(default_factory=dict, description="file or chunk -> sha256")
    stats: dict[str, Any] = Field(default_factory=dict, description="kind-specific figures (label stats, metrics)")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values always give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def artifact_hash(
    kind: str, config: dict[str, Any], parents: dict[str, str], code: str | None = None,
    schema_version: int | None = None,
) -> str:
    """Content address of an artifact: same inputs + same config + same schema -> same hash.

    code / schema_version default to this code's; `smt verify` passes a manifest's own to recheck it."""
    payload = {"kind": kind, "schema_version": SCHEMA_VERSION if schema_version is None else schema_version,
               "code": code_version() if code is None else code, "config": config, "parents": parents}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def code_version() -> str:
    """This project's version: a release that changes results must not re-use older artifacts."""
    try:
        return metadata.version("smt-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes an artifact's bytes."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
