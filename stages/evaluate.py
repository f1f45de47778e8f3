"""Evaluation stage: per-position read loss of every RNN against the teacher ceiling, plus samples.

Artifact layout (kind "evaluation"):

    evaluation-{hash16}/metrics.parquet   rnn, variant, mode, start, position, step, loss_nats, loss_bits,
                                          accuracy, count  (one row per position with a target; the teacher's
                                          ceiling has rnn="teacher", mode="teacher_dec0")
                       /summary.parquet   rnn, variant, mode, start, mean_bits, first/last_quarter_bits,
                                          accuracy, count  (count-weighted over positions)
                       /read_loss_teacher.png, /read_loss_init.png    per-position curves
                       /samples.json      continuations of test prefixes, text for byte vocabularies
                       /samples-{rnn}.png image samples when the data are 784-long pixel sequences
                       /manifest.json     config = EvalConfig; parents rnn:{name}, tokens, teacher, labels

Read loss (docs/method.md section 7): on `num_sequences` test sequences, start="teacher" runs the RNN from
the teacher's memory of the first `prefix_len` tokens; start="init" runs it from its initial memory
over the same prefix (unscored). Both score the same `steps` positions, where the teacher's own
L_dec0 (memory of a full context, readout) is the ceiling an RNN can approach.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models.rnn import RNN
from models.teacher import Teacher
from schemas.config import EvalConfig
from schemas.layout import SPLIT_TEST
from schemas.manifest import Manifest
from store.artifacts import (
    ArtifactError,
    ArtifactRef,
    is_complete,
    open_artifact,
    publish_manifest,
    require_parent,
    write_bytes_atomic,
)
from store.crops import DocumentCrops
from store.evaluation import decode_text, is_byte_text, is_pixel_data, plot_images, plot_read_loss
from store.locks import one_writer
from store.plans import plan_evaluate
from store.rnn import load_rnn, mode_of
from store.teacher import load_teacher
from store.tokens import TokensArtifact
from store.weights import save_json
from training.distributed import init_distributed, rank_device
from training.evaluation import read_metrics_per_position, sample
from training.loop import resolve_device
from training.losses import token_cross_entropy
from training.windows import encode_positions

LN2 = math.log(2)


def evaluation_sequences(
    crops: DocumentCrops, cfg: EvalConfig, from_start: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(N, prefix_len + steps) test sequences: document starts when there are enough documents (or
    `from_start`, e.g. images), else seeded crops (a few long documents, e.g. one book)."""
    length = cfg.prefix_len + cfg.steps
    if from_start or crops.num_docs >= cfg.num_sequences:
        return crops.prefixes(cfg.num_sequences, length)
    return crops.windows(np.random.default_rng(cfg.seed), cfg.num_sequences, length)


@torch.no_grad()
def read_loss_rows(
    rnn: RNN, teacher: Teacher, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig, start: str
) -> list[dict[str, Any]]:
    """Per-position loss/accuracy/count of one RNN and start, accumulated over batches of sequences."""
    n = cfg.steps
    loss, correct, count = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    for i in range(0, x.shape[0], cfg.batch_size):
        out = read_metrics_per_position(
            rnn, x[i : i + cfg.batch_size], y[i : i + cfg.batch_size], start, teacher, cfg.prefix_len, n
        )
        c = out["count"].cpu()
        loss += torch.nan_to_num(out["loss"].cpu()) * c
        correct += torch.nan_to_num(out["accuracy"].cpu()) * c
        count += c
    return _position_rows(loss, correct, count, cfg.prefix_len)


@torch.no_grad()
def teacher_ceiling_rows(teacher: Teacher, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig) -> list[dict[str, Any]]:
    """Teacher L_dec0 at every scored position: readout of the encoder memory of a full context."""
    n = cfg.steps
    loss, correct, count = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    positions = torch.arange(cfg.prefix_len, cfg.prefix_len + n, device=x.device)
    for i in range(0, x.shape[0], cfg.batch_size):
        xb, yb = x[i : i + cfg.batch_size], y[i : i + cfg.batch_size]
        ends = positions.expand(xb.shape[0], n)
        m = encode_positions(teacher, xb, ends, batch_size=1024)  # (b, n, Z)
        logits = teacher.readout(m.reshape(-1, m.shape[-1])).view(xb.shape[0], n, -1)
        targets = yb[:, cfg.prefix_len : cfg.prefix_len + n]
        ce, valid = token_cross_entropy(logits, targets)
        loss += ce.sum(0).cpu()
        correct += ((logits.argmax(-1) == targets) & valid).sum(0).cpu()
        count += valid.sum(0).cpu()
    return _position_rows(loss, correct, count, cfg.prefix_len)


def _position_rows(loss: torch.Tensor, correct: torch.Tensor, count: torch.Tensor, prefix: int) -> list[dict]:
    rows = []
    for i in range(loss.numel()):
        c = int(count[i])
        nats = float(loss[i]) / c if c else float("nan")
        acc = float(correct[i]) / c if c else float("nan")
        rows.append(
            {"position": prefix + i, "step": i, "loss_nats": nats, "loss_bits": nats / LN2, "accuracy": acc, "count": c}
        )
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Count-weighted mean bits over all positions and over the first / last quarter of them.

    A figure over positions with no scored target (sparse synthetic tasks) is None, not NaN.
    """

    def mean(sel: list[dict[str, Any]], key: str) -> float | None:
        c = sum(r["count"] for r in sel)
        return sum(r[key] * r["count"] for r in sel if r["count"]) / c if c else None

    q = max(1, len(rows) // 4)
    return {
        "mean_bits": mean(rows, "loss_bits"),
        "first_quarter_bits": mean(rows[:q], "loss_bits"),
        "last_quarter_bits": mean(rows[-q:], "loss_bits"),
        "accuracy": mean(rows, "accuracy"),
        "count": sum(r["count"] for r in rows),
    }


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


@one_writer(plan_evaluate)
def evaluate_stage(
    rnn_urls: dict[str, str], tokens_url: str, teacher_url: str, labels_url: str, cfg: EvalConfig, root: str
) -> ArtifactRef:
    """Score every RNN in `rnn_urls` (name -> rnn artifact) on the test split; publish kind "evaluation".

    Lineage: the teacher must come from these tokens, and the label store and every RNN from this
    teacher; anything else is refused with a message naming the artifact.
    """
    ref = plan_evaluate(
        rnn_urls=rnn_urls, tokens_url=tokens_url, teacher_url=teacher_url, labels_url=labels_url, cfg=cfg, root=root
    )
    if is_complete(ref.url):
        return ref
    device = resolve_device(cfg.device)
    ctx = init_distributed(device)
    if not ctx.is_main:  # evaluation is cheap and single-process: other torchrun ranks just wait
        ctx.barrier()
        return ref
    device = rank_device(device, ctx)
    tokens_ref, _ = open_artifact(tokens_url, "tokens")
    teacher, teacher_manifest = load_teacher(teacher_url, device)
    require_parent(teacher_manifest, "tokens", tokens_ref.hash, f"teacher {teacher_url}")
    labels_ref, labels_manifest = open_artifact(labels_url, "labels")
    require_parent(labels_manifest, "teacher", teacher_manifest.hash, f"label store {labels_url}")
    rnns: dict[str, tuple[RNN, Manifest]] = {}
    for name, url in sorted(rnn_urls.items()):
        rnn, manifest = load_rnn(url, device)
        require_parent(manifest, "teacher", teacher_manifest.hash, f"RNN '{name}' ({url})")
        rnns[name] = (rnn, manifest)

    tokens = TokensArtifact.open(tokens_url)
    crops = DocumentCrops(tokens, SPLIT_TEST)
    x_np, y_np = evaluation_sequences(crops, cfg, from_start=is_pixel_data(crops.lengths, tokens.vocab_size))
    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)

    metrics: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    ceiling = teacher_ceiling_rows(teacher, x, y, cfg)
    if not any(r["count"] for r in ceiling):
        last = cfg.prefix_len + cfg.steps - 1
        raise ArtifactError(
            f"evaluation would score nothing: the {x.shape[0]} test sequences have no targets at positions "
            f"{cfg.prefix_len}..{last} (synthetic tasks score only their answer positions); "
            "raise evaluate.steps or change evaluate.prefix_len"
        )
    head = {"rnn": "teacher", "variant": "teacher", "seed": None, "mode": "teacher_dec0", "start": "teacher"}
    metrics += [{**head, **r} for r in ceiling if r["count"]]  # unscored positions carry nothing
    summary.append({**head, **summarise(ceiling)})
    for name, (rnn, manifest) in rnns.items():
        # a BPTT RNN never saw the teacher's memory space, so only its own initial memory is meaningful
        starts = ("init",) if mode_of(manifest) == "bptt" else ("teacher", "init")
        for start in starts:
            rows = read_loss_rows(rnn, teacher, x, y, cfg, start)
            head = {"rnn": name, "variant": rnn.cfg.base_label, "seed": rnn.cfg.seed, "mode": mode_of(manifest),
                    "start": start}
            metrics += [{**head, **r} for r in rows if r["count"]]
            summary.append({**head, **summarise(rows)})

    table = pa.Table.from_pylist(metrics)
    ref_ceiling = {r["position"]: r["loss_bits"] for r in ceiling}
    for start in ("teacher", "init"):
        plot_read_loss(ref.join(f"read_loss_{start}.png"), table, start, ref_ceiling)
    samples = write_samples(ref, rnns, teacher, x, crops, tokens.vocab_size, cfg)
    write_bytes_atomic(ref.join("metrics.parquet"), _parquet(metrics))
    write_bytes_atomic(ref.join("summary.parquet"), _parquet(summary))
    stats = {
        "summary": [{k: r[k] for k in ("rnn", "mode", "start", "mean_bits", "accuracy")} for r in summary],
        "teacher_dec0_bits": summary[0]["mean_bits"],
        "sequences": int(x.shape[0]),
        "samples": samples,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    counts = {"rnns": len(rnns), "sequences": int(x.shape[0]), "positions": cfg.steps}
    publish_manifest(ref, ref.config, ref.parents, counts=counts, stats=stats)
    ctx.barrier()
    return ref


@torch.no_grad()
def write_samples(
    ref: ArtifactRef,
    rnns: dict[str, tuple[RNN, Manifest]],
    teacher: Teacher,
    x: torch.Tensor,
    crops: DocumentCrops,
    vocab_size: int,
    cfg: EvalConfig,
) -> str:
    """Continue the first `num_samples` test prefixes with every RNN, from the teacher's prefix memory.

    Pixel data (784-long documents) become PNG rows (truth first, then each RNN's completion);
    anything else is written as text (byte vocabularies decoded, others as token ids) in samples.json.
    Returns the kind of samples written: 'images', 'text', 'tokens' or 'none'.
    """
    n = min(cfg.num_samples, x.shape[0])
    if n == 0:
        return "none"
    pixels = is_pixel_data(crops.lengths, vocab_size)
    prefix = x[:n, : cfg.prefix_len]
    ends = torch.full((n,), cfg.prefix_len - 1, dtype=torch.long, device=x.device)
    memory = encode_positions(teacher, prefix, ends).float()
    length = crops.lengths.max() - cfg.prefix_len if pixels else cfg.sample_len
    records: list[dict[str, Any]] = []
    for name, (rnn, _) in rnns.items():
        generator = torch.Generator(device=x.device).manual_seed(cfg.seed)
        out = sample(rnn, memory, int(length), cfg.temperature, generator).cpu().numpy()
        if pixels:
            truth = crops.prefixes(n, int(crops.lengths.max()))[0]
            images = [truth[i] for i in range(n)]
            images += [np.concatenate([prefix[i].cpu().numpy(), out[i]]) for i in range(n)]
            titles = ["truth"] * n + [name] * n
            plot_images(ref.join(f"samples-{_safe(name)}.png"), images, titles)
        for i in range(n):
            p, c = prefix[i].cpu().numpy(), out[i]
            text = is_byte_text(vocab_size) and not pixels
            records.append(
                {
                    "rnn": name,
                    "index": i,
                    "prefix": decode_text(p) if text else p.tolist(),
                    "continuation": decode_text(c) if text else c.tolist(),
                }
            )
    save_json(ref.join("samples.json"), records)
    if not pixels:  # the report shows *.txt files verbatim: text quoted, token ids as lists
        for name in rnns:
            mine = [r for r in records if r["rnn"] == name]
            lines = [f"[{r['index']}] {_shown(r['prefix'])} -> {_shown(r['continuation'])}" for r in mine]
            write_bytes_atomic(ref.join(f"samples-{_safe(name)}.txt"), "\n".join(lines).encode())
    return "images" if pixels else ("text" if is_byte_text(vocab_size) else "tokens")


def _shown(sample: str | list[int]) -> str:
    return repr(sample) if isinstance(sample, str) else " ".join(str(t) for t in sample)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
