"""LabelStore: refusals that name the field, verify() catching a flipped byte, and the training streams."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixtures_labels import IN_MEMORY, TINY_MODEL, TINY_SPEC

from schemas.config import LabelSpec, TeacherModelConfig
from stages.labels import labels_stage
from store.artifacts import ArtifactError
from store.labels import LabelStore, projected_store_bytes


@pytest.fixture()
def store_copy(label_env, tmp_path) -> str:
    """A private copy of the shared store, for tests that damage it."""
    dest = tmp_path / Path(label_env.store.url).name
    shutil.copytree(label_env.store.url, dest)
    return str(dest)


def test_open_exposes_geometry_and_lineage(label_env):
    store = LabelStore.open(label_env.store.url, expect_teacher=label_env.teacher.hash, expect_memory_size=64)
    assert (store.Z, store.K, store.D, store.L, store.Tc, store.Tf) == (64, 4, 16, 8, 16, 4)
    assert store.num_windows == 24 and store.num_shards == 6 and store.spec == TINY_SPEC
    assert store.teacher_hash == label_env.teacher.hash and store.tokens_hash == label_env.tokens.hash
    LabelStore.open(label_env.store.url, expect_teacher=label_env.teacher.hash[:16])  # a prefix is enough
    info = store.inspect()
    assert info["lineage"] == {"tokens": label_env.tokens.hash, "teacher": label_env.teacher.hash}
    assert info["size_on_disk_bytes"] > 0 and info["geometry"]["labels"] == 216
    assert abs(info["label_stats"]["memory"]["rms"] - 1.0) < 1e-3  # RMS-normalised labels


def test_open_refuses_incomplete_and_mismatched_stores(label_env, store_copy):
    with pytest.raises(ArtifactError, match="parents.teacher"):
        LabelStore.open(label_env.store.url, expect_teacher="f" * 64)
    with pytest.raises(ArtifactError, match="memory_size"):
        LabelStore.open(label_env.store.url, expect_memory_size=4096)
    Path(store_copy, "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        LabelStore.open(store_copy)


def test_verify_reports_a_flipped_byte_with_its_shard(store_copy):
    assert LabelStore.open(store_copy).verify() == []
    chunk = Path(store_copy, "data.zarr", "memory", "c", "2", "0", "0")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    problems = LabelStore.open(store_copy).verify()
    assert any(p.startswith("shard 2:") and "memory" in p and "checksum" in p for p in problems), problems
    assert not any(p.startswith("shard 1:") for p in problems)


def test_verify_reports_nan_memories(store_copy):
    store = LabelStore.open(store_copy)
    import zarr

    arr = zarr.open_array(f"{store_copy}/data.zarr/memory", mode="r+")
    values = arr[4:8]
    values[1, 2, 3] = np.nan
    arr[4:8] = values  # rewrites shard 1 (its checksum changes too)
    problems = store.verify()
    assert any(p.startswith("shard 1:") and "NaN" in p for p in problems), problems


def test_transitions_cover_every_transition_once(label_env):
    store = LabelStore.open(label_env.store.url)
    memory = torch.from_numpy(store.memory())
    tokens = torch.from_numpy(store.arrays["tokens"][:].astype(np.int64))
    targets = torch.from_numpy(store.arrays["targets"][:].astype(np.int64))
    batches = list(store.transitions(batch_size=50, shuffle=False))
    assert [len(b.m) for b in batches] == [50, 50, 50, 42]
    m = torch.cat([b.m for b in batches])
    assert torch.equal(m, memory[:, :-1].reshape(-1, 64))
    assert torch.equal(torch.cat([b.m_next for b in batches]), memory[:, 1:].reshape(-1, 64))
    assert torch.equal(torch.cat([b.x_next for b in batches]), tokens[:, 16 : 16 + 8].reshape(-1))
    assert torch.equal(torch.cat([b.y_next for b in batches]), targets[:, 16 : 16 + 8].reshape(-1))

    shuffled = list(store.transitions(batch_size=64, seed=3, shards_per_buffer=2))
    again = list(store.transitions(batch_size=64, seed=3, shards_per_buffer=2))
    assert all(torch.equal(a.m, b.m) for a, b in zip(shuffled, again, strict=True))
    sm = torch.cat([b.m for b in shuffled])
    assert not torch.equal(sm, m) and sm.shape == m.shape
    # the same set of (m_t, x_next, m_next) rows, shuffled
    def rows(batches):
        return torch.cat([torch.cat([b.m, b.x_next[:, None].float(), b.m_next], 1) for b in batches])

    assert torch.equal(torch.unique(rows(shuffled), dim=0), torch.unique(rows(batches), dim=0))
    half = next(store.transitions(batch_size=50, shuffle=False, dtype=torch.float16))
    assert half.m.dtype == torch.float16 and torch.equal(half.m.float(), batches[0].m)
    endless = store.transitions(batch_size=100, epochs=None)
    assert sum(len(next(endless).m) for _ in range(5)) == 500


def test_trajectories_are_aligned_with_the_store(label_env):
    store = LabelStore.open(label_env.store.url)
    memory = store.memory()
    tokens = store.arrays["tokens"][:].astype(np.int64)
    targets = store.arrays["targets"][:].astype(np.int64)
    first = next(store.trajectories(batch_size=4, length=5, shuffle=False))
    assert first.memory.shape == (4, 6, 64) and first.tokens.shape == (4, 16 + 5 + 4)
    np.testing.assert_array_equal(first.memory.numpy(), memory[:4, :6])
    np.testing.assert_array_equal(first.x.numpy(), tokens[:4, 15 : 16 + 5 + 4])
    seen = 0
    for batch in store.trajectories(batch_size=5, length=3, seed=1):
        for i in range(len(batch.memory)):
            # find the window and offset this trajectory was cut from; everything must line up with it
            hits = [(w, o) for w in range(24) for o in range(6)
                    if np.array_equal(memory[w, o : o + 4], batch.memory[i])]
            assert len(hits) == 1
            w, o = hits[0]
            np.testing.assert_array_equal(batch.tokens[i].numpy(), tokens[w, o : o + 16 + 3 + 4])
            np.testing.assert_array_equal(batch.targets[i].numpy(), targets[w, o : o + 16 + 3 + 4])
            np.testing.assert_array_equal(batch.y[i].numpy(), targets[w, o + 15 : o + 16 + 3 + 4])
            seen += 1
    assert seen == 20  # drop_last: 24 windows in batches of 5
    with pytest.raises(ValueError, match="trajectory_len"):
        store.trajectories(batch_size=2, length=9)


@pytest.fixture(scope="module")
def int8_store(label_env, tmp_path_factory) -> str:
    spec = TINY_SPEC.model_copy(update={"dtype": "int8"})
    root = str(tmp_path_factory.mktemp("int8"))
    return labels_stage(label_env.tokens.url, label_env.teacher.url, spec, IN_MEMORY, root).url


def _assert_same_batches(host: list, device: list, on: str) -> None:
    assert len(host) == len(device) > 0
    for a, b in zip(host, device, strict=True):
        for x, y in zip(a, b, strict=True):
            assert y.device.type == on and x.dtype == y.dtype and torch.equal(x, y.cpu())


TRANSITION_CASES = [
    {"batch_size": 37, "seed": 5, "shards_per_buffer": 2, "epochs": 2},  # batches straddle buffers and epochs
    {"batch_size": 50, "shuffle": False},
    {"batch_size": 16, "split": "train", "drop_last": True, "dtype": torch.float16},
]
TRAJECTORY_CASES = [
    {"batch_size": 5, "length": 3, "seed": 1, "epochs": 2, "drop_last": False},
    {"batch_size": 4, "length": 8, "shuffle": False},
    {"batch_size": 3, "length": 5, "split": "train", "shards_per_buffer": 3},
]


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_device_buffers_serve_the_same_batches_in_the_same_order(label_env, int8_store, dtype):
    store = LabelStore.open(label_env.store.url if dtype == "float16" else int8_store)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for kwargs in TRANSITION_CASES:
            host = list(store.transitions(**kwargs))
            _assert_same_batches(host, list(store.transitions(**kwargs, device=device)), device)
        for kwargs in TRAJECTORY_CASES:
            host = list(store.trajectories(**kwargs))
            _assert_same_batches(host, list(store.trajectories(**kwargs, device=device)), device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_pass_through_the_prefetcher_unpinned(label_env):
    from training.prefetch import Prefetcher

    store = LabelStore.open(label_env.store.url)
    host = list(store.transitions(batch_size=32, seed=2))
    got = list(Prefetcher(lambda: store.transitions(batch_size=32, seed=2, device="cuda"), pin_memory=False))
    _assert_same_batches(host, got, "cuda")


def test_projected_store_bytes_at_published_size():
    spec, model = LabelSpec(), TeacherModelConfig()
    per_window = 257 * 4096 * 2 + 2 * (256 + 256 + 64) * 2 + 257 * 4
    assert projected_store_bytes(spec, model) == 1024 * per_window  # ~2.16 GB
    int8 = projected_store_bytes(spec.model_copy(update={"dtype": "int8"}), model)
    assert int8 == 1024 * (257 * 4096 + 257 * 16 * 4 + 2 * 576 * 2 + 257 * 4)
    with pytest.raises(ValueError, match="num_windows"):
        projected_store_bytes(LabelSpec(num_windows=None), TINY_MODEL)
