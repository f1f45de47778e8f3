"""Faults that must never pass silently: damaged or missing chunks, tokens, weights, indexes, resumes.

Every test damages real files on disk (copies of the session's tiny stores, tests/_fixtures_labels.py)
and checks the stage stops with one line naming the artifact and shard, or repairs what it can.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _fixtures_faults import copy_artifacts, flip_byte, run_cli, store_dir, write_config
from _fixtures_labels import IN_MEMORY, TINY_SPEC, make_teacher, make_tokens

from pipelines.materialize_labels import materialize_labels
from store.integrity import IntegrityError
from store.labels import LabelStore
from store.tokens import TokensArtifact


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


def test_a_chunk_lost_after_its_first_read_is_still_an_error(label_env, tmp_path):
    """Re-reads skip the hash of an already checked chunk, never the presence and size checks."""
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    reader = LabelStore.open(str(store))
    reader.read_shards([1, 2])
    chunk = store / "data.zarr/memory/c/1/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-1])
    with pytest.raises(IntegrityError, match="shard 1: chunk memory/c/1/0/0 checksum mismatch"):
        reader.read_shards([1])
    (store / "data.zarr/memory/c/2/0/0").unlink()
    with pytest.raises(IntegrityError, match="shard 2: chunk memory/c/2/0/0 is missing"):
        reader.read_shards([2])


def test_an_undecodable_chunk_names_its_shard_even_unverified(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    chunk = store / "data.zarr/memory/c/4/0/0"
    chunk.write_bytes(chunk.read_bytes()[:40])  # truncated: Blosc cannot decompress it
    with pytest.raises(IntegrityError, match=r"shard 4: array 'memory' cannot be decoded"):
        LabelStore.open(str(store), verify=False).read_shards([4])


def test_a_changed_index_is_refused_on_open(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    import pyarrow.parquet as pq

    table = pq.read_table(store / "index.parquet")
    pq.write_table(table.slice(0, 20), store / "index.parquet")  # a valid Parquet file, other rows
    with pytest.raises(IntegrityError, match="index.parquet checksum mismatch"):
        LabelStore.open(str(store))


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


def test_a_damaged_teacher_labels_nothing(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    shutil.rmtree(store_dir(root, label_env))
    teacher = root / Path(label_env.teacher.url).name
    flip_byte(teacher / "teacher.safetensors")
    with pytest.raises(IntegrityError, match=rf"teacher {teacher}: teacher.safetensors checksum mismatch"):
        materialize_labels(str(root / Path(label_env.tokens.url).name), str(teacher), TINY_SPEC, IN_MEMORY, str(root))
    assert not list(root.glob("labels-*/manifest.json"))


def test_resume_reencodes_a_damaged_finished_unit(label_env, tmp_path):
    """State of a run killed after 4 of 6 units, then one finished chunk deleted and one flipped."""
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    clean = {k: (store / "data.zarr" / k).read_bytes() for k in ("memory/c/1/0/0", "targets/c/2/0")}
    for name in ("manifest.json", "index.parquet", "_units/shard-000004.json", "_units/shard-000005.json"):
        (store / name).unlink()
    (store / "data.zarr/memory/c/1/0/0").unlink()
    flip_byte(store / "data.zarr/targets/c/2/0")
    ref = materialize_labels(str(root / Path(label_env.tokens.url).name), str(root / Path(label_env.teacher.url).name),
                             TINY_SPEC, IN_MEMORY, str(root))
    assert ref.url == str(store)
    assert {k: (store / "data.zarr" / k).read_bytes() for k in clean} == clean  # re-encoded, same bytes
    assert LabelStore.open(str(store)).verify() == []


@pytest.mark.parametrize("damage", ["missing_chunk", "flipped_byte", "truncated_manifest", "lost_record"])
def test_labels_on_a_damaged_complete_store_repairs_it(label_env, tmp_path, damage):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    before = (store / "data.zarr/memory/c/5/0/0").read_bytes()
    if damage == "missing_chunk":
        (store / "data.zarr/memory/c/5/0/0").unlink()
    elif damage == "flipped_byte":
        flip_byte(store / "data.zarr/memory/c/5/0/0")
    elif damage == "truncated_manifest":
        text = (store / "manifest.json").read_text()
        (store / "manifest.json").write_text(text[: len(text) // 2])
    else:
        (store / "_units/shard-000005.json").unlink()
    code, out = run_cli("labels", write_config(label_env, root, tmp_path))
    assert code == 0, out
    assert (store / "data.zarr/memory/c/5/0/0").read_bytes() == before
    assert LabelStore.open(str(store)).verify() == []
    assert run_cli("verify", str(store)) == (0, f"ok: labels {store}\n")


def test_verify_fails_an_edited_lineage(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["parents"]["tokens"] = "f" * 64
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, out = run_cli("verify", str(store))
    assert code == 1 and "the manifest was edited" in out, out
    code, out = run_cli("store", "verify", str(store))  # the older spelling still works
    assert code == 1 and "the manifest was edited" in out, out


def test_verify_checks_tokens_artifacts(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    tokens = root / Path(label_env.tokens.url).name
    assert run_cli("verify", str(tokens)) == (0, f"ok: tokens {tokens}\n")
    flip_byte(tokens / "data.zarr/targets/c/0")
    code, out = run_cli("verify", str(tokens))
    assert code == 1 and "data.zarr/targets/c/0 checksum mismatch" in out, out


def test_verify_checks_rnn_artifacts(label_env, tmp_path):
    from _fixtures_training import DISTILL_CFG, GRU

    from stages.distill import distill_stage

    root = copy_artifacts(label_env, tmp_path)
    rnn = Path(distill_stage(str(store_dir(root, label_env)), str(root / Path(label_env.teacher.url).name), GRU,
                             DISTILL_CFG, str(root)).url)
    assert run_cli("verify", str(rnn)) == (0, f"ok: rnn {rnn}\n")
    recorded = set(json.loads((rnn / "manifest.json").read_text())["checksums"])
    assert {"rnn.safetensors", "rnn.json", "metrics.parquet"} <= recorded
    flip_byte(rnn / "rnn.safetensors")
    code, out = run_cli("verify", str(rnn))
    assert code == 1 and "rnn.safetensors checksum mismatch" in out, out
    from store.rnn import load_rnn

    with pytest.raises(IntegrityError, match="rnn.safetensors checksum mismatch"):  # DMT / evaluation refuse it
        load_rnn(str(rnn))


def test_publish_drops_stray_temporaries(tmp_path):
    from store.artifacts import plan_artifact, publish_manifest

    ref = plan_artifact(str(tmp_path), "report", {"name": "x"}, {})
    Path(ref.url).mkdir()
    (Path(ref.url) / "report.md").write_text("# x\n")
    (Path(ref.url) / "metrics.parquet.tmp-0123abcd").write_bytes(b"")  # a write killed half-way
    manifest = publish_manifest(ref, {"name": "x"}, {})
    assert sorted(p.name for p in Path(ref.url).iterdir()) == ["manifest.json", "report.md"]
    assert list(manifest.checksums) == ["report.md"]
    assert run_cli("verify", ref.url)[0] == 0


def test_a_damaged_tokens_artifact_is_rebuilt(tmp_path):
    root = str(tmp_path)
    tokens = make_tokens(root)
    chunk = Path(tokens.url) / "data.zarr/tokens/c/0"
    clean = chunk.read_bytes()
    flip_byte(chunk)
    from store.artifacts import read_manifest
    from store.tokens import build_tokens_artifact

    cfg = read_manifest(tokens.url).config
    from schemas.config import TokensConfig

    assert build_tokens_artifact(TokensConfig.model_validate(cfg), root) == tokens
    assert chunk.read_bytes() == clean
    assert run_cli("verify", tokens.url)[0] == 0


@pytest.fixture
def read_only_copy(label_env, tmp_path):
    """The session's artifacts on a root nobody may write: a tmpfs remounted read-only (as root, who
    ignores file modes), else a copy with its write bits removed."""
    import os
    import stat
    import subprocess

    root = tmp_path / "ro"
    root.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True).returncode == 0
    if os.geteuid() == 0 and not mounted:
        pytest.skip("running as root without permission to mount a tmpfs")
    for ref in (label_env.tokens, label_env.teacher, label_env.store):
        shutil.copytree(ref.url, root / Path(ref.url).name)
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    else:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], check=False)
        else:
            for p in [root, *root.rglob("*")]:
                p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_a_clean_store_on_a_read_only_root_is_used_without_a_lock(label_env, read_only_copy):
    """Complete, intact artifacts need no write access: tokens and labels are checked, not locked."""
    from schemas.config import TokensConfig
    from store.artifacts import read_manifest
    from store.tokens import build_tokens_artifact

    root = read_only_copy
    tokens, teacher = (str(root / Path(r.url).name) for r in (label_env.tokens, label_env.teacher))
    cfg = TokensConfig.model_validate(read_manifest(tokens).config)
    assert build_tokens_artifact(cfg, str(root)).url == tokens
    ref = materialize_labels(tokens, teacher, TINY_SPEC, IN_MEMORY, str(root))
    assert ref.url == str(store_dir(root, label_env))
    assert LabelStore.open(ref.url).read_shards([0]).memory.shape[0] == 4


def test_verify_reads_off_is_what_zarr_does(label_env, tmp_path, monkeypatch):
    """SMT_VERIFY_READS=0: no hashing, and a missing chunk reads as fill values (the opt-out's price)."""
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    (store / "data.zarr/memory/c/5/0/0").unlink()
    monkeypatch.setenv("SMT_VERIFY_READS", "0")
    assert not np.any(LabelStore.open(str(store)).read_shards([5]).memory)
    tokens, teacher = (str(root / Path(r.url).name) for r in (label_env.tokens, label_env.teacher))
    assert materialize_labels(tokens, teacher, TINY_SPEC, IN_MEMORY, str(root)).url == str(store)  # as found
    assert not (store / "data.zarr/memory/c/5/0/0").exists()


def test_publish_refuses_a_config_its_plan_did_not_hash(tmp_path):
    """A stage publishing other config or parents than its plan hashed would put an artifact under an
    address that does not describe it (lineage drift): publish refuses and writes no manifest."""
    from store.artifacts import ArtifactError, is_complete, plan_artifact, publish_manifest

    ref = plan_artifact(str(tmp_path), "report", {"name": "x"}, {"evaluation": "ab" * 32})
    Path(ref.url).mkdir()
    (Path(ref.url) / "report.md").write_text("# x\n")
    with pytest.raises(ArtifactError, match="planned address"):
        publish_manifest(ref, {"name": "y"}, ref.parents)
    with pytest.raises(ArtifactError, match="planned address"):
        publish_manifest(ref, ref.config, {"evaluation": "cd" * 32})
    assert not is_complete(ref.url)
    publish_manifest(ref, ref.config, ref.parents)
    assert is_complete(ref.url)
