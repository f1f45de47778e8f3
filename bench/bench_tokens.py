"""Peak memory of the tokens stage against corpus size: flat with the streaming writer (store/tokens.py).

Writes a text corpus of --mb megabytes (files of --file-mb, made from the bundled excerpt), builds its
tokens artifact in a fresh process and prints one JSON line: corpus size, peak RSS of that process,
seconds. Run it at several sizes; a streaming writer keeps the peak near one file plus the interpreter:

    python bench/bench_tokens.py --mb 64 --mb 256 --mb 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXCERPT = ROOT / "tests" / "data" / "pride_and_prejudice_excerpt.txt"
CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from schemas.config import TokensConfig
from store.tokens import build_tokens_artifact
t = time.perf_counter()
build_tokens_artifact(TokensConfig(source="text", url={url!r}, chunk_len=65536), {out!r})
print(time.perf_counter() - t)
"""


def write_corpus(directory: Path, mb: int, file_mb: int) -> str:
    text = EXCERPT.read_bytes()
    per_file = file_mb << 20
    block = (text * (per_file // len(text) + 1))[:per_file]
    for i in range(max(1, mb // file_mb)):
        (directory / f"part-{i:05d}.txt").write_bytes(block)
    return str(directory / "*.txt")


def measure(mb: int, file_mb: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        url = write_corpus(corpus, mb, file_mb)
        code = CHILD.format(root=str(ROOT), url=url, out=str(Path(tmp) / "runs"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        assert peak_kb >= before, "one child per call: ru_maxrss is the largest child so far"
        return {"corpus_mb": mb, "file_mb": file_mb, "peak_rss_mb": round(peak_kb / 1024, 1),
                "build_seconds": round(float(out.stdout.strip().splitlines()[-1]), 1),
                "wall_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, action="append", help="corpus size in MB (repeatable)")
    parser.add_argument("--file-mb", type=int, default=16, help="size of each text file")
    args = parser.parse_args()
    for mb in args.mb or [64]:  # largest last: ru_maxrss of children only grows
        print(json.dumps(measure(mb, args.file_mb)), flush=True)


if __name__ == "__main__":
    main()
