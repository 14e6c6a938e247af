"""The store's content: ROOT/<owner>/<name>/<files…> as repos with commit ids
(and, with a datasets directory, DATASETS/<owner>/<name>/<files…> as dataset repos).

Every regular file of a repo is served, dotfiles included (`.gitattributes`, …);
left out are version-control internals (any path component in `VCS_NAMES`), names
no client could ask for (`names.py`) and links of every kind.

Nothing outside ROOT is ever reached: a path is resolved one component at a time,
each relative to the directory opened before it, with O_NOFOLLOW, so a link at any
depth (owner, repo, directory, file) is neither listed nor served, and a directory
swapped for a link between two requests fails to open instead of being followed.

A repo's state is kept in memory, one index per repo, built on first use:
* a request about the whole repo (info, commits, listings) uses the index when it
  was compared with the disk less than `rescan_interval` seconds ago, else rescans
  it first (one lstat per entry; only new or changed files are hashed); concurrent
  requests share one rescan;
* a request for one file costs one lstat of that file: the index answers when the
  file is the one it knows, and the repo is rescanned only when the disk says
  otherwise.
A repo's commit id is a hash over its sorted (path, size, sha256) entries, so it
changes exactly when content changes. SHA-256, CRC32C and MD5 are computed in one
pass and cached by (dev, ino, size, mtime_ns), never for a file that changed while
it was read. Memory is bounded: indexes hold at most `index_files` files in total
(least recently used repos are dropped first) and the digest cache `hash_cache`
file versions.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import crc32c

from fusefs.hub.client import RepoId, valid_repo_part
from fusefs.server.limits import Limits
from fusefs.server.names import VCS_NAMES, name_error, unserved

__all__ = ["VCS_NAMES", "FileSums", "RepoState", "Store", "StoredFile"]

HASH_BLOCK = 4 << 20
HISTORY = 64  # commits of a repo remembered, to answer for files unchanged since then
MAX_DEPTH = 128  # directories below a repo; deeper ones are not served
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that replaced a file must not wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Key = tuple[int, int, int, int]  # (dev, ino, size, mtime_ns): one version of one file


@dataclass(frozen=True, slots=True)
class FileSums:
    sha256: str  # hex
    crc32c: int
    md5: bytes


@dataclass(frozen=True, slots=True)
class StoredFile:
    path: str  # relative, '/'-separated
    size: int
    mtime: int  # unix seconds
    generation: int  # changes whenever the file does (µs mtime, like GCS)
    key: Key


@dataclass(frozen=True)
class RepoState:
    """One repo's files as indexed: everything a request about the repo needs.

    States are numbered as this process builds them (`seq`). A file's content began
    in state `since[path]`, so the file as it is now is also the file at every commit
    of a later state: a client pinned at a commit the store named before keeps reading
    the files that have not changed since (the last HISTORY states are remembered)."""

    repo: RepoId
    commit: str
    files: dict[str, StoredFile]
    sums: dict[str, FileSums]
    since: dict[str, int]  # path -> the state in which it got its current content
    date: int  # the newest file's mtime: the state's commit date
    blobs: list[str]  # every file path, sorted
    dirs: list[str]  # every directory holding a file (at any depth), sorted
    # dir ("" = top) -> (its files, its directories), files sorted by path, directories
    # by path + '/' (the order in which prefix listings name them)
    children: dict[str, tuple[list[str], list[str]]]
    seq: int = 0
    history: tuple[int, ...] = ()  # recent states, oldest first, this one last
    commits: dict[int, str] = field(default_factory=dict)  # state -> its commit (as needed)

    def sha256(self, path: str) -> str:
        return self.sums[path].sha256

    def revision(self, path: str) -> str:
        """The commit of the state in which the file got its current content."""
        return self.commits[self.since[path]]

    def holds(self, path: str, commit: str | None) -> bool:
        """Whether the file `path` as it is now is the file at `commit` (None, "" and
        "master": the head): the head, or the commit of a state since its content began."""
        if commit in (None, "", "master", self.commit):
            return path in self.files
        since = self.since.get(path)
        return since is not None and any(
            seq >= since and self.commits[seq] == commit for seq in self.history
        )


class Store:
    def __init__(self, root: str, datasets: str | None = None, limits: Limits = Limits()):
        self.root = os.path.abspath(root)
        self.datasets = os.path.abspath(datasets) if datasets is not None else None
        self.limits = limits
        self._lock = threading.Lock()
        self._sums: OrderedDict[Key, FileSums] = OrderedDict()
        self._states: OrderedDict[RepoId, RepoState] = OrderedDict()
        self._indexed = 0  # files in self._states
        self._checked: dict[RepoId, float] = {}  # when each index last matched the disk
        self._scanning: dict[RepoId, threading.Lock] = {}
        self.scans = 0  # walks of a repo so far (an index built or compared with the disk)

    def gauges(self) -> dict[str, int]:
        """What the store holds in memory, for /admin/stats."""
        with self._lock:
            return {
                "repo_scans": self.scans,
                "indexed_repos": len(self._states),
                "indexed_files": self._indexed,
                "cached_digests": len(self._sums),
            }

    # -- resolving names ---------------------------------------------------------------

    def _base(self, repo_type: str) -> str | None:
        """The directory holding repos of this type (None: this store has none)."""
        return {"model": self.root, "dataset": self.datasets}.get(repo_type)

    @staticmethod
    def _open_dirs(base: str, parts: Sequence[str]) -> int | None:
        """A descriptor of base/parts…, each part opened below the last without following
        a link; None when any is missing or not a directory."""
        try:
            fd = os.open(base, _DIR_FLAGS & ~os.O_NOFOLLOW)  # ROOT itself is the operator's
        except OSError:
            return None
        try:
            for part in parts:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except (OSError, ValueError):
            os.close(fd)
            return None
        return fd

    def _dir(self, repo: RepoId, parts: Sequence[str] = ()) -> int | None:
        base = self._base(repo.repo_type)
        if base is None or not valid_repo_part(repo.owner) or not valid_repo_part(repo.name):
            return None
        return self._open_dirs(base, (repo.owner, repo.name, *parts))

    def exists(self, repo: RepoId) -> bool:
        fd = self._dir(repo)
        if fd is None:
            return False
        os.close(fd)
        return True

    def subdirs(self, repo_type: str, owner: str | None = None) -> list[str]:
        """The owners of this store (owner None) or the repo names of one owner: real
        directories with valid names, links left out."""
        base = self._base(repo_type)
        if base is None or (owner is not None and not valid_repo_part(owner)):
            return []
        fd = self._open_dirs(base, () if owner is None else (owner,))
        if fd is None:
            return []
        names = []
        try:
            with os.scandir(fd) as entries:
                for e in entries:
                    try:
                        if valid_repo_part(e.name) and e.is_dir(follow_symlinks=False):
                            names.append(e.name)
                    except OSError:
                        continue
        except OSError:
            return []
        finally:
            os.close(fd)
        return sorted(names)

    def file(self, repo: RepoId, path: str) -> StoredFile | None:
        """One file as it is now (one lstat), without walking the repo."""
        if unserved(path) is not None:
            return None
        *parents, name = path.split("/")
        fd = self._dir(repo, parents)
        if fd is None:
            return None
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)
        return _stored(path, st) if stat.S_ISREG(st.st_mode) else None

    def open_file(self, repo: RepoId, path: str) -> tuple[int, StoredFile] | None:
        """(descriptor, file as opened) for reading one file; the caller closes it."""
        if unserved(path) is not None:
            return None
        *parents, name = path.split("/")
        dir_fd = self._dir(repo, parents)
        if dir_fd is None:
            return None
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError:
            return None
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return fd, _stored(path, st)

    # -- digests -----------------------------------------------------------------------

    def cached_sums(self, key: Key) -> FileSums | None:
        with self._lock:
            sums = self._sums.get(key)
            if sums is not None:
                self._sums.move_to_end(key)
            return sums

    def sums(self, fd: int, f: StoredFile) -> FileSums:
        """SHA-256, CRC32C and MD5 of the open file `f` (one pass), from the cache when
        known; cached only when the file stayed `f` while it was read."""
        known = self.cached_sums(f.key)
        if known is not None:
            return known
        sums, stable = _hash(fd, f.key)
        if stable:
            self._remember(f.key, sums)
        return sums

    def _remember(self, key: Key, sums: FileSums) -> None:
        with self._lock:
            self._sums[key] = sums
            self._sums.move_to_end(key)
            while len(self._sums) > self.limits.hash_cache:
                self._sums.popitem(last=False)

    # -- repo state --------------------------------------------------------------------

    def state(self, repo: RepoId, *, fresh: bool = True) -> RepoState:
        """The repo's index; with `fresh`, compared with the disk first when that was
        longer than `rescan_interval` ago. May hash new files: call it off any loop."""
        asked = time.monotonic()
        with self._lock:
            known = self._states.get(repo)
            if known is not None:
                self._states.move_to_end(repo)
                checked = self._checked.get(repo, float("-inf"))
                if not fresh or asked - checked < self.limits.rescan_interval:
                    return known
        return self._rescan(repo, asked)

    def current(self, repo: RepoId, path: str) -> tuple[RepoState, StoredFile] | None:
        """The index and its entry for `path`, when the file on disk is that entry (one
        lstat). When the disk says otherwise, the repo is rescanned once."""
        if unserved(path) is not None:
            return None
        asked = time.monotonic()
        state = self.state(repo, fresh=False)
        on_disk = self.file(repo, path)
        known = state.files.get(path)
        if on_disk is None:
            if known is not None:
                self._outdated(repo)
            return None
        if known is not None and known.key == on_disk.key:
            return state, known
        state = self._rescan(repo, asked)
        known = state.files.get(path)
        return (state, known) if known is not None else None

    def has_files(self, repo: RepoId) -> bool:
        """Whether the repo serves any file (its index when known, else a walk that stops
        at the first file it finds)."""
        with self._lock:
            known = self._states.get(repo)
        if known is not None:
            return bool(known.files)
        fd = self._dir(repo)
        if fd is None:
            return False
        try:
            return _any_file(fd, 0)
        finally:
            os.close(fd)

    def _outdated(self, repo: RepoId) -> None:
        with self._lock:
            self._checked.pop(repo, None)

    def _rescan(self, repo: RepoId, asked: float) -> RepoState:
        with self._lock:
            gate = self._scanning.setdefault(repo, threading.Lock())
        with gate:
            with self._lock:
                known = self._states.get(repo)
                if known is not None and self._checked.get(repo, float("-inf")) >= asked:
                    return known  # rescanned by another request since this one asked
            begun = time.monotonic()
            state, stable = self._scan(repo, known)
            present = bool(state.files) or self.exists(repo)
            with self._lock:
                old = self._states.pop(repo, None)
                self._indexed -= len(old.files) if old is not None else 0
                if present:
                    self._states[repo] = state
                    self._indexed += len(state.files)
                    # A file that changed while it was hashed: ask the disk again next time.
                    self._checked[repo] = begun if stable else float("-inf")
                self._evict()
            return state

    def _evict(self) -> None:
        while self._indexed > self.limits.index_files and len(self._states) > 1:
            repo, dropped = self._states.popitem(last=False)
            self._indexed -= len(dropped.files)
            self._checked.pop(repo, None)
            self._scanning.pop(repo, None)

    def _scan(self, repo: RepoId, previous: RepoState | None) -> tuple[RepoState, bool]:
        """(state of the repo as the disk has it now, whether every file held still)."""
        with self._lock:
            self.scans += 1
        files: dict[str, StoredFile] = {}
        sums: dict[str, FileSums] = {}
        stable = True
        before = previous.files if previous is not None else {}

        def visit(dir_fd: int, prefix: str, depth: int) -> None:
            nonlocal stable
            with os.scandir(dir_fd) as it:
                entries = list(it)
            for e in entries:
                if name_error(e.name) is not None:
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if depth < MAX_DEPTH:
                            sub = os.open(e.name, _DIR_FLAGS, dir_fd=dir_fd)
                            try:
                                visit(sub, f"{prefix}{e.name}/", depth + 1)
                            finally:
                                os.close(sub)
                        continue
                    if not e.is_file(follow_symlinks=False):
                        continue  # links, FIFOs, sockets, devices
                    path = prefix + e.name
                    f = _stored(path, e.stat(follow_symlinks=False))
                    old = before.get(path)
                    if old is not None and old.key == f.key and previous is not None:
                        files[path], sums[path] = old, previous.sums[path]
                        continue
                    got = self.cached_sums(f.key)
                    if got is None:
                        fd = os.open(e.name, _FILE_FLAGS, dir_fd=dir_fd)
                        try:
                            st = os.fstat(fd)
                            if not stat.S_ISREG(st.st_mode):
                                continue
                            f = _stored(path, st)
                            got, held = _hash(fd, f.key)
                        finally:
                            os.close(fd)
                        if held:
                            self._remember(f.key, got)
                        stable = stable and held
                except OSError:
                    continue  # gone or replaced while we looked: the next scan sees it
                files[path], sums[path] = f, got

        fd = self._dir(repo)
        if fd is not None:
            try:
                visit(fd, "", 0)
            except OSError:
                stable = False
            finally:
                os.close(fd)
        if (
            previous is not None
            and len(files) == len(before)
            and all(before.get(p) is f for p, f in files.items())
        ):
            return previous, stable
        return _build(repo, files, sums, previous), stable


def _build(
    repo: RepoId,
    files: dict[str, StoredFile],
    sums: dict[str, FileSums],
    previous: RepoState | None,
) -> RepoState:
    blobs = sorted(files)
    h = hashlib.sha1()
    for path in blobs:
        h.update(f"{path}\0{files[path].size}\0{sums[path].sha256}\n".encode())
    commit = h.hexdigest()
    seq = previous.seq + 1 if previous is not None else 0
    # A file keeps its state while its content stays; changed or new: this state.
    since = {}
    for path in blobs:
        old = previous.sums.get(path) if previous is not None else None
        same = old is not None and old.sha256 == sums[path].sha256
        since[path] = previous.since[path] if previous is not None and same else seq
    dirs = sorted({p[:i] for p in blobs for i in _slashes(p)})
    children: dict[str, tuple[list[str], list[str]]] = {"": ([], [])}
    for d in dirs:
        children[d] = ([], [])
    for path in blobs:
        children[path.rpartition("/")[0]][0].append(path)
    for d in dirs:
        children[d.rpartition("/")[0]][1].append(d)
    for _, subdirs in children.values():
        subdirs.sort(key=lambda d: d + "/")  # the order of their names as prefixes ('d/')
    history = ((*previous.history, seq) if previous is not None else (seq,))[-HISTORY:]
    known = previous.commits if previous is not None else {}
    needed = set(history) | set(since.values())
    commits = {n: known[n] for n in needed if n in known}
    commits[seq] = commit
    return RepoState(
        repo,
        commit,
        {p: files[p] for p in blobs},
        {p: sums[p] for p in blobs},
        since,
        max((f.mtime for f in files.values()), default=0),
        blobs,
        dirs,
        children,
        seq,
        history,
        commits,
    )


def _slashes(path: str) -> list[int]:
    return [i for i, c in enumerate(path) if c == "/"]


def _hash(fd: int, key: Key) -> tuple[FileSums, bool]:
    """(digests of what the descriptor holds, whether it stayed the version `key` while
    read): one pass, positional reads, never more than HASH_BLOCK in memory."""
    sha, md5, crc = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    offset = 0
    while block := os.pread(fd, HASH_BLOCK, offset):
        sha.update(block)
        md5.update(block)
        crc = crc32c.crc32c(block, crc)
        offset += len(block)
    after = os.fstat(fd)
    held = _key(after) == key and offset == key[2]
    return FileSums(sha.hexdigest(), crc, md5.digest()), held


def _any_file(dir_fd: int, depth: int) -> bool:
    with os.scandir(dir_fd) as it:
        entries = list(it)
    for e in entries:
        if name_error(e.name) is not None:
            continue
        try:
            if e.is_file(follow_symlinks=False):
                return True
            if e.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
                sub = os.open(e.name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    if _any_file(sub, depth + 1):
                        return True
                finally:
                    os.close(sub)
        except OSError:
            continue
    return False


def _key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _stored(path: str, st: os.stat_result) -> StoredFile:
    return StoredFile(path, st.st_size, int(st.st_mtime), max(1, st.st_mtime_ns // 1000), _key(st))
