"""Fixed-length crops of a tokens artifact's documents, for the stages that read tokens directly
(teacher training, BPTT, evaluation). Label-store stages never come here.

Crops are numpy int64 arrays padded with -1 outside their document, sampled from a caller-owned
`numpy.random.Generator` so every stream is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np

from schemas.layout import SPLIT_TRAIN
from store.tokens import TokensArtifact, split_documents


class DocumentCrops:
    """The documents of one split (or the subset `ids` of it) as flat arrays plus their offsets and lengths."""

    def __init__(self, tokens: TokensArtifact, split: str, ids: np.ndarray | None = None) -> None:
        if ids is None:
            ids = tokens.doc_ids(split)
        elif not np.isin(ids, tokens.doc_ids(split)).all():
            raise ValueError(f"some of the documents asked for are not in the '{split}' split")
        if ids.size == 0:
            raise ValueError(f"the tokens artifact has no '{split}' documents")
        self.split = split
        # the artifact's concatenated (int16) arrays, shared: no second copy of a large corpus
        self.offsets = tokens.index.column("offset").to_numpy()[ids].astype(np.int64)
        self.lengths = tokens.index.column("length").to_numpy()[ids].astype(np.int64)
        self.x = tokens.tokens
        self.y = tokens.targets
        self._scored: tuple[np.ndarray, np.ndarray] | None = None  # built on first use (`near_scored`, `scored`)

    @property
    def num_docs(self) -> int:
        return int(self.lengths.size)

    def _gather(self, docs: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """x, y (B, length): document positions starts .. starts+length-1, -1 outside the document."""
        pos = starts[:, None] + np.arange(length)[None, :]
        n = self.lengths[docs][:, None]
        valid = (pos >= 0) & (pos < n)
        flat = self.offsets[docs][:, None] + np.clip(pos, 0, np.maximum(n - 1, 0))
        x = np.where(valid, self.x[flat], -1).astype(np.int64)  # stored int16; torch embeddings want int64
        y = np.where(valid, self.y[flat], -1).astype(np.int64)
        return x, y

    def anchored(
        self, rng: np.random.Generator, batch: int, before: int, after: int, chain: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crops x[a-before .. a+after] (B, before+1+after) around anchors a drawn uniformly among all
        positions, so the anchor sits at index `before` with its full left context (left-padded only
        at a real document start, exactly like stored labels). The last position is included: tasks
        that score the final token need the readout trained there (L_dyn masks its missing next token).
        With `chain` > 1, a is the first of `chain` consecutive anchors, kept where the last one still
        lies inside the document (documents shorter than the chain excepted)."""
        weights = self.lengths.astype(np.float64)
        if weights.sum() == 0:
            weights = np.ones_like(weights)
        cum = np.cumsum(weights)
        u = rng.random(batch) * cum[-1]
        docs = np.minimum(np.searchsorted(cum, u, side="right"), self.num_docs - 1)
        local = np.floor(u - (cum[docs] - weights[docs])).astype(np.int64)
        anchors = np.clip(local, 0, np.maximum(self.lengths[docs] - chain, 0))
        return self._gather(docs, anchors - before, before + 1 + after)

    def near_scored(
        self, rng: np.random.Generator, batch: int, before: int, after: int, window: int, chain: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like `anchored`, but each anchor lies up to `window - 1` positions before a scored target (drawn
        uniformly among the split's scored positions), so the decoder's future of `window` tokens always
        holds something to score. Meant for sparse tasks (retrieval scores one token in 64): with uniform
        anchors most steps teach the decoder nothing. Indexes every scored position once (int64 each).
        With `chain` > 1 the chain's last anchor is kept inside the document, as in `anchored`."""
        if self._scored is None:
            self._scored = self._scored_positions()
        docs, positions = self._scored
        if docs.size == 0:
            raise ValueError(f"the '{self.split}' split has no scored targets to anchor near")
        pick = rng.integers(0, docs.size, size=batch)
        back = rng.integers(0, max(window, 1), size=batch)
        anchors = np.minimum(np.maximum(positions[pick] - back, 0), np.maximum(self.lengths[docs[pick]] - chain, 0))
        return self._gather(docs[pick], anchors - before, before + 1 + after)

    def _scored_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(document index, position in it) of every target with y >= 0."""
        docs, positions = [], []
        for d, (offset, length) in enumerate(zip(self.offsets, self.lengths, strict=True)):
            local = np.flatnonzero(self.y[offset : offset + length] >= 0)
            docs.append(np.full(local.size, d, dtype=np.int64))
            positions.append(local)
        if not docs:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(docs), np.concatenate(positions)

    def scored(
        self, rng: np.random.Generator, count: int, before: int, after: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like `anchored`, but anchors drawn (without replacement when possible) among positions
        whose target is scored (y >= 0): synthetic tasks score few positions, and a ceiling measured
        on unscored anchors would be empty."""
        if self._scored is None:
            self._scored = self._scored_positions()
        all_docs, all_anchors = self._scored
        if all_docs.size == 0:
            empty = np.zeros((0, before + 1 + after), dtype=np.int64)
            return empty, empty.copy()
        pick = np.sort(rng.choice(all_docs.size, size=min(count, all_docs.size), replace=False))
        return self._gather(all_docs[pick], all_anchors[pick] - before, before + 1 + after)

    def windows(self, rng: np.random.Generator, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Crops of `length` tokens starting at a uniform offset (documents picked by length); a
        document no longer than `length` is taken whole from its start and right-padded, so short
        synthetic tasks are always seen complete."""
        p = self.lengths / self.lengths.sum()
        docs = rng.choice(self.num_docs, size=batch, p=p)
        room = np.maximum(self.lengths[docs] - length, 0)
        starts = np.floor(rng.random(batch) * (room + 1)).astype(np.int64)
        return self._gather(docs, starts, length)

    def prefixes(self, count: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `length` tokens of the first `count` documents (deterministic; evaluation)."""
        docs = np.arange(min(count, self.num_docs))
        return self._gather(docs, np.zeros_like(docs), length)


def split_off_validation(tokens: TokensArtifact, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, validation ids) of the train split's documents: a seeded `fraction` of them (at least
    one) set aside to select weights on, so that no choice a stage makes looks at the test split."""
    ids = tokens.doc_ids(SPLIT_TRAIN)
    if ids.size < 2:
        raise ValueError(f"a validation set needs at least 2 train documents; this artifact has {ids.size}")
    is_validation = split_documents(ids.size, fraction, seed)
    return ids[~is_validation], ids[is_validation]


def unseen_train_documents(tokens: TokensArtifact, seen: np.ndarray) -> np.ndarray:
    """Ids of the train split's documents not in `seen` (e.g. those with a window in a label store): held-out
    data for a student that learned from that store, which leaves the test split to the evaluation."""
    ids = tokens.doc_ids(SPLIT_TRAIN)
    return ids[~np.isin(ids, seen)]
