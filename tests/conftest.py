"""Test-wide settings: Prefect keeps its files in a temporary home, progress bars and lines stay quiet."""

import os
import tempfile

import pytest

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="smt-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("SMT_PROGRESS", "0")
os.environ.setdefault("SMT_QUIET", "1")


@pytest.fixture(scope="session")
def label_env(tmp_path_factory: pytest.TempPathFactory):
    """Tiny tokens + random teacher + a float16 label store, built once (tests/_fixtures_labels.py)."""
    from _fixtures_labels import build_label_env

    return build_label_env(str(tmp_path_factory.mktemp("label_env")))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on 2 shared cores run several times faster on one intra-op thread, and do not stall
    when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect server for the flows of one test module (Prefect's own test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
