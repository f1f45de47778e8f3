"""experiments/mqar_probe.py: the language-model probe scores MQAR's answers only and learns an easy case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.mqar_probe import ProbeLM, answer_accuracy, train_probe
from sources.synthetic import mqar


def _docs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    docs = [mqar(rng, length=8, num_pairs=1, vocab=16) for _ in range(n)]
    return (torch.tensor(np.stack([d[0] for d in docs])).long(), torch.tensor(np.stack([d[1] for d in docs])).long())


def test_accuracy_counts_the_scored_answers_only() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x, 16).float()  # predicts its own input at every position

    x = torch.tensor([[1, 9, 3, 1, 4]])
    assert answer_accuracy(Fixed(), x, torch.tensor([[-1, -1, -1, 9, -1]])) == 0.0
    assert answer_accuracy(Fixed(), x, torch.tensor([[1, -1, -1, 1, -1]])) == 1.0


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_both_probes_learn_one_pair(attention: str, one_thread) -> None:
    """With one pair the answer is the document's only value: any working probe finds it."""
    rows = list(train_probe(_docs(512, 0), _docs(128, 1), 16, width=32, heads=2, depth=1, attention=attention,
                            steps=600, eval_every=200))
    assert [r["step"] for r in rows] == [200, 400, 600]
    assert rows[-1]["test_accuracy"] > 0.75  # chance: 1 of the 8 values; both reach ~0.9 here


def test_the_causal_probe_never_sees_the_future() -> None:
    model = ProbeLM(16, 32, 2, 1, "causal").eval()
    x = torch.tensor([[1, 9, 3, 1, 4, 5]])
    changed = x.clone()
    changed[0, 4:] = torch.tensor([7, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :4], model(changed)[:, :4])
