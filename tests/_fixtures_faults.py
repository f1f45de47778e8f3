"""Helpers of the fault tests: private copies of the session's tiny artifacts, damage, and the CLI.

The copies keep their names (content addresses), so a config built by `write_config` resolves to them
and a command under test finds complete tokens, teacher and label store without building anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from _fixtures_labels import IN_MEMORY, TINY_SPEC


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
