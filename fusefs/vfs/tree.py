"""The mount's namespace: owners, pinned repos and their files, as inodes.

Inode numbers are handed out once and never reused, so they stay stable for
the mount's life. The tree only grows (a repo discovered on first access is
added); nothing in it is ever replaced, because each repo is a pinned snapshot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fusefs.hub.client import RepoId, Snapshot
from fusefs.hub.listing import RepoFile

ROOT_INODE = 1  # FUSE's fixed inode number of the root


@dataclass(eq=False)
class Node:
    """An inode: a directory or a file (never both)."""

    inode: int
    name: bytes
    parent: int
    mtime_ns: int


@dataclass(eq=False)
class DirNode(Node):
    """The root, an owner, a repo or a directory inside a repo."""

    snapshot: Snapshot | None = None  # the repo this directory belongs to (None: root, owners)
    children: dict[bytes, Node] = field(default_factory=dict)
    _sorted: list[bytes] | None = None

    def sorted_names(self) -> list[bytes]:
        if self._sorted is None:
            self._sorted = sorted(self.children)
        return self._sorted


@dataclass(eq=False)
class FileNode(Node):
    """A file of a pinned repo."""

    snapshot: Snapshot
    file: RepoFile

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def path(self) -> str:
        """`owner/name/path`: how logs and status name the file."""
        return f"{self.snapshot.repo}/{self.file.path}"


class Tree:
    def __init__(self) -> None:
        now = time.time_ns()
        self._next_inode = ROOT_INODE + 1
        self.root = DirNode(ROOT_INODE, b"", ROOT_INODE, mtime_ns=now)
        self._nodes: dict[int, Node] = {self.root.inode: self.root}
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, inode: int) -> Node | None:
        return self._nodes.get(inode)

    def _adopt(self, parent: DirNode, node: Node) -> None:
        self._next_inode += 1
        self._nodes[node.inode] = node
        parent.children[node.name] = node
        parent._sorted = None

    def _dir(
        self, parent: DirNode, name: bytes, snapshot: Snapshot | None, mtime_ns: int
    ) -> DirNode:
        """The directory `name` in `parent`, made if missing."""
        existing = parent.children.get(name)
        if isinstance(existing, DirNode):
            return existing
        if existing is not None:  # the listing is checked for clashes before it gets here
            raise ValueError(f"{name!r} is a file and a directory")
        node = DirNode(self._next_inode, name, parent.inode, mtime_ns, snapshot)
        self._adopt(parent, node)
        return node

    def owner_dir(self, owner: str) -> DirNode:
        return self._dir(self.root, owner.encode(), None, self.root.mtime_ns)

    def drop_empty_owner(self, inode: int) -> bool:
        """Forget an owner directory that holds no repo (its inode is never reused)."""
        node = self._nodes.get(inode)
        if not isinstance(node, DirNode) or node.parent != ROOT_INODE or node.children:
            return False
        del self._nodes[inode]
        del self.root.children[node.name]
        self.root._sorted = None
        return True

    def snapshots(self) -> list[Snapshot]:
        # copies: the metrics thread calls this while the FUSE loop adds repos
        return [
            repo.snapshot
            for owner in list(self.root.children.values())
            if isinstance(owner, DirNode)
            for repo in list(owner.children.values())
            if isinstance(repo, DirNode) and repo.snapshot is not None
        ]

    def repo_dir(self, repo: RepoId) -> DirNode | None:
        owner = self.root.children.get(repo.owner.encode())
        if not isinstance(owner, DirNode):
            return None
        found = owner.children.get(repo.name.encode())
        return found if isinstance(found, DirNode) else None

    def pinned_file(self, repo: RepoId, commit: str, path: str) -> RepoFile | None:
        """The file `path` of `repo` as the mount shows it, if pinned at `commit`."""
        node: Node | None = self.repo_dir(repo)
        if not isinstance(node, DirNode) or node.snapshot is None:
            return None
        if node.snapshot.commit != commit:
            return None
        for part in path.split("/"):
            if not isinstance(node, DirNode):
                return None
            node = node.children.get(part.encode())
        return node.file if isinstance(node, FileNode) else None

    def add_snapshot(self, snap: Snapshot) -> DirNode:
        """Add a pinned repo; a repo already present is kept as it was."""
        if existing := self.repo_dir(snap.repo):
            return existing
        owner = self.owner_dir(snap.repo.owner)
        newest = max((f.mtime for f in snap.files), default=0) * 1_000_000_000
        top = self._dir(owner, snap.repo.name.encode(), snap, newest or self.root.mtime_ns)
        for f in snap.files:
            parent = top
            *dirs, base = f.path.split("/")
            for d in dirs:
                parent = self._dir(parent, d.encode(), snap, top.mtime_ns)
            mtime_ns = f.mtime * 1_000_000_000 or top.mtime_ns
            self._adopt(
                parent, FileNode(self._next_inode, base.encode(), parent.inode, mtime_ns, snap, f)
            )
            self.total_bytes += f.size
        return top
