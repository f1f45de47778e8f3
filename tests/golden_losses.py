"""Per-step golden losses in the torchtitan manner: a tiny teacher / SMT / DMT / BPTT run whose logged
losses at every logging step are stored in `tests/golden/tiny_losses.json` and compared by
`tests/test_golden_losses.py`, so a refactor that changes any number fails within seconds (the demo's
golden run, tests/golden_demo.py, checks the final results in minutes).

    python tests/golden_losses.py --write    # rerun the tiny chain, rewrite tests/golden/tiny_losses.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "tiny_losses.json"
REL_TOL = 1e-5  # relative, per logged value; the same CPU kernels give identical bits, so this only absorbs printing
LOSS_COLUMNS = ("loss", "dec", "dec0", "dyn", "unif", "readout", "grad_norm", "lr")


def run_tiny(root: str) -> dict[str, Any]:
    """Train the tiny chain (tests/_fixtures_training.py) and return every artifact's logged losses."""
    import pyarrow.parquet as pq
    import torch
    from _fixtures_training import BPTT_CFG, DISTILL_CFG, DMT_CFG, GRU, TRANSFORMER, build_chain

    from stages.bptt import bptt_stage
    from stages.distill import distill_stage
    from stages.dmt import dmt_stage

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a fixed count: reductions split by thread count (training/threads.py)
    try:
        chain = build_chain(root)
        refs = {"teacher": chain.teacher}
        for v in (TRANSFORMER, GRU):
            refs[f"{v.kind}/smt"] = distill_stage(chain.labels.url, chain.teacher.url, v, DISTILL_CFG, root)
        refs["gru/smt+dmt"] = dmt_stage(refs["gru/smt"].url, chain.labels.url, chain.teacher.url, DMT_CFG, root)
        refs["gru/bptt"] = bptt_stage(chain.tokens.url, GRU, chain.teacher.url, BPTT_CFG, root)
    finally:
        torch.set_num_threads(before)
    losses = {}
    for role, ref in refs.items():
        rows = pq.read_table(Path(ref.url) / "metrics.parquet").to_pylist()
        losses[role] = [{k: row[k] for k in ("step", *LOSS_COLUMNS) if row.get(k) is not None} for row in rows]
    return {"machine": _machine(), "losses": losses}


def _machine() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def differences(golden: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """'role step k: golden -> fresh' for every logged value that moved (empty: the run matches)."""
    out = []
    if set(golden["losses"]) != set(fresh["losses"]):
        return [f"roles: {sorted(golden['losses'])} -> {sorted(fresh['losses'])}"]
    for role, rows in golden["losses"].items():
        got = fresh["losses"][role]
        if [r["step"] for r in rows] != [r["step"] for r in got]:
            out.append(f"{role} steps: {[r['step'] for r in rows]} -> {[r['step'] for r in got]}")
            continue
        for a, b in zip(rows, got, strict=True):
            for k in sorted(set(a) | set(b)):
                x, y = a.get(k), b.get(k)
                if x is None or y is None or abs(x - y) > REL_TOL * max(abs(x), abs(y), 1e-12):
                    out.append(f"{role} step {a['step']} {k}: {x} -> {y}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rerun the tiny chain and rewrite the golden file")
    args = parser.parse_args()
    if args.write:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = run_tiny(tmp)
        GOLDEN.write_text(json.dumps(fresh, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    main()
