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

from schemas.config import RNNConfig, TeacherChoiceConfig, TeacherModelConfig
from schemas.layout import SPLIT_TRAIN
from store.artifacts import ArtifactError, ArtifactRef, artifact_url, is_complete, publish_manifest, read_manifest
from store.crops import DocumentCrops, unseen_train_documents
from store.labels import LabelStore
from store.locks import one_writer
from store.plans import plan_teacher_choice
from store.rnn import RNN_JSON, load_rnn
from store.teacher import recorded_train_flops, teacher_config
from store.tokens import TokensArtifact
from store.weights import load_json, save_json
from training.distributed import rank_seed
from training.flops import check_flops, label_flops
from training.steps import bptt_step_loss

CHOICE_FILE = "choice.json"
SEQ_LEN_DEFAULT = "dmt.rollout_len"  # what the graph fills in for `seq_len: null` (flows/graph.py)


@one_writer(plan_teacher_choice)
def teacher_choice_stage(candidates: dict[str, dict[str, str]], cfg: TeacherChoiceConfig, root: str) -> ArtifactRef:
    """candidates: teacher seed -> {"teacher", "labels", "rnn"} URLs. Publishes kind "teacher_choice": choice.json
    and stats {chosen_seed, held_out_bits per seed, selection_flops}. `cfg.seq_len` must be set (the graph does)."""
    ref = plan_teacher_choice(candidates=candidates, cfg=cfg, root=root)
    if is_complete(ref.url):
        return ref
    if cfg.seq_len is None:
        raise ValueError(f"teacher_choice.seq_len must be resolved before the stage runs (default: {SEQ_LEN_DEFAULT})")
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
        with torch.no_grad():
            bits[seed] = float(bptt_step_loss(rnn, x_t, y_t)["loss"]) / math.log(2)
        cost[seed] = _candidate_flops(urls, rnn_manifest.stats)
        seconds[seed] = _candidate_seconds(urls, rnn_manifest.stats)
        recipe = load_json(f"{urls['rnn'].rstrip('/')}/{RNN_JSON}")
        checks += check_flops(RNNConfig.model_validate(recipe["variant"]),
                              TeacherModelConfig.model_validate(recipe["teacher_model"]), cfg.sequences, cfg.seq_len)
    chosen = min(bits, key=lambda s: (bits[s], int(s)))
    selection = sum(f for s, f in cost.items() if s != chosen) + checks
    save_json(ref.join(CHOICE_FILE), {
        "chosen_seed": int(chosen), "held_out_bits": bits, "candidates": candidates, "candidate_flops": cost,
        "candidate_seconds": seconds,
        "held_out": f"{cfg.sequences} crops of {cfg.seq_len} tokens from {unseen.size} unseen train documents",
    })
    publish_manifest(ref, ref.config or {}, ref.parents or {}, counts={"candidates": len(candidates)},
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
    store = next(iter(stores.values()))
    return TokensArtifact.open(artifact_url(store.url.rstrip("/").rsplit("/", 1)[0], "tokens", store.tokens_hash))


def _candidate_seconds(urls: dict[str, str], rnn_stats: dict) -> float:
    """The recorded training and encoding time of a candidate's teacher (its own steps), label job and student."""
    teacher = read_manifest(urls["teacher"], "teacher").stats.get("seconds", 0.0)
    labels = read_manifest(urls["labels"], "labels").stats.get("encode_seconds", 0.0)
    return round(float(teacher) + float(labels) + float(rnn_stats.get("seconds", 0.0)), 1)


def _candidate_flops(urls: dict[str, str], rnn_stats: dict) -> int:
    """A candidate's teacher (less the `init_from` teacher every candidate starts from), label job and student."""
    teacher = read_manifest(urls["teacher"], "teacher")
    own = recorded_train_flops(teacher) - int(teacher.stats.get("init_flops", 0))
    labels = read_manifest(urls["labels"], "labels")
    return (own + label_flops(teacher_config(teacher).model, int(labels.counts["labels"]))
            + int(rnn_stats.get("train_flops", 0)))
