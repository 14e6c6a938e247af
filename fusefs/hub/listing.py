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
_REVISION = re.compile(r"[0-9a-f]{7,64}")
MAX_FILE_SIZE = 1 << 50  # 1 PiB: anything larger is a broken or hostile listing
LOGGED_SKIPS = 20  # per listing; a hostile one could otherwise fill the log


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative, '/'-separated, validated
    size: int
    sha256: str | None
    mtime: int  # unix seconds
    revision: str | None = None  # the commit that last touched the file, as the hub says
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
    try:
        encoded = name.encode()
    except UnicodeEncodeError:  # a lone surrogate, as JSON can carry: no file can be named so
        return f"name {name!r} is not valid Unicode"
    if len(encoded) > 255:
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
    skip = Skips(repo)
    for entry in entries:
        if not isinstance(entry, dict):
            skip("listing entry that is not an object: %.80r", entry)
            continue
        if entry.get("Type", "blob") == "tree":
            continue  # directories follow from the files' paths
        path = entry.get("Path") or entry.get("path") or entry.get("Name")  # as the SDK reads
        why = bad_path(path)
        if why is not None or not isinstance(path, str):
            skip("entry: %s", why)
            continue
        size = entry.get("Size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
            skip("%r: bad size %.40r", path, size)
            continue
        if path in files:
            skip("duplicate entry %r", path)
            continue
        sha = entry.get("Sha256")
        sha = sha.lower() if isinstance(sha, str) else None
        if sha is not None and not _SHA256.fullmatch(sha):
            sha = None  # a digest we cannot use is no digest: never a wrong cache key
        mtime = entry.get("CommittedDate")
        revision = entry.get("Revision")
        files[path] = RepoFile(
            path=path,
            size=size,
            sha256=sha,
            mtime=mtime
            if isinstance(mtime, int) and not isinstance(mtime, bool) and mtime > 0
            else 0,
            revision=revision.lower()
            if isinstance(revision, str) and _REVISION.fullmatch(revision.lower())
            else None,
        )
    return tree_files(repo, files, skip)


class Skips:
    """Entries of one listing left out: the first few logged one by one, then a total."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.count = 0

    def __call__(self, message: str, *args: object) -> None:
        self.count += 1
        if self.count <= LOGGED_SKIPS:
            log.warning("%s: skipping " + message, self.repo, *args)

    def summary(self) -> None:
        if self.count > LOGGED_SKIPS:
            log.warning("%s: %d listing entries skipped in all", self.repo, self.count)


def tree_files(repo: str, files: dict[str, RepoFile], skip: Skips | None = None) -> list[RepoFile]:
    """Files by path, less those whose path is also a directory of others, in path order."""
    skip = skip or Skips(repo)
    # A path that is a file and also a directory of other files cannot be both.
    dirs = {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}
    for path in sorted(dirs & files.keys()):
        skip("file %r: a directory of that name exists", path)
        del files[path]
    skip.summary()
    return sorted(files.values(), key=lambda f: f.path)
