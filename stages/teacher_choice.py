"""Choosing among teachers trained from different seeds: by how well a student follows each one's memories.

Teachers that answer equally well can differ a lot in how well an SMT student learns their memory transitions
(docs/comparison.md: 0.855 against 0.992 accuracy from the student's own memory, two teacher seeds, the same
data), more than student seeds differ. The test split must not decide (it would flatter the result), so each
candidate's first SMT student is read from its own initial memory, as the evaluation reads it, on one fixed
batch of train documents that no candidate's label store has a window of (DMT's `keep_best` checks the same
way); the lowest loss wins, the earlier seed on a tie. The other candidates' teachers, label jobs, students and
every candidate's check are recorded as `selection_flops`: the report adds them to the shared cost.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from schemas.config import TeacherChoiceConfig
from schemas.layout import SPLIT_TRAIN
from schemas.manifest import Manifest
from store.artifacts import ArtifactError, ArtifactRef, is_complete, publish_manifest, read_manifest
from store.crops import DocumentCrops, unseen_train_documents
from store.labels import LabelStore
from store.locks import one_writer
from store.plans import plan_teacher_choice
from store.rnn import load_rnn
from store.teacher import recorded_train_flops, teacher_config
from store.tokens import TokensArtifact
from store.weights import load_json, save_json
from training.distributed import rank_seed
from training.flops import check_flops, label_flops
from training.steps import bptt_step_loss

CHOICE_FILE = "choice.json"


@one_writer(plan_teacher_choice)
def teacher_choice_stage(candidates: dict[str, dict[str, str]], cfg: TeacherChoiceConfig, root: str) -> ArtifactRef:
    """candidates: teacher seed -> {"teacher", "labels", "rnn"} URLs. Publishes kind "teacher_choice": choice.json
    and stats {chosen_seed, held_out_bits per seed, selection_flops}. `cfg.seq_len` must be set (the graph does)."""
    ref = plan_teacher_choice(candidates=candidates, cfg=cfg, root=root)
    if is_complete(ref.url):
        return ref
    if cfg.seq_len is None:
        raise ValueError("teacher_choice.seq_len must be set before the stage runs (the graph uses dmt.rollout_len)")
    stores = {seed: LabelStore.open(urls["labels"]) for seed, urls in candidates.items()}
    tokens = _shared_tokens(stores)
    seen = np.concatenate([s.index.column("doc_id").to_numpy() for s in stores.values()])
    unseen = unseen_train_documents(tokens, seen)
    if unseen.size == 0:
        raise ArtifactError("teacher_choice needs train documents without a window in the label stores, and every "
                            "one has some: materialise fewer windows or add documents")
    x, y = DocumentCrops(tokens, SPLIT_TRAIN, unseen).windows(
        np.random.default_rng(rank_seed(0, 0, "teacher-choice")), cfg.sequences, cfg.seq_len)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    bits, cost, seconds, checks = {}, {}, {}, 0
    for seed, urls in sorted(candidates.items(), key=lambda kv: int(kv[0])):
        rnn, rnn_manifest = load_rnn(urls["rnn"])
        teacher = read_manifest(urls["teacher"], "teacher")
        with torch.no_grad():
            bits[seed] = float(bptt_step_loss(rnn, x_t, y_t)["loss"]) / math.log(2)
        cost[seed] = _candidate_flops(teacher, stores[seed].manifest, rnn_manifest.stats)
        seconds[seed] = _candidate_seconds(teacher, stores[seed].manifest, rnn_manifest.stats)
        checks += check_flops(rnn.cfg, teacher_config(teacher).model, cfg.sequences, cfg.seq_len)
    chosen = min(bits, key=lambda s: (bits[s], int(s)))
    selection = sum(f for s, f in cost.items() if s != chosen) + checks
    save_json(ref.join(CHOICE_FILE), {
        "chosen_seed": int(chosen), "held_out_bits": bits, "candidates": candidates, "candidate_flops": cost,
        "candidate_seconds": seconds,
        "held_out": f"{cfg.sequences} crops of {cfg.seq_len} tokens from {unseen.size} unseen train documents",
    })
    publish_manifest(ref, ref.config, ref.parents, counts={"candidates": len(candidates)},
                     stats={"chosen_seed": int(chosen), "held_out_bits": bits, "selection_flops": selection})
    return ref


def chosen_seed(url: str) -> int:
    """The teacher seed a published choice kept."""
    return int(read_manifest(url, "teacher_choice").stats["chosen_seed"])


def choice_record(url: str) -> dict:
    """choice.json of a published choice: scores, candidates and their cost."""
    return load_json(f"{url.rstrip('/')}/{CHOICE_FILE}")


def _shared_tokens(stores: dict[str, LabelStore]) -> TokensArtifact:
    hashes = {s.tokens_hash for s in stores.values()}
    if len(hashes) != 1:
        raise ArtifactError(f"teacher_choice candidates were labelled from different tokens: {sorted(hashes)}")
    return TokensArtifact.open(next(iter(stores.values())).tokens_url)


def _candidate_seconds(teacher: Manifest, labels: Manifest, rnn_stats: dict) -> float:
    """The recorded training and encoding time of a candidate's teacher (its own steps), label job and student."""
    spent = (teacher.stats.get("seconds", 0.0), labels.stats.get("encode_seconds", 0.0), rnn_stats.get("seconds", 0.0))
    return round(sum(float(s) for s in spent), 1)


def _candidate_flops(teacher: Manifest, labels: Manifest, rnn_stats: dict) -> int:
    """A candidate's teacher (less the `init_from` teacher every candidate starts from), label job and student."""
    own = recorded_train_flops(teacher) - int(teacher.stats.get("init_flops", 0))
    return (own + label_flops(teacher_config(teacher).model, int(labels.counts["labels"]))
            + int(rnn_stats.get("train_flops", 0)))
