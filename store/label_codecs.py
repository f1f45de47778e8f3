"""How a label store keeps its memories: one codec per `labels.dtype` (registered in schemas/registry.py).

A codec turns float32 memories (..., Z) into what is stored and back. `scaled` codecs also store one
float32 scale per memory token (the `memory_scale` array, (..., K)); readers multiply it back in.
Adding a codec is a class here and a line in the registry; the layout, the label job and the readers
ask the codec, never the dtype's name.
"""

from __future__ import annotations

import numpy as np

from schemas.registry import LABEL_CODECS, resolve

INT8_LEVELS = 127  # int8 memories hold round(m / scale), scale = absmax over D / 127 per memory token


class Float16Codec:
    """Half precision: ~3 significant digits, which the regression targets barely notice."""

    stored_dtype = "float16"
    scaled = False

    def encode(self, memory: np.ndarray, memory_tokens: int) -> tuple[np.ndarray, None]:
        return memory.astype(np.float16), None

    def decode(self, stored: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(stored, dtype=np.float32)


class Int8Codec:
    """Half the bytes of float16: one int8 per value and one float32 absmax scale per memory token."""

    stored_dtype = "int8"
    scaled = True

    def encode(self, memory: np.ndarray, memory_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        return quantize_int8(memory, memory_tokens)

    def decode(self, stored: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        assert scale is not None, "an int8 store needs its memory_scale"
        return dequantize_int8(np.asarray(stored), np.asarray(scale))


def codec_for(dtype: str) -> Float16Codec | Int8Codec:
    """The codec registered for a store's `labels.dtype`."""
    if dtype not in LABEL_CODECS:
        raise ValueError(f"unknown label dtype '{dtype}', expected one of {', '.join(LABEL_CODECS)}")
    return resolve(LABEL_CODECS[dtype])()


def quantize_int8(memory: np.ndarray, memory_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(..., Z) float -> (int8 (..., Z), scale float32 (..., K)): per-memory-token absmax scaling.

    Labels are RMS-normalised per token, so one scale per token keeps the relative error ~0.5/127 of
    the token's largest value whatever the token's spread.
    """
    lead = memory.shape[:-1]
    tokens = memory.astype(np.float32).reshape(*lead, memory_tokens, -1)
    scale = np.abs(tokens).max(axis=-1) / INT8_LEVELS
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    q = np.clip(np.rint(tokens / safe), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return q.reshape(memory.shape), scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of `quantize_int8`: (..., Z) int8 with (..., K) scales -> (..., Z) float32."""
    k = scale.shape[-1]
    out = q.astype(np.float32).reshape(*q.shape[:-1], k, -1) * scale[..., None]
    return out.reshape(q.shape)
