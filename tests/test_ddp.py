"""Data parallelism: `torchrun --nproc_per_node=2` on CPU (gloo) runs the distill stage and the loop.

Run as a test, this file launches itself under torchrun; each rank writes a small JSON report.
Checks: both ranks ran with world size 2, the artifact is published once (by rank 0), ranks read
different data yet end with identical parameters (gradients all-reduced) and identical logged
metrics (metrics all-reduced).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _worker(root: str, labels_url: str, teacher_url: str, out: str) -> None:
    """What every rank runs (under torchrun)."""
    from _fixtures_training import DISTILL_CFG, GRU, run_cfg
    from torch import nn

    from schemas.config import OptimConfig
    from stages.distill import distill_stage
    from training.distributed import current, init_distributed, shutdown
    from training.loop import TrainLoop

    torch.set_num_threads(1)
    ctx = init_distributed(torch.device("cpu"))
    cfg = DISTILL_CFG.model_copy(update={"run": run_cfg(6, 16, log_every=3)})
    ref = distill_stage(labels_url, teacher_url, GRU, cfg, root)

    torch.manual_seed(0)
    net = nn.Linear(4, 1)

    def batches(_: int):
        g = torch.Generator().manual_seed(100 + current().rank)  # different data per rank
        while True:
            yield torch.randn(8, 4, generator=g)

    loop = TrainLoop(
        {"net": net},
        lambda x: {"loss": (net(x) - x.sum(1, keepdim=True)).pow(2).mean()},
        batches,
        run_cfg(4, 8, log_every=2),
        OptimConfig(lr=0.1),
        None,
    )
    result = loop.run()
    report = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "url": ref.url,
        "metrics": result.metrics,
        "params": [p.detach().flatten().tolist() for p in net.parameters()],
    }
    Path(out, f"rank{ctx.rank}.json").write_text(json.dumps(report))
    shutdown()


@pytest.mark.timeout(180)
def test_torchrun_two_ranks_on_cpu(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _fixtures_labels import IN_MEMORY, TINY_SPEC, make_teacher, make_tokens

    from stages.labels import labels_stage
    from store.artifacts import read_manifest

    root = str(tmp_path / "runs")
    tokens = make_tokens(root)
    teacher = make_teacher(root, tokens)  # random teacher: labels only need a deterministic encoder
    labels = labels_stage(tokens.url, teacher.url, TINY_SPEC, IN_MEMORY, root)
    out = tmp_path / "reports"
    out.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
        "SMT_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        root,
        labels.url,
        teacher.url,
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world_size"] == 2 for r in reports)
    assert reports[0]["url"] == reports[1]["url"]
    published = [p for p in Path(root).iterdir() if p.name.startswith("rnn-")]
    assert len(published) == 1 and (published[0] / "manifest.json").exists()
    assert not (published[0] / "_checkpoint").exists()
    stats = read_manifest(str(published[0])).stats
    assert stats["world_size"] == 2 and stats["transitions"] == 6 * 16 * 2
    assert reports[0]["params"] == reports[1]["params"]  # gradients were averaged across ranks
    assert reports[0]["metrics"] == [
        {**m, "seconds": reports[0]["metrics"][i]["seconds"], "items_per_s": reports[0]["metrics"][i]["items_per_s"]}
        for i, m in enumerate(reports[1]["metrics"])
    ]


if __name__ == "__main__":
    _worker(*sys.argv[1:5])
