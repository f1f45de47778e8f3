"""User mistakes get one clear line and exit status 2, never a traceback."""

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_missing_config_is_one_line(tmp_path):
    code, out = _run("tokens", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "config file not found" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("tokenz: {}\n", "unknown key 'tokenz'"),
        ("teacher: {model: {width: 30, heads: 4}}\n", "not divisible by heads"),
        ("labels: {trajectory_len: 8}\n", "dmt.rollout_len (256) exceeds labels.trajectory_len (8)"),
        ("tokens: {source: text}\n", "needs a url"),
        ("- a\n- b\n", "expected a mapping"),
        ("seeds: [0, 0]\n", "seeds must be distinct"),
        ("seeds: []\n", "seeds"),
        ("variants: [{kind: gru, seed: 1}, {kind: gru}]\nseeds: [0, 1]\n", "must be unique"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, yaml_text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    code, out = _run("tokens", str(path))
    assert code == 2
    assert expected in out, out
    assert "Traceback" not in out


def test_missing_input_file_is_one_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"root: {tmp_path / 'runs'}\ntokens: {{source: text, url: {tmp_path / 'missing.txt'}}}\n")
    code, out = _run("tokens", str(path))
    assert code == 2
    assert "missing.txt" in out and "Traceback" not in out


def test_store_inspect_of_a_non_store_is_refused(tmp_path):
    code, out = _run("store", "inspect", str(tmp_path / "nothing-here"))
    assert code == 2
    assert "no artifact" in out


def test_unfinished_store_is_refused(tmp_path):
    (tmp_path / "labels-x").mkdir()
    code, out = _run("store", "verify", str(tmp_path / "labels-x"))
    assert code == 2
    assert "incomplete" in out


def test_torchrun_refuses_to_build_data_stages(tmp_path, monkeypatch):
    """Beam and the tokens reader are not rank-aware: under torchrun they must already exist."""
    path = tmp_path / "cfg.yaml"
    path.write_text(f"root: {tmp_path / 'runs'}\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out = _run("distill", str(path))
    assert code == 2
    assert "under torchrun the tokens artifact must exist already" in out
