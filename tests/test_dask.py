"""Dask as the engine we scale out on, for real: a two-worker `distributed.LocalCluster` on loopback.

The label job runs on it through Beam's DaskRunner and writes the same store bytes as the in-process
FnApiRunner, also when a worker is SIGKILLed mid-run (Dask's nanny restarts it and the unit is retried;
units are idempotent region writes)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from _fixtures_labels import IN_MEMORY, TINY_SPEC, make_teacher, make_tokens

distributed = pytest.importorskip("distributed", reason="pip install '.[dask]'")
dask_config = pytest.importorskip("dask.config")

import pipelines.materialize_labels as ml  # noqa: E402
from pipelines.options import runner_flags  # noqa: E402
from schemas.config import BeamConfig, LabelSpec  # noqa: E402

SPEC = LabelSpec(**{**TINY_SPEC.model_dump(), "num_windows": 48, "shard_windows": 4})  # 12 units


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as c:
        yield c
        from distributed.client import _global_clients  # Beam's DaskRunner leaves its clients open

        for client in list(_global_clients.values()):
            client.close()


def _files(url: str) -> dict[str, bytes]:
    """Every file of a label store but the per-unit completion records (they name the worker)."""
    root = Path(url)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "_units" not in p.parts and p.name != "manifest.json"}


def test_dask_runner_flags() -> None:
    flags = runner_flags(BeamConfig(runner="DaskRunner", dask_address="tcp://127.0.0.1:8786"))
    assert flags[:3] == ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                         "--dask_client_address=tcp://127.0.0.1:8786", "--dask_partition_size=1"]
    own = runner_flags(BeamConfig(runner="DaskRunner", options=["--dask_partition_size=4"]))
    assert own.count("--dask_partition_size=4") == 1 and "--dask_partition_size=1" not in own
    assert ml.worker_threads(BeamConfig(runner="DaskRunner")) == 1  # pinned on clusters too


def test_label_job_on_dask_equals_fnapi_also_with_a_worker_killed(cluster, tmp_path: Path) -> None:
    root = str(tmp_path)
    tokens = make_tokens(root, num_docs=60)
    teacher = make_teacher(root, tokens)
    local = ml.materialize_labels(tokens.url, teacher.url, SPEC, IN_MEMORY, str(tmp_path / "local"), threads=1)
    dask = BeamConfig(runner="DaskRunner", dask_address=cluster.scheduler_address)
    config_before = dict(dask_config.config)
    on_dask = ml.materialize_labels(tokens.url, teacher.url, SPEC, dask, str(tmp_path / "dask"), threads=1)
    assert dict(dask_config.config) == config_before  # the job leaves no default client set behind
    assert not _has_default_client()
    assert _files(on_dask.url) == _files(local.url)
    workers = {r["worker"] for r in _records(on_dask.url)}
    assert len(workers) == 2, workers  # one unit per Dask task: both workers took some

    with distributed.Client(cluster, set_as_default=False) as client:
        pids = list(client.run(os.getpid).values())
    store = tmp_path / "killed" / Path(local.url).name
    finished_before_kill: list[bool] = []
    killer = threading.Thread(target=_kill_after_first_unit, args=(store, pids[0], finished_before_kill))
    killer.start()
    killed = ml.materialize_labels(tokens.url, teacher.url, SPEC, dask, str(tmp_path / "killed"), threads=1)
    killer.join()
    assert finished_before_kill == [False]  # the worker died while units were still pending
    assert _files(killed.url) == _files(local.url)


def _has_default_client() -> bool:
    try:
        distributed.default_client()
    except ValueError:
        return False
    return True


def _records(url: str) -> list[dict]:
    import json

    return [json.loads(p.read_text()) for p in sorted((Path(url) / "_units").glob("*.json"))]


def _kill_after_first_unit(store: Path, pid: int, finished: list[bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not list((store / "_units").glob("*.json")):
        time.sleep(0.01)
    finished.append(len(list((store / "_units").glob("*.json"))) >= 12)
    os.kill(pid, signal.SIGKILL)


def test_flink_and_spark_name_the_job_server_jar_they_miss() -> None:
    """Offline, Beam's Flink/Spark runners fail deep inside while downloading a jar; the error names it."""
    beam_text = ("Unable to fetch remote job server jar at https://repo.maven.apache.org/maven2/org/apache/beam/"
                 "beam-runners-flink-2.2-job-server/2.77.0/beam-runners-flink-2.2-job-server-2.77.0.jar: <urlopen "
                 "error [Errno -2] Name or service not known>. If no Internet access at runtime, stage the jar at "
                 "/root/.apache_beam/cache/jars/beam-runners-flink-2.2-job-server-2.77.0.jar")
    try:
        try:
            raise RuntimeError(beam_text)
        except RuntimeError as inner:
            raise OSError("network error") from inner
    except OSError as err:
        line = ml._unstaged_job_server(err, "FlinkRunner")
    assert line == ("beam-runners-flink-2.2-job-server-2.77.0.jar is not staged and cannot be downloaded: copy it "
                    "to /root/.apache_beam/cache/jars/beam-runners-flink-2.2-job-server-2.77.0.jar, or pass "
                    "--flink_job_server_jar=PATH in beam.options")
    assert ml._unstaged_job_server(OSError("disk full"), "SparkRunner") is None
