"""The filesystem a mount shows, without FUSE: names, repos found on lookup, open files.

`Filesystem` answers what the kernel asks (look up a name, list a directory,
open, read, release, extended attributes) in the project's own terms: nodes of
the inode tree, file handles, bytes, and `FsError` carrying an errno. The FUSE
adapter (`fusefs.fs.ops`) only translates calls and errors, so everything here
can be driven by tests without a kernel.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import trio
from prometheus_client import CollectorRegistry, Histogram

from fusefs.data.errors import AuthError, DataError
from fusefs.data.source import SourceCounters
from fusefs.hub.catalog import Catalog
from fusefs.hub.client import HubError, RepoId, RepoNotFound, valid_repo_part
from fusefs.hub.resolve import Resolution
from fusefs.vfs.datapath import SETUP_ERRORS, DataPath, Services
from fusefs.vfs.errors import FsError, io_error, not_found
from fusefs.vfs.openfiles import Lifetimes, OpenFiles
from fusefs.vfs.tree import ROOT_INODE, DirNode, FileNode, Node, Tree

log = logging.getLogger(__name__)

UNKNOWN_REPO_TTL = 30.0  # how long "no such repo" is remembered
MAX_UNKNOWN_REPOS = 4096  # remembered at once
# Owner directories with no repo yet exist only while the kernel holds them (forget drops
# them); names are the caller's, so at most this many at once.
MAX_EMPTY_OWNERS = 4096
SOURCE_XATTRS = (b"user.modelfs.source", b"user.modelfs.region", b"user.modelfs.endpoint")
# A refused credential fails every read alike: said once in this long, not per read.
AUTH_LOG_INTERVAL = 60.0
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ReadTimings:
    """Latency histograms, fed by the read path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.read = Histogram(
            "modelfs_read_seconds",
            "Time to serve one FUSE read",
            registry=registry,
            buckets=_BUCKETS,
        )
        self.first_byte = Histogram(
            "modelfs_first_byte_seconds",
            "From open of a cold file to its first byte served",
            registry=registry,
            buckets=_BUCKETS,
        )


@dataclass
class ReadCounters:
    """What the read path served and refused, for status and metrics."""

    errors: Counter[str] = field(default_factory=Counter)  # by kind of DataError
    read_sizes: Counter[int] = field(default_factory=Counter)
    bytes_by_source: Counter[str] = field(default_factory=Counter)  # monotonic
    retired: SourceCounters = field(default_factory=SourceCounters)  # of closed data paths


class Filesystem:
    def __init__(
        self, tree: Tree, hub: Catalog, services: Services, lifetimes: Lifetimes = Lifetimes()
    ) -> None:
        self.tree = tree
        self.hub = hub
        self.services = services
        self.started = time.monotonic()
        self.counters = ReadCounters()
        self.registry = CollectorRegistry()
        self.timings = ReadTimings(self.registry)
        self.files = OpenFiles(lifetimes, services.data.reaper, self._retire)
        services.data.reaper.add(self.files)
        self._handles: dict[int, DataPath] = {}  # by file handle
        self._last_source: dict[int, Resolution] = {}  # by inode, of files no longer open
        self._fh = itertools.count(1)
        self._opening: dict[int, trio.Event] = {}
        self._discovering: dict[RepoId, trio.Event] = {}
        self._owner_lookups: Counter[int] = Counter()  # kernel references to owner dirs
        self._unknown: dict[RepoId, float] = {}
        self._auth_logged = -AUTH_LOG_INTERVAL  # when a refused credential was last logged

    # -- names -----------------------------------------------------------------

    def node(self, inode: int) -> Node:
        node = self.tree.get(inode)
        if node is None:
            raise not_found()
        return node

    def directory(self, inode: int) -> DirNode:
        node = self.node(inode)
        if not isinstance(node, DirNode):
            raise FsError(errno.ENOTDIR)
        return node

    async def lookup(self, parent_inode: int, name: bytes) -> Node:
        """The entry `name` in the directory; the kernel holds it until `forget`."""
        parent = self.directory(parent_inode)
        child = parent.children.get(name)
        if child is None:
            child = await self._discover(parent, name)
        if parent_inode == ROOT_INODE:
            self._owner_lookups[child.inode] += 1
        return child

    def forget(self, inode: int, lookups: int) -> None:
        """The kernel dropped `lookups` references to `inode`: an owner directory that
        no reference holds and no repo fills goes away."""
        if inode not in self._owner_lookups:
            return
        self._owner_lookups[inode] -= lookups
        if self._owner_lookups[inode] <= 0:
            del self._owner_lookups[inode]
            self.tree.drop_empty_owner(inode)

    def listing(self, inode: int) -> list[Node]:
        """The directory's entries in name order (owners seen only through a failed
        lookup stay hidden)."""
        node = self.directory(inode)
        entries = [node.children[n] for n in node.sorted_names()]
        if inode == ROOT_INODE:
            entries = [e for e in entries if isinstance(e, DirNode) and e.children]
        return entries

    async def _discover(self, parent: DirNode, name: bytes) -> Node:
        """Owners appear on first use; a repo is asked of the hub and pinned."""
        try:
            text = name.decode()
        except UnicodeDecodeError:
            raise not_found() from None
        if not valid_repo_part(text):
            raise not_found()
        if parent.inode == ROOT_INODE:
            empty = sum(
                1
                for o in self.tree.root.children.values()
                if isinstance(o, DirNode) and not o.children
            )
            if empty >= MAX_EMPTY_OWNERS:
                log.warning("%d owners looked up with no repo found yet: %r refused", empty, text)
                raise not_found()
            return self.tree.owner_dir(text)
        if parent.parent != ROOT_INODE or parent.snapshot is not None:
            raise not_found()
        repo = self.hub.repo(parent.name.decode(), text)
        while (pending := self._discovering.get(repo)) is not None:
            await pending.wait()  # one hub round trip for concurrent lookups
        # After the wait: what the lookup we waited for found out holds for us too.
        if self._unknown.get(repo, 0) > time.monotonic():
            raise not_found()
        if node := self.tree.repo_dir(repo):
            return node
        self._discovering[repo] = done = trio.Event()
        try:
            snap = await self.hub.snapshot(repo)
        except RepoNotFound:
            self._remember_unknown(repo)
            raise not_found() from None
        except HubError as e:
            log.warning("%s: %s", repo, e)
            raise io_error() from None
        finally:
            del self._discovering[repo]
            done.set()
        log.info("pinned %s at %s (%d files)", repo, snap.commit[:12], len(snap.files))
        return self.tree.add_snapshot(snap)

    def _remember_unknown(self, repo: RepoId) -> None:
        now = time.monotonic()
        if len(self._unknown) >= MAX_UNKNOWN_REPOS:  # names are the caller's: bound them
            self._unknown = {r: t for r, t in self._unknown.items() if t > now}
            while len(self._unknown) >= MAX_UNKNOWN_REPOS:
                del self._unknown[next(iter(self._unknown))]  # the oldest first
        self._unknown[repo] = now + UNKNOWN_REPO_TTL

    # -- data ------------------------------------------------------------------

    async def open(self, inode: int, flags: int) -> int:
        """A new handle on the file; its data path is shared with the file's other handles."""
        node = self.node(inode)
        if isinstance(node, DirNode):
            raise FsError(errno.EISDIR)
        assert isinstance(node, FileNode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise FsError(errno.EROFS)
        path = await self._data_path(node)
        fh = next(self._fh)
        self._handles[fh] = path
        return fh

    async def _data_path(self, node: FileNode) -> DataPath:
        """The file's data path with one more handle on it: the one it has, or a new one."""
        inode = node.inode
        while (pending := self._opening.get(inode)) is not None:
            await pending.wait()  # concurrent opens share one resolution and one stream
        self._opening[inode] = done = trio.Event()
        try:
            path = self.files.get(inode)
            if path is not None:
                if self.files.acquire(inode):  # lingering: in use again
                    try:
                        await path.resume()
                    except BaseException:
                        self.files.release(inode)
                        raise
                return path
            cache = self.services.cache is not None and self.files.room_for_cached()
            try:
                path = await DataPath.open(node, self.services, cache=cache)
            except SETUP_ERRORS as e:
                log.warning("open %s: %s", node.path, e)
                raise io_error() from None
            self.files.add(inode, path)
            return path
        finally:
            del self._opening[inode]
            done.set()

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        path = self._handles.get(fh)
        if path is None:
            raise FsError(errno.EBADF)
        with self.timings.read.time():
            try:
                data = await path.read(offset, size)
            except AuthError as e:
                # The storage service wants other credentials: EACCES, as for a file we
                # may not read; every read fails alike until that changes, so one line.
                self.counters.errors[type(e).__name__] += 1
                if time.monotonic() - self._auth_logged >= AUTH_LOG_INTERVAL:
                    self._auth_logged = time.monotonic()
                    log.warning(
                        "read %s: %s (reads fail with EACCES; said again in %.0fs at most)",
                        path.file.path,
                        e,
                        AUTH_LOG_INTERVAL,
                    )
                raise FsError(errno.EACCES) from None
            except DataError as e:
                self.counters.errors[type(e).__name__] += 1
                log.warning("read %s [%d, +%d): %s", path.file.path, offset, size, e)
                raise io_error() from None
        self.counters.read_sizes[len(data)] += 1
        self.counters.bytes_by_source[path.resolution.source] += len(data)
        if (elapsed := path.first_byte()) is not None:
            self.timings.first_byte.observe(elapsed)
        return data

    def release(self, fh: int) -> None:
        path = self._handles.pop(fh, None)
        if path is not None:
            self.files.release(path.file.inode)  # the last handle starts its linger

    def handles(self, inode: int) -> int:
        return self.files.handles(inode)

    def _retire(self, path: DataPath) -> None:
        """A data path closed: keep what it did and where its bytes came from."""
        self.counters.retired.add(path.counters)
        self._last_source[path.file.inode] = path.resolution

    # -- where a file came from ----------------------------------------------------

    def _resolution(self, inode: int) -> Resolution | None:
        path = self.files.get(inode)
        return path.resolution if path is not None else self._last_source.get(inode)

    def source_xattrs(self, inode: int) -> list[bytes]:
        return list(SOURCE_XATTRS) if self._resolution(inode) is not None else []

    def source_xattr(self, inode: int, name: bytes) -> bytes | None:
        res = self._resolution(inode)
        if res is None or name not in SOURCE_XATTRS:
            return None
        return {
            SOURCE_XATTRS[0]: res.source,
            SOURCE_XATTRS[1]: res.region,
            SOURCE_XATTRS[2]: res.location,
        }[name].encode()

    def close(self) -> None:
        self.files.close_all()
