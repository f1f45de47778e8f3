"""The one error type every token reader raises.

Readers fail on user input (a wrong path, a corrupt file, a typo in a column name); a single
`SourceError` with a one-line message lets the CLI print it without a traceback, and subclassing
`ValueError` keeps it catchable by code that only knows about bad values.
"""

from __future__ import annotations


class SourceError(ValueError):
    """Input data that cannot be read as documents; the message is one line naming file and problem."""


def expand_urls(url: str) -> list[str]:
    """Files matching `url` (a path, fsspec URL or glob), sorted so reading order is reproducible.

    Raises SourceError when nothing matches, so a typo in a path is reported as such instead of
    surfacing later as an "empty corpus".
    """
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url)
    if any(c in path for c in "*?["):
        paths = sorted(p for p in fs.glob(path) if not fs.isdir(p))
        if not paths:
            raise SourceError(f"no file matches {url}")
    else:
        if not fs.exists(path):
            raise SourceError(f"file not found: {url}")
        if fs.isdir(path):
            raise SourceError(f"{url} is a directory; give a file or a glob such as {url.rstrip('/')}/*.txt")
        paths = [path]
    return [p if _is_local(fs) else fs.unstrip_protocol(p) for p in paths]


def read_url_bytes(url: str) -> bytes:
    """Whole content of one file; a missing file becomes a SourceError naming it."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise SourceError(f"file not found: {url}") from err
    except IsADirectoryError as err:
        raise SourceError(f"{url} is a directory, expected a file") from err


def _is_local(fs: object) -> bool:
    protocol = getattr(fs, "protocol", "")
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in protocols or "local" in protocols
