"""One entry point from a `TokensConfig` to documents: `read_documents(cfg) -> DocumentSet`.

Every reader yields documents in a fixed order; this module applies what is common to all of them
(skip empty documents, stop at `max_docs`, refuse an empty corpus, fix the vocabulary) so the
tokens artifact sees one shape of input whatever the source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.config import TokensConfig
from schemas.layout import NO_TARGET
from schemas.registry import SOURCES, resolve
from sources.errors import SourceError
from sources.idx import PIXEL_VOCAB, image_pixel_sequences
from sources.npy import read_labelled_npz, read_npy
from sources.sketch import SKETCH_VOCAB, sketch_sequences
from sources.text import TEXT_VOCAB, AsciiFilter, read_jsonl, read_parquet, read_text_files


@dataclass
class DocumentSet:
    """Documents as int64 token arrays, with per-document source names and reading statistics.

    `targets is None` for language-style sources: the target of token t is token t+1 of the same
    document and -1 at its end (see `target`). Synthetic tasks carry their own targets (-1 where
    nothing is scored), and `clean_targets` when label noise is on: the same documents with
    uncorrupted labels, which the test split uses so evaluation measures the task, not the noise.
    """

    tokens: list[np.ndarray]
    vocab_size: int
    sources: list[str]
    targets: list[np.ndarray] | None = None
    clean_targets: list[np.ndarray] | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens))

    def target(self, i: int, clean: bool = False) -> np.ndarray:
        """Targets (T,) int64 of document i; `clean=True` prefers the noise-free labels if any."""
        if clean and self.clean_targets is not None:
            return self.clean_targets[i]
        if self.targets is not None:
            return self.targets[i]
        return next_token_targets(self.tokens[i])


def next_token_targets(x: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """Language targets: y[t] = x[t+1], and -1 after the last token (nothing left to predict)."""
    y = np.empty_like(x, dtype=dtype)
    y[:-1] = x[1:]
    if len(y):
        y[-1] = NO_TARGET
    return y


Item = tuple[str, np.ndarray, "np.ndarray | None"]  # (source name, tokens, own targets or None)


@dataclass
class DocumentStream:
    """File documents one at a time, as (name, tokens, own targets or None): the tokens artifact
    writes them as they come, so no corpus is ever held whole. `vocab_size` and the reading stats are
    final once `items` is exhausted (a vocabulary taken from the data is its largest id + 1)."""

    items: Iterator[Item]
    stats: dict[str, Any]
    fixed_vocab: int | None = None
    max_id: int = -1
    count: int = 0

    @property
    def vocab_size(self) -> int:
        return max(self.fixed_vocab if self.fixed_vocab is not None else self.max_id + 1, 2)


def stream_documents(cfg: TokensConfig) -> DocumentStream | DocumentSet:
    """The reader registered for `cfg.source` (schemas/registry.py): a stream for file sources, the
    whole set for synthetic tasks (generated in memory, with clean targets for the test split)."""
    if cfg.source not in SOURCES:
        raise SourceError(f"unknown source '{cfg.source}', expected one of {', '.join(SOURCES)}")
    if cfg.source != "synthetic":
        assert cfg.url is not None  # TokensConfig guarantees a url for file sources
    stats: dict[str, Any] = {"source": cfg.source, "url": cfg.url}
    return resolve(SOURCES[cfg.source])(cfg, stats)


def read_documents(cfg: TokensConfig) -> DocumentSet:
    """Read the documents `cfg` describes, all at once (int64 arrays); raises SourceError with a one-line
    message on bad input. The tokens artifact streams instead (`stream_documents`)."""
    docs = stream_documents(cfg)
    if isinstance(docs, DocumentSet):
        return docs
    names, tokens, targets = [], [], []
    for name, x, y in docs.items:
        names.append(name)
        tokens.append(x.astype(np.int64))
        targets.append(y)
    own = None if all(y is None for y in targets) else [
        next_token_targets(x) if y is None else y.astype(np.int64) for x, y in zip(tokens, targets, strict=True)]
    return DocumentSet(tokens=tokens, vocab_size=docs.vocab_size, sources=names, targets=own, stats=docs.stats)


def read_synthetic(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    return _synthetic(cfg)


def read_text(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentStream:
    return _text(cfg, stats, lambda f: read_text_files(cfg.url, f))


def read_jsonl_text(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentStream:
    return _text(cfg, stats, lambda f: read_jsonl(cfg.url, cfg.text_column, f))


def read_parquet_text(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentStream:
    return _text(cfg, stats, lambda f: read_parquet(cfg.url, cfg.text_column, f))


def _text(cfg: TokensConfig, stats: dict[str, Any], read: Any) -> DocumentStream:
    ascii_filter = AsciiFilter(cfg.non_ascii)

    def finish() -> None:
        stats["non_ascii_policy"] = cfg.non_ascii
        stats["non_ascii_bytes"] = ascii_filter.affected_bytes
        if ascii_filter.transcoded:  # files decoded from UTF-8 with BOM / UTF-16 / UTF-32
            stats["text_encodings_converted"] = dict(ascii_filter.transcoded)

    return _stream(_untargeted(read(ascii_filter)), cfg, TEXT_VOCAB, stats, finish)


def read_mnist_idx(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentStream:
    docs = _named(cfg.url, image_pixel_sequences(cfg.url, cfg.max_docs))
    return _stream(docs, cfg, PIXEL_VOCAB, stats)


def read_sketch_idx(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentStream:
    stats["sketch_threshold"] = cfg.sketch_threshold
    docs = _named(cfg.url, sketch_sequences(cfg.url, cfg.sketch_threshold, cfg.max_docs))
    return _stream(docs, cfg, SKETCH_VOCAB, stats)


def read_npz_sequences(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentStream:
    """Inputs with their own targets (`.npz` with `inputs` and `targets`), scored where targets say."""
    if cfg.chunk_len is not None:
        raise SourceError("tokens.chunk_len does not apply to npz_sequences: each row is one sequence")
    stats["vocab_size_from"] = "config" if cfg.vocab_size is not None else "max token + 1"
    scored = [0]

    def counted() -> Iterator[Item]:
        for name, x, y in read_labelled_npz(cfg.url, cfg.vocab_size):
            scored[0] += int((y >= 0).sum()) if len(x) else 0
            yield name, x, y

    def finish() -> None:
        stats["scored_targets"] = scored[0]

    return _stream(counted(), cfg, cfg.vocab_size, stats, finish)


def read_npy_tokens(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentStream:
    stats["vocab_size_from"] = "config" if cfg.vocab_size is not None else "max token + 1"
    return _stream(_untargeted(read_npy(cfg.url, cfg.vocab_size)), cfg, cfg.vocab_size, stats)


def _untargeted(docs: Iterable[tuple[str, np.ndarray]]) -> Iterator[Item]:
    return ((name, x, None) for name, x in docs)


def _named(url: str, docs: list[np.ndarray]) -> Iterator[Item]:
    return ((f"{url}[{i}]", doc, None) for i, doc in enumerate(docs))


def _stream(
    docs: Iterable[Item], cfg: TokensConfig, vocab_size: int | None, stats: dict[str, Any],
    finish: Any = None,
) -> DocumentStream:
    """Skip empty documents (cut to chunk_len first), stop at max_docs, refuse an empty corpus, track the
    largest id; `finish` completes the stats once the reader is exhausted."""
    stream = DocumentStream(iter(()), stats, vocab_size)
    if cfg.chunk_len is not None:
        docs = _chunked(docs, cfg.chunk_len)
        stats["chunk_len"] = cfg.chunk_len

    def items() -> Iterator[Item]:
        skipped = 0
        for name, x, y in docs:
            if len(x) == 0:
                skipped += 1
                continue
            top = int(x.max()) if y is None else max(int(x.max()), int(y.max()))
            stream.max_id, stream.count = max(stream.max_id, top), stream.count + 1
            yield name, x, y
            if cfg.max_docs is not None and stream.count >= cfg.max_docs:
                break
        if not stream.count:
            raise SourceError(
                f"empty corpus: {cfg.url} ({cfg.source}) has no non-empty document"
                + (f" ({skipped} empty ones skipped)" if skipped else "")
            )
        stats["empty_documents_skipped"] = skipped
        if finish is not None:
            finish()

    stream.items = items()
    return stream


def _chunked(docs: Iterable[Item], chunk_len: int) -> Iterator[Item]:
    """Cut each document into consecutive pieces of chunk_len tokens (the last may be shorter).

    A single long file (a novel) otherwise is one document, which leaves nothing for a test split;
    pieces are named `source@start` so every token can still be traced to its file position.
    """
    for name, doc, y in docs:
        if len(doc) <= chunk_len:
            yield name, doc, y
            continue
        for start in range(0, len(doc), chunk_len):
            piece = slice(start, start + chunk_len)
            yield f"{name}@{start}", doc[piece], None if y is None else y[piece]


def _synthetic(cfg: TokensConfig) -> DocumentSet:
    """Seeded task documents with their own targets (and clean targets when labels are noisy)."""
    if cfg.chunk_len is not None:
        raise SourceError("chunk_len applies to file sources; synthetic documents have a fixed task length")
    from sources.synthetic import generate_task, task_vocab_size

    params = dict(cfg.task_params)
    docs = generate_task(cfg.task, cfg.num_docs, cfg.seed, **params)
    noisy = float(params.get("label_noise", 0.0) or 0.0) > 0
    clean = generate_task(cfg.task, cfg.num_docs, cfg.seed, clean=True, **params) if noisy else None
    return DocumentSet(
        tokens=[x for x, _ in docs],
        targets=[y for _, y in docs],
        clean_targets=[y for _, y in clean] if clean is not None else None,
        vocab_size=task_vocab_size(cfg.task, **params),
        sources=[f"synthetic:{cfg.task}[{i}]" for i in range(len(docs))],
        stats={"source": "synthetic", "task": cfg.task, "task_params": params,
               "test_targets": "clean" if noisy else "as generated"},
    )
