"""The README's two commands are what CI and users run; keep them in step with .ci/run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert "smt run configs/demo.yaml" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci


def test_every_config_in_the_repo_validates():
    from schemas.config import load_config

    configs = sorted((ROOT / "configs").rglob("*.yaml"))  # configs/experiments/ too
    assert len(configs) >= 4
    for path in configs:
        load_config(path)
