"""`smt verify URL`: check any artifact against its manifest, and the manifest against itself.

Three layers, each a list of one-line problems (empty = healthy):
  1. the manifest: readable, complete, and its hash the address of its own kind, config and parents;
  2. every file or chunk it records a sha256 for: present and unchanged;
  3. kind-specific checks: label stores (index, NaN scan, completion records), tokens (decoded values).
"""

from __future__ import annotations

from schemas.layout import ZARR_GROUP
from schemas.manifest import Manifest
from store.artifacts import ArtifactError, ManifestError, file_checksum, manifest_problems, read_manifest

VALUE_SUFFIX = " (int16 values)"  # tokens' checksums of decoded arrays, not of files


def verify_artifact(url: str) -> tuple[Manifest | None, list[str], list[str]]:
    """(manifest or None, problems, notes) for the artifact at `url`; raises ArtifactError when there
    is nothing to verify (no artifact, an unfinished one, a newer schema)."""
    try:
        manifest = read_manifest(url)
    except ManifestError as err:  # there is a manifest, and it is damaged: that is a finding
        return None, [str(err)], []
    problems = manifest_problems(url, manifest)
    notes: list[str] = []
    if manifest.kind == "labels":
        from store.labels import LabelStore

        try:
            problems += LabelStore.open(url).verify()  # chunk and index checksums, records, NaN scan
        except (ArtifactError, OSError) as err:
            problems.append(f"cannot open as a label store: {err}")
        return manifest, problems, notes
    if not manifest.checksums:
        notes.append(f"{manifest.kind} artifact records no checksums (published by older code): files not checked")
    problems += file_problems(url, manifest)
    if manifest.kind == "tokens":
        problems += _tokens_values(url)
    return manifest, problems, notes


def file_problems(url: str, manifest: Manifest) -> list[str]:
    """Every recorded file present with its recorded sha256."""
    problems = []
    for name, expected in sorted(manifest.checksums.items()):
        if name.endswith(VALUE_SUFFIX):
            continue
        try:
            actual = file_checksum(f"{url.rstrip('/')}/{name}")
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        if actual != expected:
            problems.append(f"{name} checksum mismatch (stored bytes changed since it was written)")
    return problems


def _tokens_values(url: str) -> list[str]:
    from schemas.layout import TARGETS_ARRAY, TOKENS_ARRAY
    from store.tokens import TokensArtifact

    try:
        tokens = TokensArtifact.open(url)
        for name in (TOKENS_ARRAY, TARGETS_ARRAY):
            tokens.load_checked(name)
    except ArtifactError as err:
        return [f"{ZARR_GROUP}: {err}"]
    except Exception as err:  # an array that does not decode at all
        return [f"{ZARR_GROUP}: cannot be decoded: {type(err).__name__}: {err}"]
    return []
