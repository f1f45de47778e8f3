"""One writer per artifact: a lock file beside the artifact directory, on any fsspec filesystem.

`{root}/{kind}-{hash16}.lock` is created exclusively (open mode "xb": O_EXCL on local disks, a
create-if-absent on filesystems that support it, then read back, which catches a lost race where
"xb" is check-then-write); it holds who took it and a heartbeat the holder
rewrites every few seconds. Another builder of the same artifact waits (logging "another process is
building X") until the lock is released, then finds the artifact complete, or refuses at once with
SMT_LOCK_WAIT=0. A lock whose holder died is taken over: on the same host when its pid is gone,
elsewhere when its heartbeat is older than STALE_SECONDS. The lock sits beside the directory, not in
it, because builders remove and recreate the directory.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from fsspec.core import url_to_fs

from store.artifacts import ArtifactError, ArtifactRef, is_complete

log = logging.getLogger("smt.lock")
HEARTBEAT_SECONDS = 5.0  # how often the holder rewrites its heartbeat
STALE_SECONDS = 120.0  # a lock not refreshed for this long (holder on another host) is abandoned
POLL_SECONDS = 0.2  # how often a waiting builder looks again
F = TypeVar("F", bound=Callable[..., Any])


class LockError(ArtifactError):
    """Another process holds the artifact's lock (and we were told not to wait, or waited too long)."""


def lock_url(url: str) -> str:
    return url.rstrip("/") + ".lock"


def _wait_limit() -> float | None:
    raw = os.environ.get("SMT_LOCK_WAIT", "").strip()
    return float(raw) if raw else None  # unset: wait as long as the holder lives


@contextmanager
def artifact_lock(url: str, what: str, wait: float | None = None) -> Iterator[None]:
    """Hold the write lock of the artifact at `url` for the block; `what` names it in messages.

    wait: seconds to wait for another holder (None: SMT_LOCK_WAIT, else as long as it lives; 0: refuse)."""
    wait = _wait_limit() if wait is None else wait
    fs, path = url_to_fs(lock_url(url))
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "heartbeat": time.time()}
    deadline = None if wait is None else time.monotonic() + wait
    announced = False
    while not (_create(fs, path, me) and _holds(fs, path, me)):
        holder = _read(fs, path)
        if holder is None:  # released (or being rewritten) between our create and our read: try again
            time.sleep(POLL_SECONDS / 10)
            continue
        if holder.get("token") == me["token"]:  # ours after all (a read-back that raced a rewrite)
            break
        if _abandoned(holder):
            log.warning("%s: taking over the lock of %s, which is gone", what, _who(holder))
            _remove_if_held_by(fs, path, holder)
            continue
        line = f"another process is building {what} ({_who(holder)}; lock {lock_url(url)})"
        if deadline is not None and time.monotonic() >= deadline:
            raise LockError(line + (": refusing (SMT_LOCK_WAIT=0)" if wait == 0 else f": gave up after {wait:.0f} s"))
        if not announced:
            log.warning("%s: waiting", line)
            announced = True
        time.sleep(POLL_SECONDS)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(fs, path, me, stop), daemon=True, name="smt-lock")
    beat.start()
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        # name what was being built when the system did not say which file (e.g. Zarr's chunk writes)
        raise type(err)(err.errno, err.strerror, url) from err
    finally:
        stop.set()
        beat.join()
        _remove_if_held_by(fs, path, me)


def _create(fs: Any, path: str, me: dict[str, Any]) -> bool:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(path, "xb") as f:
            f.write(json.dumps(me).encode())
        return True
    except FileExistsError:
        return False


def _holds(fs: Any, path: str, me: dict[str, Any]) -> bool:
    """Read back after creating: on a filesystem whose "xb" is check-then-write rather than atomic,
    two creators may both succeed, and the one whose token is not there lost."""
    current = _read(fs, path)
    return current is not None and current.get("token") == me["token"]


def _read(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _who(holder: dict[str, Any]) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return f"pid {holder.get('pid')} on {holder.get('host')}, alive {age:.0f} s ago"


def _abandoned(holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            pass
    return time.time() - float(holder.get("heartbeat", 0)) > STALE_SECONDS


def _remove_if_held_by(fs: Any, path: str, holder: dict[str, Any]) -> None:
    current = _read(fs, path)
    if current is not None and current.get("token") == holder.get("token"):
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass


def _heartbeat(fs: Any, path: str, me: dict[str, Any], stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        current = _read(fs, path)
        if current is None or current.get("token") != me["token"]:
            log.error("lock %s was taken over while held: another builder may be running", path)
            return
        me["heartbeat"] = time.time()
        with fs.open(path, "wb") as f:
            f.write(json.dumps(me).encode())


def one_writer(
    plan: Callable[..., ArtifactRef], intact: Callable[[str], bool] | None = None
) -> Callable[[F], F]:
    """Decorate a stage `fn(**kw) -> ArtifactRef` so it builds under its artifact's lock.

    `plan(**kw)` gives the address (the stage's plan function: it takes the stage's own keyword
    arguments). A complete artifact (and `intact(url)`, when given) is left to the stage without
    locking, so published artifacts stay usable on read-only roots; otherwise the stage runs holding
    the lock, so a second builder waits and then finds the artifact complete. Under torchrun only
    rank 0 takes it (every rank runs the stage together, and they must not wait for each other).
    """
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ref = plan(**signature.bind(*args, **kwargs).arguments)
            if is_complete(ref.url) and (intact is None or intact(ref.url)):
                return ref  # what the stage returns for a complete artifact, without re-checking it
            if int(os.environ.get("RANK", "0")) != 0:
                return fn(*args, **kwargs)
            with artifact_lock(ref.url, f"{ref.kind} artifact {ref.url}"):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
