"""experiments/mqar_binding.py: what tells a teacher that binds keys to values from one that only stores them."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.mqar_binding import binding_stats


def test_mqar_binding_separates_a_value_set_from_a_binding() -> None:
    # two documents `k1 v1 k2 v2` (keys 1, 2; values 5, 6 and 7, 4), left-padded, query key 2 then 1
    contexts = np.array([[-1, 1, 5, 2, 6, 9, 2], [-1, 1, 7, 2, 4, 3, 1]])
    answers = np.array([6, 7])
    binds = np.full((2, 10), 0.01)
    binds[0, 6], binds[1, 7] = 0.9, 0.9  # the right value
    value_set = np.full((2, 10), 0.01)
    value_set[0, [5, 6]] = [0.46, 0.44]  # both of the document's values, the wrong one first
    value_set[1, [7, 4]] = [0.44, 0.46]
    bound = binding_stats(binds, contexts, answers, num_pairs=2)
    unbound = binding_stats(value_set, contexts, answers, num_pairs=2)
    assert bound["accuracy"] == 1.0 and unbound["accuracy"] == 0.0
    assert unbound["mass_on_document_values"] == pytest.approx(0.9)
    assert bound["answer_among_document_values"] == unbound["answer_among_document_values"] == 1.0
    with pytest.raises(ValueError, match="no scored"):
        binding_stats(binds, contexts, np.array([-1, -1]), num_pairs=2)
