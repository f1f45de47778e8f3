"""A background-thread prefetcher, so the training device never waits on Zarr / Parquet reads.

Reading and decoding (Zarr chunks, float16 -> float32, numpy -> torch) releases the GIL for most of
its time, so one thread keeps `depth` batches ready while the main thread runs the step. The source
iterator must draw randomness from its own seeded generator (never the global torch RNG), which
keeps the batch order deterministic whatever the thread timing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

_DONE = object()


class Prefetcher:
    """Iterate over `source()` in a daemon thread, `depth` items ahead; `close()` stops it early.

    pin_memory: pin CPU tensors so host->GPU copies can overlap compute (only useful on CUDA).
    Exceptions raised by the source are re-raised in the consumer, not lost in the thread.
    """

    def __init__(self, source: Callable[[], Iterator[Any]], depth: int = 4, pin_memory: bool = False) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._pin = pin_memory
        self._thread = threading.Thread(target=self._work, args=(source,), daemon=True, name="prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, source: Callable[[], Iterator[Any]]) -> None:
        iterator: Iterator[Any] | None = None
        try:
            iterator = source()
            for item in iterator:
                if self._pin:
                    item = _pin(item)
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # e.g. a generator holding a reader thread pool

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is _DONE:
            self._put(_DONE)  # later calls keep raising StopIteration
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _pin(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item.pin_memory()
    if isinstance(item, tuple) and hasattr(item, "_fields"):
        return type(item)(*(_pin(x) for x in item))
    if isinstance(item, tuple | list):
        return type(item)(_pin(x) for x in item)
    return item
