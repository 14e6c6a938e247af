"""Which names the store serves, checked the same way on every plane.

A file of a repo is served when every component of its path is a name a client
can ask for: valid UTF-8, no control character (C0, DEL, C1), not `.` or `..`,
at most 255 bytes, and not version-control internals. The same rules refuse a
request that names anything else, before the name reaches the filesystem.
"""

from __future__ import annotations

import re

from fusefs.hub.listing import bad_path

VCS_NAMES = frozenset({".git", ".hg", ".svn", ".bzr"})  # never part of a repo's files
MAX_PATH_BYTES = 4096  # a repo-relative path, as PATH_MAX allows
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def name_error(name: str) -> str | None:
    """Why one directory entry is never served, or None when it is."""
    if _CONTROL.search(name):
        return "a control character"
    try:
        raw = name.encode()
    except UnicodeEncodeError:  # undecodable bytes on disk (surrogate escapes)
        return "not UTF-8"
    if not raw or name in (".", "..") or "/" in name or len(raw) > 255:
        return "not a file name"
    if name in VCS_NAMES:
        return "version-control internals"
    return None


def path_error(path: str) -> str | None:
    """Why `path` cannot even name a file in a repo (INVALID_ARGUMENT, 400), or None."""
    if len(path) > MAX_PATH_BYTES:
        return "path too long"
    try:
        raw = path.encode()
    except UnicodeEncodeError:
        return "not UTF-8"
    if len(raw) > MAX_PATH_BYTES:
        return "path too long"
    if why := bad_path(path):
        return why
    if _CONTROL.search(path):
        return "a control character in a path component"
    return None


def unserved(path: str) -> str | None:
    """Why no file at `path` is served (a bad name, or version-control internals)."""
    if why := path_error(path):
        return why
    if any(part in VCS_NAMES for part in path.split("/")):
        return "version-control internals"
    return None


def text_error(text: str, what: str, limit: int) -> str | None:
    """Why a request's free-text field (a bucket, a routing token) is refused, or None."""
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        return f"{what} longer than {limit} bytes"
    if _CONTROL.search(text):
        return f"{what} contains a control character"
    return None
