"""Failures of the machine rather than of the code (permissions, full disks, paths that are files),
described in one line each, so the CLI can print them without a traceback."""

from __future__ import annotations

import errno
import os
import re
import socket

_HINTS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "already exists",
    errno.EISDIR: "is a directory",
    errno.ENOENT: "not found",
}
_ERRNO_TEXT = re.compile(r"(?:OSError|PermissionError|FileNotFoundError|NotADirectoryError|FileExistsError)"
                         r": \[Errno (\d+)\] ([^\n']+)")


def describe_os_error(err: OSError) -> str:
    """'disk full: [Errno 28] No space left on device: /root/x' (what, then the system's words)."""
    what = "network error" if isinstance(err, socket.gaierror) else _HINTS.get(err.errno or -1, "system error")
    if err.errno == errno.EEXIST and err.filename and os.path.isfile(str(err.filename)):
        what = "not a directory (a file is in the way)"
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f)
    text = err.strerror or str(err) or type(err).__name__
    line = text if text.lower() == what else f"{what}: {text}"
    return line + (f": {where}" if where else "")


def environment_error_in(err: BaseException) -> str | None:
    """One-line description of an OSError anywhere in `err`'s cause/context chain, or in its text
    (Beam workers re-raise a worker's OSError as a RuntimeError carrying the remote traceback)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return describe_os_error(current)
        current = current.__cause__ or current.__context__
    match = _ERRNO_TEXT.search(str(err))
    if match:
        code = int(match.group(1))
        return f"{_HINTS.get(code, 'system error')}: {match.group(2).strip()}"
    return None
