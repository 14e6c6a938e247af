"""A repo's file listing as the hub sends it, checked before it becomes a tree.

The hub is not trusted to produce sane names: every entry that could escape the
repo, collide with another or lie about its size is dropped with a log line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_FILE_SIZE = 1 << 50  # 1 PiB: anything larger is a broken or hostile listing


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative, '/'-separated, validated
    size: int
    sha256: str | None
    mtime: int  # unix seconds
    # Pinned by object-store listings (a bucket): the object generation read, and the
    # hashes what is read must match.
    generation: int | None = None
    crc32c: int | None = None
    md5: str | None = None  # hex


def bad_name(name: str) -> str | None:
    """Why `name` cannot be one path component, or None when it can."""
    if not name:
        return "empty name"
    if name in (".", ".."):
        return f"reserved name {name!r}"
    if "/" in name or "\0" in name:
        return f"name {name!r} contains '/' or NUL"
    if len(name.encode()) > 255:
        return "name longer than 255 bytes"
    return None


def bad_path(path: object) -> str | None:
    """Why `path` cannot be a relative file path in a repo, or None when it can."""
    if not isinstance(path, str) or not path:
        return "empty path"
    if path.startswith("/"):
        return f"absolute path {path!r}"
    for part in path.split("/"):
        if why := bad_name(part):
            return f"{why} in {path!r}"
    return None


def parse_files(repo: str, entries: object) -> list[RepoFile]:
    """The valid blobs of a listing; everything else is logged and skipped."""
    if not isinstance(entries, list):
        raise ValueError(f"{repo}: listing is not a list of files")
    files: dict[str, RepoFile] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            log.warning("%s: skipping listing entry that is not an object: %.80r", repo, entry)
            continue
        if entry.get("Type", "blob") == "tree":
            continue  # directories follow from the files' paths
        path = entry.get("Path")
        why = bad_path(path)
        if why is not None or not isinstance(path, str):
            log.warning("%s: skipping entry: %s", repo, why)
            continue
        size = entry.get("Size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
            log.warning("%s: skipping %r: bad size %.40r", repo, path, size)
            continue
        if path in files:
            log.warning("%s: skipping duplicate entry %r", repo, path)
            continue
        sha = entry.get("Sha256")
        sha = sha.lower() if isinstance(sha, str) else None
        if sha is not None and not _SHA256.fullmatch(sha):
            sha = None  # a digest we cannot use is no digest: never a wrong cache key
        mtime = entry.get("CommittedDate")
        files[path] = RepoFile(
            path=path,
            size=size,
            sha256=sha,
            mtime=mtime
            if isinstance(mtime, int) and not isinstance(mtime, bool) and mtime > 0
            else 0,
        )
    return tree_files(repo, files)


def tree_files(repo: str, files: dict[str, RepoFile]) -> list[RepoFile]:
    """Files by path, less those whose path is also a directory of others, in path order."""
    # A path that is a file and also a directory of other files cannot be both.
    dirs = {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}
    for path in sorted(dirs & files.keys()):
        log.warning("%s: skipping file %r: a directory of that name exists", repo, path)
        del files[path]
    return sorted(files.values(), key=lambda f: f.path)
