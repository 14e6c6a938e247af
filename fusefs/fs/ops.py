"""The FUSE adapter: pyfuse3 calls in, `fusefs.vfs.Filesystem` does the work, errno out.

Every handler is guarded: an `FsError` becomes its errno; anything else is logged
with its context and answered with EIO, because an exception escaping a pyfuse3
handler takes the whole mount down.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar, cast

import pyfuse3

from fusefs.fs.status import STATUS_XATTR, snapshot
from fusefs.vfs.errors import FsError
from fusefs.vfs.filesystem import Filesystem
from fusefs.vfs.tree import ROOT_INODE, DirNode, FileNode, Node

log = logging.getLogger(__name__)

PINNED_TIMEOUT = 3600.0  # a pinned snapshot never changes under the kernel's caches
GROWING_TIMEOUT = 1.0  # root and owner dirs gain repos as they are discovered

_P = ParamSpec("_P")
_R = TypeVar("_R")


def guarded(
    handler: Callable[Concatenate[ModelFS, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[ModelFS, _P], Coroutine[Any, Any, _R]]:
    @functools.wraps(handler)
    async def run(self: ModelFS, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await handler(self, *args, **kwargs)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("%s%r failed", handler.__name__, args[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return cast("Callable[Concatenate[ModelFS, _P], Coroutine[Any, Any, _R]]", run)


class ModelFS(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, fs: Filesystem, settings_view: dict[str, object] | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.settings_view = settings_view or {}
        self.uid = os.getuid()  # the files belong to whoever mounted them
        self.gid = os.getgid()

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        growing = node.inode == ROOT_INODE or node.parent == ROOT_INODE
        timeout = GROWING_TIMEOUT if growing else PINNED_TIMEOUT
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(node.inode)
        attr.generation = 0
        attr.entry_timeout = timeout
        attr.attr_timeout = timeout
        if isinstance(node, DirNode):
            attr.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
            attr.st_nlink = 2 + sum(1 for c in node.children.values() if isinstance(c, DirNode))
            attr.st_size = 0
        else:
            assert isinstance(node, FileNode)
            attr.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o444)
            attr.st_nlink = 1
            attr.st_size = node.size
        attr.st_blksize = 1 << 20
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        return attr

    # -- names -----------------------------------------------------------------

    @guarded
    async def lookup(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(await self.fs.lookup(parent_inode, name))

    @guarded
    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, lookups in inode_list:
            self.fs.forget(inode, lookups)

    @guarded
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(self.fs.node(inode))

    @guarded
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        self.fs.directory(inode)
        return pyfuse3.FileHandleT(inode)

    @guarded
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        entries = self.fs.listing(fh)
        for index in range(start_id, len(entries)):
            child = entries[index]
            if not pyfuse3.readdir_reply(
                token, pyfuse3.FileNameT(child.name), self._attrs(child), index + 1
            ):
                return

    @guarded
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        pass

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = 1 << 20
        st.f_frsize = 4096
        st.f_blocks = -(-self.fs.tree.total_bytes // st.f_frsize)
        st.f_bfree = st.f_bavail = 0
        st.f_files = len(self.fs.tree)
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    # -- data ------------------------------------------------------------------

    @guarded
    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        fh = await self.fs.open(inode, flags)
        # The snapshot is pinned, so pages cached by an earlier open are still right.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True, direct_io=False)

    @guarded
    async def read(  # type: ignore[override]  # pyfuse3 replies from any buffer, not only bytes
        self, fh: pyfuse3.FileHandleT, off: int, size: int
    ) -> bytes | memoryview:
        return await self.fs.read(fh, off, size)

    @guarded
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self.fs.release(fh)

    @guarded
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        # Nothing to flush on a read-only mount; ENOSYS tells the kernel never to ask
        # again, which saves a FUSE round trip on every close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # -- visibility ------------------------------------------------------------

    @guarded
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        if inode == ROOT_INODE:
            return [pyfuse3.XAttrNameT(STATUS_XATTR)]
        return [pyfuse3.XAttrNameT(n) for n in self.fs.source_xattrs(inode)]

    @guarded
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        if inode == ROOT_INODE and name == STATUS_XATTR:
            return json.dumps(snapshot(self.fs, self.settings_view), ensure_ascii=False).encode()
        value = self.fs.source_xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    # -- the read-only rest ------------------------------------------------------

    async def _read_only(self, *args: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only  # type: ignore[assignment]
    write = create = setxattr = removexattr = _read_only  # type: ignore[assignment]
