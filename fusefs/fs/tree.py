"""The mount's namespace: owners, pinned repos and their files, as inodes.

Inode numbers are handed out once and never reused, so they stay stable for
the mount's life. The tree only grows (a repo discovered on first access is
added); nothing in it is ever replaced, because each repo is a pinned snapshot.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field

import pyfuse3

from fusefs.hub.client import RepoId, Snapshot
from fusefs.hub.listing import RepoFile


@dataclass(eq=False)
class Node:
    inode: int
    name: bytes
    parent: int
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    children: dict[bytes, Node] = field(default_factory=dict)
    snapshot: Snapshot | None = None  # set on files and on the repo directory
    file: RepoFile | None = None  # set on files
    _sorted: list[bytes] | None = None

    def sorted_names(self) -> list[bytes]:
        if self._sorted is None:
            self._sorted = sorted(self.children)
        return self._sorted


class Tree:
    def __init__(self) -> None:
        now = time.time_ns()
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self.root = Node(pyfuse3.ROOT_INODE, b"", pyfuse3.ROOT_INODE, True, mtime_ns=now)
        self._nodes: dict[int, Node] = {self.root.inode: self.root}
        self.total_bytes = 0
        self.uid = os.getuid()  # the files belong to whoever mounted them
        self.gid = os.getgid()

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def child(self, parent: Node, name: bytes) -> Node | None:
        return parent.children.get(name)

    def _add(self, parent: Node, name: bytes, is_dir: bool, **fields) -> Node:
        node = Node(self._next_inode, name, parent.inode, is_dir, **fields)
        self._next_inode += 1
        self._nodes[node.inode] = node
        parent.children[name] = node
        parent._sorted = None
        return node

    def owner_dir(self, owner: str) -> Node:
        name = owner.encode()
        return self.root.children.get(name) or self._add(
            self.root, name, True, mtime_ns=self.root.mtime_ns
        )

    def snapshots(self) -> list[Snapshot]:
        # copies: the metrics thread calls this while the FUSE loop adds repos
        return [
            repo.snapshot
            for owner in list(self.root.children.values())
            for repo in list(owner.children.values())
            if repo.snapshot is not None
        ]

    def repo_dir(self, repo: RepoId) -> Node | None:
        owner = self.root.children.get(repo.owner.encode())
        return owner.children.get(repo.name.encode()) if owner else None

    def add_snapshot(self, snap: Snapshot) -> Node:
        """Add a pinned repo; a repo already present is kept as it was."""
        if existing := self.repo_dir(snap.repo):
            return existing
        owner = self.owner_dir(snap.repo.owner)
        newest = max((f.mtime for f in snap.files), default=0) * 1_000_000_000
        top = self._add(
            owner,
            snap.repo.name.encode(),
            True,
            snapshot=snap,
            mtime_ns=newest or self.root.mtime_ns,
        )
        for f in snap.files:
            parent = top
            *dirs, base = f.path.split("/")
            for d in dirs:
                parent = parent.children.get(d.encode()) or self._add(
                    parent, d.encode(), True, snapshot=snap, mtime_ns=top.mtime_ns
                )
            self._add(
                parent,
                base.encode(),
                False,
                size=f.size,
                snapshot=snap,
                file=f,
                mtime_ns=f.mtime * 1_000_000_000 or top.mtime_ns,
            )
            self.total_bytes += f.size
        return top

    def attributes(self, node: Node, timeout: float) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.generation = 0
        attr.entry_timeout = timeout
        attr.attr_timeout = timeout
        if node.is_dir:
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2 + sum(1 for c in node.children.values() if c.is_dir)
            attr.st_size = 0
        else:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = node.size
        attr.st_blksize = 1 << 20
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        return attr
