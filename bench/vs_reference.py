"""This project against the public reference implementation, step by step, in one process.

The reference (akarshkumar0101/smt, `src/model.py`) is imported from `--reference-src`, never copied in
(its imports: pip install x-transformers einops einx loguru frozendict torch-einops-utils tqdm). Both
sides get the same shapes, the same batch, fp32 (or bf16 autocast: --bf16), the same threads; each figure is measured in
`--pairs` interleaved (reference, ours) pairs so the machine's load hits both alike, and the JSON line
holds the medians and ours / reference as a rate ratio (> 1: ours is faster). It also holds each side's
FLOPs per item (torch's FlopCounterMode over one call: matmuls and attention, forward and backward) and the
GFLOP/s they ran at, beside a plain fp32 matmul's on the same threads, so a ratio reads as "fewer FLOPs"
or "FLOPs run faster", and a target above what the matmul allows shows as such.

Figures (every training figure is a full optimiser step: forward, backward, AdamW):
  teacher_step  teacher + updater trained jointly (reference `forward_smt`; ours `teacher_step_loss`); with
                --chain C ours takes its batch as batch/C crops of C consecutive transitions (`teacher.chain`),
                C+1 encodes per C transitions where the reference (and C=1) encodes 2 per transition
  smt_step      the RNN regressing labels: the reference re-encodes both memories with its frozen teacher
                every step (`forward_smt`'s L_dyn alone, no grad into the teacher); ours reads labels made
                once (in memory here; their cost is the `encoder` figure, paid once per store)
  dmt_step      DMT (reference `forward_dmt` encodes its targets in the step; ours reads them from the store)
  bptt_step     the BPTT baseline (`forward_bptt`; ours `bptt_step_loss`)
  infer_b1, infer_b64   RNN inference, update + readout per token, no grad
  infer_b1_compiled, infer_b64_compiled   the same with our step through torch.compile
                (`RNN.inference_step(compiled=True)`; only with --only, compiled before timing)
  encoder       teacher memories (labels) from full context windows, no grad

--compile runs our side as `run.compile: true` trains (models/compiled.py): every Transformer block through
torch.compile and DMT's rollout as one compiled update; the reference stays eager. Compiling happens in the
untimed first call of each measurement (about 30 s per figure on a 2-core CPU, the first time).

    python bench/vs_reference.py --reference-src ../shared/reference/src                 # CPU size
    python bench/vs_reference.py --reference-src ../shared/reference/src --size published --device cuda

Sizes: `cpu` is vocabulary 256, width 64, 1 head, K=8, D=64, Tc=64, Tf=16, encoder depth 4, decoder depth
2, RNN depth 2; `published` is docs/method.md's teacher at width 256 with 4 heads (the reference's head
width is fixed at 64), K=16, D=256, Tc=256, Tf=64, depths 8/4/8.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.bench_train import compile_as_training, cpu_name, interleaved_rates, timed  # noqa: E402
from models.build import build_rnn, build_teacher  # noqa: E402
from schemas.config import (  # noqa: E402
    DMTConfig,
    OptimConfig,
    RNNConfig,
    RunConfig,
    TeacherModelConfig,
    TeacherTrainConfig,
)
from training.loop import autocast, build_optimizer, resolve_device  # noqa: E402
from training.steps import bptt_step_loss, dmt_step_loss, smt_step_loss, teacher_step_loss  # noqa: E402


@dataclass(frozen=True)
class Size:
    vocab: int
    width: int
    heads: int
    K: int
    D: int
    Tc: int
    Tf: int
    encoder_depth: int
    decoder_depth: int
    rnn_depth: int
    batch: int  # teacher, SMT and encoder batch
    dmt_batch: int
    Td: int
    k: int
    bptt_batch: int
    bptt_T: int


SIZES = {
    "cpu": Size(256, 64, 1, 8, 64, 64, 16, 4, 2, 2, 128, 8, 64, 8, 32, 64),
    "published": Size(256, 256, 4, 16, 256, 256, 64, 8, 4, 8, 128, 32, 256, 16, 128, 64),
}

FIGURES = ("teacher_step", "smt_step", "dmt_step", "bptt_step", "infer_b1", "infer_b64", "encoder")
COMPILED = ("infer_b1_compiled", "infer_b64_compiled")  # on request: each compiles for seconds first


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-src", required=True, help="folder holding the reference's model.py")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--pairs", type=int, default=3, help="interleaved (reference, ours) measurements per figure")
    p.add_argument("--steps", type=int, default=5, help="timed calls per measurement (after one untimed)")
    p.add_argument("--only", nargs="*", choices=FIGURES + COMPILED, default=list(FIGURES))
    p.add_argument("--compile", action="store_true", help="our blocks and DMT rollout through torch.compile")
    p.add_argument("--bf16", choices=["none", "both", "ours"], default="none",
                   help="bf16 autocast for both sides (same precision), or for ours alone (what run.cpu_bf16 buys "
                        "against the reference as it runs, fp32)")
    p.add_argument("--mlp", choices=["swiglu", "gelu"], default=None,
                   help="our block MLP (default: the config's default); gelu has the reference's FLOPs")
    p.add_argument("--chain", type=int, default=1,
                   help="teacher_step: our transitions in chains of this many per crop (teacher.chain)")
    return p.parse_args(argv)


def import_reference(src: str):
    """The reference's model module, imported from its folder (a clear error when its deps are missing)."""
    folder = Path(src).expanduser().resolve()
    if not (folder / "model.py").is_file():
        raise SystemExit(f"--reference-src {src}: no model.py there")
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("model")
    except ImportError as err:
        raise SystemExit(f"the reference needs {err.name}: pip install x-transformers einops einx loguru "
                         "frozendict torch-einops-utils tqdm") from err


def count_flops(call: Callable[[], None]) -> int:
    """FLOPs of one call (matmuls and attention, forward and backward), run eagerly: compiled code is
    counted as the same math it compiles."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def matmul_gflops(device: torch.device, n: int = 2048, calls: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an n x n matmul (fp32, or bf16) on this device and these threads (median of `calls`): the
    ceiling the figures' GFLOP/s are read against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, calls, 1, device)
    return 2 * n**3 / seconds / 1e9


def in_bf16(call: Callable[[], None], device: torch.device, enabled: bool) -> Callable[[], None]:
    """`call` under the training loop's bf16 autocast on `device` (as `cpu_bf16` / `amp` train)."""
    if not enabled:
        return call

    def bf16_call() -> None:
        with autocast(device, amp=True, cpu_bf16=True):
            call()

    return bf16_call


def optimiser_step(params: list, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One AdamW step of `loss` over `params` (lr as published; the value does not change the time)."""
    opt = build_optimizer(params, OptimConfig())

    def call() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    return call


class Sides:
    """Both implementations built at one size, with the inputs every figure shares."""

    def __init__(self, ref, s: Size, device: torch.device, mlp: str | None, compile: bool = False,
                 chain: int = 1) -> None:
        self.ref, self.s, self.device, self.chain = ref, s, device, chain
        torch.manual_seed(0)
        z = s.K * s.D
        self.ref_teacher = ref.Teacher(ref.TeacherConfig(
            vocab_size=s.vocab, mem_size=z, mem_tokens=s.K, d_model=s.width, encoder_depth=s.encoder_depth,
            decoder_depth=s.decoder_depth, n_heads=s.heads)).to(device)
        self.ref_rnn = ref.RNN(ref.RNNConfig(
            vocab_size=s.vocab, mem_size=z, mem_tokens=s.K, d_model=s.width, rnn_depth=s.rnn_depth,
            decoder_depth=s.decoder_depth, n_heads=s.heads)).to(device)
        extra = {} if mlp is None else {"mlp": mlp}
        self.model = TeacherModelConfig(
            vocab_size=s.vocab, width=s.width, heads=s.heads, encoder_depth=s.encoder_depth,
            decoder_depth=s.decoder_depth, memory_tokens=s.K, memory_dim=s.D, context_len=s.Tc, future_len=s.Tf,
            **extra)
        self.variant = RNNConfig(kind="transformer", width=s.width, depth=s.rnn_depth, heads=s.heads, **extra)
        self.teacher = build_teacher(self.model).to(device)
        self.rnn = build_rnn(self.variant, self.model, self.teacher).to(device)
        self.rollout_update = compile_as_training(self.teacher, self.rnn) if compile else None
        self.tokens = lambda *shape: torch.randint(0, s.vocab, shape, device=device)

    def parameters(self) -> dict:
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        return {"reference_teacher": count(self.ref_teacher.parameters()),
                "ours_teacher": count(self.teacher.parameters()),
                "reference_updater": count(self.ref_rnn.rnn.parameters()) + count(self.ref_rnn.embed.parameters()),
                "ours_updater": count(self.rnn.updater_parameters())}

    def figure(self, name: str) -> tuple[Callable[[], None], Callable[[], None], int, str]:
        """(reference call, our call, items per call, unit) for one figure. Teachers train only in
        `teacher_step`; every other figure gets them frozen, whatever order --only gives."""
        hot = name == "teacher_step"
        for module in (self.ref_teacher, self.teacher):
            module.requires_grad_(hot)
        for module in (self.ref_rnn, self.rnn):
            module.requires_grad_(True)
        return getattr(self, name)()

    def teacher_step(self):
        s, ref = self.s, self.ref
        x = self.tokens(s.batch, s.Tc + s.Tf + 1)
        y = x.roll(-1, 1)
        cfg = ref.SMTConfig(T=s.Tc + s.Tf, Tc=s.Tc, Tf=s.Tf)
        batch = {"x": x[:, : s.Tc + s.Tf], "y": y[:, : s.Tc + s.Tf]}
        ref_call = optimiser_step([*self.ref_teacher.parameters(), *self.ref_rnn.parameters()],
                                  lambda: ref.forward_smt(self.ref_rnn, self.ref_teacher, batch, cfg)["loss"])
        ours_cfg = TeacherTrainConfig(model=self.model, updater=self.variant, chain=self.chain,
                                      run=RunConfig(batch_size=s.batch))
        crops = s.batch // self.chain  # the same s.batch transitions, `chain` of them per crop
        xc = self.tokens(crops, s.Tc + s.Tf + self.chain)
        yc = xc.roll(-1, 1)
        anchors = torch.full((crops,), s.Tc - 1, device=self.device)  # full windows, as the reference's
        ours = optimiser_step([*self.teacher.parameters(), *self.rnn.updater_parameters()],
                              lambda: teacher_step_loss(self.teacher, self.rnn, xc, yc, ours_cfg, anchors=anchors)[
                                  "loss"])
        return ref_call, ours, s.batch, "transitions/s"

    def smt_step(self):
        s, ref = self.s, self.ref
        x = self.tokens(s.batch, s.Tc + s.Tf)

        def ref_loss() -> torch.Tensor:  # forward_smt's L_dyn, frozen teacher, no decode and no L_unif
            b = ref.get_smt_batch({"x": x, "y": x}, s.Tc, s.Tf)
            with torch.no_grad():
                m_now, m_next = self.ref_teacher.encode(b["x_ctx"]), self.ref_teacher.encode(b["x_ctx_next"])
            return ref.calc_mse_loss(self.ref_rnn.rnn_update(m_now, b["x_fut"][:, [0]]), m_next).mean()

        ref_call = optimiser_step([*self.ref_rnn.rnn.parameters(), *self.ref_rnn.embed.parameters()], ref_loss)
        with torch.no_grad():
            m_t = self.teacher.encode(x[:, : s.Tc])
            m_next = self.teacher.encode(x[:, 1 : s.Tc + 1])
        x_next = x[:, s.Tc]
        ours = optimiser_step(list(self.rnn.updater_parameters()),
                              lambda: smt_step_loss(self.rnn, m_t, x_next, m_next)["loss"])
        return ref_call, ours, s.batch, "transitions/s"

    def dmt_step(self):
        s, ref = self.s, self.ref
        t = s.Tc + s.Td + s.Tf
        x = self.tokens(s.dmt_batch, t)
        cfg = ref.DMTConfig(T=t, Td=s.Td, Tc=s.Tc, Tf=s.Tf, k=s.k)
        batch = {"x": x, "y": x}
        ref_call = optimiser_step(list(self.ref_rnn.parameters()),
                                  lambda: ref.forward_dmt(self.ref_rnn, self.ref_teacher, batch, cfg)["loss"])
        with torch.no_grad():  # the label store's memories after reading positions Tc-1 .. Tc-1+Td
            windows = torch.stack([x[:, i : i + s.Tc] for i in range(s.Td + 1)], 1)
            target = self.teacher.encode(windows.flatten(0, 1)).view(s.dmt_batch, s.Td + 1, -1)
        xs = x[:, s.Tc - 1 :]
        ours_cfg = DMTConfig(rollout_len=s.Td, pull_every=s.k)
        ours = optimiser_step(list(self.rnn.updater_parameters()),
                              lambda: dmt_step_loss(self.rnn, target, xs, xs, ours_cfg, self.teacher.decoder,
                                                    rollout_update=self.rollout_update)["loss"])
        return ref_call, ours, 1, "steps/s"

    def bptt_step(self):
        s, ref = self.s, self.ref
        x = self.tokens(s.bptt_batch, s.bptt_T)
        cfg = ref.BPTTConfig(T=s.bptt_T)
        ref_call = optimiser_step(list(self.ref_rnn.parameters()),
                                  lambda: ref.forward_bptt(self.ref_rnn, {"x": x, "y": x}, cfg)["loss"])
        ours = optimiser_step(list(self.rnn.parameters()), lambda: bptt_step_loss(self.rnn, x, x)["loss"])
        return ref_call, ours, s.bptt_batch * s.bptt_T, "tokens/s"

    def _inference(self, batch: int, length: int = 64, compiled: bool = False):
        x = self.tokens(batch, length)
        z = self.s.K * self.s.D

        @torch.no_grad()
        def ref_call() -> None:
            m = torch.zeros(batch, z, device=self.device)
            for t in range(length):
                m = self.ref_rnn.rnn_update(m, x[:, [t]])
                self.ref_rnn.rnn_readout(m)

        step = self.rnn.inference_step(compiled)

        @torch.no_grad()
        def ours() -> None:
            m = self.rnn.init_memory(batch)
            for t in range(length):
                m, _ = step(m, x[:, t])

        if compiled:
            ours()  # compile (twice: the rotary cache fills on the first call) outside the timed region

        return ref_call, ours, batch * length, "tokens/s"

    def infer_b1(self):
        return self._inference(1)

    def infer_b64(self):
        return self._inference(64)

    def infer_b1_compiled(self):
        return self._inference(1, compiled=True)

    def infer_b64_compiled(self):
        return self._inference(64, compiled=True)

    def encoder(self):
        x = self.tokens(self.s.batch, self.s.Tc)
        ref_call = torch.no_grad()(lambda: self.ref_teacher.encode(x))
        ours = torch.no_grad()(lambda: self.teacher.encode(x))
        return ref_call, ours, self.s.batch, "labels/s"


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    device = resolve_device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    ref = import_reference(a.reference_src)
    if SIZES[a.size].batch % a.chain:
        raise SystemExit(f"--chain {a.chain} must divide the batch ({SIZES[a.size].batch})")
    sides = Sides(ref, SIZES[a.size], device, a.mlp, a.compile, a.chain)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join(["bench/vs_reference.py", *(argv if argv is not None else sys.argv[1:])]),
        "size": a.size,
        "sizes": vars(SIZES[a.size]),
        "mlp": sides.model.mlp,
        "compile": a.compile,
        "chain": a.chain,
        "bf16": a.bf16,
        "parameters": sides.parameters(),
        "matmul_gflops": round(matmul_gflops(device), 1),
        "matmul_gflops_bf16": round(matmul_gflops(device, dtype=torch.bfloat16), 1),
        "figures": {},
    }
    for name in a.only:
        ref_call, ours, items, unit = sides.figure(name)
        ref_call, ours = in_bf16(ref_call, device, a.bf16 == "both"), in_bf16(ours, device, a.bf16 != "none")
        ref_rates, our_rates = interleaved_rates([ref_call, ours], items, a.pairs, a.steps, device)
        ref_median, our_median = statistics.median(ref_rates), statistics.median(our_rates)
        ref_flops, our_flops = count_flops(ref_call) / items, count_flops(ours) / items  # per item
        ref_gflops, our_gflops = ref_flops * ref_median / 1e9, our_flops * our_median / 1e9
        report["figures"][name] = {
            "unit": unit, "reference": round(ref_median, 2), "ours": round(our_median, 2),
            "ratio": round(our_median / ref_median, 3),
            "reference_all": [round(r, 2) for r in ref_rates], "ours_all": [round(r, 2) for r in our_rates],
            "mflop_per_item": {"reference": round(ref_flops / 1e6, 3), "ours": round(our_flops / 1e6, 3)},
            "gflops": {"reference": round(ref_gflops, 1), "ours": round(our_gflops, 1)},
        }
        print(f"{name:13s} reference {ref_median:10.1f}  ours {our_median:10.1f} {unit:14s} "
              f"ours/reference {our_median / ref_median:5.2f}  "
              f"MFLOP/item {ref_flops / 1e6:8.2f} / {our_flops / 1e6:8.2f}  "
              f"GFLOP/s {ref_gflops:5.1f} / {our_gflops:5.1f} (matmul {report['matmul_gflops']})",
              file=sys.stderr, flush=True)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
