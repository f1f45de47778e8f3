"""SIGINT and SIGTERM stop a run within seconds, leave no process behind, and a re-run resumes.

Real signals to real `smt` processes: a single stage without Prefect (SIGINT), and the whole Prefect
flow with its temporary server (SIGTERM, the signal schedulers and `docker stop` send).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _config(tmp_path: Path) -> Path:
    """The demo, small, with a distillation long enough to be interrupted."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["root"] = str(tmp_path / "runs")
    cfg["teacher_margin_bits"] = None  # a 20-step teacher is at chance: this is about stopping
    cfg["tokens"]["num_docs"] = 256
    cfg["teacher"]["run"].update(steps=20, checkpoint_every=10)
    cfg["labels"].update(num_windows=64, shard_windows=16, batch_size=64)
    cfg["distill"]["run"].update(steps=4000, checkpoint_every=50, log_every=10)
    cfg["dmt"]["run"].update(steps=2, checkpoint_every=2)
    cfg["evaluate"].update(num_sequences=8, num_samples=1, sample_len=4)
    cfg["variants"] = [cfg["variants"][1]]  # gru
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"log-{time.monotonic_ns()}.txt"
    env = {**os.environ, "SMT_QUIET": "0", "SMT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no '{text}' in {timeout} s"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, signum: int, log: Path) -> tuple[int, float, list[psutil.Process]]:
    children = psutil.Process(proc.pid).children(recursive=True)
    sent = time.monotonic()
    proc.send_signal(signum)
    code = proc.wait(timeout=60)
    took = time.monotonic() - sent
    _, alive = psutil.wait_procs(children, timeout=5)
    return code, took, alive


def test_sigint_stops_a_stage_and_the_rerun_resumes(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc, log = _start(tmp_path, "distill", str(cfg))
    _wait_for(log, "distill gru: step 60/4000", proc)  # past the first checkpoint (50)
    code, took, alive = _stop(proc, signal.SIGINT, log)
    text = log.read_text()
    assert code == 130 and took < 15 and not alive, text[-2000:]
    assert "stopped (SIGINT)" in text and "Traceback" not in text
    checkpoints = list((tmp_path / "runs").glob("rnn-*/_checkpoint"))
    assert checkpoints, "the stopped stage kept no checkpoint"

    proc, log = _start(tmp_path, "distill", str(cfg))
    _wait_for(log, "resuming at step", proc)  # it picks up where it stopped, not from step 0
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130


def test_sigterm_stops_the_flow_with_its_server_and_workers(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc, log = _start(tmp_path, "run", str(cfg))
    _wait_for(log, "distill gru: step 60/4000", proc)
    assert any("uvicorn" in " ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(recursive=True))
    code, took, alive = _stop(proc, signal.SIGTERM, log)
    text = log.read_text()
    assert code == 143 and took < 20, text[-2000:]
    assert not alive, [p.cmdline() for p in alive]  # Prefect's temporary server is gone too
    assert "stopped (SIGTERM)" in text

    proc, log = _start(tmp_path, "distill", str(cfg))  # the same artifacts, resumed by the CLI
    _wait_for(log, "resuming at step", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143


def test_a_signal_delivered_to_a_task_thread_reaches_the_tasks_while_the_flow_waits(prefect_api) -> None:
    """The kernel may deliver a process's SIGTERM to any of its threads, and Python runs the handler in
    the main thread only: the flow's wait on a task must wake up to run it (flows/smt_pipeline.py
    `wait_for`), not sleep until the task ends. The signal here is sent to the task's own thread."""
    from prefect import flow, task

    from flows.smt_pipeline import WAIT_SLICE_S, wait_for
    from training.stopping import clear_stop, request_stop, stop_requested

    @task
    def train_until_stopped() -> float:
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # lands on this thread, not the main one
        start = time.monotonic()
        while not stop_requested() and time.monotonic() - start < 30:
            time.sleep(0.01)
        return time.monotonic() - start

    @flow
    def one_task() -> float:
        handle = train_until_stopped.submit()
        wait_for(handle)
        return handle.result()

    previous = signal.signal(signal.SIGUSR1, lambda *_: request_stop())
    try:
        took = one_task()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        clear_stop()
    assert took < 20 * WAIT_SLICE_S  # a plain handle.result() here takes the whole 30 s
