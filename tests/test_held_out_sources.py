"""Held-out data and labelled sequences as users have them: a separate test URL for any file source,
and `.npz` files of inputs with their own targets (the layout of external task generators)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from schemas.config import ConfigError, PipelineConfig, TokensConfig
from sources.errors import SourceError
from store.tokens import TokensArtifact, build_tokens_artifact, plan_tokens_artifact

DATA = Path(__file__).parent / "data"
IMAGES = str(DATA / "sample-1000-images-idx3-ubyte.gz")


@pytest.fixture
def mem() -> str:
    return f"memory://h-{uuid.uuid4().hex[:12]}"


def _write(url: str, data: bytes) -> str:
    with fsspec.open(url, "wb") as f:
        f.write(data)
    return url


def test_a_separate_test_url_is_the_test_split_as_it_is(mem: str) -> None:
    train = _write(f"{mem}/in/train.txt", b"first training book")
    test = _write(f"{mem}/in/held_out.txt", b"a held-out book")
    cfg = TokensConfig(source="text", url=train, test_url=test, test_fraction=0.5)
    art = TokensArtifact.open(build_tokens_artifact(cfg, f"{mem}/runs").url)
    (test_id,) = art.doc_ids("test")
    (train_id,) = art.doc_ids("train")
    assert bytes(art.document(test_id)[0].astype(np.uint8)) == b"a held-out book"
    assert bytes(art.document(train_id)[0].astype(np.uint8)) == b"first training book"
    assert art.manifest.stats["test_url"] == test
    # the test file is part of the address: changing it makes a new artifact, not a stale re-use
    before = plan_tokens_artifact(cfg, f"{mem}/runs").hash
    _write(test, b"another held-out book, longer")
    assert plan_tokens_artifact(cfg, f"{mem}/runs").hash != before


def test_mnist_with_its_own_test_file(tmp_path: Path) -> None:
    cfg = TokensConfig(source="mnist_idx", url=IMAGES, max_docs=30, test_url=IMAGES)
    art = TokensArtifact.open(build_tokens_artifact(cfg, str(tmp_path)).url)
    assert len(art.doc_ids("train")) == 30  # max_docs limits the training file only
    assert len(art.doc_ids("test")) == 1000  # every image of the test file, none drawn from train


def test_npz_inputs_with_their_own_targets(mem: str) -> None:
    inputs = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], dtype=np.int32)
    targets = np.array([[-100, -100, 7, -100, 2], [-100, 8, -100, -100, 6]], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, inputs=inputs, targets=targets)
    url = _write(f"{mem}/mqar/train.npz", buf.getvalue())
    cfg = TokensConfig(source="npz_sequences", url=url, test_url=url)
    art = TokensArtifact.open(build_tokens_artifact(cfg, f"{mem}/runs").url)
    for doc_id in art.doc_ids("train"):
        x, y = art.document(doc_id)
        row = int(doc_id)
        assert x.tolist() == inputs[row].tolist()
        assert y.tolist() == np.where(targets[row] == -100, -1, targets[row]).tolist()
    assert art.vocab_size == 10  # the largest input or target id + 1
    assert art.manifest.stats["scored_targets"] == 4


def test_npz_sequences_refuse_what_they_cannot_read(mem: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, tokens=np.zeros((2, 3), dtype=np.int64))
    url = _write(f"{mem}/bad.npz", buf.getvalue())
    with pytest.raises(SourceError, match="expected arrays 'inputs' and 'targets'"):
        build_tokens_artifact(TokensConfig(source="npz_sequences", url=url), f"{mem}/runs")
    buf = io.BytesIO()
    np.savez(buf, inputs=np.zeros((2, 3), dtype=np.int64), targets=np.full((2, 3), -7))
    url = _write(f"{mem}/bad2.npz", buf.getvalue())
    with pytest.raises(SourceError, match="target -7 is neither unscored"):
        build_tokens_artifact(TokensConfig(source="npz_sequences", url=url), f"{mem}/runs")


def test_test_url_is_refused_for_synthetic_tasks() -> None:
    with pytest.raises((ConfigError, ValueError), match="test_url is for file sources"):
        PipelineConfig.model_validate({"tokens": {"source": "synthetic", "test_url": "x"}})
