"""Faults that must never pass silently: damaged or missing chunks, damaged tokens, manifests, resumes.

Every test damages real files on disk (copies of the session's tiny stores, tests/_fixtures_labels.py)
and checks the stage stops, or repairs, with one line naming the artifact and shard.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _fixtures_labels import IN_MEMORY, TINY_SPEC, make_teacher, make_tokens

from pipelines.materialize_labels import materialize_labels
from store.integrity import IntegrityError
from store.labels import LabelStore
from store.tokens import TokensArtifact


def copy_artifacts(label_env, tmp_path: Path) -> Path:
    """The session's tokens, teacher and label store under a private root (same names, same hashes)."""
    root = tmp_path / "root"
    root.mkdir()
    for ref in (label_env.tokens, label_env.teacher, label_env.store):
        shutil.copytree(ref.url, root / Path(ref.url).name)
    return root


def flip_byte(path: Path, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1 << bit
    path.write_bytes(bytes(data))


def store_dir(root: Path, label_env) -> Path:
    return root / Path(label_env.store.url).name


def test_missing_chunk_is_an_error_not_fill_values(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    (store / "data.zarr/memory/c/5/0/0").unlink()
    reader = LabelStore.open(str(store))
    reader.read_shards([0])  # undamaged shards still read
    with pytest.raises(IntegrityError, match=r"shard 5: chunk memory/c/5/0/0 is missing"):
        reader.read_shards([5])
    with pytest.raises(IntegrityError, match="shard 5"):
        list(reader.transitions(8, seed=0))


@pytest.mark.parametrize("array", ["memory", "tokens", "dec_loss"])
def test_flipped_byte_stops_the_reader(label_env, tmp_path, array):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    key = f"{array}/c/3/0/0" if array == "memory" else f"{array}/c/3/0"
    flip_byte(store / "data.zarr" / key)
    reader = LabelStore.open(str(store))
    with pytest.raises(IntegrityError, match=rf"{store.name}: shard 3: chunk {key} checksum mismatch"):
        reader.read_shards([2, 3]) if array != "dec_loss" else reader.arrays["dec_loss"][12:16]
    assert any("shard 3" in p and "checksum mismatch" in p for p in reader.verify())


def test_unverified_reads_see_fill_values(label_env, tmp_path):
    """What verify-on-read prevents: Zarr itself serves zeros for a missing chunk."""
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    (store / "data.zarr/memory/c/5/0/0").unlink()
    shard = LabelStore.open(str(store), verify=False).read_shards([5])
    assert not np.any(shard.memory)


def test_flipped_token_bit_stops_tokens_readers_and_the_label_job(tmp_path):
    root = str(tmp_path)
    tokens = make_tokens(root)
    teacher = make_teacher(root, tokens)
    flip_byte(Path(tokens.url) / "data.zarr/tokens/c/0", bit=3)
    with pytest.raises(IntegrityError, match=r"tokens artifact .*tokens-.*: shard 0: chunk tokens/c/0 checksum"):
        _ = TokensArtifact.open(tokens.url).tokens
    with pytest.raises(IntegrityError, match="tokens/c/0"):
        materialize_labels(tokens.url, teacher.url, TINY_SPEC, IN_MEMORY, root)
    assert not list(Path(root).glob("labels-*/manifest.json"))
