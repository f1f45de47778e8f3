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

    def joined(self, other: DocumentSet) -> DocumentSet:
        """This set followed by `other` (e.g. a separate test set), vocabulary the larger of the two."""
        n, m = len(self), len(other)

        def targets(clean: bool) -> list[np.ndarray] | None:
            own = self.targets is not None or other.targets is not None
            if not own and not clean:
                return None
            if clean and self.clean_targets is None and other.clean_targets is None:
                return None
            return [self.target(i, clean) for i in range(n)] + [other.target(i, clean) for i in range(m)]

        return DocumentSet(
            tokens=self.tokens + other.tokens,
            vocab_size=max(self.vocab_size, other.vocab_size),
            sources=self.sources + other.sources,
            targets=targets(False),
            clean_targets=targets(True),
            stats={**self.stats, "test_set": other.stats},
        )

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


def next_token_targets(x: np.ndarray) -> np.ndarray:
    """Language targets: y[t] = x[t+1], and -1 after the last token (nothing left to predict)."""
    y = np.empty_like(x, dtype=np.int64)
    y[:-1] = x[1:]
    if len(y):
        y[-1] = NO_TARGET
    return y


def read_documents(cfg: TokensConfig) -> DocumentSet:
    """Read the documents `cfg` describes; raises SourceError with a one-line message on bad input.
    The reader is the one registered for `cfg.source` (schemas/registry.py)."""
    if cfg.source not in SOURCES:
        raise SourceError(f"unknown source '{cfg.source}', expected one of {', '.join(SOURCES)}")
    if cfg.source != "synthetic":
        assert cfg.url is not None  # TokensConfig guarantees a url for file sources
    stats: dict[str, Any] = {"source": cfg.source, "url": cfg.url}
    return resolve(SOURCES[cfg.source])(cfg, stats)


def read_synthetic(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    return _synthetic(cfg)


def read_text(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    return _text(cfg, stats, lambda f: read_text_files(cfg.url, f))


def read_jsonl_text(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    return _text(cfg, stats, lambda f: read_jsonl(cfg.url, cfg.text_column, f))


def read_parquet_text(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    return _text(cfg, stats, lambda f: read_parquet(cfg.url, cfg.text_column, f))


def _text(cfg: TokensConfig, stats: dict[str, Any], read: Any) -> DocumentSet:
    ascii_filter = AsciiFilter(cfg.non_ascii)
    result = _collect(read(ascii_filter), cfg, TEXT_VOCAB, stats)
    stats["non_ascii_policy"] = cfg.non_ascii
    stats["non_ascii_bytes"] = ascii_filter.affected_bytes
    if ascii_filter.transcoded:  # files decoded from UTF-8 with BOM / UTF-16 / UTF-32
        stats["text_encodings_converted"] = dict(ascii_filter.transcoded)
    return result


def read_mnist_idx(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    docs = _named(cfg.url, image_pixel_sequences(cfg.url, cfg.max_docs))
    return _collect(docs, cfg, PIXEL_VOCAB, stats)


def read_sketch_idx(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    stats["sketch_threshold"] = cfg.sketch_threshold
    docs = _named(cfg.url, sketch_sequences(cfg.url, cfg.sketch_threshold, cfg.max_docs))
    return _collect(docs, cfg, SKETCH_VOCAB, stats)


def read_npz_sequences(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    """Inputs with their own targets (`.npz` with `inputs` and `targets`), scored where targets say."""
    if cfg.chunk_len is not None:
        raise SourceError("tokens.chunk_len does not apply to npz_sequences: each row is one sequence")
    rows = list(read_labelled_npz(cfg.url, cfg.vocab_size))
    if cfg.max_docs is not None:
        rows = rows[: cfg.max_docs]
    docs = _collect(((name, x) for name, x, _ in rows), cfg, cfg.vocab_size, stats)
    kept = {name for name in docs.sources}
    docs.targets = [y for name, _, y in rows if name in kept]
    if cfg.vocab_size is None and docs.targets:  # a target may be the largest id
        docs.vocab_size = max(docs.vocab_size, max(int(y.max()) for y in docs.targets) + 1)
    stats["vocab_size_from"] = "config" if cfg.vocab_size is not None else "max token + 1"
    stats["scored_targets"] = int(sum((y >= 0).sum() for y in docs.targets))
    return docs


def read_npy_tokens(cfg: TokensConfig, stats: dict[str, Any]) -> DocumentSet:
    result = _collect(read_npy(cfg.url, cfg.vocab_size), cfg, cfg.vocab_size, stats)
    stats["vocab_size_from"] = "config" if cfg.vocab_size is not None else "max token + 1"
    return result


def _named(url: str, docs: list[np.ndarray]) -> Iterable[tuple[str, np.ndarray]]:
    return ((f"{url}[{i}]", doc) for i, doc in enumerate(docs))


def _collect(
    docs: Iterable[tuple[str, np.ndarray]], cfg: TokensConfig, vocab_size: int | None, stats: dict[str, Any]
) -> DocumentSet:
    """Keep non-empty documents (cut to chunk_len) up to max_docs; none at all is an error."""
    tokens: list[np.ndarray] = []
    names: list[str] = []
    skipped = 0
    if cfg.chunk_len is not None:
        docs = _chunked(docs, cfg.chunk_len)
        stats["chunk_len"] = cfg.chunk_len
    for name, doc in docs:
        if len(doc) == 0:
            skipped += 1
            continue
        tokens.append(doc)
        names.append(name)
        if cfg.max_docs is not None and len(tokens) >= cfg.max_docs:
            break
    if not tokens:
        raise SourceError(
            f"empty corpus: {cfg.url} ({cfg.source}) has no non-empty document"
            + (f" ({skipped} empty ones skipped)" if skipped else "")
        )
    if vocab_size is None:
        vocab_size = max(int(t.max()) for t in tokens) + 1
    stats["empty_documents_skipped"] = skipped
    return DocumentSet(tokens=tokens, vocab_size=max(vocab_size, 2), sources=names, stats=stats)


def _chunked(docs: Iterable[tuple[str, np.ndarray]], chunk_len: int) -> Iterator[tuple[str, np.ndarray]]:
    """Cut each document into consecutive pieces of chunk_len tokens (the last may be shorter).

    A single long file (a novel) otherwise is one document, which leaves nothing for a test split;
    pieces are named `source@start` so every token can still be traced to its file position.
    """
    for name, doc in docs:
        if len(doc) <= chunk_len:
            yield name, doc
            continue
        for start in range(0, len(doc), chunk_len):
            yield f"{name}@{start}", doc[start : start + chunk_len]


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
