"""Can a plain Transformer language model bind MQAR's keys to values on these tokens, causal or not?

    python -m experiments.mqar_probe TOKENS_URL [--attention causal|bidirectional] [--depth 2] [--steps 2000]

The teacher's encoder is bidirectional and reads its answer out of K registers; the MQAR teachers here learn
which values a document holds but not which key each belongs to (experiments/mqar_binding.py). This probe
trains the same blocks (models/layers.py: width, heads, depth) as a language model over whole documents,
scored on MQAR's answers only, with or without the causal mask and without registers, and prints one JSON
line per evaluation (held-out accuracy on the answers of 1,024 test documents). Nothing is saved: it is a
measurement, not a stage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
import torch
import typer
from torch import Tensor, nn

from models.build import seeded_init
from models.layers import Stack, TokenEmbedding
from store.tokens import TokensArtifact

Attention = Literal["causal", "bidirectional"]


def document_arrays(tokens: TokensArtifact, split: str) -> tuple[Tensor, Tensor]:
    """Every document of `split` as rows of x (inputs) and y (targets, -1 unscored); MQAR's are of one length."""
    pairs = [(x, y) for _, x, y in tokens.documents(split)]
    if not pairs or len({len(x) for x, _ in pairs}) != 1:
        raise ValueError(f"the probe needs documents of one length in split {split!r}")
    x, y = (torch.from_numpy(np.stack(column)).long() for column in zip(*pairs, strict=True))
    return x, y


class ProbeLM(nn.Module):
    """Token embedding, a Stack of blocks (the teacher's), a linear head at every position."""

    def __init__(self, vocab: int, width: int, heads: int, depth: int, attention: Attention) -> None:
        super().__init__()
        self.embed = TokenEmbedding(vocab, width)
        self.stack = Stack(width, heads, depth)
        self.head = nn.Linear(width, vocab, bias=False)
        self.causal = attention == "causal"

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stack(self.embed(x), 0, causal=self.causal))


def answer_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy on the scored targets (y >= 0) only."""
    with torch.no_grad():
        scored = y >= 0
        return float((model(x).argmax(-1)[scored] == y[scored]).float().mean())


def train_probe(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], vocab: int, *, width: int = 64, heads: int = 4,
    depth: int = 2, attention: Attention = "causal", steps: int = 2000, batch_size: int = 64, lr: float = 1e-3,
    eval_every: int = 250, seed: int = 0,
) -> Iterator[dict[str, float]]:
    """AdamW on the answers' cross-entropy; yields {step, loss, test_accuracy, seconds} every `eval_every`."""
    with seeded_init(seed):
        model = ProbeLM(vocab, width, heads, depth, attention)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    (x, y), (x_test, y_test) = train, test
    start = time.perf_counter()
    for step in range(1, steps + 1):
        i = torch.randint(0, x.shape[0], (batch_size,), generator=order)
        loss = nn.functional.cross_entropy(model(x[i]).flatten(0, 1), y[i].flatten(), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            yield {"step": step, "loss": loss.item(), "test_accuracy": answer_accuracy(model, x_test, y_test),
                   "seconds": time.perf_counter() - start}


def main(
    tokens_url: Annotated[str, typer.Argument(help="an mqar tokens artifact (train and test splits)")],
    attention: Annotated[str, typer.Option(help="causal | bidirectional")] = "causal",
    depth: Annotated[int, typer.Option(min=1)] = 2,
    width: Annotated[int, typer.Option(min=8)] = 64,
    heads: Annotated[int, typer.Option(min=1)] = 4,
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    lr: Annotated[float, typer.Option(min=0)] = 1e-3,
    threads: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Print {step, loss, test_accuracy, seconds} as JSON lines while the probe trains."""
    if attention not in ("causal", "bidirectional"):
        raise typer.BadParameter("--attention is causal or bidirectional")
    torch.set_num_threads(threads)
    tokens = TokensArtifact.open(tokens_url)
    test_x, test_y = document_arrays(tokens, "test")
    rows = train_probe(document_arrays(tokens, "train"), (test_x[:1024], test_y[:1024]), tokens.vocab_size,
                       width=width, heads=heads, depth=depth, attention=attention, steps=steps, lr=lr)  # type: ignore[arg-type]
    for row in rows:
        print(json.dumps({"attention": attention, "depth": depth, **row}), flush=True)


if __name__ == "__main__":
    typer.run(main)
