"""A process-wide stop request, so every training loop ends at its next step when the user stops a run.

SIGINT reaches only the main thread, and SIGTERM's default kills the process without cleanup (Prefect's
temporary server and Beam's workers were left running). The CLI turns both signals into `request_stop()`
plus a KeyboardInterrupt in the main thread; loops running in the flow's worker threads see the request,
save a checkpoint and raise `StopRequested`, so the process exits within a step and a re-run resumes.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_STOP = threading.Event()


class StopRequested(KeyboardInterrupt):
    """Raised by a loop that stopped because a stop was requested (after saving its checkpoint)."""


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
