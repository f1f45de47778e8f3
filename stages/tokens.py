"""Stage 1 of the flow: config -> tokens artifact (no inputs; cached on the config's hash)."""

from __future__ import annotations

from schemas.config import TokensConfig
from store.artifacts import ArtifactRef
from store.tokens import build_tokens_artifact


def tokens_stage(cfg: TokensConfig, root: str) -> ArtifactRef:
    """Publish (or find) the tokens artifact of `cfg` under `root`; a thin wrapper so the flow,
    the CLI and tests all go through the same content-addressed builder."""
    return build_tokens_artifact(cfg, root)
