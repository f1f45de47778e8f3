"""The demo's golden run: every number of its report's table, made by the real `smt run configs/demo.yaml`.

`tests/golden/demo*.json` hold them with the machine they were made on; `tests/test_golden.py` runs the
demo again and compares with the file made on this kind of machine, so a change that moves any result fails
until the files are regenerated on purpose. CPU float results depend on more than the code: the same torch
build and AVX-512 kernels gave 63 other numbers on an AMD EPYC than on an Intel Xeon (MKL and oneDNN pick
their kernels by CPU vendor), hence one file per (vendor, kernels). The README's results table is rendered
from `tests/golden/demo.json` (Intel Xeon, AVX-512) and checked against it:

    python tests/golden_demo.py --write      # run the demo (a few minutes), rewrite this machine's file
    python tests/golden_demo.py --markdown   # print the README's results table from tests/golden/demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "demo.json"  # the README's table
KERNEL_KEYS = ("torch", "cpu_capability", "cpu_vendor")  # what must match for numbers to compare
CONFIG = ROOT / "configs" / "demo.yaml"
REL_TOL = 1e-4  # relative, on bits; counts, accuracies and step counts must match exactly
SUMMARY_KEYS = ("mean_bits", "first_quarter_bits", "last_quarter_bits", "accuracy", "count")


def machine() -> dict[str, Any]:
    """What the numbers depend on besides the code and the config (CPU kernels, torch build)."""
    import torch

    from training.machine import cpu_vendor

    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_vendor": cpu_vendor(),
        "python": platform.python_version(),
    }


def golden_path(here: dict[str, Any]) -> Path:
    """The golden file made on a machine like `here` (KERNEL_KEYS equal), or where one would go."""
    for path in sorted(GOLDEN.parent.glob("demo*.json")):
        made_on = json.loads(path.read_text())["machine"]
        if all(made_on.get(k) == here[k] for k in KERNEL_KEYS):
            return path
    return GOLDEN.parent / f"demo-{here['cpu_vendor']}-{here['cpu_capability']}.json"


def run_demo(root: Path) -> tuple[dict[str, Any], float]:
    """`smt run configs/demo.yaml` into `root`, as a user runs it; returns (golden record, seconds)."""
    env = {**os.environ, "SMT_PROGRESS": "0", "SMT_QUIET": "1"}
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "cli.main", "run", str(CONFIG), "--root", str(root)],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return record(root), time.monotonic() - start


def record(root: Path) -> dict[str, Any]:
    """The report's table (every row and number) and what each BPTT baseline was budgeted, from `root`."""
    import pyarrow.parquet as pq

    (evaluation,) = root.glob("evaluation-*")
    rows = pq.read_table(evaluation / "summary.parquet").to_pylist()
    summary = {f"{r['rnn']} @ {r['start']}": {k: r[k] for k in SUMMARY_KEYS} for r in rows}
    bptt = {}
    for manifest_path in sorted(root.glob("rnn-*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        if manifest["config"].get("stage") == "bptt":
            variant, stats = manifest["config"]["variant"], manifest["stats"]
            label = variant.get("name") or variant["kind"]
            bptt[label] = {k: stats[k] for k in ("steps", "budget_flops", "train_flops")}
    return {"config": str(CONFIG.relative_to(ROOT)), "machine": machine(), "summary": summary, "bptt": bptt}


def differences(golden: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Every number that moved, as 'where: golden -> fresh' lines (empty when the run matches)."""
    out = []
    if set(golden["summary"]) != set(fresh["summary"]):
        out.append(f"rows: {sorted(golden['summary'])} -> {sorted(fresh['summary'])}")
    for row in sorted(set(golden["summary"]) & set(fresh["summary"])):
        for key in SUMMARY_KEYS:
            a, b = golden["summary"][row][key], fresh["summary"][row][key]
            if not _close(a, b, key.endswith("bits")):
                out.append(f"{row} {key}: {a} -> {b}")
    if golden["bptt"] != fresh["bptt"]:
        out.append(f"bptt budgets: {golden['bptt']} -> {fresh['bptt']}")
    return out


def _close(a: Any, b: Any, relative: bool) -> bool:
    if a is None or b is None:
        return a is b
    if relative:
        return abs(a - b) <= REL_TOL * max(abs(a), abs(b), 1e-12)
    return a == b


def markdown(golden: dict[str, Any]) -> str:
    """The README's results table: accuracy on the answer and bits, per variant and training mode."""
    s = golden["summary"]
    lines = [
        "| variant | SMT (prefix) | SMT (initial memory) | SMT+DMT (prefix) | SMT+DMT (initial memory) "
        "| BPTT (initial memory) | BPTT steps |",
        "|---|---|---|---|---|---|---|",
    ]
    variants = sorted({row.split("/")[0] for row in s if "/" in row})
    for v in variants:
        cells = [_cell(s.get(f"{v}/{mode} @ {start}")) for mode, start in
                 (("smt", "teacher"), ("smt", "init"), ("smt+dmt", "teacher"), ("smt+dmt", "init"), ("bptt", "init"))]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {golden['bptt'][v]['steps']} |")
    teacher = s["teacher @ teacher"]
    lines.append(f"| teacher (L_dec0, ceiling) | {_cell(teacher)} | | | | | |")
    return "\n".join(lines)


def _cell(row: dict[str, Any] | None) -> str:
    return "-" if row is None else f"{row['accuracy']:.2f} ({row['mean_bits']:.3g} bits)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="run the demo and rewrite this machine's golden file")
    parser.add_argument("--markdown", action="store_true", help="print the README results table")
    args = parser.parse_args()
    if args.write:
        with tempfile.TemporaryDirectory() as tmp:
            fresh, seconds = run_demo(Path(tmp) / "runs")
        path = golden_path(fresh["machine"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fresh, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path} ({seconds:.0f} s demo)")
    if args.markdown:
        print(markdown(json.loads(GOLDEN.read_text())))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
