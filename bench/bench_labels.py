"""Label generation throughput: the encoder alone (forward passes) and end to end through the Beam job.

    python bench/bench_labels.py                      # published teacher size (slow on a CPU)
    python bench/bench_labels.py --windows 2 --encoder-labels 512 --trajectory-len 64

Random tokens and a random teacher of the requested size (speed does not depend on the weights), so
no trained artifact is needed. Prints one JSON line: device, command, sizes and labels/s figures:
  encoder_labels_per_s   teacher.encode only, batches of --batch-size contexts of Tc tokens
                         (bf16 autocast on CUDA, fp32 on CPU; inference_mode; --compile: models/compiled.py)
  encoder_tflops         that rate x encoder_gflop_per_label (and encoder_pct_of_peak on CUDA)
  pipeline_labels_per_s  labels written / wall-clock of materialize_labels (Beam start-up, worker
                         setup, window cutting, encode + readout loss, Zarr writes, manifest)
  worker_labels_per_s    labels / time spent inside encode_windows in the workers (encode + readout)
  pipeline_of_encoder    pipeline / encoder labels/s; with --pairs N the two are measured N times, alternating
                         (a fresh store each time), and every figure is the median: on a shared machine a
                         sequential pair moved this ratio between 0.78 and 1.07
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import build_teacher  # noqa: E402
from models.compiled import compile_blocks  # noqa: E402
from pipelines.materialize_labels import materialize_labels  # noqa: E402
from schemas.config import BeamConfig, LabelSpec, TeacherModelConfig, TeacherTrainConfig, TokensConfig  # noqa: E402
from store.artifacts import plan_artifact, publish_manifest, read_manifest  # noqa: E402
from store.teacher import TEACHER_FILE  # noqa: E402
from store.tokens import build_tokens_artifact  # noqa: E402
from store.weights import save_module  # noqa: E402
from training.loop import resolve_device  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TeacherModelConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--encoder-depth", type=int, default=d.encoder_depth)
    p.add_argument("--decoder-depth", type=int, default=d.decoder_depth)
    p.add_argument("--memory-tokens", type=int, default=d.memory_tokens)
    p.add_argument("--memory-dim", type=int, default=d.memory_dim)
    p.add_argument("--context-len", type=int, default=d.context_len)
    p.add_argument("--future-len", type=int, default=d.future_len)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--trajectory-len", type=int, default=LabelSpec().trajectory_len, help="L")
    p.add_argument("--windows", type=int, default=4, help="windows labelled by the pipeline run")
    p.add_argument("--shard-windows", type=int, default=1, help="windows per work unit")
    p.add_argument("--encoder-labels", type=int, default=1024, help="contexts encoded by the encoder-only run")
    p.add_argument("--batch-size", type=int, default=LabelSpec().batch_size)
    p.add_argument("--dtype", choices=["float16", "int8"], default="float16")
    p.add_argument("--device", default="auto")
    p.add_argument("--runner", default="FnApiRunner")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--root", default=None, help="where artifacts go (default: a temporary directory)")
    p.add_argument("--doc-len", type=int, default=0,
                   help="tokens per random document of the pipeline run (default 4*Tc+L: most contexts full)")
    p.add_argument("--compile", action="store_true", help="teacher blocks through torch.compile (labels.compile)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the GPU's dense bf16 peak, for encoder_pct_of_peak (H100 SXM: 989)")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--pairs", type=int, default=1, help="alternating (encoder, pipeline) measurements; medians")
    p.add_argument("--reader-windows", type=int, default=0,
                   help="also time LabelStore.transitions/trajectories on a random store of this many windows")
    p.add_argument("--verify-rounds", type=int, default=0,
                   help="reader bench: rounds alternating verified and unverified reads (verify-on-read cost)")
    p.add_argument("--reader-batch", type=int, default=128, help="batch size of the reader benchmark")
    p.add_argument("--reader-device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where LabelStore.transitions(device=...) gathers batches (device_transitions_per_s)")
    return p.parse_args(argv)


def encoder_flops_per_label(cfg: TeacherModelConfig) -> float:
    """Forward FLOPs of one encoding (matmuls and attention scores; norms and rotary ignored).

    Per layer over T = Tc + K positions: 2*T*(4 W^2 + 3 W H) for qkv/out and the SwiGLU (hidden H),
    plus 4*T^2*W for QK^T and AV; the projection to D. Published size: 5.2 GFLOP (the paper's 4.0 is
    nn.TransformerEncoder's two-matrix MLP at the same width).
    """
    t, w, h = cfg.context_len + cfg.memory_tokens, cfg.width, cfg.mlp_ratio * cfg.width
    per_layer = 2 * t * (4 * w * w + 3 * w * h) + 4 * t * t * w
    proj = 0 if cfg.memory_dim == w else 2 * cfg.memory_tokens * w * cfg.memory_dim
    return float(cfg.encoder_depth * per_layer + proj)


def bench_encoder(
    teacher: torch.nn.Module, cfg: TeacherModelConfig, n: int, batch: int, device: torch.device, compile: bool = False
) -> float:
    """labels/s of teacher.encode on full random contexts (after warm-up batches)."""
    x = torch.randint(0, cfg.vocab_size, (min(batch, n), cfg.context_len), device=device)
    encode = teacher.encoder
    if compile:
        compile_blocks(teacher)  # in place, as labels.compile does in every worker
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for _ in range(3 if compile else 1):
            encode(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, done = time.perf_counter(), 0
        while done < n:
            encode(x)
            done += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = TeacherModelConfig(
        vocab_size=args.vocab_size, width=args.width, heads=args.heads, encoder_depth=args.encoder_depth,
        decoder_depth=args.decoder_depth, memory_tokens=args.memory_tokens, memory_dim=args.memory_dim,
        context_len=args.context_len, future_len=args.future_len,
    )
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = build_teacher(cfg).to(device).eval()
    result: dict = {
        "bench": "labels",
        "device": describe_device(device),
        "command": "python " + shlex.join(["bench/bench_labels.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": cfg.model_dump(),
        "params": sum(p.numel() for p in teacher.parameters()),
        "batch_size": args.batch_size,
        "encoder_labels": args.encoder_labels,
        "encoder_compiled": args.compile,
        "encoder_gflop_per_label": round(encoder_flops_per_label(cfg) / 1e9, 3),
    }
    encoder_rates, pipelines = [], []
    inputs = None if args.skip_pipeline else publish_random_teacher(args, cfg, teacher)
    for i in range(max(args.pairs, 1)):
        encoder_rates.append(bench_encoder(teacher, cfg, args.encoder_labels, args.batch_size, device, args.compile))
        if inputs is not None:
            pipelines.append(bench_pipeline(args, inputs, keep=i == max(args.pairs, 1) - 1))
    rate = statistics.median(encoder_rates)
    result["encoder_labels_per_s"] = round(rate, 1)
    result["encoder_tflops"] = round(rate * encoder_flops_per_label(cfg) / 1e12, 2)
    if device.type == "cuda":
        result["encoder_pct_of_peak"] = round(100 * result["encoder_tflops"] / args.peak_tflops, 1)
    if pipelines:
        result.update(pipelines[-1])
        for key in ("pipeline_seconds", "pipeline_labels_per_s", "worker_labels_per_s"):
            result[key] = round(statistics.median(p[key] for p in pipelines), 2)
        result["pipeline_of_encoder"] = round(result["pipeline_labels_per_s"] / rate, 3)
        result["worker_of_encoder"] = round(result["worker_labels_per_s"] / rate, 3)
        if len(pipelines) > 1:
            result["encoder_all"] = [round(r, 1) for r in encoder_rates]
            result["pipeline_all"] = [p["pipeline_labels_per_s"] for p in pipelines]
    if args.reader_windows:
        result.update(bench_reader(args, cfg))
    print(json.dumps(result))
    return result


def publish_random_teacher(args: argparse.Namespace, cfg: TeacherModelConfig, teacher: torch.nn.Module) -> dict:
    """Random documents as a tokens artifact and `teacher` published beside it: the label job's inputs."""
    root = args.root or tempfile.mkdtemp(prefix="smt-bench-labels-")
    length = args.doc_len or 4 * cfg.context_len + args.trajectory_len
    docs = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(args.windows, length))
    np.save(f"{root}/tokens.npy", docs)
    tokens = build_tokens_artifact(
        TokensConfig(source="npy", url=f"{root}/tokens.npy", vocab_size=cfg.vocab_size, test_fraction=0), root
    )
    config = TeacherTrainConfig(model=cfg).address_json()
    ref = plan_artifact(root, "teacher", config, {"tokens": tokens.hash})
    save_module(ref.join(TEACHER_FILE), teacher)
    publish_manifest(ref, config, {"tokens": tokens.hash})
    return {"root": root, "tokens": tokens.url, "teacher": ref.url, "doc_len": length}


def bench_pipeline(args: argparse.Namespace, inputs: dict, keep: bool = True) -> dict:
    """One run of the label job on `publish_random_teacher`'s inputs into a new store (removed after
    unless `keep`)."""
    from fsspec.core import url_to_fs

    spec = LabelSpec(
        trajectory_len=args.trajectory_len, num_windows=args.windows, shard_windows=args.shard_windows,
        batch_size=args.batch_size, dtype=args.dtype, device=args.device, compile=args.compile,
    )
    beam = BeamConfig(runner=args.runner, num_workers=args.workers)
    start = time.perf_counter()
    store = materialize_labels(inputs["tokens"], inputs["teacher"], spec, beam, inputs["root"])
    seconds = time.perf_counter() - start
    manifest = read_manifest(store.url, "labels")
    labels = manifest.counts["labels"]
    store_bytes = _bytes_under(store.url)
    if not keep:
        fs, path = url_to_fs(store.url)
        fs.rm(path, recursive=True)
    return {
        "pipeline_runner": f"{args.runner} x{args.workers}",
        "doc_len": inputs["doc_len"],
        "trajectory_len": args.trajectory_len,
        "windows": manifest.counts["num_windows"],
        "labels": labels,
        "pipeline_seconds": round(seconds, 2),
        "pipeline_labels_per_s": round(labels / seconds, 1),
        "worker_labels_per_s": round(labels / manifest.stats["encode_seconds"], 1),
        "store_bytes": store_bytes,
        "store": store.url,
    }


def _bytes_under(url: str) -> int:
    """Bytes of every file of a store (any fsspec URL): how store size grows with windows."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url)
    return int(fs.du(path, total=True))


def bench_reader(args: argparse.Namespace, cfg: TeacherModelConfig) -> dict:
    """Transitions/s and trajectories/s read back from a store of random (RMS-normalised) labels, one
    epoch each after an untimed warm-up epoch (a store of a few hundred windows is read in well under a
    second, so start-up costs would otherwise dominate)."""
    from pipelines.label_units import write_unit
    from pipelines.materialize_labels import finalize
    from store.label_layout import LabelGeometry, create_template, open_arrays
    from store.labels import LabelStore

    root = args.root or tempfile.mkdtemp(prefix="smt-bench-reader-")
    spec = LabelSpec(trajectory_len=args.trajectory_len, num_windows=args.reader_windows, dtype=args.dtype)
    ref = plan_artifact(root, "labels", spec.model_dump(mode="json"), {"tokens": "0" * 64, "teacher": "1" * 64})
    g = LabelGeometry.build(spec, cfg, args.reader_windows)
    create_template(ref.url, g, {})
    arrays, rng = open_arrays(ref.url, "r+"), np.random.default_rng(0)
    start = time.perf_counter()
    for shard in range(g.num_shards):
        n = np.subtract(*g.shard_range(shard)[::-1])
        m = rng.standard_normal((n, g.steps, g.memory_size), dtype=np.float32)
        x = rng.integers(0, cfg.vocab_size, (n, g.positions))
        write_unit(ref.url, arrays, g, shard, x, x, m, np.zeros((n, g.steps), np.float32))
    write_seconds = time.perf_counter() - start
    windows = np.arange(g.num_windows)
    plan = pa.table({"window": windows, "doc_id": windows, "anchor": windows * 0, "split": ["train"] * len(windows),
                     "shard": (windows // g.shard_windows).astype(np.int32)})
    finalize(ref, g, plan, spec.model_dump(mode="json"), {"tokens": "0" * 64, "teacher": "1" * 64})
    store = LabelStore.open(ref.url)
    device = torch.device(args.reader_device)
    for _ in store.transitions(args.reader_batch, seed=0, device=device):
        pass  # untimed: a first epoch's allocations and page faults (CUDA: context, pinned memory) skew it
    read_mb_s, supply_s = _bench_shard_reads(store, pin=device.type == "cuda")
    start, count = time.perf_counter(), 0
    for batch in store.transitions(args.reader_batch, seed=0):
        count += len(batch.m)
    transitions_s = count / (time.perf_counter() - start)
    start, count = time.perf_counter(), 0
    for batch in store.transitions(args.reader_batch, seed=0, device=device):
        count += len(batch.m)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    device_transitions_s = count / (time.perf_counter() - start)
    start, count = time.perf_counter(), 0
    stored = torch.float16 if args.dtype == "float16" else torch.float32
    for batch in store.transitions(args.reader_batch, seed=0, dtype=stored):
        count += len(batch.m)
    transitions_f16_s = count / (time.perf_counter() - start)
    start, count = time.perf_counter(), 0
    for traj in store.trajectories(max(1, args.reader_batch // 8), seed=0):
        count += len(traj.memory)
    verify_cost = _bench_verify_cost(ref.url, args.verify_rounds, args.reader_batch) if args.verify_rounds else {}
    return {
        **verify_cost,
        "reader_windows": g.num_windows,
        "reader_store_bytes": store.inspect()["size_on_disk_bytes"],
        "reader_write_mb_per_s": round(g.window_bytes() * g.num_windows / write_seconds / 1e6, 1),
        "transitions_per_s": round(transitions_s, 1),
        "transitions_per_s_stored_dtype": round(transitions_f16_s, 1),  # no float32 conversion on the CPU
        "trajectories_per_s": round(count / (time.perf_counter() - start), 1),
        "reader_device": describe_device(device),
        "shard_read_mb_per_s": round(read_mb_s, 1),  # read_shards into reused storage, stored bytes
        "supply_transitions_per_s": round(supply_s, 1),  # transitions in those shards / read time
        "device_transitions_per_s": round(device_transitions_s, 1),  # buffer copies + gathers on the device
    }


def _bench_shard_reads(store, pin: bool, shards_per_buffer: int = 4) -> tuple[float, float]:
    """(MB/s of stored bytes, transitions/s) of read_shards over every shard into reused storage: what
    storage and decompression can supply when batches are gathered on the device."""
    groups = [list(range(s, min(s + shards_per_buffer, store.num_shards)))
              for s in range(0, store.num_shards, shards_per_buffer)]
    buffer = store.read_shards(groups[0], pin=pin)  # allocates (and faults in) the storage once
    start, stored_bytes, transitions = time.perf_counter(), 0, 0
    for group in groups:
        buffer = store.read_shards(group, reuse=buffer, pin=pin)
        parts = (buffer.memory, buffer.scale, buffer.tokens, buffer.targets)
        stored_bytes += sum(a.nbytes for a in parts if a is not None)
        transitions += len(buffer.valid) * (buffer.steps - 1)
    seconds = time.perf_counter() - start
    return stored_bytes / seconds / 1e6, transitions / seconds


def _bench_verify_cost(url: str, rounds: int, batch: int) -> dict:
    """Throughput with and without verify-on-read (sha256 of every chunk as it is decoded), measured
    interleaved (verified, unverified, verified, ...) so drift on a shared machine hits both alike."""
    from store.labels import LabelStore

    def epoch(store: LabelStore) -> float:
        start, count = time.perf_counter(), 0
        for b in store.transitions(batch, seed=0):
            count += len(b.m)
        return count / (time.perf_counter() - start)

    runs: dict[str, list[float]] = {}
    for _ in range(rounds):
        for verify in (True, False):
            tag = "verified" if verify else "unverified"
            store = LabelStore.open(url, verify=verify)  # a fresh reader: every chunk is hashed (cold)
            runs.setdefault(f"read_{tag}", []).append(_bench_shard_reads(store, pin=False)[0])
            runs.setdefault(f"read_{tag}_again", []).append(_bench_shard_reads(store, pin=False)[0])
            store = LabelStore.open(url, verify=verify)
            runs.setdefault(f"epoch_{tag}", []).append(epoch(store))
            runs.setdefault(f"epoch_{tag}_again", []).append(epoch(store))  # 2nd epoch: hashes reused
    med = {k: float(np.median(v)) for k, v in runs.items()}
    out: dict = {"verify_rounds": rounds}
    for what, unit in (("read", "shard_read_mb_per_s"), ("epoch", "transitions_per_s")):
        for again in ("", "_again"):
            v, u = med[f"{what}_verified{again}"], med[f"{what}_unverified{again}"]
            label = "first" if not again else "again"
            out[f"{unit}_{label}_verified"] = round(v, 1)
            out[f"{unit}_{label}_unverified"] = round(u, 1)
            out[f"{unit}_{label}_ratio"] = round(v / u, 3)
    return out


if __name__ == "__main__":
    main()
