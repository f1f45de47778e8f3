"""DAgger Memory Training stage: fine-tune a distilled RNN on its own rollouts (docs/method.md section 6).

Trajectories (encoder memories for Td+1 consecutive positions plus their tokens) come from the label
store, so DMT never runs the encoder either. The teacher is loaded only for its frozen decoder, which
scores the RNN's own memories when `dec_weight > 0` (L_dec through a decoder that is not trained).
The published defaults live in DMTConfig: Td=256, k=16, weights dyn 10 / readout 1 / dec 1 / unif 0.01,
AdamW lr 3e-5 cosine, batch 32, 1,500 steps.

DMT publishes its last weights, or with `keep_best` those with the lowest loss (or error: `keep_best.metric`)
read from the RNN's own memory on a fixed batch of train-split documents that have no window in the label
store: documents the student never trained on (only the teacher saw them), so the test split stays for the
evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from models.build import reseed_global
from models.compiled import compile_blocks, compiled_update
from schemas.config import DMTConfig
from schemas.layout import SPLIT_TRAIN
from stages.distill import open_store_for, reader_device
from store.artifacts import CHECKPOINT_DIR, ArtifactError, ArtifactRef, is_complete, require_parent
from store.checkpoints import Checkpoints
from store.crops import DocumentCrops, unseen_train_documents
from store.labels import LabelStore, Trajectories
from store.locks import one_writer
from store.plans import plan_dmt
from store.rnn import load_rnn, publish_rnn
from store.teacher import load_teacher, teacher_config
from store.tokens import TokensArtifact
from training.distributed import init_distributed, rank_device, rank_seed
from training.early_stop import EarlyStop, own_memory_stop
from training.flops import dmt_selection_flops, dmt_step_flops
from training.loop import TrainLoop, resolve_device
from training.prefetch import Prefetcher
from training.steps import dmt_step_loss


@one_writer(plan_dmt)
def dmt_stage(rnn_url: str, labels_url: str, teacher_url: str, cfg: DMTConfig, root: str) -> ArtifactRef:
    """Fine-tune the RNN at `rnn_url` with DMT; publishes a new kind "rnn" artifact.

    Parents {"init": the distilled RNN, "labels", "teacher"}. Refuses an RNN or store that was made
    from another teacher, and a rollout longer than the store's trajectories.
    """
    ref = plan_dmt(rnn_url=rnn_url, labels_url=labels_url, teacher_url=teacher_url, cfg=cfg, root=root)
    if is_complete(ref.url):
        return ref
    teacher, teacher_manifest = load_teacher(teacher_url)
    model_cfg = teacher_config(teacher_manifest).model
    rnn, init_manifest = load_rnn(rnn_url)
    require_parent(init_manifest, "teacher", teacher_manifest.hash, f"RNN {rnn_url}")
    store = open_store_for(labels_url, teacher_manifest.hash, rnn.memory_size)
    if cfg.rollout_len > store.L:
        raise ArtifactError(
            f"dmt.rollout_len {cfg.rollout_len} exceeds the label store's trajectory_len {store.L}: "
            "re-materialise labels with a longer trajectory_len or shorten the rollout"
        )
    device = resolve_device(cfg.run.device)
    ctx = init_distributed(device)
    device = rank_device(device, ctx)

    reseed_global(cfg.run.seed)
    rnn.requires_grad_(True)
    rnn.train()
    decoder = None
    if cfg.dec_weight > 0:
        decoder = teacher.decoder.to(device).eval().requires_grad_(False)
    del teacher
    generator = torch.Generator(device=device)
    generator.manual_seed(rank_seed(cfg.run.seed, ctx.rank, "dmt-loss"))
    update = None
    if cfg.run.compile:  # the loop compiles the RNN's blocks; the frozen decoder and the rollout here
        if decoder is not None:
            compile_blocks(decoder)
        update = compiled_update(rnn.update)

    def loss_fn(batch: Trajectories) -> dict[str, torch.Tensor]:
        return dmt_step_loss(rnn, batch.memory, batch.x, batch.y, cfg, decoder, generator, rollout_update=update)

    def batches(start_step: int) -> Prefetcher:
        seed = rank_seed(cfg.run.seed, ctx.rank, "dmt", start_step) % (2**32)

        def source() -> Iterator[Trajectories]:
            return store.trajectories(
                cfg.run.batch_size, length=cfg.rollout_len, seed=seed, split=SPLIT_TRAIN, epochs=None,
                device=reader_device(device),
            )

        return Prefetcher(source, pin_memory=False)  # CUDA batches are already there (and cannot be pinned)

    keep_best = None
    if cfg.keep_best is not None:
        keep_best = held_out_selection(rnn, store, cfg, device)
        keep_best.check(0, {"rnn": rnn})  # the distilled weights compete too (a resumed run restores its own)
    loop = TrainLoop(
        {"rnn": rnn},
        loss_fn,
        batches,
        cfg.run,
        cfg.optim,
        checkpoints=Checkpoints(ref.join(CHECKPOINT_DIR)),
        device=device,
        items_per_step=cfg.run.batch_size * cfg.rollout_len,
        generators={"loss": generator},
        name=f"dmt {rnn.cfg.label}",
        early_stop=keep_best,
    )
    result = loop.run()
    if ctx.is_main:
        stats = {
            "step_seconds": result.seconds / max(result.step, 1),
            "train_flops": (result.step * dmt_step_flops(rnn.cfg, model_cfg, cfg)
                            + dmt_selection_flops(rnn.cfg, model_cfg, cfg, result.step)) * ctx.world_size,
            "rollout_steps_per_s": result.step * cfg.run.batch_size * cfg.rollout_len / max(result.seconds, 1e-9),
            "world_size": ctx.world_size,
            "device": str(device),
            "init_stats": {k: init_manifest.stats.get(k) for k in ("final_dyn", "final_readout", "seconds")},
            **({f"held_out_{keep_best.metric}": keep_best.best, "best_step": keep_best.best_step,
                "held_out": "unseen_train"}
               if keep_best else {}),
        }
        publish_rnn(ref, rnn, model_cfg, result, stats)
    ctx.barrier()
    return ref


def held_out_selection(rnn: torch.nn.Module, store: LabelStore, cfg: DMTConfig, device: torch.device) -> EarlyStop:
    """`keep_best`'s checks: the readout loss (or error, `keep_best.metric`) from the RNN's own memory (as the
    evaluation reads it, from the initial memory) on a fixed batch of train documents the label store has no
    window of. Stops DMT after `keep_best.patience` checks without a lower figure (null: never early)."""
    assert cfg.keep_best is not None
    tokens_url = store.tokens_url
    try:
        tokens = TokensArtifact.open(tokens_url)
    except ArtifactError as err:
        raise ArtifactError(f"dmt.keep_best reads the label store's tokens artifact: {err}") from err
    if tokens.ref.hash != store.tokens_hash:
        raise ArtifactError(f"{tokens_url} is not the tokens artifact the label store {store.url} was made from")
    unseen = unseen_train_documents(tokens, store.index.column("doc_id").to_numpy())
    if unseen.size == 0:
        raise ArtifactError("dmt.keep_best needs train documents without a window in the label store, and every "
                            "one has some: materialise fewer windows or add documents")
    return own_memory_stop(rnn, DocumentCrops(tokens, SPLIT_TRAIN, unseen), rank_seed(cfg.run.seed, 0, "dmt-held-out"),
                           cfg.keep_best.sequences, cfg.keep_best.seq_len or cfg.rollout_len, device,
                           cfg.keep_best.eval_every, patience=cfg.keep_best.patience, metric=cfg.keep_best.metric)
