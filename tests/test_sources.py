"""Token readers on the real sample files and on tiny files in tmp_path and memory:// URLs.

Every error case asserts that the message names the problem, because these messages are what a user
sees when a path or file is wrong.
"""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.config import TokensConfig
from sources.errors import SourceError
from sources.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    image_pixel_sequences,
    parse_idx,
    read_idx_images,
    read_idx_labels,
)
from sources.npy import read_npy
from sources.read import DocumentSet, next_token_targets, read_documents
from sources.sketch import binarise, patch_tokens, sketch_sequences
from sources.text import AsciiFilter

DATA = Path(__file__).parent / "data"
IMAGES = str(DATA / "sample-1000-images-idx3-ubyte.gz")
LABELS = str(DATA / "sample-1000-labels-idx1-ubyte.gz")
TEXT = DATA / "pride_and_prejudice_excerpt.txt"


@pytest.fixture
def mem() -> str:
    """A fresh memory:// folder, so tests cannot see each other's files."""
    return f"memory://t-{uuid.uuid4().hex[:12]}"


def _put(url: str, data: bytes) -> str:
    with fsspec.open(url, "wb") as f:
        f.write(data)
    return url


def _idx(magic: int, dims: tuple[int, ...], values: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + values


# ----------------------------------------------------------------------------- idx


def test_fashion_mnist_images_match_a_manual_parse() -> None:
    raw = gzip.decompress((DATA / "sample-1000-images-idx3-ubyte.gz").read_bytes())
    assert raw[:16].hex() == "00000803" + "000003e8" + "0000001c" + "0000001c"  # 2051, 1000, 28, 28
    images = read_idx_images(IMAGES)
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    # Known bytes: row 10 of image 0 and row 14 of image 999.
    assert images[0, 10].tobytes().hex() == "00000000000000000000000000040035817893af9da6879aa88c0000"
    assert images[999, 14].tobytes().hex() == "0000000000358fa0b1b2aab0baafc8b7b4bbd5e1bdb3bcc5c0be8e00"
    docs = image_pixel_sequences(IMAGES, max_docs=3)
    assert len(docs) == 3 and docs[0].shape == (784,) and docs[0].dtype == np.int64
    for i, doc in enumerate(docs):
        assert doc.tolist() == list(raw[16 + 784 * i : 16 + 784 * (i + 1)])


def test_fashion_mnist_labels() -> None:
    labels = read_idx_labels(LABELS)
    assert labels.shape == (1000,)
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the t10k file's known first labels
    assert labels.max() == 9


def test_raw_idx_on_memory_url(mem: str) -> None:
    raw = gzip.decompress((DATA / "sample-1000-images-idx3-ubyte.gz").read_bytes())
    url = _put(f"{mem}/images-idx3-ubyte", raw)
    np.testing.assert_array_equal(read_idx_images(url), read_idx_images(IMAGES))


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        read_idx_images(str(tmp_path / "nope-idx3-ubyte.gz"))


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    good = (DATA / "sample-1000-labels-idx1-ubyte.gz").read_bytes()
    cut = tmp_path / "cut-labels.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(SourceError, match="corrupt or truncated gzip"):
        read_idx_labels(str(cut))
    garbled = tmp_path / "garbled-labels.gz"
    garbled.write_bytes(good[:10] + bytes(255 - b for b in good[10:]))
    with pytest.raises(SourceError, match="gzip"):
        read_idx_labels(str(garbled))
    not_gzip = tmp_path / "plain-labels.gz"
    not_gzip.write_bytes(b"hello world")
    with pytest.raises(SourceError, match="corrupt gzip"):
        read_idx_labels(str(not_gzip))


def test_idx_wrong_magic() -> None:
    with pytest.raises(SourceError, match="wrong idx magic number 2049.*expected 2051"):
        read_idx_images(LABELS)
    with pytest.raises(SourceError, match="wrong idx magic number 2051.*expected 2049"):
        read_idx_labels(IMAGES)


def test_idx_truncated_and_oversized(mem: str) -> None:
    data = _idx(IMAGES_MAGIC, (2, 3, 3), bytes(range(18)))
    assert parse_idx(data, IMAGES_MAGIC).shape == (2, 3, 3)
    url = _put(f"{mem}/short-idx3-ubyte", data[:-1])
    with pytest.raises(SourceError, match="truncated idx file: 33 bytes.*need 34"):
        read_idx_images(url)
    with pytest.raises(SourceError, match="truncated idx file"):
        parse_idx(data[:10], IMAGES_MAGIC)
    with pytest.raises(SourceError, match="2 bytes beyond"):
        parse_idx(data + b"xx", IMAGES_MAGIC)
    with pytest.raises(SourceError, match="truncated"):
        parse_idx(b"\x00\x00", LABELS_MAGIC)


# ----------------------------------------------------------------------------- sketch


def test_sketch_patch_tokens_by_hand() -> None:
    image = np.array(
        [
            [255, 0, 0, 0],
            [0, 0, 0, 200],
            [0, 0, 255, 255],
            [127, 128, 255, 255],
        ],
        dtype=np.uint8,
    )[None]
    binary = binarise(image, threshold=128)
    assert binary[0, 3].tolist() == [0, 1, 1, 1]  # 127 is below the threshold, 128 is ink
    # patches in reading order; bits TL, TR, BL, BR (most significant first)
    assert patch_tokens(binary).tolist() == [[8, 1, 1, 15]]


def test_sketch_on_fashion_mnist_and_64x64(mem: str) -> None:
    docs = sketch_sequences(IMAGES, max_docs=5)
    assert len(docs) == 5 and all(d.shape == (196,) for d in docs)
    assert all(0 <= d.min() and d.max() < 16 for d in docs)
    assert len(np.unique(np.concatenate(docs))) > 4  # real images use many patch states
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, 2 * 64 * 64, np.uint8).tobytes()
    big = _put(f"{mem}/big-idx3-ubyte", _idx(IMAGES_MAGIC, (2, 64, 64), pixels))
    assert [d.shape for d in sketch_sequences(big)] == [(1024,), (1024,)]
    odd = _put(f"{mem}/odd-idx3-ubyte", _idx(IMAGES_MAGIC, (1, 3, 4), bytes(12)))
    with pytest.raises(SourceError, match="even image sides, got 3x4"):
        sketch_sequences(odd)


# ----------------------------------------------------------------------------- text


def _read(**kwargs: object) -> DocumentSet:
    return read_documents(TokensConfig(**kwargs))


def test_text_round_trip_on_real_file() -> None:
    docs = _read(source="text", url=str(TEXT))
    assert len(docs) == 1 and docs.vocab_size == 256
    assert docs.tokens[0].astype(np.uint8).tobytes() == TEXT.read_bytes()
    assert docs.stats["non_ascii_bytes"] == 0 and docs.targets is None
    y = docs.target(0)
    assert y[:-1].tolist() == docs.tokens[0][1:].tolist() and y[-1] == -1


def test_text_glob_order_and_empty_files_skipped(tmp_path: Path) -> None:
    for name, text in [("b.txt", "second"), ("a.txt", "first"), ("c.txt", ""), ("d.md", "not matched")]:
        (tmp_path / name).write_text(text)
    docs = _read(source="text", url=str(tmp_path / "*.txt"))
    assert [bytes(t.astype(np.uint8)) for t in docs.tokens] == [b"first", b"second"]
    assert docs.sources[0].endswith("a.txt") and docs.stats["empty_documents_skipped"] == 1


def test_text_on_memory_url_with_max_docs(mem: str) -> None:
    for i in range(5):
        _put(f"{mem}/doc{i}.txt", f"document {i}\n".encode())
    docs = _read(source="text", url=f"{mem}/*.txt", max_docs=3)
    assert len(docs) == 3 and bytes(docs.tokens[2].astype(np.uint8)) == b"document 2\n"


@pytest.mark.parametrize(
    ("policy", "expected"), [("replace", b"caf?? na??ve ???"), ("drop", b"caf nave ")]
)
def test_text_non_ascii_policies(tmp_path: Path, policy: str, expected: bytes) -> None:
    (tmp_path / "u.txt").write_text("café naïve €", encoding="utf-8")  # 2 + 2 + 3 non-ASCII bytes
    docs = _read(source="text", url=str(tmp_path / "u.txt"), non_ascii=policy)
    assert bytes(docs.tokens[0].astype(np.uint8)) == expected
    assert docs.stats["non_ascii_bytes"] == 7 and docs.stats["non_ascii_policy"] == policy
    assert docs.tokens[0].max() < 128


def test_ascii_filter_counts_across_documents() -> None:
    f = AsciiFilter("drop")
    assert f(b"\xff\xfe").tolist() == [] and f(b"a\x80").tolist() == [97]
    assert f.affected_bytes == 3


def test_text_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="file not found: .*missing.txt"):
        _read(source="text", url=str(tmp_path / "missing.txt"))
    with pytest.raises(SourceError, match="no file matches"):
        _read(source="text", url=str(tmp_path / "*.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SourceError, match="empty corpus.*no non-empty document"):
        _read(source="text", url=str(tmp_path / "*.txt"))
    (tmp_path / "accents.txt").write_text("éé")
    with pytest.raises(SourceError, match="empty corpus"):  # everything dropped by the policy
        _read(source="text", url=str(tmp_path / "*.txt"), non_ascii="drop")


# ----------------------------------------------------------------------------- jsonl


def test_jsonl_documents(tmp_path: Path, mem: str) -> None:
    lines = [json.dumps({"body": "hello", "id": 1}), "", json.dumps({"body": "wörld"})]
    content = ("\n".join(lines) + "\n").encode()
    for url in (str(tmp_path / "d.jsonl"), f"{mem}/d.jsonl"):
        _put(url, content)
        docs = _read(source="jsonl", url=url, text_column="body")
        assert [bytes(t.astype(np.uint8)) for t in docs.tokens] == [b"hello", b"w??rld"]
        assert docs.sources[1].endswith("d.jsonl:3") and docs.stats["non_ascii_bytes"] == 2


def test_jsonl_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "oops"\n')
    with pytest.raises(SourceError, match="invalid JSON on line 2"):
        _read(source="jsonl", url=str(bad))
    nokey = tmp_path / "nokey.jsonl"
    nokey.write_text('{"content": "x"}\n')
    with pytest.raises(SourceError, match="line 1 has no key 'text' \\(keys: content\\)"):
        _read(source="jsonl", url=str(nokey))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n\n')
    with pytest.raises(SourceError, match="empty corpus"):
        _read(source="jsonl", url=str(empty))
    with pytest.raises(SourceError, match="not found"):
        _read(source="jsonl", url=str(tmp_path / "absent.jsonl"))


# ----------------------------------------------------------------------------- parquet


def test_parquet_documents(tmp_path: Path, mem: str) -> None:
    table = pa.table({"id": [1, 2, 3, 4], "text": ["alpha", None, "", "gamma ü"]})
    local = tmp_path / "t.parquet"
    pq.write_table(table, local, row_group_size=2)
    _put(f"{mem}/t.parquet", local.read_bytes())
    for url in (str(local), f"{mem}/t.parquet"):
        docs = _read(source="parquet", url=url, non_ascii="drop")
        assert [bytes(t.astype(np.uint8)) for t in docs.tokens] == [b"alpha", b"gamma "]
        assert docs.sources[1].endswith("t.parquet#3")
        assert docs.stats["non_ascii_bytes"] == 2 and docs.stats["empty_documents_skipped"] == 2


def test_parquet_errors(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(SourceError, match="no column 'text' \\(columns: body\\)"):
        _read(source="parquet", url=str(tmp_path / "t.parquet"))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(SourceError, match="column 'text' has type int64, expected text"):
        _read(source="parquet", url=str(tmp_path / "n.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        _read(source="parquet", url=str(tmp_path / "junk.parquet"))


# ----------------------------------------------------------------------------- npy


def test_npy_shapes(tmp_path: Path, mem: str) -> None:
    np.save(tmp_path / "a.npy", np.array([1, 2, 3], dtype=np.int32))
    np.save(tmp_path / "b.npy", np.arange(6, dtype=np.uint16).reshape(2, 3))
    np.savez(tmp_path / "c.npz", z=np.array([7, 8]), a=np.array([[9], [4]]))
    docs = _read(source="npy", url=str(tmp_path / "*.np?"), vocab_size=10)
    assert [t.tolist() for t in docs.tokens] == [[1, 2, 3], [0, 1, 2], [3, 4, 5], [7, 8], [9], [4]]
    assert docs.sources[1].endswith("b.npy[0]") and docs.sources[4].endswith("c.npz:a[0]")
    assert docs.vocab_size == 10 and all(t.dtype == np.int64 for t in docs.tokens)
    _put(f"{mem}/m.npy", (tmp_path / "b.npy").read_bytes())
    inferred = _read(source="npy", url=f"{mem}/m.npy")
    assert inferred.vocab_size == 6 and inferred.stats["vocab_size_from"] == "max token + 1"


def test_npy_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.array([1, 300, 2]))
    with pytest.raises(SourceError, match=r"token 300 is outside the vocabulary \[0, 256\)"):
        list(read_npy(str(tmp_path / "big.npy"), vocab_size=256))
    np.save(tmp_path / "neg.npy", np.array([[1, -1]]))
    with pytest.raises(SourceError, match="token -1 is negative"):
        _read(source="npy", url=str(tmp_path / "neg.npy"))
    np.save(tmp_path / "f.npy", np.array([0.5]))
    with pytest.raises(SourceError, match="dtype float64, expected integers"):
        _read(source="npy", url=str(tmp_path / "f.npy"))
    np.save(tmp_path / "obj.npy", np.array([[1], [2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match="without pickle"):
        _read(source="npy", url=str(tmp_path / "obj.npy"))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(SourceError, match="not a valid .npy"):
        _read(source="npy", url=str(tmp_path / "junk.npy"))
    with pytest.raises(SourceError, match="not found"):
        _read(source="npy", url=str(tmp_path / "absent.npy"))


# ----------------------------------------------------------------------------- read_documents


def test_read_documents_idx_sources() -> None:
    pixels = _read(source="mnist_idx", url=IMAGES, max_docs=4)
    assert len(pixels) == 4 and pixels.vocab_size == 256 and pixels.num_tokens == 4 * 784
    sketch = _read(source="sketch_idx", url=IMAGES, max_docs=4, sketch_threshold=64)
    assert sketch.vocab_size == 16 and sketch.stats["sketch_threshold"] == 64
    assert sketch.sources[3].endswith("[3]")


def test_read_documents_synthetic_has_own_targets() -> None:
    docs = _read(source="synthetic", task="copy", num_docs=6, seed=3)
    assert len(docs) == 6 and docs.targets is not None and docs.clean_targets is None
    assert all(len(x) == len(y) for x, y in zip(docs.tokens, docs.targets, strict=True))
    assert all(t.max() < docs.vocab_size for t in docs.tokens)
    again = _read(source="synthetic", task="copy", num_docs=6, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(docs.tokens, again.tokens, strict=True))


def test_next_token_targets() -> None:
    assert next_token_targets(np.array([5, 6, 7])).tolist() == [6, 7, -1]
    assert next_token_targets(np.array([5])).tolist() == [-1]


def test_compressed_text_and_lazy_max_docs(tmp_path: Path) -> None:
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"zipped text"))
    docs = _read(source="text", url=str(tmp_path / "a.txt.gz"))
    assert bytes(docs.tokens[0].astype(np.uint8)) == b"zipped text"
    (tmp_path / "b.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SourceError, match="b.txt.gz: cannot read"):
        _read(source="text", url=str(tmp_path / "b.txt.gz"))
    lines = tmp_path / "lazy.jsonl"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n{broken\n')
    assert len(_read(source="jsonl", url=str(lines), max_docs=2)) == 2  # line 3 is never parsed


def test_chunk_len_cuts_long_documents() -> None:
    docs = _read(source="text", url=str(TEXT), chunk_len=4096)
    assert [len(t) for t in docs.tokens] == [4096] * 4 + [19941 - 4 * 4096]
    assert b"".join(bytes(t.astype(np.uint8)) for t in docs.tokens) == TEXT.read_bytes()
    assert docs.sources[1].endswith("pride_and_prejudice_excerpt.txt@4096")
    assert docs.stats["chunk_len"] == 4096
    assert len(_read(source="text", url=str(TEXT), chunk_len=4096, max_docs=2)) == 2
    with pytest.raises(SourceError, match="chunk_len applies to file sources"):
        _read(source="synthetic", chunk_len=10)
