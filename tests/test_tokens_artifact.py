"""The tokens artifact: layout readable without our code, content addressing, atomicity, refusals."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr

from schemas.config import SCHEMA_VERSION, ConfigError, PipelineConfig, TokensConfig, load_config
from schemas.layout import INDEX_FILE, TOKENS_INDEX_SCHEMA, ZARR_GROUP
from stages.tokens import tokens_stage
from store.artifacts import MANIFEST, ArtifactError
from store.tokens import TokensArtifact, build_tokens_artifact, split_documents

DATA = Path(__file__).parent / "data"
IMAGES = str(DATA / "sample-1000-images-idx3-ubyte.gz")


@pytest.fixture
def mem() -> str:
    return f"memory://a-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def mnist_artifact(tmp_path_factory: pytest.TempPathFactory) -> TokensArtifact:
    root = str(tmp_path_factory.mktemp("runs"))
    cfg = TokensConfig(source="mnist_idx", url=IMAGES, max_docs=200, test_fraction=0.1, seed=7)
    return TokensArtifact.open(build_tokens_artifact(cfg, root).url)


def test_manifest_and_index_readable_without_our_code(mnist_artifact: TokensArtifact) -> None:
    url = mnist_artifact.ref.url
    manifest = json.loads(Path(url, MANIFEST).read_text())
    assert manifest["kind"] == "tokens" and manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["counts"] == {
        "documents": 200, "tokens": 200 * 784, "train_documents": 180, "test_documents": 20,
        "train_tokens": 180 * 784, "test_tokens": 20 * 784,
    }
    assert manifest["stats"]["vocab_size"] == 256 and manifest["config"]["max_docs"] == 200
    assert INDEX_FILE in manifest["checksums"]
    table = pq.read_table(Path(url, INDEX_FILE))
    assert table.schema.equals(TOKENS_INDEX_SCHEMA)
    df = pd.read_parquet(Path(url, INDEX_FILE))
    assert df["doc_id"].tolist() == list(range(200))
    assert (df["offset"] == df["doc_id"] * 784).all() and (df["length"] == 784).all()
    assert df["split"].value_counts().to_dict() == {"train": 180, "test": 20}
    assert df["source"].iloc[5].endswith("sample-1000-images-idx3-ubyte.gz[5]")


def test_zarr_group_readable_with_xarray(mnist_artifact: TokensArtifact) -> None:
    ds = xr.open_zarr(mnist_artifact.ref.join(ZARR_GROUP), consolidated=False)
    assert ds["tokens"].dims == ("position",) and ds["tokens"].dtype == np.int16
    assert ds.sizes["position"] == 200 * 784 and ds.attrs["vocab_size"] == 256
    raw = gzip.decompress(Path(IMAGES).read_bytes())
    doc3 = ds["tokens"][3 * 784 : 4 * 784].values
    assert doc3.tolist() == list(raw[16 + 3 * 784 : 16 + 4 * 784])
    targets = ds["targets"].values
    assert targets[3 * 784 : 4 * 784 - 1].tolist() == doc3[1:].tolist()
    assert targets[4 * 784 - 1] == -1  # end of document: nothing to predict


def test_reader_documents_and_splits(mnist_artifact: TokensArtifact) -> None:
    art = mnist_artifact
    assert art.vocab_size == 256 and art.num_documents == 200
    x, y = art.document(3)
    assert x.dtype == np.int64 and y.dtype == np.int64 and x.shape == (784,)
    assert y[:-1].tolist() == x[1:].tolist() and y[-1] == -1
    test_ids = art.doc_ids("test")
    assert len(test_ids) == 20 and set(test_ids) | set(art.doc_ids("train")) == set(range(200))
    assert (test_ids == np.flatnonzero(split_documents(200, 0.1, 7))).all()
    seen = list(art.documents("test"))
    assert [d for d, _, _ in seen] == test_ids.tolist() and all(len(sx) == 784 for _, sx, _ in seen)
    assert art.lengths("train").sum() == art.manifest.counts["train_tokens"]
    with pytest.raises(IndexError, match="doc_id 200 out of range"):
        art.document(200)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        art.doc_ids("dev")


def test_split_is_seeded_and_keeps_both_sides() -> None:
    a = split_documents(1000, 0.05, 0)
    assert a.sum() == 50 and (a == split_documents(1000, 0.05, 0)).all()
    assert not (a == split_documents(1000, 0.05, 1)).all()
    assert split_documents(3, 0.01, 0).sum() == 1  # at least one test document
    assert split_documents(1, 0.5, 0).sum() == 0  # never all documents in test
    assert split_documents(10, 0.0, 0).sum() == 0


def test_content_addressed_rebuild_does_no_work(mem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TokensConfig(source="synthetic", task="parity", num_docs=20)
    ref = tokens_stage(cfg, mem)
    assert ref.url == f"{mem}/tokens-{ref.hash[:16]}" and ref.kind == "tokens"

    def fail(_cfg: TokensConfig) -> None:
        raise AssertionError("stream_documents must not run for a complete artifact")

    monkeypatch.setattr("store.tokens.stream_documents", fail)
    assert build_tokens_artifact(cfg, mem) == ref
    other = TokensConfig(source="synthetic", task="parity", num_docs=21)
    with pytest.raises(AssertionError, match="must not run"):
        build_tokens_artifact(other, mem)


def test_synthetic_targets_and_clean_test_labels(mem: str) -> None:
    cfg = TokensConfig(
        source="synthetic", task="retrieval", num_docs=40, test_fraction=0.25,
        task_params={"label_noise": 0.5},
    )
    art = TokensArtifact.open(build_tokens_artifact(cfg, mem).url)
    from sources.synthetic import generate_task, task_vocab_size

    noisy = generate_task("retrieval", 40, 0, label_noise=0.5)
    clean = generate_task("retrieval", 40, 0, clean=True, label_noise=0.5)
    assert art.vocab_size == task_vocab_size("retrieval", label_noise=0.5)
    for doc_id, x, y in art.documents():
        assert x.tolist() == noisy[doc_id][0].tolist()
        split = art.index.column("split")[doc_id].as_py()
        expected = clean[doc_id][1] if split == "test" else noisy[doc_id][1]
        assert y.tolist() == expected.tolist()
    assert art.manifest.stats["test_targets"] == "clean"


@pytest.mark.parametrize(("policy", "text", "count"), [("replace", "né", 2), ("drop", "ñoño", 4)])
def test_non_ascii_policy_recorded_in_manifest(mem: str, policy: str, text: str, count: int) -> None:
    with fsspec.open(f"{mem}/in/d.jsonl", "wt") as f:
        f.write(json.dumps({"text": text}) + "\n" + json.dumps({"text": "plain"}) + "\n")
    cfg = TokensConfig(source="jsonl", url=f"{mem}/in/d.jsonl", non_ascii=policy)
    art = TokensArtifact.open(build_tokens_artifact(cfg, f"{mem}/runs").url)
    assert art.manifest.stats["non_ascii_policy"] == policy
    assert art.manifest.stats["non_ascii_bytes"] == count
    assert art.tokens.max() < 128
    expected = text.encode().replace("é".encode(), b"??") if policy == "replace" else b"oo"
    assert bytes(art.document(0)[0].astype(np.uint8)) == expected


def test_text_artifact_round_trip(mem: str) -> None:
    text = (DATA / "pride_and_prejudice_excerpt.txt").read_bytes()
    cfg = TokensConfig(source="text", url=str(DATA / "pride_and_prejudice_excerpt.txt"))
    art = TokensArtifact.open(build_tokens_artifact(cfg, mem).url)
    x, y = art.document(0)
    assert bytes(x.astype(np.uint8)) == text and y[-1] == -1


def test_incomplete_artifact_is_refused_and_rebuilt(tmp_path: Path) -> None:
    cfg = TokensConfig(source="synthetic", task="copy", num_docs=5)
    ref = build_tokens_artifact(cfg, str(tmp_path))
    Path(ref.url, MANIFEST).unlink()  # as if the run died before publishing
    with pytest.raises(ArtifactError, match="incomplete"):
        TokensArtifact.open(ref.url)
    Path(ref.url, "stale-file").write_text("left by the interrupted run")
    assert build_tokens_artifact(cfg, str(tmp_path)) == ref
    assert not Path(ref.url, "stale-file").exists()
    assert TokensArtifact.open(ref.url).num_documents == 5
    with pytest.raises(ArtifactError, match="no artifact"):
        TokensArtifact.open(str(tmp_path / "tokens-0000000000000000"))


def test_newer_schema_and_tampered_index_are_refused(tmp_path: Path) -> None:
    ref = build_tokens_artifact(TokensConfig(source="synthetic", task="copy", num_docs=5), str(tmp_path))
    manifest_path = Path(ref.url, MANIFEST)
    original = manifest_path.read_text()
    newer = json.loads(original)
    newer["schema_version"] = SCHEMA_VERSION + 1
    manifest_path.write_text(json.dumps(newer))
    with pytest.raises(ArtifactError, match=f"schema_version {SCHEMA_VERSION + 1}, newer"):
        TokensArtifact.open(ref.url)
    manifest_path.write_text(original)
    pq.write_table(pq.read_table(Path(ref.url, INDEX_FILE)).slice(0, 2), Path(ref.url, INDEX_FILE))
    with pytest.raises(ArtifactError, match="does not match its manifest checksum"):
        TokensArtifact.open(ref.url)


def test_source_errors_surface_from_the_builder(tmp_path: Path) -> None:
    from sources.errors import SourceError

    np.save(tmp_path / "t.npy", np.array([[1, 2], [3, 99]]))
    cfg = TokensConfig(source="npy", url=str(tmp_path / "t.npy"), vocab_size=50)
    with pytest.raises(SourceError, match=r"token 99 is outside the vocabulary \[0, 50\)"):
        build_tokens_artifact(cfg, str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob(MANIFEST))


def test_config_with_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("tokens:\n  source: text\n  url: data/*.txt\n  test_fracton: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'tokens.test_fracton'"):
        load_config(path, PipelineConfig)
    path.write_text("source: text\n")
    with pytest.raises(ConfigError, match="source 'text' needs a url"):
        load_config(path, TokensConfig)


def test_out_of_range_synthetic_tokens_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sources.read import DocumentSet

    bad = DocumentSet(
        tokens=[np.array([1, 40000])], targets=[np.array([0, -1])], vocab_size=17, sources=["task[0]"]
    )
    monkeypatch.setattr("store.tokens.stream_documents", lambda _cfg: bad)
    with pytest.raises(ArtifactError, match=r"tokens outside \[0, 17\)"):
        build_tokens_artifact(TokensConfig(num_docs=1), str(tmp_path))


def test_changed_input_file_gets_a_new_artifact(tmp_path):
    """The address covers the input files' identity: editing the file in place is not re-used."""
    import os

    from schemas.config import TokensConfig
    from store.tokens import build_tokens_artifact

    text = tmp_path / "book.txt"
    text.write_text("first edition\n")
    cfg = TokensConfig(source="text", url=str(text), test_fraction=0.0)
    first = build_tokens_artifact(cfg, str(tmp_path / "runs"))
    assert build_tokens_artifact(cfg, str(tmp_path / "runs")).hash == first.hash
    text.write_text("second edition, longer\n")
    os.utime(text, (1_900_000_000, 1_900_000_000))
    second = build_tokens_artifact(cfg, str(tmp_path / "runs"))
    assert second.hash != first.hash


def test_streamed_write_over_several_chunks_reads_back_every_document(tmp_path: Path) -> None:
    """The tokens artifact is written chunk by chunk as documents stream in (store/tokens.py `_Column`):
    a corpus over two chunks, documents straddling a chunk boundary, reads back exactly as read."""
    from schemas.layout import TOKENS_CHUNK
    from sources.read import read_documents

    text = (DATA / "pride_and_prejudice_excerpt.txt").read_bytes()
    big = tmp_path / "big.txt"
    big.write_bytes((text * (TOKENS_CHUNK // len(text) + 2))[: TOKENS_CHUNK + 12_345])
    cfg = TokensConfig(source="text", url=str(big), chunk_len=10_000)
    art = TokensArtifact.open(build_tokens_artifact(cfg, str(tmp_path / "runs")).url)
    expected = read_documents(cfg)
    assert len(art.doc_ids()) == len(expected) == (TOKENS_CHUNK + 12_345 + 9_999) // 10_000
    for doc_id, x, y in art.documents():
        np.testing.assert_array_equal(x, expected.tokens[doc_id])
        np.testing.assert_array_equal(y, expected.target(doc_id))
    chunks = sorted(p.name for p in (Path(art.ref.url) / ZARR_GROUP / "tokens" / "c").iterdir())
    assert chunks == ["0", "1"]
