"""The FUSE operations: a read-only view of pinned repos, reads served by the data plane.

Every handler is guarded: anything but a `FUSEError` is logged with its
context and answered with EIO, because an exception escaping a pyfuse3 handler
takes the whole mount down.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import pyfuse3
import trio
from prometheus_client import CollectorRegistry

from fusefs.cache.entry import EntryError
from fusefs.cache.source import CachedSource, FileCache
from fusefs.data.client import DataClient
from fusefs.data.errors import DataError, DeadlineError, GoneError, TransientError
from fusefs.data.reader import FileReader, RangeSource
from fusefs.fs.status import STATUS_XATTR, ReadTimings, snapshot
from fusefs.fs.tree import Node, Tree
from fusefs.hub.client import HubClient, HubError, RepoId, RepoNotFound, valid_repo_part
from fusefs.hub.resolve import Resolution, Resolver

log = logging.getLogger(__name__)

PINNED_TIMEOUT = 3600.0  # a pinned snapshot never changes under the kernel's caches
GROWING_TIMEOUT = 1.0  # root and owner dirs gain repos as they are discovered
UNKNOWN_REPO_TTL = 30.0  # how long "no such repo" is remembered
XATTRS = (b"user.modelfs.source", b"user.modelfs.region", b"user.modelfs.endpoint")


def guarded(handler):
    @functools.wraps(handler)
    async def run(self, *args):
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("%s%r failed", handler.__name__, args[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return run


@dataclass
class OpenFile:
    """One file's data path, shared by all its handles."""

    node: Node
    resolution: Resolution
    reader: FileReader
    handles: int = 0
    opened_at: float = 0.0  # until the first byte is served; then 0
    bytes_read: int = 0  # across every source this file has had
    failed_regions: frozenset[str] = frozenset()
    reresolved: bool = False
    switching: trio.Lock = field(default_factory=trio.Lock)

    @property
    def cached(self) -> CachedSource | None:
        source = self.reader.source
        return source if isinstance(source, CachedSource) else None


class ModelFS(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(
        self,
        tree: Tree,
        hub: HubClient,
        resolver: Resolver,
        data: DataClient,
        settings_view: dict | None = None,
        cache: FileCache | None = None,
    ):
        super().__init__()
        self.tree = tree
        self.hub = hub
        self.resolver = resolver
        self.data = data
        self.cache = cache
        self.settings_view = settings_view or {}
        self.started = time.monotonic()
        self.errors: Counter[str] = Counter()
        self.read_sizes: Counter[int] = Counter()
        self.bytes_by_source: Counter[str] = Counter()  # monotonic, for metrics
        self.registry = CollectorRegistry()
        self.timings = ReadTimings(self.registry)
        self.files: dict[int, OpenFile] = {}  # by inode
        self._handles: dict[int, OpenFile] = {}
        self._fh = itertools.count(1)
        self._opening: dict[int, trio.Event] = {}
        self._discovering: dict[RepoId, trio.Event] = {}
        self._unknown: dict[RepoId, float] = {}

    # -- names -----------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.tree.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        growing = node.inode == pyfuse3.ROOT_INODE or node.parent == pyfuse3.ROOT_INODE
        return self.tree.attributes(node, GROWING_TIMEOUT if growing else PINNED_TIMEOUT)

    @guarded
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        child = parent.children.get(name)
        if child is None:
            child = await self._discover(parent, name)
        return self._attrs(child)

    async def _discover(self, parent: Node, name: bytes) -> Node:
        """Owners appear on first use; a repo is asked of the hub and pinned."""
        try:
            text = name.decode()
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if not valid_repo_part(text):
            raise pyfuse3.FUSEError(errno.ENOENT)
        if parent.inode == pyfuse3.ROOT_INODE:
            return self.tree.owner_dir(text)
        if parent.parent != pyfuse3.ROOT_INODE or parent.snapshot is not None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        repo = RepoId(parent.name.decode(), text)
        if self._unknown.get(repo, 0) > time.monotonic():
            raise pyfuse3.FUSEError(errno.ENOENT)
        while (pending := self._discovering.get(repo)) is not None:
            await pending.wait()  # one hub round trip for concurrent lookups
        if node := self.tree.repo_dir(repo):
            return node
        self._discovering[repo] = done = trio.Event()
        try:
            snap = await self.hub.snapshot(repo)
        except RepoNotFound:
            self._unknown[repo] = time.monotonic() + UNKNOWN_REPO_TTL
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except HubError as e:
            log.warning("%s: %s", repo, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            del self._discovering[repo]
            done.set()
        log.info("pinned %s at %s (%d files)", repo, snap.commit[:12], len(snap.files))
        return self.tree.add_snapshot(snap)

    @guarded
    async def getattr(self, inode, ctx=None):
        return self._attrs(self._node(inode))

    @guarded
    async def opendir(self, inode, ctx):
        if not self._node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @guarded
    async def readdir(self, fh, start_id, token):
        node = self._node(fh)
        names = node.sorted_names()
        if node.inode == pyfuse3.ROOT_INODE:  # owners seen only through a failed lookup stay hidden
            names = [n for n in names if node.children[n].children]
        for index in range(start_id, len(names)):
            child = node.children[names[index]]
            if not pyfuse3.readdir_reply(token, child.name, self._attrs(child), index + 1):
                return

    @guarded
    async def releasedir(self, fh):
        pass

    @guarded
    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        st.f_bsize = 1 << 20
        st.f_frsize = 4096
        st.f_blocks = -(-self.tree.total_bytes // st.f_frsize)
        st.f_bfree = st.f_bavail = 0
        st.f_files = len(self.tree)
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    # -- data ------------------------------------------------------------------

    @guarded
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        opened = await self._open_file(node)
        if opened.handles == 0 and opened.cached is not None:
            opened.cached.resume()
        opened.handles += 1
        fh = next(self._fh)
        self._handles[fh] = opened
        # The snapshot is pinned, so pages cached by an earlier open are still right.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    async def _open_file(self, node: Node) -> OpenFile:
        while (pending := self._opening.get(node.inode)) is not None:
            await pending.wait()  # concurrent opens share one resolution and one stream
        if (opened := self.files.get(node.inode)) is not None:
            return opened
        self._opening[node.inode] = done = trio.Event()
        snap, f = node.snapshot, node.file
        try:
            reader = await self._sealed_reader(node)
            if reader is not None:
                # Whole and verified on local disk: no hub, no network for this file.
                resolution = Resolution("cache", "", "file://" + reader.source.path)
            else:
                resolution = await self.resolver.resolve(snap.repo, snap.commit, f.path)
                reader = await self._reader(
                    node, self.data.open_source(resolution.location, f.size)
                )
        except (HubError, DataError, ValueError, OSError, EntryError) as e:
            log.warning("open %s/%s: %s", snap.repo, f.path, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            del self._opening[node.inode]
            done.set()
        opened = self.files[node.inode] = OpenFile(
            node, resolution, reader, opened_at=time.monotonic()
        )
        return opened

    def _cache_key(self, node: Node) -> str:
        return self.cache.key(
            node.file.sha256, str(node.snapshot.repo), node.snapshot.commit, node.file.path
        )

    async def _sealed_reader(self, node: Node) -> FileReader | None:
        """A reader from the disk cache alone, when the file is sealed there."""
        f = node.file
        if self.cache is None or not self.cache.sealed(self._cache_key(node), f.size, f.sha256):
            return None
        try:
            return await self._reader(node, None)
        except (OSError, EntryError) as e:
            log.warning(
                "%s/%s: sealed in the cache but not readable (%s)", node.snapshot.repo, f.path, e
            )
            return None

    async def _reader(self, node: Node, network: RangeSource | None) -> FileReader:
        """A reader for this file over `network`, through the disk cache when there is one.
        A cache that fails here costs the caching, never the read."""
        f = node.file
        name = f"{node.snapshot.repo}/{f.path}"
        if self.cache is None:
            return self.data.reader(network, f.size, name)
        try:
            # Opening an entry may have to make room (evict), which walks the directory.
            source = await trio.to_thread.run_sync(
                self.cache.source, self._cache_key(node), f.size, f.sha256, network
            )
        except (OSError, EntryError) as e:
            if network is None:
                raise
            log.warning("%s: not cached (%s)", name, e)
            return self.data.reader(network, f.size, name)
        except BaseException:
            if network is not None:
                network.close()
            raise
        return self.data.reader(source, f.size, name, align=source.block_size)

    @guarded
    async def read(self, fh, off, size):
        opened = self._handles.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        with self.timings.read.time():
            data = await self._read(opened, off, size)
        self.read_sizes[len(data)] += 1
        opened.bytes_read += len(data)
        self.bytes_by_source[opened.resolution.source] += len(data)
        if opened.opened_at:
            self.timings.first_byte.observe(time.monotonic() - opened.opened_at)
            opened.opened_at = 0.0
        return data

    async def _read(self, opened: OpenFile, off: int, size: int) -> bytes | memoryview:
        reader = opened.reader
        try:
            return await reader.read(off, size)
        except DataError as e:
            if isinstance(e, DeadlineError) or not await self._switch_source(opened, reader, e):
                self._read_failed(reader, off, size, e)
        try:
            return await opened.reader.read(off, size)
        except DataError as e:
            self._read_failed(reader, off, size, e)

    def _read_failed(self, reader: FileReader, off: int, size: int, error: DataError):
        self.errors[type(error).__name__] += 1
        log.warning("read %s [%d, +%d): %s", reader.name, off, size, error)
        raise pyfuse3.FUSEError(errno.EIO) from None

    async def _switch_source(self, opened: OpenFile, failed: FileReader, error: DataError) -> bool:
        """After a failure the stream could not recover from: an expired or moved file
        is resolved again (once); a dead internal endpoint gives way to the next
        candidate. True when there is a new reader to try."""
        async with opened.switching:
            if opened.reader is not failed:
                return True  # another reader already switched
            res = opened.resolution
            if isinstance(error, GoneError) and res.source == "cache":
                pass  # a sealed file lost a block: fetch from the network from now on
            elif isinstance(error, GoneError) and not opened.reresolved:
                opened.reresolved = True
            elif isinstance(error, TransientError) and res.source != "cdn":
                opened.failed_regions |= {res.region}
            else:
                return False
            snap, f = opened.node.snapshot, opened.node.file
            try:
                new = await self.resolver.resolve(
                    snap.repo, snap.commit, f.path, exclude=opened.failed_regions
                )
                reader = await self._reader(
                    opened.node, self.data.open_source(new.location, f.size)
                )
            except (HubError, DataError, ValueError, OSError, EntryError) as e:
                log.warning("%s: no other source after %s: %s", failed.name, error, e)
                return False
            log.warning(
                "%s: %s failed (%s); now %s", failed.name, _describe(res), error, _describe(new)
            )
            failed.close()
            opened.resolution, opened.reader = new, reader
            return True

    @guarded
    async def release(self, fh):
        opened = self._handles.pop(fh, None)
        if opened is not None:
            opened.handles -= 1  # the stream stays for the next open; it idles out by itself
            if opened.handles == 0 and opened.cached is not None:
                opened.cached.pause()  # closed files may be evicted from the disk cache

    @guarded
    async def flush(self, fh):
        pass

    # -- visibility ------------------------------------------------------------

    @guarded
    async def listxattr(self, inode, ctx):
        if inode == pyfuse3.ROOT_INODE:
            return [STATUS_XATTR]
        return list(XATTRS) if inode in self.files else []

    @guarded
    async def getxattr(self, inode, name, ctx):
        if inode == pyfuse3.ROOT_INODE and name == STATUS_XATTR:
            return json.dumps(snapshot(self), ensure_ascii=False).encode()
        opened = self.files.get(inode)
        if opened is None or name not in XATTRS:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        res = opened.resolution
        value = {
            b"user.modelfs.source": res.source,
            b"user.modelfs.region": res.region,
            b"user.modelfs.endpoint": res.location,
        }[name]
        return value.encode()

    # -- the read-only rest ------------------------------------------------------

    async def _read_only(self, *args):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    write = create = setxattr = removexattr = _read_only

    def close(self) -> None:
        for opened in self.files.values():
            opened.reader.close()
        self.files.clear()


def _describe(res: Resolution) -> str:
    marker = f"{res.marker} " if res.marker.strip() else ""
    return f"{marker}via {res.source}" + (f" {res.region}" if res.region else "")
