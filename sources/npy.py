"""Pre-tokenised data as NumPy arrays: `.npy` (1-D = one document, 2-D = one per row) or `.npz`.

For tokenisers we do not ship: anything that can save integer arrays can feed the pipeline. Tokens
are checked against the vocabulary here, because an out-of-range id would otherwise only surface as
an index error deep inside an embedding layer on a GPU.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import numpy as np

from sources.errors import SourceError, expand_urls, read_url_bytes

Document = tuple[str, np.ndarray]  # (source name, int64 tokens)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def read_npy(url: str, vocab_size: int | None = None) -> Iterator[Document]:
    """Documents of every array in the files of `url` (path, URL or glob), checked against the vocab.

    `vocab_size=None` only requires tokens >= 0 (the caller then takes max + 1 as the vocabulary).
    Arrays of an `.npz` are read in the order they were saved.
    """
    for file_url in expand_urls(url):
        data = read_url_bytes(file_url)
        for name, array in _arrays(file_url, data):
            yield from _documents(name, array, vocab_size)


def _arrays(url: str, data: bytes) -> Iterator[tuple[str, np.ndarray]]:
    if not data.startswith((_NPY_MAGIC, _ZIP_MAGIC)):  # np.load would try to unpickle anything else
        raise SourceError(f"{url}: not a valid .npy/.npz file (no NumPy or zip signature)")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:  # object arrays need pickle, which we never allow
        raise SourceError(f"{url}: cannot load without pickle ({err})") from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise SourceError(f"{url}: not a valid .npy/.npz file ({err})") from err
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if not loaded.files:
                raise SourceError(f"{url}: the .npz archive holds no arrays")
            for key in loaded.files:
                yield f"{url}:{key}", loaded[key]
    else:
        yield url, loaded


def _documents(name: str, array: np.ndarray, vocab_size: int | None) -> Iterator[Document]:
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise SourceError(f"{name}: token array has dtype {array.dtype}, expected integers")
    if array.ndim not in (1, 2):
        raise SourceError(f"{name}: token array has {array.ndim} dimensions, expected 1 or 2")
    if array.size:
        low, high = array.min(), array.max()
        if int(high) > np.iinfo(np.int64).max:  # uint64 beyond int64 would wrap when cast
            raise SourceError(
                f"{name}: token {int(high)} does not fit int64 ({array.dtype} array); tokens must lie in "
                "[0, vocab_size)"
            )
        if low < 0:
            raise SourceError(f"{name}: token {int(low)} is negative; tokens must lie in [0, vocab_size)")
        if vocab_size is not None and high >= vocab_size:
            raise SourceError(
                f"{name}: token {int(high)} is outside the vocabulary [0, {vocab_size}) "
                f"(vocab_size={vocab_size})"
            )
    tokens = array.astype(np.int64)
    if tokens.ndim == 1:
        yield name, tokens
    else:
        for row, doc in enumerate(tokens):
            yield f"{name}[{row}]", doc


UNSCORED = (-1, -100)  # -100 is torch's ignore_index, which external task generators (Zoology) write


def read_labelled_npz(url: str, vocab_size: int | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, inputs, targets) per row of every `.npz` under `url` holding `inputs` and `targets` arrays
    of the same shape (N, T) (or (T,) for one sequence): a supervised sequence task as users have it.
    Targets -1 or -100 are unscored (stored as -1); every other value must lie in the vocabulary."""
    for file_url in expand_urls(url):
        arrays = dict(_arrays(file_url, read_url_bytes(file_url)))
        inputs, targets = arrays.get(f"{file_url}:inputs"), arrays.get(f"{file_url}:targets")
        if inputs is None or targets is None:
            found = ", ".join(k.rsplit(":", 1)[-1] for k in arrays)
            raise SourceError(f"{file_url}: expected arrays 'inputs' and 'targets' in the .npz, found: {found}")
        if inputs.shape != targets.shape:
            raise SourceError(f"{file_url}: inputs {inputs.shape} and targets {targets.shape} differ in shape")
        if not np.issubdtype(targets.dtype, np.integer):
            raise SourceError(f"{file_url}: targets have dtype {targets.dtype}, expected integers")
        y = np.where(np.isin(targets, UNSCORED), -1, targets).astype(np.int64)
        if y.size and (y.min() < -1 or (vocab_size is not None and y.max() >= vocab_size)):
            bad = int(y.min()) if y.min() < -1 else int(y.max())
            raise SourceError(f"{file_url}: target {bad} is neither unscored (-1, -100) nor in the vocabulary")
        rows = list(_documents(f"{file_url}:inputs", inputs, vocab_size))
        y_rows = [y] if y.ndim == 1 else list(y)
        for (name, x), target in zip(rows, y_rows, strict=True):
            yield name, x, target
