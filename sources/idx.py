"""MNIST-format idx files (images and labels) from any fsspec URL, gzip-compressed or raw.

The idx layout: a big-endian header (magic = 0x0000 | type byte | number of dimensions, then one
uint32 per dimension), then the raw values. MNIST and Fashion-MNIST share it, so one validated
reader serves both; every way a download can go wrong (missing, corrupt gzip, wrong file, cut off)
is reported as a one-line `SourceError` before any token reaches an artifact.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np

from sources.errors import SourceError, read_url_bytes

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension (count)
PIXEL_VOCAB = 256  # pixel values 0..255 are the tokens

_GZIP_MAGIC = b"\x1f\x8b"


def read_idx_bytes(url: str) -> bytes:
    """Raw idx bytes, decompressed when the file is gzip (detected by content, or named .gz)."""
    data = read_url_bytes(url)
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise SourceError(f"{url}: corrupt or truncated gzip data ({err})") from err
    if url.endswith(".gz"):
        raise SourceError(f"{url}: corrupt gzip: the file does not start with the gzip signature")
    return data


def parse_idx(data: bytes, expected_magic: int, url: str = "<bytes>") -> np.ndarray:
    """Validate an idx buffer and return its uint8 values shaped (count, *dims).

    Checks the magic number (which also fixes the number of dimensions) and that the byte length is
    exactly header + prod(dims): a short file is truncated, a long one is not the file we think.
    """
    if len(data) < 4:
        raise SourceError(f"{url}: truncated idx file: {len(data)} bytes, not even a header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        kind = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}.get(expected_magic, "idx")
        raise SourceError(
            f"{url}: wrong idx magic number {magic} (0x{magic:08x}), expected {expected_magic} "
            f"for an {kind} file"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SourceError(f"{url}: truncated idx file: {len(data)} bytes, header needs {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if any(d == 0 for d in dims):
        raise SourceError(f"{url}: idx dimensions {dims} contain a zero")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) < expected:
        raise SourceError(
            f"{url}: truncated idx file: {len(data)} bytes, dimensions {dims} need {expected}"
        )
    if len(data) > expected:
        raise SourceError(
            f"{url}: idx file has {len(data) - expected} bytes beyond what dimensions {dims} describe"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(url: str) -> np.ndarray:
    """Images as uint8 (count, rows, cols)."""
    return parse_idx(read_idx_bytes(url), IMAGES_MAGIC, url)


def read_idx_labels(url: str) -> np.ndarray:
    """Class labels as uint8 (count,)."""
    return parse_idx(read_idx_bytes(url), LABELS_MAGIC, url)


def image_pixel_sequences(url: str, max_docs: int | None = None) -> list[np.ndarray]:
    """One int64 document per image: its pixels row-major (28x28 -> 784 tokens in [0, 256))."""
    images = read_idx_images(url)
    if max_docs is not None:
        images = images[:max_docs]
    flat = images.reshape(len(images), -1).astype(np.int64)
    return list(flat)
