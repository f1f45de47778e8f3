"""BPTT baseline stage: the same RNN variant unrolled from its initial memory with full backprop.

Trained on the same tokens artifact (train split) the teacher was trained on, with crops of
`seq_len` tokens (documents no longer than that are taken whole from their start, right-padded).
Trained to a plateau (budget 'plateau'), it stops on the loss of validation documents set aside from the
train split and not trained on (`plateau.held_out`), so the test split stays unseen until the evaluation.
With `keep_best` (set by the flow when the student's DMT keeps its best weights) it makes as many checks on
such validation documents as the student does and publishes the best, the checks paid from its budget.
Budget (BPTTConfig.budget): by default the training FLOPs of the variant's SMT+DMT student, counted
from the shapes (`training/flops.py`), so the baseline gets the same work whatever the machine's load;
or `run.steps`; or a wall-clock (`run.max_seconds`, or the SMT stage's seconds), which is not reproducible.

Fair comparison: for readout="teacher_decoder" the BPTT RNN gets the same readout *architecture* as
the SMT RNN, initialised from the teacher's trained decoder weights (and then trained by BPTT), so the
only difference between the two is how the updater learned, not how good a readout it started with.
The teacher is used for nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from models.build import build_rnn, seeded_init
from schemas.config import BPTTConfig, PipelineConfig, PlateauConfig, RNNConfig, TeacherModelConfig
from schemas.layout import SPLIT_TEST, SPLIT_TRAIN
from store.artifacts import (
    CHECKPOINT_DIR,
    ArtifactError,
    ArtifactRef,
    is_complete,
    open_artifact,
    read_manifest,
    require_parent,
)
from store.checkpoints import Checkpoints
from store.crops import DocumentCrops, split_off_validation
from store.locks import one_writer
from store.plans import plan_bptt
from store.rnn import publish_rnn
from store.teacher import load_teacher, teacher_config
from store.tokens import TokensArtifact
from training.distributed import init_distributed, rank_device, rank_seed
from training.early_stop import EarlyStop, own_memory_stop
from training.flops import (
    bptt_matched_steps,
    bptt_selection_checks,
    bptt_selection_flops,
    bptt_step_flops,
    student_training_flops,
)
from training.loop import TrainLoop, resolve_device
from training.prefetch import Prefetcher
from training.steps import bptt_step_loss


def budget_inputs(pipeline: PipelineConfig, variant: RNNConfig, smt_url: str | None = None) -> dict[str, Any]:
    """The keyword arguments that fix the BPTT budget of `variant` (the flow and the CLI both use this):
    `smt_flops` for budget='match_smt_flops' (from the configs alone), `smt_seconds` for
    'match_smt_seconds' (read from the finished SMT artifact at `smt_url`), nothing otherwise."""
    budget = pipeline.bptt.budget
    if budget == "match_smt_flops":
        return {"smt_flops": student_training_flops(variant, pipeline.teacher.model, pipeline.distill, pipeline.dmt)}
    if budget == "match_smt_seconds":
        if smt_url is None:
            raise ValueError("bptt.budget='match_smt_seconds' needs the finished SMT artifact")
        return {"smt_seconds": read_manifest(smt_url).stats.get("train_seconds")}
    return {}


def bptt_budget(
    cfg: BPTTConfig, variant: RNNConfig, model: TeacherModelConfig,
    smt_seconds: float | None = None, smt_flops: int | None = None,
) -> tuple[int, float | None]:
    """(max steps, max seconds) for the chosen budget. Seconds budgets keep run.steps as a cap (it also
    sets the length of the LR schedule); a FLOPs budget sets the step count itself."""
    if cfg.budget == "match_smt_flops":
        if not smt_flops:
            raise ValueError("bptt.budget='match_smt_flops' needs the SMT student's training FLOPs (smt_flops)")
        return bptt_matched_steps(variant, model, cfg, smt_flops), None
    if cfg.budget in ("steps", "plateau"):  # plateau: run.steps is the cap, early stopping decides
        return cfg.run.steps, cfg.run.max_seconds
    if cfg.budget == "seconds":
        if cfg.run.max_seconds is None:
            raise ValueError("bptt.budget='seconds' needs bptt.run.max_seconds")
        return cfg.run.steps, cfg.run.max_seconds
    if smt_seconds is None or smt_seconds <= 0:
        raise ValueError("bptt.budget='match_smt_seconds' needs the SMT stage's seconds (smt_seconds)")
    return cfg.run.steps, float(smt_seconds)


@one_writer(plan_bptt)
def bptt_stage(
    tokens_url: str,
    variant: RNNConfig,
    teacher_url: str,
    cfg: BPTTConfig,
    root: str,
    smt_seconds: float | None = None,
    smt_flops: int | None = None,
) -> ArtifactRef:
    """Train (or find) the BPTT baseline of `variant`; publishes kind "rnn" with parents
    {"tokens", "teacher"} (teacher: the source of the readout init, and the lineage evaluation checks)."""
    ref = plan_bptt(
        tokens_url=tokens_url,
        variant=variant,
        teacher_url=teacher_url,
        cfg=cfg,
        root=root,
        smt_seconds=smt_seconds,
        smt_flops=smt_flops,
    )
    if is_complete(ref.url):
        return ref
    tokens_ref, _ = open_artifact(tokens_url, "tokens")
    teacher, teacher_manifest = load_teacher(teacher_url)
    require_parent(teacher_manifest, "tokens", tokens_ref.hash, f"teacher {teacher_url}")
    model_cfg = teacher_config(teacher_manifest).model
    steps, max_seconds = bptt_budget(cfg, variant, model_cfg, smt_seconds, smt_flops)
    tokens = TokensArtifact.open(tokens_url)
    train = training_documents(tokens, cfg)
    device = resolve_device(cfg.run.device)
    ctx = init_distributed(device)
    device = rank_device(device, ctx)

    with seeded_init(cfg.run.seed):
        rnn = build_rnn(variant, model_cfg, teacher)  # readout: teacher-decoder init, see module doc
    del teacher

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return bptt_step_loss(rnn, batch[0], batch[1])

    def batches(start_step: int) -> Prefetcher:
        def source() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            rng = np.random.default_rng(rank_seed(cfg.run.seed, ctx.rank, "bptt-data", start_step))
            while True:
                x, y = train.windows(rng, cfg.run.batch_size, cfg.seq_len)
                yield torch.from_numpy(x), torch.from_numpy(y)

        return Prefetcher(source, pin_memory=device.type == "cuda")

    run = cfg.run.model_copy(update={"steps": steps})
    early_stop = held_out_early_stop(rnn, tokens, cfg, device, steps) if _held_out(cfg) else None
    if cfg.keep_best is not None:
        early_stop.check(0, {"rnn": rnn})  # as DMT's checks start before its first step (a resumed run restores)
    loop = TrainLoop(
        {"rnn": rnn},
        loss_fn,
        batches,
        run,
        cfg.optim,
        checkpoints=Checkpoints(ref.join(CHECKPOINT_DIR)),
        device=device,
        items_per_step=cfg.run.batch_size * cfg.seq_len,
        max_seconds=max_seconds,
        name=f"bptt {variant.label}",
        early_stop=early_stop,
    )
    result = loop.run()
    if ctx.is_main:
        step_flops = bptt_step_flops(variant, model_cfg, cfg)
        stats = {
            "budget": cfg.budget,
            "budget_seconds": max_seconds,
            "budget_flops": smt_flops,
            "step_flops": step_flops,
            "train_flops": (result.step * step_flops
                            + bptt_selection_flops(variant, model_cfg, cfg, steps)) * ctx.world_size,
            "tokens_per_s": result.step * cfg.run.batch_size * cfg.seq_len * ctx.world_size / max(result.seconds, 1e-9),
            "step_seconds": result.seconds / max(result.step, 1),
            "world_size": ctx.world_size,
            "device": str(device),
            **({f"held_out_{early_stop.metric}": early_stop.best, "best_step": early_stop.best_step,
                "held_out": _held_out(cfg), "train_documents": train.num_docs} if early_stop else {}),
            **({"selection_checks": bptt_selection_checks(cfg, steps)} if cfg.keep_best else {}),
        }
        publish_rnn(ref, rnn, model_cfg, result, stats)
    ctx.barrier()
    return ref


def training_documents(tokens: TokensArtifact, cfg: BPTTConfig) -> DocumentCrops:
    """The train split, less the validation documents when the baseline selects its weights on them."""
    if _held_out(cfg) == "validation":
        return DocumentCrops(tokens, SPLIT_TRAIN, _validation_split(tokens, cfg)[0])
    return DocumentCrops(tokens, SPLIT_TRAIN)


def held_out_documents(tokens: TokensArtifact, cfg: BPTTConfig) -> DocumentCrops:
    """What the checks read: the validation documents set aside from the train split, or (for a plateau with
    `held_out: test`) the test split."""
    if _held_out(cfg) == "validation":
        return DocumentCrops(tokens, SPLIT_TRAIN, _validation_split(tokens, cfg)[1])
    if tokens.doc_ids(SPLIT_TEST).size == 0:
        raise ArtifactError("bptt.plateau.held_out='test' needs a test split, and the tokens artifact has none")
    return DocumentCrops(tokens, SPLIT_TEST)


def held_out_early_stop(rnn: torch.nn.Module, tokens: TokensArtifact, cfg: BPTTConfig,
                        device: torch.device, steps: int) -> EarlyStop:
    """Checks on a fixed batch of held-out sequences (the BPTT loss, no gradient): the plateau stops on them,
    `keep_best` (over a run of `steps` steps) only keeps the best."""
    documents, seed = held_out_documents(tokens, cfg), rank_seed(cfg.run.seed, 0, "bptt-held-out")
    if cfg.keep_best is not None:
        kb = cfg.keep_best
        return own_memory_stop(rnn, documents, seed, kb.sequences, kb.seq_len, device, kb.every(steps), None,
                               kb.metric)
    plateau = _plateau(cfg)
    return own_memory_stop(rnn, documents, seed, plateau.sequences, cfg.seq_len, device, plateau.eval_every,
                           plateau.patience, plateau.metric)


def _held_out(cfg: BPTTConfig) -> str | None:
    """Where the checks read: 'validation', 'test' (plateau only), or None when the baseline does not select."""
    if cfg.keep_best is not None:
        return "validation"
    return _plateau(cfg).held_out if cfg.budget == "plateau" else None


def _plateau(cfg: BPTTConfig) -> PlateauConfig:
    return cfg.plateau or PlateauConfig()


def _validation_fraction(cfg: BPTTConfig) -> float:
    return cfg.keep_best.validation_fraction if cfg.keep_best is not None else _plateau(cfg).validation_fraction


def _validation_split(tokens: TokensArtifact, cfg: BPTTConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, validation ids): the same on every rank and on a resumed run (seeded by run.seed)."""
    try:
        return split_off_validation(tokens, _validation_fraction(cfg), rank_seed(cfg.run.seed, 0, "bptt-validation"))
    except ValueError as err:
        if cfg.keep_best is not None:
            raise ArtifactError(f"bptt.keep_best: {err}") from err
        raise ArtifactError(f"bptt.plateau.held_out='validation': {err} (or set held_out: test)") from err
