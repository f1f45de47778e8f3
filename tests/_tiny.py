"""The small model configs unit tests share: one factory, each test overriding only what it is about."""

from __future__ import annotations

from typing import Any

from schemas.config import TeacherModelConfig

TINY = dict(vocab_size=9, width=16, heads=2, encoder_depth=1, decoder_depth=1, mlp_ratio=2,
            memory_tokens=4, memory_dim=8, context_len=6, future_len=3)


def tiny_teacher(**overrides: Any) -> TeacherModelConfig:
    """A teacher shape of a few thousand parameters (tests/_fixtures_labels.py has the pipeline's)."""
    return TeacherModelConfig(**{**TINY, **overrides})
