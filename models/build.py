"""Config -> module. The only place that knows which class a config field selects."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from models.rnn import RNN, DecoderReadout, MLPReadout
from models.teacher import Decoder, Teacher
from schemas.config import RNNConfig, TeacherModelConfig
from schemas.registry import RNN_VARIANTS, resolve

GLOBAL_RNG_LOCK = threading.RLock()
"""Held by whatever draws from or resets torch's global CPU generator (every build, `seeded_init`,
restoring a checkpoint's RNG): the flow's tasks are threads of one process sharing that generator."""


def reseed_global(seed: int) -> None:
    """Seed torch's global CPU generator under GLOBAL_RNG_LOCK, so it never resets under a seeded build
    running in another thread (a DMT task doing it unlocked moved the demo's Transformer BPTT student)."""
    with GLOBAL_RNG_LOCK:
        torch.manual_seed(seed)


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Initialise modules from `seed` whatever else is running.

    The flow trains several variants at once in threads, and they all draw their initial weights from
    torch's one global CPU generator: seeding it and then building was a race (two runs of the same
    config gave different GRU students). Builds now hold a lock on a seeded fork of that generator, and
    so does every other build (a loader rebuilding a teacher before reading its weights drew from the
    seeded stream of a build in another thread and moved a BPTT student between two runs).
    """
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_teacher(cfg: TeacherModelConfig) -> Teacher:
    """A freshly initialised teacher (encoder + decoder) of the given shape."""
    with GLOBAL_RNG_LOCK:  # see seeded_init
        return Teacher(cfg)


def build_rnn(cfg: RNNConfig, teacher_cfg: TeacherModelConfig, teacher: Teacher | None = None) -> RNN:
    """An RNN variant whose memory matches the teacher's (Z = K * D, vocabulary V).

    readout="teacher_decoder": a deep copy of `teacher.decoder` (its memory projection, token embedding,
    causal blocks and output layer), trainable and independent of the teacher afterwards. With
    `teacher=None` a fresh decoder of the same shape is built instead, so the RNN can be constructed
    before `load_state_dict` from a checkpoint (its keys are `readout_head.decoder.*`).
    readout="mlp": the RNN's own MLP head (cfg.hidden units) over the flat memory.
    """
    if teacher is not None and teacher.cfg.memory_size != teacher_cfg.memory_size:
        raise ValueError(
            f"teacher memory size {teacher.cfg.memory_size} != teacher_cfg memory size {teacher_cfg.memory_size}"
        )
    with GLOBAL_RNG_LOCK:  # see seeded_init
        return _build_rnn(cfg, teacher_cfg, teacher)


def _build_rnn(cfg: RNNConfig, teacher_cfg: TeacherModelConfig, teacher: Teacher | None) -> RNN:
    head: nn.Module
    if cfg.readout == "teacher_decoder":
        decoder = copy.deepcopy(teacher.decoder) if teacher is not None else Decoder(teacher_cfg)
        decoder.requires_grad_(True)
        head = DecoderReadout(decoder)
    else:
        head = MLPReadout(teacher_cfg.memory_size, cfg.hidden, teacher_cfg.vocab_size)
    return resolve(RNN_VARIANTS[cfg.kind])(cfg, teacher_cfg, head)  # schemas/registry.py
