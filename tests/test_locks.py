"""One writer per artifact: builders started together take turns; a held lock refuses or waits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _fixtures_faults import copy_artifacts, store_dir

from store.labels import LabelStore

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
    (gate / "go.tmp").write_text(str(time.time() + 0.2))
    os.replace(gate / "go.tmp", gate / "go")  # atomic: a waiter never reads a created but still empty `go`
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
