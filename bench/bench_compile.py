"""What `run.compile: true` (or `cpu_bf16: true`) buys: the same steps both ways, interleaved in one process.

Two copies of one teacher and Transformer RNN at bench/vs_reference.py's sizes (weights equal); the first
runs eager in fp32, the second gets what TrainLoop, the DMT stage and the label workers do with `compile`
(models/compiled.py), with `cpu_bf16` (bf16 autocast, training/loop.py), or both (`--variant`). Each figure
is measured in `--pairs` interleaved (eager, variant) pairs after an untimed warm-up that compiles, so the
machine's load hits both alike; one JSON line of medians and variant / eager speed-ups.

    python bench/bench_compile.py                 # CPU size, SwiGLU, compiled
    python bench/bench_compile.py --mlp gelu
    python bench/bench_compile.py --variant bf16  # bf16 autocast, eager
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.bench_train import compile_as_training, cpu_name, interleaved_rates  # noqa: E402
from bench.vs_reference import SIZES, Size, in_bf16, optimiser_step  # noqa: E402
from models.build import build_rnn, build_teacher  # noqa: E402
from models.layers import normalize_memory  # noqa: E402
from schemas.config import DMTConfig, RNNConfig, TeacherModelConfig, TeacherTrainConfig  # noqa: E402
from training.loop import resolve_device  # noqa: E402
from training.steps import bptt_step_loss, dmt_step_loss, teacher_step_loss  # noqa: E402

FIGURES = ("teacher_step", "dmt_step", "bptt_step", "encoder")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--pairs", type=int, default=5, help="interleaved (eager, compiled) measurements per figure")
    p.add_argument("--steps", type=int, default=5, help="timed calls per measurement (after one untimed)")
    p.add_argument("--only", nargs="*", choices=FIGURES, default=list(FIGURES))
    p.add_argument("--mlp", choices=["swiglu", "gelu"], default="swiglu")
    p.add_argument("--variant", choices=["compile", "bf16", "compile+bf16"], default="compile",
                   help="what the second copy gets: torch.compile, bf16 autocast, or both")
    return p.parse_args(argv)


class Side:
    """One teacher + Transformer RNN, eager or compiled, and a step function per figure."""

    def __init__(self, teacher, rnn, model: TeacherModelConfig, variant: RNNConfig, s: Size, compiled: bool) -> None:
        self.teacher, self.rnn, self.model, self.variant, self.s = teacher, rnn, model, variant, s
        self.update = compile_as_training(teacher, rnn) if compiled else None

    def teacher_step(self, x: torch.Tensor) -> Callable[[], None]:
        cfg = TeacherTrainConfig(model=self.model, updater=self.variant)
        anchors = torch.full((x.shape[0],), self.s.Tc - 1, device=x.device)
        params = [*self.teacher.parameters(), *self.rnn.updater_parameters()]
        return optimiser_step(params, lambda: teacher_step_loss(self.teacher, self.rnn, x, x.roll(-1, 1), cfg,
                                                               anchors=anchors)["loss"])

    def dmt_step(self, target: torch.Tensor, xs: torch.Tensor) -> Callable[[], None]:
        cfg = DMTConfig(rollout_len=self.s.Td, pull_every=self.s.k)
        return optimiser_step(list(self.rnn.updater_parameters()), lambda: dmt_step_loss(
            self.rnn, target, xs, xs, cfg, self.teacher.decoder, rollout_update=self.update)["loss"])

    def bptt_step(self, x: torch.Tensor) -> Callable[[], None]:
        return optimiser_step(list(self.rnn.parameters()), lambda: bptt_step_loss(self.rnn, x, x)["loss"])

    def encoder(self, x: torch.Tensor) -> Callable[[], None]:
        return torch.no_grad()(lambda: self.teacher.encode(x))


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    device = resolve_device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    s = SIZES[a.size]
    model = TeacherModelConfig(
        vocab_size=s.vocab, width=s.width, heads=s.heads, encoder_depth=s.encoder_depth, decoder_depth=s.decoder_depth,
        memory_tokens=s.K, memory_dim=s.D, context_len=s.Tc, future_len=s.Tf, mlp=a.mlp)
    variant = RNNConfig(kind="transformer", width=s.width, depth=s.rnn_depth, heads=s.heads, mlp=a.mlp)
    torch.manual_seed(0)
    teacher = build_teacher(model).to(device)
    rnn = build_rnn(variant, model, teacher).to(device)
    compiled, bf16 = "compile" in a.variant, "bf16" in a.variant
    sides = [Side(t, r, model, variant, s, c) for t, r, c in
             ((teacher, rnn, False), (copy.deepcopy(teacher), copy.deepcopy(rnn), compiled))]
    tokens = lambda *shape: torch.randint(0, s.vocab, shape, device=device)  # noqa: E731
    inputs = {
        "teacher_step": ((tokens(s.batch, s.Tc + s.Tf + 1),), s.batch, "transitions/s"),
        "dmt_step": ((normalize_memory(torch.randn(s.dmt_batch, s.Td + 1, s.K * s.D, device=device), s.K),
                      tokens(s.dmt_batch, s.Td + s.Tf + 1)), 1, "steps/s"),
        "bptt_step": ((tokens(s.bptt_batch, s.bptt_T),), s.bptt_batch * s.bptt_T, "tokens/s"),
        "encoder": ((tokens(s.batch, s.Tc),), s.batch, "labels/s"),
    }
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "command": " ".join(["bench/bench_compile.py", *(argv if argv is not None else sys.argv[1:])]),
        "size": a.size, "mlp": a.mlp, "variant": a.variant, "figures": {},
    }
    for name in a.only:
        args, items, unit = inputs[name]
        hot = name == "teacher_step"  # teachers train only there, as in vs_reference
        for side in sides:
            side.teacher.requires_grad_(hot)
        calls = [getattr(side, name)(*args) for side in sides]
        calls[1] = in_bf16(calls[1], device, bf16)
        start = time.perf_counter()
        calls[1]()  # compile outside the timed region
        compile_s = time.perf_counter() - start
        rates = interleaved_rates(calls, items, a.pairs, a.steps, device)
        eager, other = statistics.median(rates[0]), statistics.median(rates[1])
        report["figures"][name] = {"unit": unit, "eager": round(eager, 2), a.variant: round(other, 2),
                                   "speedup": round(other / eager, 3), "first_call_s": round(compile_s, 1),
                                   "eager_all": [round(r, 2) for r in rates[0]],
                                   f"{a.variant}_all": [round(r, 2) for r in rates[1]]}
        print(f"{name:13s} eager {eager:10.1f}  {a.variant} {other:10.1f} {unit:14s} x{other / eager:5.2f} "
              f"(first call {compile_s:.0f} s)", file=sys.stderr, flush=True)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
