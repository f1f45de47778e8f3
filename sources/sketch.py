"""Sketch tokens: binarised images cut into 2x2 patches, each patch one token in [0, 16).

This is the paper's "Sketchy" setup: a binary 2x2 patch has 16 possible states, so a 28x28 image
becomes a 14x14 = 196-token document (64x64 -> 1024) with a tiny vocabulary, which makes image
modelling a long-range memory task instead of a pixel-intensity regression.
"""

from __future__ import annotations

import numpy as np

from sources.errors import SourceError
from sources.idx import read_idx_images

SKETCH_VOCAB = 16  # 2x2 binary patch states
DEFAULT_THRESHOLD = 128  # pixel >= threshold is "ink"


def binarise(images: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> np.ndarray:
    """(N, H, W) uint8 -> (N, H, W) uint8 in {0, 1}: 1 where the pixel is >= threshold."""
    return (images >= threshold).astype(np.uint8)


def patch_tokens(binary: np.ndarray) -> np.ndarray:
    """(N, H, W) binary -> (N, H/2 * W/2) int64 patch tokens, patches in row-major order.

    Token bits, most significant first: top-left, top-right, bottom-left, bottom-right, so a patch
    reads like the 4-bit number of its pixels in reading order.
    """
    n, h, w = binary.shape
    if h % 2 or w % 2:
        raise SourceError(f"sketch tokens need even image sides, got {h}x{w}")
    p = binary.reshape(n, h // 2, 2, w // 2, 2).astype(np.int64)
    tokens = 8 * p[:, :, 0, :, 0] + 4 * p[:, :, 0, :, 1] + 2 * p[:, :, 1, :, 0] + p[:, :, 1, :, 1]
    return tokens.reshape(n, -1)


def sketch_sequences(
    url: str, threshold: int = DEFAULT_THRESHOLD, max_docs: int | None = None
) -> list[np.ndarray]:
    """One int64 document of patch tokens per image of an idx file (28x28 -> 196 tokens)."""
    images = read_idx_images(url)
    if max_docs is not None:
        images = images[:max_docs]
    return list(patch_tokens(binarise(images, threshold)))
