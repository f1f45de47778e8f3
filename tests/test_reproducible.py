"""Same config, same bytes: a stage's artifact does not depend on load, loader timing or concurrency.

Real stages on the tiny real pipeline (tests/_fixtures_training.py); each disturbed run is compared
byte for byte with an undisturbed one in another root.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _fixtures_training import BPTT_CFG, DISTILL_CFG, GRU, TRANSFORMER, build_chain

from stages.bptt import bptt_stage
from stages.distill import distill_stage
from store.labels import LabelStore
from store.teacher import load_teacher

BURN = "import time\nt = time.time() + 120\nwhile time.time() < t: sum(i * i for i in range(10_000))\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory):
    """The same upstream built twice, in two roots: the second is compared with the first."""
    return [build_chain(str(tmp_path_factory.mktemp(f"repro{i}"))) for i in range(2)]


CLOCK_FILES = {"manifest.json", "timings.parquet"}  # the only files that hold clock readings


def _bytes(url: str) -> dict[str, bytes]:
    """Every file of an artifact but its clock readings: weights, recipe, training metrics."""
    files = {p.name: p.read_bytes() for p in Path(url).iterdir() if p.is_file() and p.name not in CLOCK_FILES}
    assert {"rnn.safetensors", "metrics.parquet"} <= set(files)
    return files


def test_upstream_is_identical(chains) -> None:
    """(Addresses differ: a tokens artifact's covers its input file's path and mtime; bytes must not.)"""
    a, b = chains
    assert (Path(a.teacher.url) / "teacher.safetensors").read_bytes() == (
        Path(b.teacher.url) / "teacher.safetensors").read_bytes()


def test_busy_machine_and_slow_loader_change_nothing(chains, monkeypatch) -> None:
    quiet, busy = chains
    calm = distill_stage(quiet.labels.url, quiet.teacher.url, GRU, DISTILL_CFG, quiet.root)
    calm_bptt = bptt_stage(quiet.tokens.url, GRU, quiet.teacher.url, BPTT_CFG, quiet.root)

    slow_read = LabelStore.read_shards

    def read_shards_slowly(self, *args, **kwargs):
        time.sleep(0.05)  # the loader falls behind the training step
        return slow_read(self, *args, **kwargs)

    monkeypatch.setattr(LabelStore, "read_shards", read_shards_slowly)
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(3)]  # 3 busy processes, 2 cores
    try:
        loaded = distill_stage(busy.labels.url, busy.teacher.url, GRU, DISTILL_CFG, busy.root)
        loaded_bptt = bptt_stage(busy.tokens.url, GRU, busy.teacher.url, BPTT_CFG, busy.root)
    finally:
        for proc in burners:
            proc.kill()
    assert _bytes(loaded.url) == _bytes(calm.url)
    assert _bytes(loaded_bptt.url) == _bytes(calm_bptt.url)


def test_concurrent_variants_match_one_by_one(chains, tmp_path: Path) -> None:
    """The flow trains variants at once in threads; the CLI one after the other: same students.
    BPTT builds its student while the distill tasks load the teacher (a build in another thread once
    shifted its seeded init)."""
    base, _ = chains
    alone = {v.kind: distill_stage(base.labels.url, base.teacher.url, v, DISTILL_CFG, base.root)
             for v in (TRANSFORMER, GRU)}
    alone["bptt"] = bptt_stage(base.tokens.url, TRANSFORMER, base.teacher.url, BPTT_CFG, base.root)
    root = str(tmp_path / "together")
    together: dict[str, object] = {}

    def train(variant) -> None:
        together[variant.kind] = distill_stage(base.labels.url, base.teacher.url, variant, DISTILL_CFG, root)

    rebuilt: list[bool] = []
    loading = threading.Event()

    def baseline() -> None:
        for _ in range(2):
            shutil.rmtree(Path(root) / Path(alone["bptt"].url).name, ignore_errors=True)
            together["bptt"] = bptt_stage(base.tokens.url, TRANSFORMER, base.teacher.url, BPTT_CFG, root)
            rebuilt.append(_bytes(together["bptt"].url) == _bytes(alone["bptt"].url))
        loading.set()

    def loader() -> None:  # as the label job's workers load the teacher while BPTT starts
        while not loading.is_set():
            load_teacher(base.teacher.url)

    workers = [threading.Thread(target=train, args=(v,)) for v in (TRANSFORMER, GRU)]
    workers += [threading.Thread(target=baseline), threading.Thread(target=loader)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for kind, ref in alone.items():
        assert _bytes(together[kind].url) == _bytes(ref.url), kind
    assert rebuilt == [True] * 2
