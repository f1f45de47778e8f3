"""A training run's log, split by what it depends on, so the same config gives the same bytes.

    metrics.parquet   step, loss terms, lr, grad_norm: a function of the config and seed
    timings.parquet   step, seconds, items_per_s: the clock's readings, different on every run
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from store.artifacts import ArtifactRef, write_bytes_atomic

METRICS_FILE = "metrics.parquet"
TIMINGS_FILE = "timings.parquet"
CLOCK_COLUMNS = ("seconds", "items_per_s")


def write_training_log(ref: ArtifactRef, rows: list[dict[str, Any]]) -> None:
    """Logged rows (TrainLoop.metrics) -> the two Parquet files of `ref`."""
    metrics = [{k: v for k, v in row.items() if k not in CLOCK_COLUMNS} for row in rows]
    timings = [{"step": row["step"], **{k: row[k] for k in CLOCK_COLUMNS if k in row}} for row in rows]
    write_bytes_atomic(ref.join(METRICS_FILE), _parquet(metrics))
    write_bytes_atomic(ref.join(TIMINGS_FILE), _parquet(timings))


def read_training_log(url: str) -> list[dict[str, Any]]:
    """The logged rows of a training artifact at `url` (its metrics file: losses every log_every steps, and
    its held-out checks)."""
    fs, path = url_to_fs(url)
    with fs.open(f"{path.rstrip('/')}/{METRICS_FILE}", "rb") as f:
        return pq.read_table(f).to_pylist()


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    """Columns are the union of the rows' keys (missing values are null)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    table = pa.table({k: [row.get(k) for row in rows] for k in keys}) if rows else pa.table({"step": []})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
