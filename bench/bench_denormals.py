"""What `run.flush_denormal: true` buys a BPTT step: flushed and not, interleaved in one process.

Retrieval scores one position per sequence (its answer), so the gradient flows back through up to `--length`
unscored steps, decays, and becomes denormal, which x86 CPUs compute on many times slower. The same step on
random tokens scored at every position has no such stretch: the control. The RNN is the Transformer updater
of configs/experiments/retrieval-256-*.yaml, its readout built from a teacher's decoder as the BPTT stage does
(a random teacher, or `--teacher URL` for a trained one). One JSON line: median seconds per step of each of
the four (data, flush) cells and the flushed / unflushed speed-ups.

    python bench/bench_denormals.py                                  # random teacher, length 256
    python bench/bench_denormals.py --teacher runs/experiments/teacher-HASH
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_train import cpu_name, timed  # noqa: E402
from models.build import build_rnn, build_teacher, seeded_init  # noqa: E402
from schemas.config import RNNConfig, TeacherModelConfig  # noqa: E402
from sources.synthetic import retrieval  # noqa: E402
from training.denormals import denormals_flushed  # noqa: E402
from training.steps import bptt_step_loss  # noqa: E402

TEACHER = TeacherModelConfig(vocab_size=9, width=64, heads=4, encoder_depth=2, decoder_depth=1, memory_tokens=4,
                             memory_dim=32, context_len=256, future_len=64)
UPDATER = RNNConfig(kind="transformer", width=64, depth=2, heads=4, readout="teacher_decoder")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=256, help="sequence length (BPTT seq_len)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (flushing needs 1)")
    p.add_argument("--pairs", type=int, default=3, help="interleaved rounds over the four cells")
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement (after one untimed)")
    p.add_argument("--teacher", default=None, help="a teacher artifact URL (default: a random teacher)")
    return p.parse_args(argv)


def batches(length: int, batch: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """'answer_only': retrieval documents (vocabulary 8), scored at the answer; 'every_token': random tokens,
    each scored by the next."""
    rng = np.random.default_rng(0)
    docs = [retrieval(rng, length=length, vocab=8) for _ in range(batch)]
    sparse = (torch.from_numpy(np.stack([x for x, _ in docs])), torch.from_numpy(np.stack([y for _, y in docs])))
    dense_x = torch.from_numpy(rng.integers(0, 9, size=(batch, length)))
    return {"answer_only": sparse, "every_token": (dense_x, torch.roll(dense_x, -1, dims=1))}


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.teacher:
        from store.teacher import load_teacher, teacher_config

        teacher, manifest = load_teacher(args.teacher)
        model = teacher_config(manifest).model
    else:
        model = TEACHER
        with seeded_init(0):
            teacher = build_teacher(model)
    with seeded_init(0):
        rnn = build_rnn(UPDATER, model, teacher)
    data = batches(args.length, args.batch)
    cpu = torch.device("cpu")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        rnn.zero_grad(set_to_none=True)
        bptt_step_loss(rnn, x, y)["loss"].backward()

    seconds: dict[str, list[float]] = {}
    for _ in range(args.pairs):
        for name, (x, y) in data.items():
            for flush in (False, True):
                with denormals_flushed(flush, args.threads):
                    seconds.setdefault(f"{name}_flush_{flush}".lower(), []).append(
                        timed(lambda x=x, y=y: step(x, y), args.steps, 1, cpu))
    medians = {k: round(statistics.median(v), 3) for k, v in seconds.items()}
    result = {"cpu": cpu_name(), "threads": args.threads, "length": args.length, "batch": args.batch,
              "teacher": args.teacher or "random", "s_per_step": medians,
              "speedup": {name: round(medians[f"{name}_flush_false"] / medians[f"{name}_flush_true"], 2)
                          for name in data}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
