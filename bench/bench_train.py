"""Training throughput: SMT transitions/s, DMT step time and a BPTT step, as JSON.

Defaults are the published sizes (the paper's, as schemas/config.py defaults: Transformer updater width 256 / depth 8 /
K=16 / D=256, SMT batch 128, DMT B=32 Td=256 k=16, BPTT B=128 T=64); flags shrink them for a CPU.
SMT is measured twice: compute only (synthetic label tensors already on the device) and, with
--store, end to end from a local label store through the prefetching loader, so the difference
is the cost of reading labels. Every figure is a full optimiser step (forward, backward, AdamW).

    python bench/bench_train.py --width 64 --depth 2 --K 4 --D 64 --td 32 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.build import build_rnn, build_teacher  # noqa: E402
from models.compiled import compile_blocks, compiled_update  # noqa: E402
from models.layers import normalize_memory  # noqa: E402
from schemas.config import DMTConfig, OptimConfig, RNNConfig, TeacherModelConfig  # noqa: E402
from training.loop import autocast, build_optimizer, resolve_device, to_device  # noqa: E402
from training.machine import cpu_model  # noqa: E402
from training.steps import bptt_step_loss, dmt_step_loss, smt_step_loss  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--kind", default="transformer", help="RNN variant (transformer, gru, lstm, mlp, gated_linear)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--K", type=int, default=16, help="memory tokens")
    p.add_argument("--D", type=int, default=256, help="memory token width")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--decoder-depth", type=int, default=4, help="teacher decoder (readout) depth")
    p.add_argument("--tf", type=int, default=64, help="Tf: decoder future length (DMT dec loss)")
    p.add_argument("--batch", type=int, default=128, help="SMT transitions per step")
    p.add_argument("--dmt-batch", type=int, default=32)
    p.add_argument("--td", type=int, default=256, help="DMT rollout length")
    p.add_argument("--k", type=int, default=16, help="DMT pull every k steps")
    p.add_argument("--bptt-batch", type=int, default=128)
    p.add_argument("--bptt-T", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocation, compile)")
    p.add_argument("--store", default=None, help="local label store URL for the end-to-end SMT figure")
    p.add_argument("--pairs", type=int, default=3, help="with --store: interleaved (compute, store) blocks")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 on CUDA")
    p.add_argument("--compile", action="store_true", help="as run.compile: blocks, DMT rollout compiled")
    p.add_argument("--skip", nargs="*", default=[], choices=["smt", "dmt", "bptt"])
    return p.parse_args(argv)


def cpu_name() -> str:
    """CPU model and visible cores (the figures depend on both)."""
    return f"cpu: {cpu_model()}, {os.cpu_count()} cores visible"


def compile_as_training(teacher: torch.nn.Module, rnn: torch.nn.Module) -> Callable:
    """What `run.compile: true` does to a teacher and an RNN (models/compiled.py): blocks compiled in place;
    returns the compiled update DMT's rollout runs."""
    compile_blocks(teacher)
    compile_blocks(rnn)
    return compiled_update(rnn.update)


def interleaved_rates(
    calls: list[Callable[[], None]], items: int, pairs: int, steps: int, device: torch.device
) -> list[list[float]]:
    """items/s of each call, measured `pairs` times in turn (call 0, call 1, ..., call 0, ...) so the
    machine's load hits all alike; each measurement is `timed` after one untimed call."""
    rates: list[list[float]] = [[] for _ in calls]
    for _ in range(pairs):
        for i, call in enumerate(calls):
            rates[i].append(items / timed(call, steps, 1, device))
    return rates


def timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call after `warmup` untimed calls (CUDA synchronised around each call).

    The median, not the mean: on a shared machine a few steps stall behind other processes.
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    device = resolve_device(a.device)
    model = TeacherModelConfig(
        vocab_size=a.vocab,
        width=a.width,
        heads=a.heads,
        decoder_depth=a.decoder_depth,
        encoder_depth=1,
        memory_tokens=a.K,
        memory_dim=a.D,
        future_len=a.tf,
    )
    variant = RNNConfig(kind=a.kind, width=a.width, depth=a.depth, heads=a.heads, hidden=a.hidden)
    torch.manual_seed(0)
    teacher = build_teacher(model).to(device).requires_grad_(False)
    rnn = build_rnn(variant, model, teacher).to(device)
    update = compile_as_training(teacher, rnn) if a.compile else None
    opt = build_optimizer(list(rnn.parameters()), OptimConfig())
    z = model.memory_size

    def optimise(loss_fn: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, a.amp):
                out = loss_fn()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(rnn.parameters(), 1.0)
            opt.step()

        return step

    def memories(*shape: int) -> torch.Tensor:
        return normalize_memory(torch.randn(*shape, z, device=device), a.K)

    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "sizes": {"kind": a.kind, "width": a.width, "depth": a.depth, "K": a.K, "D": a.D, "Z": z, "V": a.vocab},
        "updater_parameters": sum(p.numel() for p in rnn.updater_parameters()),
        "amp": a.amp and device.type == "cuda",
    }
    if "smt" not in a.skip:
        m_t, m_next = memories(a.batch), memories(a.batch)
        x = torch.randint(0, a.vocab, (a.batch,), device=device)
        compute = optimise(lambda: smt_step_loss(rnn, m_t, x, m_next))
        if not a.store:
            sec = timed(compute, a.steps, a.warmup, device)
            report["smt_compute"] = {"batch": a.batch, "s_per_step": sec, "transitions_per_s": a.batch / sec}
        else:
            report.update(bench_store(a, rnn, optimise, compute, device))
    if "dmt" not in a.skip:
        cfg = DMTConfig(rollout_len=a.td, pull_every=a.k)
        target = memories(a.dmt_batch, a.td + 1)
        xs = torch.randint(0, a.vocab, (a.dmt_batch, a.td + a.tf + 1), device=device)
        step = optimise(lambda: dmt_step_loss(rnn, target, xs, xs, cfg, teacher.decoder, rollout_update=update))
        sec = timed(step, max(1, a.steps // 2), min(a.warmup, 1), device)
        report["dmt"] = {"batch": a.dmt_batch, "td": a.td, "k": a.k, "s_per_step": sec}
    if "bptt" not in a.skip:
        xs = torch.randint(0, a.vocab, (a.bptt_batch, a.bptt_T), device=device)
        sec = timed(optimise(lambda: bptt_step_loss(rnn, xs, xs)), max(1, a.steps // 2), min(a.warmup, 1), device)
        report["bptt"] = {
            "batch": a.bptt_batch,
            "T": a.bptt_T,
            "s_per_step": sec,
            "tokens_per_s": a.bptt_batch * a.bptt_T / sec,
        }
    if device.type == "cuda":
        report["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(report))
    return report


def bench_store(
    a: argparse.Namespace, rnn: torch.nn.Module, optimise: Callable, compute: Callable[[], None], device: torch.device
) -> dict:
    """SMT compute-only against SMT from a label store as the distill stage reads it (shard reads, the
    prefetch thread, the device-side gather on CUDA, and the step), interleaved in `--pairs` blocks of
    `--steps` steps each, so machine load and allocator warm-up hit both alike; medians of the blocks."""
    from stages.distill import reader_device
    from store.labels import LabelStore
    from training.prefetch import Prefetcher

    store = LabelStore.open(a.store, expect_memory_size=a.K * a.D)
    where = reader_device(device)  # as the distill stage reads: gathered on the GPU when there is one
    stream = Prefetcher(lambda: store.transitions(a.batch, seed=0, epochs=None, drop_last=True, device=where))
    holder: dict = {}

    def loss() -> dict[str, torch.Tensor]:
        b = holder["batch"]
        return smt_step_loss(rnn, b.m, b.x_next, b.m_next)

    inner = optimise(loss)

    def from_store() -> None:
        holder["batch"] = to_device(next(stream), device)
        inner()

    blocks: dict[str, list[float]] = {"compute": [], "store": []}
    for _ in range(a.pairs):
        blocks["compute"].append(timed(compute, a.steps, a.warmup, device))
        blocks["store"].append(timed(from_store, a.steps, a.warmup, device))
    stream.close()
    out = {}
    for name, secs in blocks.items():
        sec = statistics.median(secs)
        out[f"smt_{name}"] = {"batch": a.batch, "s_per_step": sec, "transitions_per_s": a.batch / sec,
                              "transitions_per_s_all": [round(a.batch / s, 1) for s in secs]}
    out["smt_store"]["store"] = a.store
    out["smt_store"]["of_compute"] = round(out["smt_compute"]["s_per_step"] / out["smt_store"]["s_per_step"], 3)
    return out


if __name__ == "__main__":
    main()
