"""Text corpora as byte-level documents: plain files, JSONL, or a Parquet text column, via fsspec.

Tokens are bytes (vocabulary 256, the paper's character-level setup), but the corpus is kept ASCII
so a model never has to learn UTF-8 continuation bytes: with `non_ascii="replace"` every byte >= 128
becomes '?', with `"drop"` it is removed. How many bytes were affected is counted, because the
manifest must say how much of the corpus the policy changed.

Readers are generators of `(source_name, tokens)` so `max_docs` can stop reading early; empty
documents are yielded too and skipped by the caller (sources/read.py), which also reports an empty
corpus.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from sources.errors import SourceError, expand_urls

TEXT_VOCAB = 256
NonAsciiPolicy = Literal["replace", "drop"]
REPLACEMENT = ord("?")

Document = tuple[str, np.ndarray]  # (source name, int64 tokens)


@dataclass
class AsciiFilter:
    """Applies the non-ASCII policy to byte strings and counts the bytes it changed."""

    policy: NonAsciiPolicy = "replace"
    affected_bytes: int = 0
    transcoded: dict[str, int] = field(default_factory=dict)  # encoding -> files converted to UTF-8

    def __call__(self, data: bytes) -> np.ndarray:
        """Bytes -> uint8 tokens in [0, 128) (narrow: a streamed corpus is never widened to int64)."""
        if self.policy not in ("replace", "drop"):
            raise SourceError(f"unknown non_ascii policy '{self.policy}', expected 'replace' or 'drop'")
        arr = np.frombuffer(data, dtype=np.uint8)
        high = arr >= 128
        n_high = int(high.sum())
        if n_high:
            self.affected_bytes += n_high
            if self.policy == "replace":
                arr = np.where(high, np.uint8(REPLACEMENT), arr)
            else:
                arr = arr[~high]
        return arr


_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"),
)


def sniff_encoding(head: bytes, url: str) -> str:
    """The text encoding of a file from its first bytes: a byte-order mark names UTF-8/16/32 (decoded,
    never read as bytes: UTF-16 read as bytes makes every other token a NUL); NUL bytes without a
    mark mean UTF-16/32 without one, or binary data, which is refused; anything else is UTF-8."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    nul = head.count(0)
    if nul:
        raise SourceError(
            f"{url}: {nul} of its first {len(head)} bytes are NUL: UTF-16/32 text without a byte-order mark "
            "or a binary file; convert it to UTF-8 (e.g. iconv -f UTF-16LE -t UTF-8)"
        )
    return "utf-8"


def to_utf8(data: bytes, url: str, ascii_filter: AsciiFilter) -> bytes:
    """A whole file's bytes as UTF-8 (BOM removed), counting the files that were converted."""
    encoding = sniff_encoding(data[:4096], url)
    if encoding == "utf-8":
        return data
    ascii_filter.transcoded[encoding] = ascii_filter.transcoded.get(encoding, 0) + 1
    try:
        return data.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as err:
        raise SourceError(f"{url}: starts with a {encoding} byte-order mark but is not {encoding} ({err})") from err


def _open(url: str, mode: str = "rb", encoding: str | None = None) -> fsspec.core.OpenFile:
    """Open with compression inferred from the name, so `corpus.txt.gz` reads like `corpus.txt`."""
    if "t" in mode:
        return fsspec.open(url, mode, compression="infer", encoding=encoding or "utf-8")
    return fsspec.open(url, mode, compression="infer")


def _read_all(url: str) -> bytes:
    try:
        with _open(url) as f:
            return f.read()
    except FileNotFoundError as err:
        raise SourceError(f"file not found: {url}") from err
    except (OSError, EOFError, zlib.error) as err:
        raise SourceError(f"{url}: cannot read ({type(err).__name__}: {err})") from err


def read_text_files(url: str, ascii_filter: AsciiFilter) -> Iterator[Document]:
    """One document per file of `url` (a path, URL or glob; .gz etc. decompressed by name)."""
    for file_url in expand_urls(url):
        yield file_url, ascii_filter(to_utf8(_read_all(file_url), file_url, ascii_filter))


def read_jsonl(url: str, text_column: str, ascii_filter: AsciiFilter) -> Iterator[Document]:
    """One document per non-blank line of each JSONL file; the text is under key `text_column`."""
    for file_url in expand_urls(url):
        try:
            with _open(file_url) as f:
                encoding = sniff_encoding(f.read(4096), file_url)
            if encoding != "utf-8":
                ascii_filter.transcoded[encoding] = ascii_filter.transcoded.get(encoding, 0) + 1
            with _open(file_url, "rt", encoding=encoding) as f:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    yield f"{file_url}:{line_no}", ascii_filter(
                        _jsonl_text(line, text_column, file_url, line_no).encode("utf-8")
                    )
        except UnicodeDecodeError as err:
            raise SourceError(f"{file_url}: not UTF-8 text ({err})") from err


def _jsonl_text(line: str, key: str, url: str, line_no: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise SourceError(f"{url}: invalid JSON on line {line_no}: {err.msg}") from err
    if not isinstance(record, dict):
        raise SourceError(f"{url}: line {line_no} is a JSON {type(record).__name__}, expected an object")
    if key not in record:
        keys = ", ".join(sorted(record)) or "none"
        raise SourceError(f"{url}: line {line_no} has no key '{key}' (keys: {keys}); set text_column")
    value = record[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SourceError(f"{url}: line {line_no}: '{key}' is a {type(value).__name__}, expected a string")
    return value


def read_parquet(url: str, text_column: str, ascii_filter: AsciiFilter) -> Iterator[Document]:
    """One document per row of column `text_column` (string or binary) of each Parquet file."""
    for file_url in expand_urls(url):
        fs, path = url_to_fs(file_url)
        try:
            pf = pq.ParquetFile(path, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as err:
            raise SourceError(f"{file_url}: not a readable Parquet file ({err})") from err
        names = pf.schema_arrow.names
        if text_column not in names:
            raise SourceError(
                f"{file_url}: no column '{text_column}' (columns: {', '.join(names)}); set text_column"
            )
        field = pf.schema_arrow.field(text_column)
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
                or pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
            raise SourceError(f"{file_url}: column '{text_column}' has type {field.type}, expected text")
        row = 0
        for batch in pf.iter_batches(columns=[text_column]):
            for value in batch.column(0).to_pylist():
                data = b"" if value is None else value if isinstance(value, bytes) else value.encode()
                yield f"{file_url}#{row}", ascii_filter(data)
                row += 1
