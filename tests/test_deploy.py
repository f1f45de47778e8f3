"""A served deployment against a real `prefect server` on loopback gets scheduled runs that happen.

This guards the pins (constraints.txt): with SQLAlchemy 2.1 the server's scheduler never created a run
(`Can't evaluate bulk DML statement` on every pass). `smt serve CONFIG --interval 10` registers the
deployment; the server schedules it and the serve process runs it to completion.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_flow import _small_demo

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, path: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_served_deployment_gets_a_scheduled_run_that_completes(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "SMT_PROGRESS": "0", "SMT_QUIET": "1",
           # the scheduler's pass every 5 s instead of 60, and one run ahead at a time
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
           "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "1"}
    cfg = _small_demo(tmp_path / "runs", [{"kind": "gru", "width": 16, "hidden": 32, "readout": "mlp"}])
    cfg["teacher"]["run"].update(steps=8, checkpoint_every=8)
    cfg["labels"].update(num_windows=16, shard_windows=16)
    cfg["distill"]["run"].update(steps=4, checkpoint_every=4)
    cfg["dmt"]["run"].update(steps=2, checkpoint_every=2)
    cfg["evaluate"].update(num_sequences=8)
    config = tmp_path / "served.yaml"
    config.write_text(yaml.safe_dump(cfg))
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    served = None
    try:
        _wait(lambda: _api(api, "/health"), 120, "the Prefect server")
        served = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", str(config), "--interval", "10"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deployment = _wait(lambda: _api(api, "/deployments/filter", {"deployments": {"name": {"any_": [
            "smt-nightly"]}}}), 120, "the served deployment")[0]
        scheduled = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}}
        _wait(lambda: _api(api, "/flow_runs/filter", scheduled), 120, "a scheduled run")
        completed = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                                   "state": {"type": {"any_": ["COMPLETED"]}}}}
        runs = _wait(lambda: _api(api, "/flow_runs/filter", completed), 300, "a completed scheduled run")
        assert runs[0]["auto_scheduled"] is True  # made by the server's scheduler, not by hand
        assert list((tmp_path / "runs").glob("report-*/report.md"))
    finally:
        if served is not None:
            _stop(served)
        _stop(server)
