"""Synthetic tasks: hand-written layouts, labels recomputed from x by independent procedures, ranges,
determinism and error messages."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sources.errors import SourceError
from sources.synthetic import (
    TASKS,
    copy_layout,
    generate_task,
    keys_values_layout,
    modular_layout,
    mqar_layout,
    parity_layout,
    reserved_tokens,
    resolve_params,
    retrieval_layout,
    stack_layout,
    task_length,
    task_vocab_size,
)

NUM_DOCS = 50


def _eq(doc: tuple[np.ndarray, np.ndarray], x: list[int], y: list[int]) -> None:
    assert doc[0].tolist() == x
    assert doc[1].tolist() == y


# ----------------------------------------------------------------------------- hand-written tiny cases


def test_retrieval_layout_by_hand() -> None:
    _eq(retrieval_layout([2, 0, 3, 1, 1, 2], 1, vocab=4), [2, 4, 3, 1, 1, 4], [-1, -1, -1, -1, -1, 3])
    _eq(retrieval_layout([2, 0, 3], 0, vocab=4, label=1), [4, 0, 4], [-1, -1, 1])  # shortest, noisy label


def test_copy_layout_by_hand() -> None:
    _eq(copy_layout([0, 1, 2], vocab=4), [0, 1, 2, 4, 2, 1, 0], [-1, -1, -1, 2, 1, 0, -1])
    _eq(copy_layout([3], vocab=4), [3, 4, 3], [-1, 3, -1])


def test_stack_layout_by_hand() -> None:
    _eq(stack_layout([3, 1, 4, 2, 4, 4], vocab=4), [3, 1, 4, 2, 4, 4], [-1, -1, 1, -1, 2, 3])
    with pytest.raises(SourceError, match="empty stack"):
        stack_layout([4], vocab=4)


def test_keys_values_layout_by_hand() -> None:
    doc = keys_values_layout([2, 0], [1, 1], [0, 2], vocab=4)
    _eq(doc, [2, 1, 0, 1, 4, 0, 2], [-1, -1, -1, -1, -1, 1, 1])
    doc = keys_values_layout([3, 1, 0], [0, 2, 3], [1, 1, 0], vocab=4)
    _eq(doc, [3, 0, 1, 2, 0, 3, 4, 1, 1, 0], [-1] * 7 + [2, 2, 3])


def test_mqar_layout_by_hand() -> None:
    doc = mqar_layout([1, 2], [5, 6], [1, 0], [3, 4, 7, 4, 0])
    _eq(doc, [1, 5, 2, 6, 2, 4, 1, 4, 0], [-1, -1, -1, -1, 6, -1, 5, -1, -1])


def test_modular_layout_by_hand() -> None:
    # f(x) = (2x + 1) mod 5: f(0)=1, f(3)=2, f(4)=4
    _eq(modular_layout([0, 3, 4], 2, 1, 5, 1), [0, 1, 3, 2, 4, 4], [-1, -1, 2, -1, 4, -1])
    _eq(modular_layout([0, 3, 4], 2, 1, 5, 0), [0, 1, 3, 2, 4, 4], [1, -1, 2, -1, 4, -1])


def test_parity_layout_by_hand() -> None:
    _eq(parity_layout([1, 0, 1, 1], running=True), [1, 0, 1, 1], [1, 1, 0, 1])
    _eq(parity_layout([1, 0, 1, 1], running=False), [1, 0, 1, 1], [-1, -1, -1, 1])


# ----------------------------------------------------------------------------- generated docs, rechecked


def test_retrieval_labels_recomputed() -> None:
    marker = reserved_tokens("retrieval")["marker"]
    positions = set()
    for x, y in generate_task("retrieval", NUM_DOCS, seed=1):
        where = [t for t, tok in enumerate(x) if tok == marker]
        assert len(where) == 2 and where[1] == len(x) - 1  # one stored marker, one query at the end
        positions.add(where[0])
        assert y[-1] == x[where[0] + 1]
        assert (y[:-1] == -1).all()
    assert min(positions) < 8 and max(positions) > 50  # needles near and far from the query


def test_retrieval_label_noise_only_changes_labels() -> None:
    params = dict(length=16, vocab=8, label_noise=0.3)
    noisy = generate_task("retrieval", 400, seed=2, **params)
    clean = generate_task("retrieval", 400, seed=2, clean=True, **params)
    for (xn, yn), (xc, yc) in zip(noisy, clean, strict=True):
        assert np.array_equal(xn, xc)
        assert np.array_equal(yn[:-1], yc[:-1])
        assert 0 <= yn[-1] < 8
    corrupted = np.mean([yn[-1] != yc[-1] for (_, yn), (_, yc) in zip(noisy, clean, strict=True)])
    assert 0.2 < corrupted < 0.4
    no_noise = generate_task("retrieval", 400, seed=2, length=16, vocab=8)  # default label_noise 0
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(no_noise, clean, strict=True))


def test_copy_labels_recomputed() -> None:
    delim = reserved_tokens("copy", length=5)["delimiter"]
    for x, y in generate_task("copy", NUM_DOCS, seed=3, length=5):
        n = list(x).index(delim)
        assert n == 5 and (x[:n] != delim).all()
        string = list(x[:n])
        scored = [int(v) for v in y if v != -1]
        assert scored == string[::-1]
        assert (y[:n] == -1).all() and y[-1] == -1


def test_stack_labels_recomputed() -> None:
    params = dict(num_ops=40, vocab=6, max_depth=3)
    pop = reserved_tokens("stack", **params)["pop"]
    num_pops = 0
    for x, y in generate_task("stack", NUM_DOCS, seed=4, **params):
        stack: list[int] = []
        for tok, target in zip(x.tolist(), y.tolist(), strict=True):
            if tok == pop:
                assert stack, "pop on empty stack"
                assert target == stack.pop()
                num_pops += 1
            else:
                stack.append(tok)
                assert target == -1
            assert len(stack) <= 3
    assert num_pops > NUM_DOCS * 10


def test_keys_values_labels_recomputed() -> None:
    params = dict(num_pairs=5, num_queries=7, vocab=9)
    sep = reserved_tokens("keys_values", **params)["separator"]
    for x, y in generate_task("keys_values", NUM_DOCS, seed=5, **params):
        assert x[10] == sep
        keys, values = x[0:10:2], x[1:10:2]
        assert len(set(keys.tolist())) == 5
        table = {int(k): int(v) for k, v in zip(keys, values, strict=True)}
        assert (y[:11] == -1).all()
        assert [table[int(q)] for q in x[11:]] == y[11:].tolist()


def test_mqar_labels_recomputed() -> None:
    n, length, vocab = 4, 64, 64
    gaps = []
    for x, y in generate_task("mqar", NUM_DOCS, seed=5, length=length, num_pairs=n, vocab=vocab):
        keys, values = x[0 : 2 * n : 2], x[1 : 2 * n : 2]
        assert len(set(keys.tolist())) == n and (keys >= 1).all() and (keys < vocab // 2).all()
        assert len(set(values.tolist())) == n and (values >= vocab // 2).all()
        table = {int(k): int(v) for k, v in zip(keys, values, strict=True)}
        scored = np.flatnonzero(y >= 0)
        assert len(scored) == n and (scored >= 2 * n).all() and ((scored - 2 * n) % 2 == 0).all()
        assert sorted(int(x[t]) for t in scored) == sorted(table)  # every key asked once
        assert all(y[t] == table[int(x[t])] for t in scored)
        gaps += ((scored - 2 * n) // 2).tolist()
    space = (length - 2 * n) // 2  # query slots; uniform gaps would average (space - 1) / 2
    assert np.mean(gaps) < 0.75 * (space - 1) / 2  # power law: short gaps likelier, as Zoology draws them


def test_modular_labels_recomputed() -> None:
    p = 5
    for x, y in generate_task("modular", NUM_DOCS, seed=6, modulus=p, num_examples=8, num_unscored=2):
        xs, fx = x[0::2], x[1::2]
        # brute force: the affine maps consistent with every example in the document
        fits = [(w, b) for w, b in itertools.product(range(1, p), range(p)) if ((w * xs + b) % p == fx).all()]
        assert fits
        assert y[1::2].tolist() == [-1] * 8
        assert y[0:4:2].tolist() == [-1, -1]
        assert y[4::2].tolist() == fx[2:].tolist()


@pytest.mark.parametrize("running", [True, False])
def test_parity_labels_recomputed(running: bool) -> None:
    for x, y in generate_task("parity", NUM_DOCS, seed=7, length=9, running=running):
        acc = 0
        for t, bit in enumerate(x.tolist()):
            acc ^= bit
            if running or t == 8:
                assert y[t] == acc
            else:
                assert y[t] == -1


# ----------------------------------------------------------------------------- shared properties


@pytest.mark.parametrize("name", list(TASKS))
def test_shapes_ranges_and_sizes(name: str) -> None:
    vocab_size, length = task_vocab_size(name), task_length(name)
    data_vocab = vocab_size - len(reserved_tokens(name))
    docs = generate_task(name, NUM_DOCS, seed=0)
    assert len(docs) == NUM_DOCS
    for x, y in docs:
        assert x.dtype == np.int64 and y.dtype == np.int64
        assert x.shape == y.shape == (length,)
        assert x.min() >= 0 and x.max() < vocab_size
        assert (y >= -1).all() and y.max() < data_vocab  # answers are data tokens, never markers
        assert (y != -1).any()


@pytest.mark.parametrize("name", list(TASKS))
def test_deterministic_by_seed(name: str) -> None:
    a, b = generate_task(name, 20, seed=11), generate_task(name, 20, seed=11)
    assert all(
        np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )
    prefix = generate_task(name, 5, seed=11)  # document i does not depend on num_docs
    assert all(np.array_equal(xa, xb) for (xa, _), (xb, _) in zip(a, prefix, strict=False))
    other = generate_task(name, 20, seed=12)
    assert any(not np.array_equal(xa, xb) for (xa, _), (xb, _) in zip(a, other, strict=True))


def test_sizes_follow_params() -> None:
    assert (task_vocab_size("retrieval"), task_length("retrieval")) == (17, 64)
    assert reserved_tokens("retrieval", vocab=10) == {"marker": 10}
    assert (task_vocab_size("copy", vocab=5, length=3), task_length("copy", length=3)) == (6, 7)
    assert task_length("keys_values", num_pairs=3, num_queries=2) == 9
    assert (task_vocab_size("modular", modulus=11), task_length("modular", num_examples=4)) == (11, 8)
    assert task_vocab_size("parity") == 2


def test_tasks_with_different_names_draw_different_streams() -> None:
    (xr, _), (xc, _) = generate_task("retrieval", 1, 0)[0], generate_task("copy", 1, 0)[0]
    assert not np.array_equal(xr[:10], xc[:10])


# ----------------------------------------------------------------------------- errors


def test_unknown_task_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic task 'retreival'.*retrieval, copy, stack"):
        generate_task("retreival", 1, 0)
    with pytest.raises(ValueError, match="retreival"):
        task_vocab_size("retreival")
    with pytest.raises(ValueError, match="retreival"):
        task_length("retreival")


def test_unknown_param_lists_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown parameter\(s\) lenght for task 'retrieval'.*length, vocab"
    ):
        generate_task("retrieval", 1, 0, lenght=10)
    with pytest.raises(ValueError, match="num_pair"):
        task_length("keys_values", num_pair=3)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("retrieval", {"length": 2}, "length must be >= 3"),
        ("retrieval", {"label_noise": 1.5}, r"label_noise must be in \[0, 1\]"),
        ("copy", {"vocab": 1}, "vocab must be >= 2"),
        ("stack", {"max_depth": 0}, "max_depth must be >= 1"),
        ("keys_values", {"num_pairs": 20, "vocab": 16}, "num_pairs .* must be <= vocab"),
        ("modular", {"num_unscored": 16}, "num_unscored < num_examples"),
        ("mqar", {"length": 63}, "length must be even"),
        ("mqar", {"length": 16, "num_pairs": 5}, "length .* must be >= 4 \\* num_pairs"),
        ("mqar", {"vocab": 8, "num_pairs": 4}, "vocab .* must exceed 2 \\* num_pairs"),
        ("parity", {"length": 0}, "length must be >= 1"),
        ("copy", {"length": 2.5}, "length must be an int"),
        ("parity", {"running": 1}, "running must be a bool"),
        ("retrieval", {"vocab": True}, "vocab must be an int"),
    ],
)
def test_bad_values_are_named(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_task(name, 1, 0, **params)


def test_bad_counts_and_seeds() -> None:
    with pytest.raises(ValueError, match="seed"):
        generate_task("parity", 1, -1)
    with pytest.raises(ValueError, match="num_docs"):
        generate_task("parity", -1, 0)
    assert generate_task("parity", 0, 0) == []


def test_params_accept_config_spellings() -> None:
    """YAML gives label_noise: 0 as an int and numpy code may pass np.int64; both are fine."""
    p = resolve_params("retrieval", label_noise=0, length=np.int64(10))
    assert p == {"length": 10, "vocab": 16, "label_noise": 0.0}
    assert type(p["length"]) is int and type(p["label_noise"]) is float
