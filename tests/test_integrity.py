"""Faults that must never pass silently: damaged or missing chunks, damaged tokens, manifests, resumes.

Every test damages real files on disk (copies of the session's tiny stores, tests/_fixtures_labels.py)
and checks the stage stops, or repairs, with one line naming the artifact and shard.
"""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------- resume and repair


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


# ---------------------------------------------------------------- the CLI: one line, status 2


def write_config(label_env, root: Path, tmp_path: Path, **overrides) -> str:
    """A pipeline config whose tokens, teacher and labels are the session's (same addresses under `root`)."""
    import yaml
    from _fixtures_training import DISTILL_CFG, GRU

    from schemas.config import DMTConfig, PipelineConfig
    from store.artifacts import read_manifest

    cfg = PipelineConfig(
        root=str(root),
        tokens=read_manifest(label_env.tokens.url).config,
        teacher=read_manifest(label_env.teacher.url).config,
        labels=TINY_SPEC, beam=IN_MEMORY, variants=[GRU], distill=DISTILL_CFG,
        dmt=DMTConfig(rollout_len=8),
    ).model_dump(mode="json")
    cfg.update(overrides)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def one_error_line(code: int, out: str, *expected: str) -> None:
    assert code == 2, out
    lines = [line for line in out.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    print(lines[0])  # shown with pytest -s
    for text in expected:
        assert text in lines[0], out


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


# ---------------------------------------------------------------- inputs refused or converted knowingly

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


# ---------------------------------------------------------------- one writer per artifact

_LOCK_WORKER = """
import os
from store.locks import artifact_lock
import sys, time
url, log, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start_at:
    time.sleep(0.001)
with artifact_lock(url, "test artifact " + url):
    with open(log, "a") as f:
        f.write(f"enter {os.getpid()}\\n")
    if not os.path.exists(url + "/manifest.json"):
        os.makedirs(url, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"build {os.getpid()}\\n")
        time.sleep(0.3)
        open(url + "/manifest.json", "w").write("{}")
    with open(log, "a") as f:
        f.write(f"exit {os.getpid()}\\n")
"""


def _start_together(scripts: list[list[str]], delays: list[float], workdir: Path):
    """One process per [script, *args]; each gets a last argument, the instant it may begin (its
    delay after a common start): written to `go` once every process has imported and said `ready`."""
    import os
    import subprocess
    import sys
    import time

    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)]), "OMP_NUM_THREADS": "1"}
    gate = workdir / "gate"
    gate.mkdir()
    waiter = ("import os, pathlib\ngate = pathlib.Path(sys.argv[-2])\n"
              "(gate / f'ready-{os.getpid()}').touch()\n"
              "while not (gate / 'go').exists(): time.sleep(0.01)\n"
              "sys.argv[-2:] = [str(float((gate / 'go').read_text()) + float(sys.argv[-1]))]\n")
    procs = []
    for argv, d in zip(scripts, delays, strict=True):
        script = argv[0].replace("import sys, time\n", "import sys, time\n" + waiter, 1)
        procs.append(subprocess.Popen([sys.executable, "-c", script, *argv[1:], str(gate), str(d)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir))
    deadline = time.time() + 120
    while len(list(gate.glob("ready-*"))) < len(procs) and time.time() < deadline:
        time.sleep(0.05)
    (gate / "go").write_text(str(time.time() + 0.2))
    return procs


@pytest.mark.parametrize("round_", range(4))
def test_three_builders_started_together_take_turns(tmp_path, round_):
    url, log = tmp_path / "rnn-0123456789abcdef", tmp_path / "log"
    delays = [[0.0, 0.0, 0.0], [0.0, 0.05, 0.1], [0.3, 0.0, 0.15], [0.0, 0.0, 0.3]][round_]
    procs = _start_together([[_LOCK_WORKER, str(url), str(log)]] * 3, delays, tmp_path)
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    assert [e for e, _ in events if e == "build"] == ["build"]  # built once
    holder = None
    for event, pid in events:  # never two holders: every enter is followed by that pid's exit
        assert (holder is None) == (event == "enter") and (holder in (None, pid)), events
        holder = None if event == "exit" else pid
    assert not (tmp_path / "rnn-0123456789abcdef.lock").exists()


def test_a_held_lock_refuses_with_one_line_when_told_not_to_wait(tmp_path):
    from store.locks import LockError, artifact_lock

    url = str(tmp_path / "labels-0123456789abcdef")
    with artifact_lock(url, "label store X"):
        with pytest.raises(LockError, match=r"another process is building label store Y \(pid \d+ on "):
            with artifact_lock(url, "label store Y", wait=0):
                pass
    with artifact_lock(url, "label store X", wait=0):  # released: free again
        pass


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    import json as _json
    import socket
    import subprocess

    from store.locks import artifact_lock, lock_url

    url = str(tmp_path / "labels-0123456789abcdef")
    dead = subprocess.Popen(["true"])
    dead.wait()
    Path(lock_url(url)).write_text(_json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "x",
                                                "heartbeat": 0}))
    with artifact_lock(url, "label store", wait=0):
        pass


_LABEL_WORKER = """
from _fixtures_labels import IN_MEMORY, TINY_SPEC
from pipelines.materialize_labels import materialize_labels
import sys, time
tokens, teacher, root, start_at = sys.argv[1:5]
while time.time() < float(start_at):
    time.sleep(0.001)
print(materialize_labels(tokens, teacher, TINY_SPEC, IN_MEMORY, root).url)
"""


def test_three_label_jobs_started_together_build_one_store(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    shutil.rmtree(store_dir(root, label_env))
    tokens, teacher = (str(root / Path(r.url).name) for r in (label_env.tokens, label_env.teacher))
    procs = _start_together([[_LABEL_WORKER, tokens, teacher, str(root)]] * 3, [0.0, 0.05, 0.3], tmp_path)
    urls = set()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        urls.add(out.strip().splitlines()[-1])
    assert urls == {str(store_dir(root, label_env))}
    assert LabelStore.open(urls.pop()).verify() == []


# ---------------------------------------------------------------- smt verify, any artifact kind


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
    from stages.rnn_io import load_rnn

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


def test_a_changed_index_is_refused_on_open(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    import pyarrow.parquet as pq

    table = pq.read_table(store / "index.parquet")
    pq.write_table(table.slice(0, 20), store / "index.parquet")  # a valid Parquet file, other rows
    with pytest.raises(IntegrityError, match="index.parquet checksum mismatch"):
        LabelStore.open(str(store))


def test_manifest_with_counts_missing_is_one_line(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["counts"] = {}
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, out = run_cli("store", "inspect", str(store))
    one_error_line(code, out, "counts lack num_windows")


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


def test_the_lock_works_on_an_fsspec_filesystem():
    from store.locks import LockError, artifact_lock, lock_url

    url = "memory://smt-lock-test/labels-0123456789abcdef"
    with artifact_lock(url, "label store M"):
        import fsspec

        assert fsspec.filesystem("memory").exists(lock_url(url))
        with pytest.raises(LockError, match="another process is building label store M"):
            with artifact_lock(url, "label store M", wait=0.3):
                pass
    assert not fsspec.filesystem("memory").exists(lock_url(url))


def test_a_damaged_teacher_labels_nothing(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    shutil.rmtree(store_dir(root, label_env))
    teacher = root / Path(label_env.teacher.url).name
    flip_byte(teacher / "teacher.safetensors")
    with pytest.raises(IntegrityError, match=rf"teacher {teacher}: teacher.safetensors checksum mismatch"):
        materialize_labels(str(root / Path(label_env.tokens.url).name), str(teacher), TINY_SPEC, IN_MEMORY, str(root))
    assert not list(root.glob("labels-*/manifest.json"))


def test_an_undecodable_chunk_names_its_shard_even_unverified(label_env, tmp_path):
    root = copy_artifacts(label_env, tmp_path)
    store = store_dir(root, label_env)
    chunk = store / "data.zarr/memory/c/4/0/0"
    chunk.write_bytes(chunk.read_bytes()[:40])  # truncated: Blosc cannot decompress it
    with pytest.raises(IntegrityError, match=r"shard 4: array 'memory' cannot be decoded"):
        LabelStore.open(str(store), verify=False).read_shards([4])


def test_a_worker_os_error_reported_as_text_is_recognised():
    from store.environment import environment_error_in

    remote = RuntimeError("Traceback (most recent call last):\n  ...\nOSError: [Errno 28] No space left on device\n")
    assert environment_error_in(remote) == "disk full: No space left on device"
    assert environment_error_in(RuntimeError("a bug")) is None


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
