"""Teacher stage: train the Transformer encoder-decoder jointly with a reference Transformer updater.

The reference updater exists only to provide the dynamics loss L_dyn that makes the teacher's memory
Markovian (docs/method.md section 4); it is saved too, because it is a ready-made SMT-style RNN and a useful
sanity baseline. Its files are read and written by store/teacher.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from models.build import build_rnn, build_teacher, seeded_init
from schemas.config import TeacherTrainConfig
from schemas.layout import SPLIT_TEST, SPLIT_TRAIN
from schemas.manifest import Manifest
from store.artifacts import (
    CHECKPOINT_DIR,
    ArtifactError,
    ArtifactRef,
    is_complete,
    open_artifact,
    read_manifest,
    resolve_under,
)
from store.checkpoints import Checkpoints
from store.crops import DocumentCrops
from store.locks import one_writer
from store.plans import plan_teacher
from store.teacher import load_init_weights, load_teacher, publish_teacher, recorded_train_flops, teacher_config
from store.tokens import TokensArtifact
from training.distributed import init_distributed, rank_device, rank_seed
from training.evaluation import unigram_bits
from training.flops import teacher_step_flops
from training.loop import LoopResult, TrainLoop, resolve_device
from training.losses import token_cross_entropy
from training.prefetch import Prefetcher
from training.steps import teacher_step_loss

TEST_POSITIONS = 1024  # test anchors scored for the published L_dec0


# ----------------------------------------------------------------------------- training


@one_writer(plan_teacher)
def teacher_stage(tokens_url: str, cfg: TeacherTrainConfig, root: str) -> ArtifactRef:
    """Train (or find) the teacher for `tokens_url` and publish it under `root`.

    Content-addressed: an existing complete artifact is returned without work. An unfinished one is
    resumed from its `_checkpoint/` (a killed run continues where its last checkpoint left off).
    Each step reads `run.batch_size / chain` crops of Tc+Tf+chain tokens from train documents, anchored so
    that the memory m_t sees a full context (left-padded only at a real document start), and trains on
    `run.batch_size` transitions (`chain` consecutive ones per crop).
    """
    tokens_ref, _ = open_artifact(tokens_url, "tokens")
    ref = plan_teacher(tokens_url=tokens_url, cfg=cfg, root=root)  # the flow's cache key, same address
    if is_complete(ref.url):
        return ref
    tokens = TokensArtifact.open(tokens_url)
    if tokens.vocab_size > cfg.model.vocab_size:
        raise ArtifactError(
            f"tokens artifact {tokens_ref.hash[:16]} has vocab_size {tokens.vocab_size} but the teacher's "
            f"model.vocab_size is {cfg.model.vocab_size}: raise teacher.model.vocab_size"
        )
    device = resolve_device(cfg.run.device)
    ctx = init_distributed(device)
    device = rank_device(device, ctx)
    train = DocumentCrops(tokens, SPLIT_TRAIN)
    mc = cfg.model

    with seeded_init(cfg.run.seed):  # identical init on every rank and every resume
        teacher = build_teacher(mc)
        updater = build_rnn(cfg.updater, mc, teacher)
    parent = None  # a resumed run's checkpoint replaces these weights, as it does a fresh init
    if cfg.init_from is not None:
        parent = load_init_weights(resolve_under(root, cfg.init_from), cfg, teacher, updater)
    generator = torch.Generator(device=device)
    generator.manual_seed(rank_seed(cfg.run.seed, ctx.rank, "teacher-loss"))
    anchors_cache: dict[int, torch.Tensor] = {}

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        if x.shape[0] not in anchors_cache:
            anchors_cache[x.shape[0]] = torch.full((x.shape[0],), mc.context_len - 1, device=x.device)
        return teacher_step_loss(teacher, updater, x, y, cfg, generator, anchors=anchors_cache[x.shape[0]])

    def batches(start_step: int) -> Prefetcher:
        def source() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            rng = np.random.default_rng(rank_seed(cfg.run.seed, ctx.rank, "teacher-data", start_step))
            while True:
                x, y = training_crops(train, rng, cfg)
                yield torch.from_numpy(x), torch.from_numpy(y)

        return Prefetcher(source, pin_memory=device.type == "cuda")

    loop = TrainLoop(
        {"teacher": teacher, "updater": updater},
        loss_fn,
        batches,
        cfg.run,
        cfg.optim,
        checkpoints=Checkpoints(ref.join(CHECKPOINT_DIR)),
        device=device,
        generators={"loss": generator},
        name="teacher",
    )
    result = loop.run()
    if ctx.is_main:
        _publish(ref, cfg, teacher, updater, result, tokens, device, parent)
    ctx.barrier()
    return ref


def training_crops(
    train: DocumentCrops, rng: np.random.Generator, cfg: TeacherTrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One batch of crops (`run.batch_size / chain` of them) whose anchor sits at column context_len-1, placed
    as `cfg.anchors` says: anywhere, up to future_len-1 before a scored target, or on one."""
    mc = cfg.model
    crops, after = cfg.run.batch_size // cfg.chain, mc.future_len + cfg.chain
    if cfg.anchors == "uniform":
        return train.anchored(rng, crops, mc.context_len - 1, after, cfg.chain)
    window = mc.future_len if cfg.anchors == "scored" else 1
    return train.near_scored(rng, crops, mc.context_len - 1, after, window, cfg.chain)


def _publish(
    ref: ArtifactRef,
    cfg: TeacherTrainConfig,
    teacher: nn.Module,
    updater: nn.Module,
    result: LoopResult,
    tokens: TokensArtifact,
    device: torch.device,
    parent: Manifest | None,
) -> None:
    """Score the trained teacher on held-out data, then publish it (store/teacher.py).

    A teacher started from another (`init_from`) counts that one's cost too: `train_flops` includes the
    parent's (and its parents'), and `init_flops` / `init_seconds` / `init_steps` say how much that was."""
    head = getattr(updater, "readout_head", None)
    if head is not None and hasattr(head, "decoder"):
        # the updater's readout was copied from the *initial* decoder; give it the trained one
        head.decoder.load_state_dict(teacher.decoder.state_dict())  # type: ignore[attr-defined]
    teacher.eval()
    init: dict[str, float] = {}
    if parent is not None:
        ps = parent.stats
        init = {"init_flops": recorded_train_flops(parent),
                "init_seconds": ps.get("seconds", 0.0) + ps.get("init_seconds", 0.0),
                "init_steps": ps.get("steps", 0) + ps.get("init_steps", 0)}
    stats = {
        "steps": result.step,
        "seconds": result.seconds,
        "stopped": result.stopped,
        "torch_threads": result.threads,
        # counted like the students' (training/flops.py), with the parent teacher's cost when there is one
        "train_flops": result.step * teacher_step_flops(cfg) + init.get("init_flops", 0),
        **init,
        **{f"final_{k}": result.last(k) for k in ("loss", "dec", "dec0", "dyn", "unif") if result.metrics},
        **test_dec0(teacher, tokens, device),
    }
    publish_teacher(ref, teacher, updater, result.metrics, stats)


@torch.no_grad()
def test_dec0(
    teacher: nn.Module,
    tokens: TokensArtifact,
    device: torch.device,
    positions: int = TEST_POSITIONS,
    seed: int = 0,
) -> dict[str, float]:
    """L_dec0 (nats and bits per token) and top-1 accuracy on `positions` anchors of the test split, full
    contexts.

    This is the ceiling an RNN reading the teacher's memory can approach (docs/method.md section 7).
    Returns {} when the tokens artifact has no test documents.
    """
    if tokens.doc_ids(SPLIT_TEST).size == 0:
        return {}
    x, y = held_out_anchors(tokens, teacher.cfg.context_len, positions, seed)  # type: ignore[attr-defined]
    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y[:, -1]).to(device)
    total, count, correct = 0.0, 0, 0
    for i in range(0, x.shape[0], 256):
        logits = teacher.readout(teacher.encode(x_t[i : i + 256]))  # type: ignore[operator]
        ce, valid = token_cross_entropy(logits, y_t[i : i + 256])
        hits = (logits.argmax(-1) == y_t[i : i + 256]) & valid
        total, count, correct = total + float(ce.sum()), count + int(valid.sum()), correct + int(hits.sum())
    nats = total / max(count, 1)
    return {
        "test_dec0_nats": nats,
        "test_dec0_bits": nats / math.log(2),
        "test_dec0_accuracy": correct / max(count, 1),
        "test_dec0_positions": count,
        "test_unigram_bits": unigram_bits(y[:, -1]),
        "chance_bits": math.log2(teacher.cfg.vocab_size),  # type: ignore[attr-defined]
    }


def held_out_anchors(
    tokens: TokensArtifact, context_len: int, positions: int = TEST_POSITIONS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The scored test-split anchors `test_dec0` reads, with full contexts: x, y (N, context_len)."""
    return DocumentCrops(tokens, SPLIT_TEST).scored(np.random.default_rng(seed), positions, context_len - 1, 0)


class TeacherQualityError(ArtifactError):
    """The teacher learned too little for its memories to be worth labelling (see `require_useful_teacher`)."""


def require_useful_teacher(
    teacher_url: str, tokens_url: str, margin_bits: float | None, min_accuracy: float | None = None
) -> dict[str, float]:
    """Stop before the label job when the teacher has not learned the task: its held-out L_dec0 does not beat
    the unigram entropy of the same targets by `margin_bits`, or (for tasks with one right answer, where a
    teacher can beat the unigram by storing which answers occur without knowing which is asked for) its
    top-1 accuracy on the same anchors is under `min_accuracy`. None turns either test off. Returns {dec0,
    unigram, chance} in bits and the accuracy ({} without a test split). Figures a teacher published before
    a test existed lacks are recomputed from the tokens (and the teacher, for the accuracy)."""
    manifest = read_manifest(teacher_url, "teacher")
    stats = dict(manifest.stats)
    if "test_dec0_bits" not in stats:
        return {}
    if "test_dec0_accuracy" not in stats and min_accuracy is not None:  # one pass fills every missing figure
        teacher, _ = load_teacher(teacher_url)
        stats = {**test_dec0(teacher, TokensArtifact.open(tokens_url), torch.device("cpu")), **stats}
    if "test_unigram_bits" not in stats:
        model = teacher_config(manifest).model
        _, y = held_out_anchors(TokensArtifact.open(tokens_url), model.context_len)
        stats["test_unigram_bits"] = unigram_bits(y[:, -1])
        stats["chance_bits"] = math.log2(model.vocab_size)
    quality = {"dec0": stats["test_dec0_bits"], "unigram": stats["test_unigram_bits"], "chance": stats["chance_bits"]}
    if "test_dec0_accuracy" in stats:
        quality["accuracy"] = stats["test_dec0_accuracy"]
    if margin_bits is not None and not quality["dec0"] < quality["unigram"] - margin_bits:
        raise TeacherQualityError(
            f"teacher {teacher_url} has not learned the task: held-out L_dec0 {quality['dec0']:.3f} bits against "
            f"{quality['unigram']:.3f} for the targets' unigram entropy (chance {quality['chance']:.3f}), needed "
            f"{margin_bits:g} bits better; train it longer or differently, or set teacher_margin_bits: null"
        )
    if min_accuracy is not None and not quality["accuracy"] >= min_accuracy:
        raise TeacherQualityError(
            f"teacher {teacher_url} has not learned the task: held-out top-1 accuracy {quality['accuracy']:.3f} "
            f"(L_dec0 {quality['dec0']:.3f} bits, unigram {quality['unigram']:.3f}), needed {min_accuracy:g}; "
            "train it longer or differently, or set teacher_min_accuracy: null"
        )
    return quality
