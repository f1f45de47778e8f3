"""Seeded synthetic tasks of the SMT paper (SPEC section 8): retrieval, copy, stack, keys and values,
modular arithmetic and parity; and Zoology's multi-query associative recall (MQAR), the benchmark
other recurrent-model papers report.

Each task yields one document `(x, y)`: two int64 arrays of the same fixed length. `x[t]` is the
token read at step t; `y[t]` is the target scored after reading `x[t]`, or -1 where nothing is scored
(SPEC section 2). Data tokens are `[0, data_vocab)`; markers and delimiters get reserved ids just above
the data range (`data_vocab`, `data_vocab + 1`, ...), so `task_vocab_size` is explicit and no data
token can be mistaken for a marker.

Every task is split in two: a *layout* function (`*_layout`) that turns chosen contents into `(x, y)`
deterministically, so tests can check it on hand-written inputs, and a sampler that draws the
contents from a numpy Generator. Document `i` of `generate_task(name, n, seed)` uses its own
Generator seeded by `(task, seed, i)`, so it does not depend on `n`: a larger run extends a smaller one.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from sources.errors import SourceError

Doc = tuple[np.ndarray, np.ndarray]  # (x, y), each (T,) int64


def _doc(x: Sequence[int], y: Sequence[int]) -> Doc:
    return np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)


# ----------------------------------------------------------------------------- layouts (deterministic)


def retrieval_layout(filler: Sequence[int], marker_pos: int, vocab: int, label: int | None = None) -> Doc:
    """Put a marker at `marker_pos` and the query marker at the end; score the needle after the query.

    The needle is `filler[marker_pos + 1]`; `label` overrides the scored answer (label noise).
    Example, vocab=4 (MARKER=4), filler [2 0 3 1 1 2], marker_pos=1:
        x = [2 4 3 1 1 4]    y = [-1 -1 -1 -1 -1 3]
    """
    _require(
        0 <= marker_pos <= len(filler) - 3,
        "retrieval_layout: marker_pos must leave room for needle and query",
    )
    x = list(filler)
    x[marker_pos] = x[-1] = vocab
    y = [-1] * len(x)
    y[-1] = x[marker_pos + 1] if label is None else label
    return _doc(x, y)


def copy_layout(string: Sequence[int], vocab: int) -> Doc:
    """`string DELIM reversed(string)`; from the delimiter on, each step predicts the next reversed token.

    Example, vocab=4 (DELIM=4), string [0 1 2]:
        x = [0 1 2 4 2 1 0]    y = [-1 -1 -1 2 1 0 -1]
    """
    n = len(string)
    x = [*string, vocab, *reversed(string)]
    y = [-1] * n + x[n + 1 :] + [-1]
    return _doc(x, y)


def stack_layout(ops: Sequence[int], vocab: int) -> Doc:
    """`ops` are tokens: a data token v pushes v, `vocab` (POP) pops; each POP is scored with the popped v.

    Example, vocab=4 (POP=4), ops [3 1 4 2 4 4]:
        x = [3 1 4 2 4 4]    y = [-1 -1 1 -1 2 3]
    """
    stack: list[int] = []
    y = []
    for op in ops:
        if op == vocab:
            if not stack:
                raise SourceError("stack_layout: POP on an empty stack")
            y.append(stack.pop())
        else:
            stack.append(op)
            y.append(-1)
    return _doc(ops, y)


def keys_values_layout(keys: Sequence[int], values: Sequence[int], queries: Sequence[int], vocab: int) -> Doc:
    """`k1 v1 k2 v2 ... SEP q1 q2 ...`; after reading query key q, predict its value.

    Keys must be distinct so each query has one answer. Example, vocab=4 (SEP=4),
    keys [2 0], values [1 1], queries [0 2]:
        x = [2 1 0 1 4 0 2]    y = [-1 -1 -1 -1 -1 1 1]
    """
    table = dict(zip(keys, values, strict=True))
    pairs = [tok for kv in zip(keys, values, strict=True) for tok in kv]
    x = [*pairs, vocab, *queries]
    y = [-1] * (len(pairs) + 1) + [table[q] for q in queries]
    return _doc(x, y)


def mqar_layout(keys: Sequence[int], values: Sequence[int], query_slots: Sequence[int], filler: Sequence[int]) -> Doc:
    """Multi-query associative recall (Zoology): `k1 v1 k2 v2 ...`, then the remaining positions hold
    `filler`, except that key i is asked again at offset `2 * query_slots[i]` after the pairs; right
    after reading an asked key, predict its value.

    Example, keys [1 2], values [5 6], slots [1 0], filler [3 4 7 4 0]:
        x = [1 5 2 6 2 4 1 4 0]    y = [-1 -1 -1 -1 6 -1 5 -1 -1]
    """
    n = len(keys)
    pairs = [tok for kv in zip(keys, values, strict=True) for tok in kv]
    x, y = [*pairs, *filler], [-1] * (2 * n + len(filler))
    for key, value, slot in zip(keys, values, query_slots, strict=True):
        pos = 2 * n + 2 * slot
        _require(pos < len(x), "mqar_layout: a query slot lies past the end")
        x[pos], y[pos] = key, value
    return _doc(x, y)


def modular_layout(xs: Sequence[int], w: int, b: int, modulus: int, num_unscored: int) -> Doc:
    """`x1 f(x1) x2 f(x2) ...` with f(x) = (w*x + b) mod p; after reading x_i predict f(x_i).

    The first `num_unscored` examples are context only: nobody can know w, b before seeing any.
    Example, p=5, w=2, b=1, xs [0 3 4], num_unscored=1:
        x = [0 1 3 2 4 4]    y = [-1 -1 2 -1 4 -1]
    """
    fx = [(w * v + b) % modulus for v in xs]
    x = [tok for pair in zip(xs, fx, strict=True) for tok in pair]
    y = [-1] * len(x)
    for i in range(num_unscored, len(xs)):
        y[2 * i] = fx[i]
    return _doc(x, y)


def parity_layout(bits: Sequence[int], running: bool) -> Doc:
    """Bits; y is the parity of all bits read so far (every step if `running`, else only the last).

    Example, bits [1 0 1 1]:  running: y = [1 1 0 1];  final only: y = [-1 -1 -1 1]
    """
    y = list(np.cumsum(bits) % 2) if len(bits) else []
    if not running:
        y = [-1] * (len(y) - 1) + y[-1:]
    return _doc(bits, y)


# ----------------------------------------------------------------------------- samplers (one per task)


def retrieval(rng: np.random.Generator, length: int = 64, vocab: int = 16, label_noise: float = 0.0) -> Doc:
    """Needle retrieval over any distance; with prob. `label_noise` the answer label is another token.

    The corruption draws are made whether or not they are used, so x is the same for any noise
    level: a clean test set and a noisy training set from one seed differ only in corrupted labels.
    """
    filler = rng.integers(0, vocab, size=length)
    marker_pos = int(rng.integers(0, length - 2))  # needle at marker_pos+1 <= length-2, query at length-1
    corrupt = rng.random() < label_noise
    shift = int(rng.integers(1, vocab))  # a nonzero shift: a corrupted label is always wrong
    needle = int(filler[marker_pos + 1])
    label = (needle + shift) % vocab if corrupt else needle
    return retrieval_layout(filler.tolist(), marker_pos, vocab, label)


def copy(rng: np.random.Generator, length: int = 16, vocab: int = 16) -> Doc:
    """Reverse copy of a random string of `length` tokens (sequence length 2*length + 1)."""
    return copy_layout(rng.integers(0, vocab, size=length).tolist(), vocab)


def stack(rng: np.random.Generator, num_ops: int = 32, vocab: int = 16, max_depth: int = 8) -> Doc:
    """Random push/pop walk: push or pop with prob. 1/2, forced push when empty, forced pop when full."""
    ops, depth = [], 0
    for _ in range(num_ops):
        push = depth == 0 or (depth < max_depth and rng.random() < 0.5)
        ops.append(int(rng.integers(0, vocab)) if push else vocab)
        depth += 1 if push else -1
    return stack_layout(ops, vocab)


def keys_values(rng: np.random.Generator, num_pairs: int = 8, num_queries: int = 4, vocab: int = 16) -> Doc:
    """Associative recall: distinct random keys, random values, queries drawn from the keys."""
    keys = rng.permutation(vocab)[:num_pairs]
    values = rng.integers(0, vocab, size=num_pairs)
    queries = keys[rng.integers(0, num_pairs, size=num_queries)]
    return keys_values_layout(keys.tolist(), values.tolist(), queries.tolist(), vocab)


def mqar(
    rng: np.random.Generator, length: int = 64, num_pairs: int = 4, vocab: int = 8192, power_a: float = 0.01
) -> Doc:
    """MQAR as in Zoology's `multiquery_ar`: distinct keys from [1, vocab/2), distinct values from
    [vocab/2, vocab), each key asked once after the pairs at an even gap drawn with probability
    proportional to gap**(power_a - 1) (short gaps likely, as in text), random tokens elsewhere."""
    keys = rng.choice(np.arange(1, vocab // 2), size=num_pairs, replace=False)
    values = rng.choice(np.arange(vocab // 2, vocab), size=num_pairs, replace=False)
    space = (length - 2 * num_pairs) // 2
    p = np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    slots = rng.choice(space, size=num_pairs, replace=False, p=p / p.sum())
    filler = rng.integers(0, vocab, size=length - 2 * num_pairs)
    return mqar_layout(keys.tolist(), values.tolist(), slots.tolist(), filler.tolist())


def modular(rng: np.random.Generator, modulus: int = 7, num_examples: int = 16, num_unscored: int = 2) -> Doc:
    """In-context affine map mod p with hidden w in [1, p) (w=0 would be a constant) and b in [0, p)."""
    w = int(rng.integers(1, modulus))
    b = int(rng.integers(0, modulus))
    xs = rng.integers(0, modulus, size=num_examples)
    return modular_layout(xs.tolist(), w, b, modulus, num_unscored)


def parity(rng: np.random.Generator, length: int = 32, running: bool = True) -> Doc:
    """Random bits; running parity (easy, 1 bit of memory per step) or final parity only (long-range)."""
    return parity_layout(rng.integers(0, 2, size=length).tolist(), running)


# ----------------------------------------------------------------------------- registry


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SourceError(message)


@dataclass(frozen=True)
class TaskSpec:
    """One task: its sampler, sizes as functions of its (complete) params, and extra value checks."""

    sample: Callable[..., Doc]  # (rng, **params) -> (x, y)
    data_vocab: Callable[[dict[str, Any]], int]  # number of data tokens; reserved ids start here
    length: Callable[[dict[str, Any]], int]  # sequence length T
    check: Callable[[dict[str, Any]], None]  # raises SourceError on values out of range
    reserved: tuple[str, ...] = ()  # names of reserved tokens: ids data_vocab, data_vocab + 1, ...

    def defaults(self) -> dict[str, Any]:
        """Parameter defaults, read from the sampler's signature (one place to change a default)."""
        params = list(inspect.signature(self.sample).parameters.values())[1:]  # skip rng
        return {p.name: p.default for p in params}


def _check_retrieval(p: dict[str, Any]) -> None:
    _require(p["length"] >= 3, f"retrieval: length must be >= 3 (marker, needle, query), got {p['length']}")
    _require(p["vocab"] >= 2, f"retrieval: vocab must be >= 2, got {p['vocab']}")
    _require(0 <= p["label_noise"] <= 1, f"retrieval: label_noise must be in [0, 1], got {p['label_noise']}")


def _check_copy(p: dict[str, Any]) -> None:
    _require(p["length"] >= 1, f"copy: length must be >= 1, got {p['length']}")
    _require(p["vocab"] >= 2, f"copy: vocab must be >= 2, got {p['vocab']}")


def _check_stack(p: dict[str, Any]) -> None:
    _require(p["num_ops"] >= 1, f"stack: num_ops must be >= 1, got {p['num_ops']}")
    _require(p["vocab"] >= 2, f"stack: vocab must be >= 2, got {p['vocab']}")
    _require(p["max_depth"] >= 1, f"stack: max_depth must be >= 1, got {p['max_depth']}")


def _check_keys_values(p: dict[str, Any]) -> None:
    _require(p["vocab"] >= 2, f"keys_values: vocab must be >= 2, got {p['vocab']}")
    _require(p["num_pairs"] >= 1, f"keys_values: num_pairs must be >= 1, got {p['num_pairs']}")
    _require(p["num_queries"] >= 1, f"keys_values: num_queries must be >= 1, got {p['num_queries']}")
    _require(
        p["num_pairs"] <= p["vocab"],
        f"keys_values: num_pairs ({p['num_pairs']}) must be <= vocab ({p['vocab']}): keys are distinct",
    )


def _check_mqar(p: dict[str, Any]) -> None:
    _require(p["num_pairs"] >= 1, f"mqar: num_pairs must be >= 1, got {p['num_pairs']}")
    _require(p["length"] % 2 == 0, f"mqar: length must be even (queries sit at even gaps), got {p['length']}")
    _require(
        4 * p["num_pairs"] <= p["length"],
        f"mqar: length ({p['length']}) must be >= 4 * num_pairs ({4 * p['num_pairs']}): pairs, then a slot per query",
    )
    _require(
        p["num_pairs"] < p["vocab"] // 2,
        f"mqar: vocab ({p['vocab']}) must exceed 2 * num_pairs: keys and values are distinct halves",
    )
    _require(p["power_a"] > 0, f"mqar: power_a must be > 0, got {p['power_a']}")


def _check_modular(p: dict[str, Any]) -> None:
    _require(p["modulus"] >= 2, f"modular: modulus must be >= 2, got {p['modulus']}")
    _require(
        0 <= p["num_unscored"] < p["num_examples"],
        f"modular: need 0 <= num_unscored < num_examples, got {p['num_unscored']} and {p['num_examples']}",
    )


def _check_parity(p: dict[str, Any]) -> None:
    _require(p["length"] >= 1, f"parity: length must be >= 1, got {p['length']}")


TASKS: dict[str, TaskSpec] = {
    "retrieval": TaskSpec(
        retrieval, lambda p: p["vocab"], lambda p: p["length"], _check_retrieval, ("marker",)
    ),
    "copy": TaskSpec(copy, lambda p: p["vocab"], lambda p: 2 * p["length"] + 1, _check_copy, ("delimiter",)),
    "stack": TaskSpec(stack, lambda p: p["vocab"], lambda p: p["num_ops"], _check_stack, ("pop",)),
    "keys_values": TaskSpec(
        keys_values,
        lambda p: p["vocab"],
        lambda p: 2 * p["num_pairs"] + 1 + p["num_queries"],
        _check_keys_values,
        ("separator",),
    ),
    "mqar": TaskSpec(mqar, lambda p: p["vocab"], lambda p: p["length"], _check_mqar),
    "modular": TaskSpec(modular, lambda p: p["modulus"], lambda p: 2 * p["num_examples"], _check_modular),
    "parity": TaskSpec(parity, lambda p: 2, lambda p: p["length"], _check_parity),
}


def _coerce(task: str, name: str, value: Any, default: Any) -> Any:
    """Check a parameter's type against its default's: a config may give 0 for a float, not 1.5 for an int."""
    if isinstance(default, bool):
        _require(isinstance(value, bool | np.bool_), f"{task}: {name} must be a bool, got {value!r}")
        return bool(value)
    if isinstance(default, int):
        ok = isinstance(value, Integral) and not isinstance(value, bool | np.bool_)
        _require(ok, f"{task}: {name} must be an int, got {value!r}")
        return int(value)
    ok = isinstance(value, Real) and not isinstance(value, bool | np.bool_)
    _require(ok, f"{task}: {name} must be a number, got {value!r}")
    return float(value)


def resolve_params(name: str, **params: Any) -> dict[str, Any]:
    """All parameters of task `name` (defaults filled in), checked; SourceError (a ValueError) on any problem.

    The message names the bad task or parameter and lists the valid ones, since these usually come
    from a typo in a config's `task` / `task_params`.
    """
    if name not in TASKS:
        raise SourceError(f"unknown synthetic task {name!r}; valid tasks: {', '.join(TASKS)}")
    spec = TASKS[name]
    defaults = spec.defaults()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise SourceError(
            f"unknown parameter(s) {', '.join(unknown)} for task {name!r}; valid: {', '.join(defaults)}"
        )
    resolved = {k: _coerce(name, k, params.get(k, d), d) for k, d in defaults.items()}
    spec.check(resolved)
    return resolved


def task_vocab_size(name: str, **params: Any) -> int:
    """V: data tokens plus reserved marker ids; every token of the task lies in [0, V)."""
    p = resolve_params(name, **params)
    spec = TASKS[name]
    return spec.data_vocab(p) + len(spec.reserved)


def task_length(name: str, **params: Any) -> int:
    """T: the length of every document of the task with these params."""
    p = resolve_params(name, **params)
    return TASKS[name].length(p)


def reserved_tokens(name: str, **params: Any) -> dict[str, int]:
    """Ids of the task's markers / delimiters, e.g. {'marker': 16} for retrieval with vocab 16."""
    p = resolve_params(name, **params)
    spec = TASKS[name]
    return {r: spec.data_vocab(p) + i for i, r in enumerate(spec.reserved)}


def generate_task(name: str, num_docs: int, seed: int, *, clean: bool = False, **params: Any) -> list[Doc]:
    """`num_docs` documents `(x, y)` of task `name`, each two (T,) int64 arrays; deterministic in `seed`.

    `clean=True` turns label noise off (for test data) without changing x: the documents are those
    of `clean=False` with their corrupted labels restored. Document i depends only on (name, seed, i).
    """
    ok_docs = isinstance(num_docs, Integral) and num_docs >= 0
    _require(ok_docs, f"num_docs must be an int >= 0, got {num_docs!r}")
    _require(isinstance(seed, Integral) and seed >= 0, f"seed must be an int >= 0, got {seed!r}")
    p = resolve_params(name, **params)
    if clean and "label_noise" in p:
        p["label_noise"] = 0.0
    sample = TASKS[name].sample
    task_id = zlib.crc32(name.encode())  # tasks sharing a seed still draw independent streams
    return [sample(np.random.default_rng([task_id, int(seed), i]), **p) for i in range(int(num_docs))]
