"""The filesystem without FUSE: lookups, opens, data paths and their lifetimes, driven by
a scripted hub and sources that answer from memory (no kernel, no network)."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from fusefs.hub.client import RepoId
from fusefs.hub.resolve import Resolver
from fusefs.vfs.datapath import Services
from fusefs.vfs.errors import FsError
from fusefs.vfs.filesystem import Filesystem
from fusefs.vfs.tree import ROOT_INODE, FileNode, Tree

from support.doubles import FakeData, ScriptedHub

REPO = RepoId("acme", "llm")
FILES = {"a.bin": b"a" * 5000, "b.bin": b"b" * 7000, "empty.txt": b""}


@asynccontextmanager
async def filesystem(
    hub: ScriptedHub, files: dict[str, bytes] = FILES, *, region: str = "home", **kwargs
) -> AsyncIterator[tuple[Filesystem, FakeData]]:
    async with FakeData(files) as data:
        fs = Filesystem(Tree(), hub, Services(Resolver(hub, region), data), **kwargs)
        try:
            yield fs, data
        finally:
            fs.close()


async def lookup_path(fs: Filesystem, path: str) -> FileNode:
    node = fs.node(ROOT_INODE)
    for part in path.split("/"):
        node = await fs.lookup(node.inode, part.encode())
    assert isinstance(node, FileNode)
    return node


# -- names -----------------------------------------------------------------------


async def test_concurrent_lookups_of_an_unknown_repo_ask_the_hub_once():
    hub = ScriptedHub({}, delay=0.05)
    async with filesystem(hub) as (fs, _):
        owner = await fs.lookup(ROOT_INODE, b"acme")
        errors: list[int] = []

        async def look():
            try:
                await fs.lookup(owner.inode, b"nope")
            except FsError as e:
                errors.append(e.errno)

        async with trio.open_nursery() as n:
            for _ in range(6):
                n.start_soon(look)
        assert errors == [errno.ENOENT] * 6
        assert hub.snapshot_calls == [RepoId("acme", "nope")]
        with pytest.raises(FsError):  # and remembered for the next lookup too
            await fs.lookup(owner.inode, b"nope")
        assert len(hub.snapshot_calls) == 1


async def test_a_repo_found_by_one_lookup_serves_the_concurrent_ones():
    hub = ScriptedHub({"home": set(FILES)}, delay=0.05)
    hub.add_repo(REPO, FILES)
    async with filesystem(hub) as (fs, _):
        owner = await fs.lookup(ROOT_INODE, b"acme")
        found = []

        async def look():
            found.append(await fs.lookup(owner.inode, b"llm"))

        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(look)
        assert len({node.inode for node in found}) == 1
        assert hub.snapshot_calls == [REPO]


async def read_all(fs: Filesystem, path: str) -> bytes:
    node = await lookup_path(fs, path)
    fh = await fs.open(node.inode, os.O_RDONLY)
    try:
        return bytes(await fs.read(fh, 0, node.size + 1))
    finally:
        fs.release(fh)
