"""SMT distillation stage: regress an RNN's update onto stored teacher transitions.

No teacher forward passes and no unrolling: every batch is `run.batch_size` independent transitions
`(m_t, x_{t+1}) -> m_{t+1}` read from the label store (docs/method.md section 6), so the step is fully data
parallel and its cost does not depend on sequence length. The readout is either the teacher's decoder
(copied, already matched to these memories, so it is frozen here and only DMT fine-tunes it) or an MLP
head trained by cross-entropy on the stored memories `m_{t+1}` (never on the RNN's predictions).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from models.build import build_rnn, seeded_init
from schemas.config import DistillConfig, RNNConfig
from schemas.layout import SPLIT_TRAIN
from store.artifacts import CHECKPOINT_DIR, ArtifactError, ArtifactRef, is_complete
from store.checkpoints import Checkpoints
from store.labels import LabelStore, Transitions
from store.locks import one_writer
from store.plans import plan_distill
from store.rnn import publish_rnn
from store.teacher import load_teacher, teacher_config
from training.distributed import init_distributed, rank_device, rank_seed
from training.flops import distill_step_flops
from training.loop import TrainLoop, resolve_device
from training.prefetch import Prefetcher
from training.steps import smt_step_loss


def open_store_for(labels_url: str, teacher_hash: str, memory_size: int) -> LabelStore:
    """Open the store, refusing one made by another teacher or with another memory size."""
    try:
        store = LabelStore.open(labels_url, expect_teacher=teacher_hash, expect_memory_size=memory_size)
    except ArtifactError as err:
        raise ArtifactError(f"refusing label store: {err}") from err
    splits = store.index.column("split").to_pylist()
    if SPLIT_TRAIN not in splits:
        raise ArtifactError(
            f"label store {labels_url} holds no '{SPLIT_TRAIN}' windows (split={store.spec.split}): "
            "RNNs are only trained on training documents"
        )
    return store


def reader_device(device: torch.device) -> torch.device | None:
    """Where the label reader gathers batches. CUDA: on the GPU, from buffers copied there once (each
    stored memory crosses the bus once per epoch, as float16, instead of twice as float32). CPU: the
    host path (device=None); device="cpu" measured the same on the 2-core dev VM."""
    return device if device.type == "cuda" else None


def with_input_noise(batches: Iterator[Transitions], sigma: float, seed: int) -> Iterator[Transitions]:
    """`distill.input_noise`: each batch's m_t plus N(0, sigma^2) noise drawn from a generator seeded like the
    batches (a fixed config gives the same noise), m_{t+1} and the rest untouched."""
    generator: torch.Generator | None = None
    for batch in batches:
        if generator is None:
            generator = torch.Generator(device=batch.m.device).manual_seed(seed)
        noise = torch.randn(batch.m.shape, generator=generator, device=batch.m.device)
        yield batch._replace(m=batch.m.float() + sigma * noise)


@one_writer(plan_distill)
def distill_stage(labels_url: str, teacher_url: str, variant: RNNConfig, cfg: DistillConfig, root: str) -> ArtifactRef:
    """Train (or find) the SMT RNN `variant` on the label store; publishes kind "rnn".

    Parents {"labels", "teacher"}; stats carry `transitions_per_s` and `seconds` (the wall-clock that
    BPTT's budget='match_smt_seconds' matches). Resumes from `_checkpoint/` after a kill.
    """
    ref = plan_distill(labels_url=labels_url, teacher_url=teacher_url, variant=variant, cfg=cfg, root=root)
    if is_complete(ref.url):
        return ref
    teacher, teacher_manifest = load_teacher(teacher_url)
    model_cfg = teacher_config(teacher_manifest).model
    store = open_store_for(labels_url, teacher_manifest.hash, model_cfg.memory_size)
    device = resolve_device(cfg.run.device)
    ctx = init_distributed(device)
    device = rank_device(device, ctx)

    with seeded_init(cfg.run.seed):
        rnn = build_rnn(variant, model_cfg, teacher)
    with torch.no_grad():  # m_{-1}: the teacher's memory of an empty (all-padding) context
        empty = torch.full((1, model_cfg.context_len), -1, dtype=torch.long)
        rnn.initial.copy_(teacher.encode(empty))
    del teacher  # SMT never runs the teacher on data: one empty-context encoding is all it takes
    train_readout = variant.readout != "teacher_decoder" and cfg.readout_weight > 0
    if variant.readout == "teacher_decoder":
        rnn.readout_head.requires_grad_(False)  # the teacher's own readout of these very memories

    def loss_fn(batch: Transitions) -> dict[str, torch.Tensor]:
        y_next = batch.y_next if train_readout else None
        return smt_step_loss(rnn, batch.m, batch.x_next, batch.m_next, y_next, cfg.readout_weight)

    def batches(start_step: int) -> Prefetcher:
        seed = rank_seed(cfg.run.seed, ctx.rank, "distill", start_step) % (2**32)

        def source() -> Iterator[Transitions]:
            transitions = store.transitions(
                cfg.run.batch_size, seed=seed, shuffle=True, split=SPLIT_TRAIN, epochs=None, drop_last=True,
                device=reader_device(device),
            )
            return with_input_noise(transitions, cfg.input_noise, seed) if cfg.input_noise else transitions

        return Prefetcher(source, pin_memory=False)  # CUDA batches are already there (and cannot be pinned)

    loop = TrainLoop(
        {"rnn": rnn},
        loss_fn,
        batches,
        cfg.run,
        cfg.optim,
        checkpoints=Checkpoints(ref.join(CHECKPOINT_DIR)),
        device=device,
        items_per_step=cfg.run.batch_size,
        name=f"distill {variant.label}",
    )
    result = loop.run()
    if ctx.is_main:
        rnn.readout_head.requires_grad_(True)
        transitions = result.step * cfg.run.batch_size * ctx.world_size
        resumed = result.resumed_from or 0
        trained_here = (result.step - resumed) * cfg.run.batch_size * ctx.world_size
        stats = {
            "transitions": transitions,
            "transitions_per_s": transitions / max(result.seconds, 1e-9),
            "transitions_per_s_last": float(np.nanmean([r["items_per_s"] for r in result.metrics[-3:]]))
            if result.metrics
            else None,
            "trained_this_run": trained_here,
            "train_flops": result.step * distill_step_flops(variant, model_cfg, cfg) * ctx.world_size,
            "world_size": ctx.world_size,
            "device": str(device),
            "label_store_windows": store.num_windows,
        }
        publish_rnn(ref, rnn, model_cfg, result, stats)
    ctx.barrier()
    return ref
