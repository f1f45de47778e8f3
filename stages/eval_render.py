"""Rendering for the evaluation artifact: per-position loss plots, text and image samples.

Kept apart from `stages/evaluate.py` so the numbers and their pictures can change independently.
matplotlib runs headless (Agg) and every figure is written as PNG bytes through fsspec.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from store.artifacts import write_bytes_atomic  # noqa: E402

PIXEL_SEQUENCE = 784  # MNIST-style 28x28 images read as 784-long pixel sequences


def is_pixel_data(lengths: np.ndarray, vocab_size: int) -> bool:
    """Every document exactly 784 tokens over a byte vocabulary: images, rendered as 28x28."""
    return lengths.size > 0 and bool(np.all(lengths == PIXEL_SEQUENCE)) and vocab_size <= 256


def decode_text(tokens: np.ndarray) -> str:
    """Byte tokens -> printable text; anything outside printable ASCII becomes '?' (-1 pads dropped)."""
    chars = []
    for t in tokens.tolist():
        if t < 0:
            continue
        chars.append(chr(t) if 32 <= t < 127 or t in (9, 10) else "?")
    return "".join(chars)


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_read_loss(url: str, metrics: pa.Table, start: str, ceiling: dict[int, float] | None) -> None:
    """Loss (bits/token) against position, one line per RNN, for one start ('teacher' or 'init'),
    with the teacher's L_dec0 at the same positions as the ceiling."""
    rows = [r for r in metrics.to_pylist() if r["start"] == start and r["mode"] != "teacher_dec0"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in sorted({r["rnn"] for r in rows}):
        pts = sorted((r["position"], r["loss_bits"]) for r in rows if r["rnn"] == name)
        ax.plot([p for p, _ in pts], [v for _, v in pts], label=name, linewidth=1.2)
    if ceiling:
        pts = sorted(ceiling.items())
        ax.plot([p for p, _ in pts], [v for _, v in pts], "k--", label="teacher L_dec0", linewidth=1.0)
    ax.set_xlabel("position in sequence")
    ax.set_ylabel("read loss (bits/token)")
    ax.set_title(f"per-position read loss, start from {start} memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    write_bytes_atomic(url, _png(fig))


def plot_images(url: str, images: list[np.ndarray], titles: list[str]) -> None:
    """A row of 28x28 images (pixel values 0..255, -1 shown black)."""
    n = max(1, len(images))
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9), squeeze=False)
    for ax, img, title in zip(axes[0], images, titles, strict=False):
        side = int(math.isqrt(img.size))
        ax.imshow(np.clip(img, 0, 255).reshape(side, side), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    write_bytes_atomic(url, _png(fig))
