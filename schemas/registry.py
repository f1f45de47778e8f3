"""Every pluggable component by name, in one place: adding one is a module plus one line here.

The config's allowed values (schemas/config.py) are these keys. The values are import paths, resolved
only when a component is built (`resolve`), so a config validates without importing torch.
docs/extending.md walks through adding an RNN variant, a source and a label codec.
"""

from __future__ import annotations

import importlib
from typing import Any

RNN_VARIANTS = {  # RNNConfig.kind -> a models.rnn.RNN subclass, built as cls(cfg, teacher_cfg, readout_head)
    "transformer": "models.rnn:TransformerUpdater",
    "gru": "models.rnn:GRUUpdater",
    "lstm": "models.rnn:LSTMUpdater",
    "mlp": "models.rnn:MLPUpdater",
    "gated_linear": "models.rnn:GatedLinearUpdater",
}

SOURCES = {  # TokensConfig.source -> reader(cfg, stats) -> sources.read.DocumentSet
    "synthetic": "sources.read:read_synthetic",
    "mnist_idx": "sources.read:read_mnist_idx",
    "text": "sources.read:read_text",
    "jsonl": "sources.read:read_jsonl_text",
    "parquet": "sources.read:read_parquet_text",
    "npy": "sources.read:read_npy_tokens",
    "npz_sequences": "sources.read:read_npz_sequences",  # inputs + targets (-1 / -100 unscored), e.g. MQAR
    "sketch_idx": "sources.read:read_sketch_idx",
}


BLOCK_MLPS = {  # TeacherModelConfig.mlp / RNNConfig.mlp -> a models.layers MLP, built as cls(width, hidden)
    "swiglu": "models.layers:SwiGLU",
    "gelu": "models.layers:GeluMLP",  # the reference implementation's MLP: 2/3 of SwiGLU's FLOPs
}


LABEL_CODECS = {  # LabelSpec.dtype -> a store.label_codecs codec (encode / decode the stored memories)
    "float16": "store.label_codecs:Float16Codec",
    "int8": "store.label_codecs:Int8Codec",
}


def resolve(path: str) -> Any:
    """'package.module:attribute' -> the attribute (imports the module)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
