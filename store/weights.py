"""Model weights as safetensors on any fsspec URL: loading never executes code (no pickle).

A model directory holds `{name}.safetensors` (the state dict) beside a JSON file of the config that
builds the module, so a reader rebuilds the module from the config and then loads tensors into it.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from store.artifacts import read_bytes, write_bytes_atomic


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise tensors (made contiguous, CPU, de-aliased) to safetensors bytes."""
    return save_safetensors({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def save_tensors(url: str, tensors: dict[str, torch.Tensor]) -> None:
    write_bytes_atomic(url, tensors_to_bytes(tensors))


def load_tensors(url: str) -> dict[str, torch.Tensor]:
    return load_safetensors(read_bytes(url))


def save_module(url: str, module: nn.Module) -> None:
    """Write a module's state dict (parameters and buffers) as safetensors."""
    save_tensors(url, module.state_dict())


def load_module(url: str, module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Load safetensors weights into an already-built module; missing or extra keys are errors."""
    module.load_state_dict(load_tensors(url), strict=True)
    return module.to(device)


def save_json(url: str, value: Any) -> None:
    write_bytes_atomic(url, json.dumps(value, indent=2, sort_keys=True).encode())


def load_json(url: str) -> Any:
    return json.loads(read_bytes(url))
