"""Rendering for the evaluation artifact: per-position loss plots, text and image samples.

Kept apart from `stages/evaluate.py` so the numbers and their pictures can change independently.
matplotlib runs headless (Agg) and every figure is written as PNG bytes through fsspec.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from store.artifacts import write_bytes_atomic  # noqa: E402

PIXEL_SEQUENCE = 784  # MNIST-style 28x28 images read as 784-long pixel sequences


def is_pixel_data(lengths: np.ndarray, vocab_size: int) -> bool:
    """Every document exactly 784 tokens over a byte vocabulary: images, rendered as 28x28."""
    return lengths.size > 0 and bool(np.all(lengths == PIXEL_SEQUENCE)) and vocab_size <= 256


def is_byte_text(vocab_size: int) -> bool:
    """Tokens are bytes (ASCII or Latin-1 text) rather than a small synthetic vocabulary, which would
    print as '?' characters: those are shown as token ids instead."""
    return 128 <= vocab_size <= 256


def decode_text(tokens: np.ndarray) -> str:
    """Byte tokens -> printable text; anything outside printable ASCII becomes '?' (-1 pads dropped)."""
    chars = []
    for t in tokens.tolist():
        if t < 0:
            continue
        chars.append(chr(t) if 32 <= t < 127 or t in (9, 10) else "?")
    return "".join(chars)


def png_bytes(fig: plt.Figure) -> bytes:
    """A figure as PNG bytes (closed afterwards)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_read_loss(url: str, metrics: pa.Table, start: str, ceiling: dict[int, float] | None) -> None:
    """`read_loss_figure` as a PNG at `url`."""
    write_bytes_atomic(url, png_bytes(read_loss_figure(metrics, start, ceiling)))


def read_loss_figure(metrics: pa.Table, start: str, ceiling: dict[int, float] | None) -> plt.Figure:
    """Loss (bits/token) against position, one series per RNN, for one start ('teacher' or 'init'),
    with the teacher's L_dec0 at the same positions as the ceiling.

    A task that scores a single position (retrieval's answer) gets a bar per RNN instead of lines that
    would have one point each; every series has its own colour and marker."""
    rows = [r for r in metrics.to_pylist() if r["start"] == start and r["mode"] != "teacher_dec0"]
    names = sorted({r["rnn"] for r in rows})
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    positions = sorted({r["position"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, max(4.0, 0.3 * len(names))) if len(positions) == 1 else (7, 4))
    if len(positions) == 1:
        values = [next(r["loss_bits"] for r in rows if r["rnn"] == name) for name in names]
        ax.barh(range(len(names)), values, color=[colours(i) for i in range(len(names))])
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        if ceiling and positions[0] in ceiling:
            ax.axvline(ceiling[positions[0]], color="k", linestyle="--", label="teacher L_dec0")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"read loss at position {positions[0]} (bits/token), the only scored position")
    else:
        markers = "o^sDv<>pP*X"
        for i, name in enumerate(names):
            pts = sorted((r["position"], r["loss_bits"]) for r in rows if r["rnn"] == name)
            ax.plot([p for p, _ in pts], [v for _, v in pts], label=name, linewidth=1.2, color=colours(i),
                    marker=markers[i % len(markers)], markersize=3)
        if ceiling:
            pts = sorted(ceiling.items())
            ax.plot([p for p, _ in pts], [v for _, v in pts], "k--", label="teacher L_dec0", linewidth=1.0)
        ax.set_xlabel("position in sequence")
        ax.set_ylabel("read loss (bits/token)")
        ax.legend(fontsize=7)
    ax.set_title(f"per-position read loss, start from {start} memory")
    ax.grid(alpha=0.3)
    return fig


def plot_images(url: str, images: list[np.ndarray], titles: list[str]) -> None:
    """A row of 28x28 images (pixel values 0..255, -1 shown black)."""
    n = max(1, len(images))
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9), squeeze=False)
    for ax, img, title in zip(axes[0], images, titles, strict=False):
        side = int(math.isqrt(img.size))
        ax.imshow(np.clip(img, 0, 255).reshape(side, side), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    write_bytes_atomic(url, png_bytes(fig))


def loss_vs_compute_figure(points: list[dict[str, object]], curves: Sequence[dict[str, object]] = ()) -> plt.Figure:
    """Held-out loss (bits/token, from the initial memory) against training compute (TFLOP, log scale):
    one marker per student and baseline on the test split (`points`: label, mode, tflop, bits); SMT+DMT
    appears twice, alone and with its share of the teacher and the label job (hollow), so both readings are
    visible. `curves` (label, mode, tflop list, bits list): the checks each one made while it trained, as thin
    lines in the variant's colour. Those read documents held out from training (mostly train-split ones, with
    that split's label noise where a task adds it), so they need not meet the markers, which read the test split."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = {"smt": "o", "smt+dmt": "s", "smt+dmt + shared": "s", "bptt": "^", "bptt-plateau": "v"}
    styles = {"smt+dmt": "-", "bptt": ":", "bptt-plateau": "--"}
    colours = plt.get_cmap("tab10")
    variants = sorted({str(p["label"]) for p in [*points, *curves]})
    for c in curves:
        colour = colours(variants.index(str(c["label"])) % 10)
        ax.plot(c["tflop"], c["bits"], linestyle=styles.get(str(c["mode"]), "-"), linewidth=0.9, alpha=0.6,
                color=colour)
    for p in points:
        colour = colours(variants.index(str(p["label"])) % 10)
        hollow = p["mode"] == "smt+dmt + shared"
        ax.scatter([p["tflop"]], [p["bits"]], marker=markers.get(str(p["mode"]), "x"), s=48,
                   facecolors="none" if hollow else colour, edgecolors=colour)
    for name in variants:  # one legend entry per variant (colour) and per mode (marker)
        ax.scatter([], [], color=colours(variants.index(name) % 10), marker="o", label=name)
    for mode, marker in markers.items():
        ax.scatter([], [], color="grey", marker=marker, label=mode, facecolors="none" if "shared" in mode else "grey")
    for mode in sorted({str(c["mode"]) for c in curves}):
        ax.plot([], [], color="grey", linestyle=styles.get(mode, "-"), label=f"{mode}: checks while training")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))  # a short range gets readable ticks
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("training compute (TFLOP, from the shapes)")
    ax.set_ylabel("held-out loss from the initial memory (bits/token)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def plot_loss_vs_compute(url: str, points: list[dict[str, object]], curves: Sequence[dict[str, object]] = ()) -> None:
    write_bytes_atomic(url, png_bytes(loss_vs_compute_figure(points, curves)))
