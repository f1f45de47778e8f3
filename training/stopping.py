"""A process-wide stop request, so every training loop ends at its next step when the user stops a run.

SIGINT reaches only the main thread, and SIGTERM's default kills the process without cleanup (Prefect's
temporary server and Beam's workers were left running). The CLI turns both signals into `request_stop()`
plus a KeyboardInterrupt in the main thread; loops running in the flow's worker threads see the request,
save a checkpoint and raise `StopRequested`, so the process exits within a step and a re-run resumes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_STOP = threading.Event()


class StopRequested(KeyboardInterrupt):
    """Raised by a loop that stopped because a stop was requested (after saving its checkpoint)."""


class StopForced(KeyboardInterrupt):
    """A second signal inside a held block (`signals_held`): stop now, mid-step, without a checkpoint."""


def request_stop() -> None:
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget an earlier request (tests, or a long-lived process that runs again)."""
    _STOP.clear()


def stop_first_on_sigterm() -> None:
    """Put `request_stop()` in front of the SIGTERM handler installed now (Prefect's flow engine installs
    its own, which crashes the flow run but leaves its worker threads training)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread; a flow run elsewhere keeps the CLI's handler
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "requests_stop", False):
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        request_stop()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    handler.requests_stop = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, handler)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on the first as it would have been acted on.

    Why: the CLI's handler raises KeyboardInterrupt wherever the main thread is, so a Ctrl-C could land
    between a training step's optimizer update and its step count, or after its loss drew from a seeded
    generator, and the checkpoint written on the way out would not resume to the bytes of an unbroken run.
    Around one step, the step is applied whole or not at all. A second signal inside the block stops at
    once (StopForced: a step that hangs can still be stopped; no checkpoint is written then). Signals are
    only handled in the main thread, so elsewhere this holds nothing (loops there poll `stop_requested`).
    """
    signums = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in signums}
    held: list[tuple[int, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if held:
            request_stop()
            raise StopForced(f"signal {signum} again: stopped mid-step, resume from the last checkpoint")
        held.append((signum, frame))

    for signum in signums:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if held:  # the block ended whole (an exception, StopForced included, propagates as it is)
        signum, frame = held[0]
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_IGN:
            pass
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            signal.raise_signal(signum)  # SIGTERM's default: end the process
