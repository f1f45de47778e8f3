"""Environment failures and bad inputs: one line and status 2 (SMT_DEBUG=1 keeps the traceback).

Real files and filesystems where possible: a read-only and a 16 KiB tmpfs when the tests run as root
(mounts), a file given as --root; ENOSPC inside a Beam worker is raised where the worker writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _fixtures_faults import copy_artifacts, flip_byte, one_error_line, run_cli, store_dir, write_config

from store.integrity import IntegrityError


def test_config_reuses_the_session_artifacts(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    code, out = run_cli("labels", write_config(label_env, root, tmp_path))
    assert code == 0, out
    assert f"labels:{store_dir(root, label_env)}" in "".join(out.split())  # same address: reused


def test_distill_on_a_damaged_store_stops_with_one_line(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    cfg = write_config(label_env, root, tmp_path)
    for shard in range(6):  # whichever shard training reads first
        flip_byte(store / f"data.zarr/memory/c/{shard}/0/0")
    # labels would repair the store first; distill alone must refuse to train on it
    from _fixtures_training import DISTILL_CFG, GRU

    from stages.distill import distill_stage

    teacher = str(root / Path(label_env.teacher.url).name)
    with pytest.raises(IntegrityError, match=rf"label store {store}: shard \d: chunk memory/c/\d/0/0 checksum"):
        distill_stage(str(store), teacher, GRU, DISTILL_CFG, str(root))
    assert not list(root.glob("rnn-*/manifest.json"))
    assert cfg
    # what `smt distill` prints for it: one line, status 2 (the CLI's wrapper around every command)
    import typer

    from cli.main import friendly

    with pytest.raises(typer.Exit) as exit_:
        friendly(lambda: distill_stage(str(store), teacher, GRU, DISTILL_CFG, str(root)))()
    assert exit_.value.exit_code == 2


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("root: x\ntokens:\n  source: text\n   url: [a\n")
    code, out = run_cli("tokens", str(path))
    one_error_line(code, out, "not valid YAML at line 4, column 7", "mapping values are not allowed")


@pytest.mark.parametrize(("text", "expected"), [
    ("{}", "field 'schema_version' is missing"),
    ('{"schema_version": 1, "kind": "labels"}', "field 'hash' is missing"),
    ('{"kind": "lab', "not valid JSON"),
    ("[1]", "a JSON list, expected an object"),
])
def test_malformed_manifest_is_one_line(label_env, tmp_path, text, expected):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    (store / "manifest.json").write_text(text)
    code, out = run_cli("store", "inspect", str(store))
    one_error_line(code, out, "manifest.json is malformed" if "field" in expected or "list" in expected else "",
                   expected)
    assert "upgrade smt" not in out
    code, out = run_cli("verify", str(store))
    assert code == 1 and expected in out, out


def test_manifest_with_counts_missing_is_one_line(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["counts"] = {}
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, out = run_cli("store", "inspect", str(store))
    one_error_line(code, out, "counts lack num_windows")


def test_root_that_is_a_file_is_one_line(label_env, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code, out = run_cli("tokens", write_config(label_env, tmp_path / "unused", tmp_path), "--root", str(not_a_dir))
    one_error_line(code, out, "not a directory", str(not_a_dir))


def test_debug_shows_the_traceback(label_env, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cfg = write_config(label_env, tmp_path / "unused", tmp_path)
    code, _ = run_cli("tokens", cfg, "--root", str(not_a_dir), env={"SMT_DEBUG": "1"})
    assert code == 1  # the exception propagates (CliRunner reports it as exit 1 with the exception)


def test_read_only_root_is_one_line(label_env, tmp_path, read_only_dir):
    code, out = run_cli("tokens", write_config(label_env, read_only_dir, tmp_path))
    one_error_line(code, out, str(read_only_dir))
    assert "read-only file system" in out.lower() or "permission denied" in out.lower()


def test_disk_full_on_a_tiny_filesystem_is_one_line(label_env, tmp_path):
    """A real ENOSPC: a 16 KiB tmpfs as the root (needs root to mount; skipped otherwise)."""
    import os
    import subprocess

    full = tmp_path / "full"
    full.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, out = run_cli("tokens", write_config(label_env, full, tmp_path))
        one_error_line(code, out, "disk full", str(full))
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_disk_full_in_the_beam_job_is_one_line(label_env, tmp_path, monkeypatch):
    """ENOSPC raised where a worker writes a unit (in-process runner: the DoFn runs in this process)."""
    import errno

    import pipelines.label_units as units

    root = copy_artifacts(label_env, tmp_path)
    shutil.rmtree(store_dir(root, label_env))

    def full(url, shard, record):
        raise OSError(errno.ENOSPC, "No space left on device", f"{url}/_units/shard-{shard:06d}.json")

    monkeypatch.setattr(units, "write_unit_record", full)
    code, out = run_cli("labels", write_config(label_env, root, tmp_path))
    one_error_line(code, out, "disk full", "No space left on device")


def test_a_worker_os_error_reported_as_text_is_recognised():
    from store.environment import environment_error_in

    remote = RuntimeError("Traceback (most recent call last):\n  ...\nOSError: [Errno 28] No space left on device\n")
    assert environment_error_in(remote) == "disk full: No space left on device"
    assert environment_error_in(RuntimeError("a bug")) is None


def test_beam_runner_that_cannot_start_is_one_line(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    shutil.rmtree(store_dir(root, label_env))
    cfg = write_config(label_env, root, tmp_path, beam={"runner": "NoSuchRunner", "num_workers": 1, "options": []})
    code, out = run_cli("labels", cfg)
    one_error_line(code, out, "Beam runner NoSuchRunner cannot start")


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write: chmod 555 for normal users; for root (who ignores modes) a
    read-only tmpfs mount, else the test is skipped."""
    import os
    import subprocess

    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


TEXT = "It is a truth universally acknowledged. "


@pytest.mark.parametrize(("encoding", "bom"), [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"),
                                               ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\x00\x00")])
def test_text_with_a_byte_order_mark_is_decoded(tmp_path, encoding, bom):
    from schemas.config import TokensConfig
    from sources.read import read_documents

    path = tmp_path / "doc.txt"
    path.write_bytes(bom + TEXT.encode(encoding))
    docs = read_documents(TokensConfig(source="text", url=str(path)))
    assert bytes(docs.tokens[0].astype(np.uint8)) == TEXT.encode()
    assert docs.stats["text_encodings_converted"] == {"utf-8-sig" if encoding == "utf-8" else encoding[:6]: 1}


@pytest.mark.parametrize("source", ["text", "jsonl"])
def test_utf16_without_a_byte_order_mark_is_refused(tmp_path, source):
    from schemas.config import TokensConfig
    from sources.errors import SourceError
    from sources.read import read_documents

    path = tmp_path / "doc.txt"
    body = TEXT if source == "text" else json.dumps({"text": TEXT}) + "\n"
    path.write_bytes(body.encode("utf-16-le"))
    with pytest.raises(SourceError, match="NUL: UTF-16/32 text without a byte-order mark"):
        read_documents(TokensConfig(source=source, url=str(path)))


def test_jsonl_with_a_utf16_bom_is_decoded(tmp_path):
    from schemas.config import TokensConfig
    from sources.read import read_documents

    path = tmp_path / "docs.jsonl"
    path.write_bytes('{"text": "ab"}\n{"text": "cd"}\n'.encode("utf-16"))
    docs = read_documents(TokensConfig(source="jsonl", url=str(path)))
    assert [bytes(t.astype(np.uint8)) for t in docs.tokens] == [b"ab", b"cd"]


def test_uint64_tokens_beyond_int64_are_refused(tmp_path):
    from schemas.config import TokensConfig
    from sources.errors import SourceError
    from sources.read import read_documents

    path = tmp_path / "tokens.npy"
    np.save(path, np.array([1, 2, 2**63 + 5], dtype=np.uint64))
    with pytest.raises(SourceError, match=r"token 9223372036854775813 does not fit int64 \(uint64 array\)"):
        read_documents(TokensConfig(source="npy", url=str(path)))
    np.save(path, np.array([1, 2, 5], dtype=np.uint64))  # small unsigned ids are fine
    assert read_documents(TokensConfig(source="npy", url=str(path))).tokens[0].tolist() == [1, 2, 5]
