"""Names and Arrow schemas of everything stored on disk, in one place.

Writers and readers of the tokens artifact and of the label store import these constants instead of
spelling names themselves, so a renamed array or column is a one-line change that every module sees,
and tests can check files against the schema with pyarrow alone (docs/architecture.md).
"""

from __future__ import annotations

import pyarrow as pa

# ----------------------------------------------------------------------------- common

SPLIT_TRAIN = "train"
SPLIT_TEST = "test"
SPLITS = (SPLIT_TRAIN, SPLIT_TEST)
NO_TARGET = -1  # padding / "no target" in token and target arrays
INDEX_FILE = "index.parquet"  # both artifacts keep their row index under this name
ZARR_GROUP = "data.zarr"  # the Zarr v3 group inside an artifact directory

# ----------------------------------------------------------------------------- tokens artifact
# One 1-D Zarr array per stream: every document concatenated, found through index.parquet.

TOKENS_ARRAY = "tokens"  # (position,) int16: all documents concatenated
TARGETS_ARRAY = "targets"  # (position,) int16: y_t, -1 at a document's end for language data
TOKENS_DIMS = ("position",)
TOKENS_DTYPE = "int16"
TOKENS_CHUNK = 1 << 20  # positions per Zarr chunk (2 MiB of int16)

TOKENS_INDEX_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.int64(), nullable=False),  # 0..n-1 in reading order
        pa.field("offset", pa.int64(), nullable=False),  # first position in tokens/targets
        pa.field("length", pa.int64(), nullable=False),  # tokens in the document
        pa.field("split", pa.string(), nullable=False),  # 'train' or 'test'
        pa.field("source", pa.string(), nullable=False),  # file (and row/line) it came from
    ]
)

# ----------------------------------------------------------------------------- label store
# Shapes: N windows, L+1 memories per window, Z = K*D features, Tc+L+Tf positions per window.

LABEL_MEMORY_ARRAY = "memory"  # (window, step, feature) float16, or int8 with memory_scale
LABEL_MEMORY_SCALE_ARRAY = "memory_scale"  # (window, step, memory_token) float32, int8 stores only
LABEL_TOKENS_ARRAY = "tokens"  # (window, position) int16
LABEL_TARGETS_ARRAY = "targets"  # (window, position) int16
LABEL_DEC_LOSS_ARRAY = "dec_loss"  # (window, step) float32, NaN where unscored

LABEL_MEMORY_DIMS = ("window", "step", "feature")
LABEL_MEMORY_SCALE_DIMS = ("window", "step", "memory_token")
LABEL_TOKENS_DIMS = ("window", "position")
LABEL_TARGETS_DIMS = ("window", "position")
LABEL_DEC_LOSS_DIMS = ("window", "step")

LABEL_UNITS_DIR = "_units"  # completion records of work units


def label_unit_name(shard: int) -> str:
    """File name of the completion record of one shard (one Beam work unit)."""
    return f"shard-{shard:06d}.json"


LABEL_INDEX_SCHEMA = pa.schema(
    [
        pa.field("window", pa.int64(), nullable=False),  # row of the Zarr arrays
        pa.field("doc_id", pa.int64(), nullable=False),  # document in the tokens artifact
        pa.field("anchor", pa.int64(), nullable=False),  # position a in the document
        pa.field("split", pa.string(), nullable=False),  # split of the document
        pa.field("shard", pa.int32(), nullable=False),  # work unit that wrote the window
    ]
)
