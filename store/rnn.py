"""The "rnn" artifact shared by the distill, DMT and BPTT stages: weights, rebuild recipe, metrics.

Layout (kind "rnn"):

    rnn-{hash16}/rnn.safetensors   RNN state_dict (updater + readout head)
                /rnn.json          {"stage", "variant": RNNConfig, "teacher_model": TeacherModelConfig}
                /metrics.parquet   training log (step, loss terms, lr, grad_norm: same bytes every run)
                /timings.parquet   step, seconds, items_per_s (the clock: store/training_log.py)
                /manifest.json     written last; config = the stage's plan config (store/plans.py)

`rnn.json` is everything needed to rebuild the module without the teacher artifact (build_rnn with
teacher=None makes a same-shaped readout, then the weights are loaded), so evaluation and serving
never need the teacher's weights just to construct an RNN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.build import build_rnn
from models.rnn import RNN
from schemas.config import RNNConfig, TeacherModelConfig
from schemas.manifest import Manifest
from store.artifacts import CHECKPOINT_DIR, ArtifactError, ArtifactRef, open_artifact, publish_manifest
from store.checkpoints import remove_checkpoints
from store.integrity import check_recorded_file
from store.training_log import write_training_log
from store.weights import load_json, load_module, save_json, save_module
from training.loop import LoopResult

RNN_FILE = "rnn.safetensors"
RNN_JSON = "rnn.json"
STAGE_MODE = {"distill": "smt", "dmt": "smt+dmt", "bptt": "bptt"}  # manifest config 'stage' -> report label


def load_rnn(url: str, device: str | torch.device = "cpu") -> tuple[RNN, Manifest]:
    """Rebuild an RNN from its artifact (eval mode) and return it with its manifest."""
    ref, manifest = open_artifact(url, "rnn")
    recipe = load_json(ref.join(RNN_JSON))
    try:
        variant = RNNConfig.model_validate(recipe["variant"])
        model = TeacherModelConfig.model_validate(recipe["teacher_model"])
    except Exception as err:
        raise ArtifactError(f"{ref.join(RNN_JSON)} cannot rebuild an RNN: {err}") from err
    rnn = build_rnn(variant, model, None)
    check_recorded_file(ref.url, manifest.checksums, RNN_FILE, "rnn")
    load_module(ref.join(RNN_FILE), rnn, device)
    rnn.eval()
    return rnn, manifest


def mode_of(manifest: Manifest) -> str:
    """'smt', 'smt+dmt' or 'bptt' for an rnn artifact."""
    return STAGE_MODE.get(str(manifest.config.get("stage")), str(manifest.config.get("stage")))


def publish_rnn(
    ref: ArtifactRef,
    rnn: RNN,
    teacher_model: TeacherModelConfig,
    result: LoopResult,
    stats: dict[str, Any],
) -> Manifest:
    """Write weights, recipe and metrics, then the manifest (last: the plan's own config and parents,
    see store/artifacts.py), then drop the checkpoint."""
    save_module(ref.join(RNN_FILE), rnn)
    recipe = {
        "stage": ref.config.get("stage"),
        "variant": rnn.cfg.model_dump(mode="json"),
        "teacher_model": teacher_model.model_dump(mode="json"),
    }
    save_json(ref.join(RNN_JSON), recipe)
    write_training_log(ref, result.metrics)
    base = {
        "steps": result.step,
        "seconds": result.seconds,
        "train_seconds": result.seconds,  # wall-clock of the optimiser loop (BPTT's match_smt_seconds)
        "stopped": result.stopped,
        "resumed_from": result.resumed_from,
        "torch_threads": result.threads,
        **{f"final_{k}": result.last(k) for k in ("loss", "dyn", "readout", "dec", "unif") if _logged(result, k)},
    }
    counts = {
        "parameters": count_parameters(rnn),
        "updater_parameters": sum(p.numel() for p in rnn.updater_parameters()),
    }
    manifest = publish_manifest(ref, ref.config, ref.parents, counts=counts, stats={**base, **stats})
    remove_checkpoints(ref.join(CHECKPOINT_DIR))
    return manifest


def _logged(result: LoopResult, key: str) -> bool:
    return any(key in row for row in result.metrics)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
