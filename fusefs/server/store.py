"""The store's content: ROOT/<owner>/<name>/<files…> as repos with commit ids
(and, with a datasets directory, DATASETS/<owner>/<name>/<files…> as dataset repos).

Every regular file of a repo is served, dotfiles included (`.gitattributes`, …);
left out are version-control internals (any path component in `VCS_NAMES`) and
links of every kind.

A repo's commit id is a hash over its sorted (path, size, sha256) entries, so it
changes exactly when content changes. Digests are cached by (dev, ino, size,
mtime_ns): an unchanged file is hashed once per process.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import dataclass

import crc32c

from fusefs.hub.client import RepoId, valid_repo_part

HASH_BLOCK = 4 << 20
VCS_NAMES = frozenset({".git", ".hg", ".svn", ".bzr"})  # never part of a repo's files


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative, '/'-separated
    abspath: str
    size: int
    mtime: int  # unix seconds
    generation: int  # changes whenever the file does (µs mtime, like GCS)
    key: tuple[int, int, int, int]  # (dev, ino, size, mtime_ns)


@dataclass(frozen=True)
class RepoState:
    repo: RepoId
    commit: str
    files: dict[str, StoredFile]
    digests: dict[str, str]  # path -> sha256


class Store:
    def __init__(self, root: str, datasets: str | None = None):
        self.root = os.path.abspath(root)
        self.datasets = os.path.abspath(datasets) if datasets is not None else None
        self._digests: dict[tuple[int, int, int, int], str] = {}
        self._checksums: dict[tuple[int, int, int, int], tuple[int, bytes]] = {}
        self._states: dict[RepoId, RepoState] = {}
        self._lock = threading.Lock()

    def _base(self, repo: RepoId) -> str | None:
        """The directory holding repos of this repo's type (None: this store has none)."""
        return {"model": self.root, "dataset": self.datasets}.get(repo.repo_type)

    def repo_path(self, repo: RepoId) -> str:
        base = self._base(repo)
        if base is None:
            raise ValueError(f"this store holds no {repo.repo_type} repos")
        return os.path.join(base, repo.owner, repo.name)

    def exists(self, repo: RepoId) -> bool:
        return (
            self._base(repo) is not None
            and valid_repo_part(repo.owner)
            and valid_repo_part(repo.name)
            and os.path.isdir(self.repo_path(repo))
        )

    def scan(self, repo: RepoId) -> dict[str, StoredFile]:
        """The repo's regular files as they are now (VCS internals and links skipped)."""
        base = self.repo_path(repo)
        out: dict[str, StoredFile] = {}
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in VCS_NAMES and not os.path.islink(os.path.join(dirpath, d))
            )
            for name in filenames:
                if name in VCS_NAMES:
                    continue
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = os.path.relpath(full, base).replace(os.sep, "/")
                out[rel] = _stored(rel, full, st)
        return out

    def file(self, repo: RepoId, path: str) -> StoredFile | None:
        """One file as it is now, without walking the repo (the data plane's open)."""
        parts = path.split("/")
        if self._base(repo) is None or any(p in ("", ".", "..") or p in VCS_NAMES for p in parts):
            return None  # never '..', empty components or VCS internals
        full = os.path.join(self.repo_path(repo), *parts)
        try:
            st = os.lstat(full)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or any(
            os.path.islink(os.path.join(self.repo_path(repo), *parts[:i]))
            for i in range(1, len(parts))
        ):
            return None
        return _stored(path, full, st)

    def digest(self, f: StoredFile) -> str:
        with self._lock:
            known = self._digests.get(f.key)
        if known is None:
            h = hashlib.sha256()
            with open(f.abspath, "rb") as fh:
                while block := fh.read(HASH_BLOCK):
                    h.update(block)
            known = h.hexdigest()
            with self._lock:
                self._digests[f.key] = known
        return known

    def state_for_file(self, repo: RepoId, revision: str | None, path: str) -> RepoState:
        """The state to answer a request for one file at `revision` with: the one known,
        when it is that commit and the file is unchanged (one lstat); else `state`."""
        with self._lock:
            known = self._states.get(repo)
        if known is not None and revision == known.commit:
            f = known.files.get(path)
            if f is not None and self.file(repo, path) == f:
                return known
        return self.state(repo)

    def checksums(self, f: StoredFile, *, compute: bool = True) -> tuple[int, bytes] | None:
        """(CRC32C, MD5 digest) of the file, as Cloud Storage describes objects; cached
        like `digest`. None when not known yet and `compute` is False."""
        with self._lock:
            known = self._checksums.get(f.key)
        if known is None and compute:
            crc, md5 = 0, hashlib.md5(usedforsecurity=False)
            with open(f.abspath, "rb") as fh:
                while block := fh.read(HASH_BLOCK):
                    crc = crc32c.crc32c(block, crc)
                    md5.update(block)
            known = (crc, md5.digest())
            with self._lock:
                self._checksums[f.key] = known
        return known

    def state(self, repo: RepoId) -> RepoState:
        """Files, digests and commit id of the repo's current content (may hash: slow once)."""
        files = self.scan(repo)
        with self._lock:
            known = self._states.get(repo)
        if known is not None and known.files == files:
            return known  # unchanged since last asked: no hashing of any kind
        digests = {p: self.digest(f) for p, f in files.items()}
        h = hashlib.sha1()
        for path in sorted(files):
            h.update(f"{path}\0{files[path].size}\0{digests[path]}\n".encode())
        state = RepoState(repo, h.hexdigest(), files, digests)
        with self._lock:
            self._states[repo] = state
        return state


def _stored(path: str, full: str, st: os.stat_result) -> StoredFile:
    return StoredFile(
        path,
        full,
        st.st_size,
        int(st.st_mtime),
        max(1, st.st_mtime_ns // 1000),
        (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
    )
