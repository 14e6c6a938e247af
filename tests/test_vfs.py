"""The filesystem without FUSE: lookups, opens, data paths and their lifetimes, driven by
a scripted hub and sources that answer from memory (no kernel, no network)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from fusefs.cache.entry import try_evict
from fusefs.cache.source import serving
from fusefs.cache.store import CacheLimits, DiskCache
from fusefs.data.errors import GoneError, TransientError
from fusefs.hub.client import RepoId
from fusefs.hub.resolve import Resolver
from fusefs.vfs import filesystem as filesystem_module
from fusefs.vfs.datapath import Services
from fusefs.vfs.errors import FsError
from fusefs.vfs.filesystem import Filesystem
from fusefs.vfs.openfiles import Lifetimes
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


async def test_owners_with_no_repo_are_bounded_and_dropped_when_the_kernel_forgets_them(
    monkeypatch,
):
    monkeypatch.setattr(filesystem_module, "MAX_EMPTY_OWNERS", 8)
    hub = ScriptedHub({"home": set(FILES)})
    hub.add_repo(REPO, FILES)
    async with filesystem(hub) as (fs, _):
        await lookup_path(fs, "acme/llm/a.bin")  # an owner with a repo stays for good
        owners = [await fs.lookup(ROOT_INODE, f"nobody{i}".encode()) for i in range(8)]
        with pytest.raises(FsError) as refused:
            await fs.lookup(ROOT_INODE, b"one-too-many")
        assert refused.value.errno == errno.ENOENT
        again = await fs.lookup(ROOT_INODE, b"nobody0")  # held twice now
        assert again is owners[0]
        for owner in owners:
            fs.forget(owner.inode, 1)
        assert fs.tree.get(owners[0].inode) is owners[0]  # one reference left
        assert all(fs.tree.get(o.inode) is None for o in owners[1:])
        fs.forget(owners[0].inode, 1)
        assert fs.tree.get(owners[0].inode) is None
        await fs.lookup(ROOT_INODE, b"one-too-many")  # room again
        acme = await fs.lookup(ROOT_INODE, b"acme")
        fs.forget(acme.inode, 100)
        assert fs.tree.get(acme.inode) is acme  # it holds a repo
        assert [n.name for n in fs.listing(ROOT_INODE)] == [b"acme"]


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


async def eventually(predicate) -> None:
    """Wait (up to 5 s) until predicate() holds: for what worker threads do meanwhile."""
    for _ in range(500):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("not within 5 s")


async def read_all(fs: Filesystem, path: str) -> bytes:
    node = await lookup_path(fs, path)
    fh = await fs.open(node.inode, os.O_RDONLY)
    try:
        return bytes(await fs.read(fh, 0, node.size + 1))
    finally:
        fs.release(fh)


# -- data paths: what an open costs, and how long it lives --------------------------


async def test_an_empty_file_needs_no_hub_and_no_source():
    hub = ScriptedHub({"home": set(FILES)})
    hub.add_repo(REPO, FILES)
    async with filesystem(hub) as (fs, data):
        assert await read_all(fs, "acme/llm/empty.txt") == b""
        assert hub.calls == [] and data.opened == []
        node = await lookup_path(fs, "acme/llm/empty.txt")
        assert fs.source_xattr(node.inode, b"user.modelfs.source") == b"empty"


async def test_a_released_file_lingers_then_closes_and_a_reopen_within_reuses_it(
    autojump_clock,
):
    hub = ScriptedHub({"home": set(FILES)})
    hub.add_repo(REPO, FILES)
    async with filesystem(hub, lifetimes=Lifetimes(linger=5, keep=8)) as (fs, data):
        assert await read_all(fs, "acme/llm/a.bin") == FILES["a.bin"]
        (source,) = data.opened
        assert (fs.files.with_handles, len(fs.files)) == (0, 1)  # closed, lingering
        await trio.sleep(4)
        assert await read_all(fs, "acme/llm/a.bin") == FILES["a.bin"]
        assert len(data.opened) == 1 and len(hub.calls) == 1  # reused: no probe, no source
        await trio.sleep(4)
        assert not source.closed  # the linger restarted at the second release
        await trio.sleep(2)
        assert source.closed and len(fs.files) == 0
        node = await lookup_path(fs, "acme/llm/a.bin")  # where it came from is still known
        assert fs.source_xattr(node.inode, b"user.modelfs.source") == b"local"
        assert await read_all(fs, "acme/llm/a.bin") == FILES["a.bin"]
        assert len(data.opened) == 2 and len(hub.calls) == 2  # a new open, resolved anew
        assert fs.counters.retired.bytes == len(FILES["a.bin"])


async def test_lingering_files_are_capped_and_open_ones_never_closed(autojump_clock):
    files = {f"f{i}.bin": bytes([i]) * 100 for i in range(6)}
    hub = ScriptedHub({"home": set(files)})
    hub.add_repo(REPO, files)
    async with filesystem(hub, files, lifetimes=Lifetimes(linger=60, keep=2)) as (fs, data):
        held = []
        for i in range(3):  # three files held open: more than `keep`
            node = await lookup_path(fs, f"acme/llm/f{i}.bin")
            held.append(await fs.open(node.inode, os.O_RDONLY))
        for i in range(3, 6):  # three more opened and released one after another
            assert await read_all(fs, f"acme/llm/f{i}.bin") == files[f"f{i}.bin"]
        assert fs.files.with_handles == 3 and len(fs.files) == 3 + 2
        assert [s.closed for s in data.opened] == [False] * 3 + [True, False, False]
        for fh in held:
            fs.release(fh)
        assert len(fs.files) == 2  # the two released last: f1 and f2
        assert [s.closed for s in data.opened] == [True, False, False, True, True, True]


async def test_a_gone_source_is_resolved_again_once_a_minute_not_once_a_lifetime(autojump_clock):
    files = {"big.bin": bytes(64 << 20)}
    hub = ScriptedHub({"home": set(files)})
    hub.add_repo(REPO, files)
    async with filesystem(hub, files) as (fs, data):
        node = await lookup_path(fs, "acme/llm/big.bin")
        fh = await fs.open(node.inode, os.O_RDONLY)
        try:
            assert len(await fs.read(fh, 10 << 20, 100)) == 100
            for offset in (20 << 20, 30 << 20):  # an hour apart: each expiry is resolved anew
                await trio.sleep(3600)
                data.opened[-1].failures.append(GoneError("HTTP 403"))
                assert len(await fs.read(fh, offset, 100)) == 100
            assert len(data.opened) == 3 and len(hub.calls) == 3
            data.opened[-1].failures.append(GoneError("HTTP 403"))  # gone again at once
            with pytest.raises(FsError):
                await fs.read(fh, 40 << 20, 100)
            assert len(data.opened) == 3
        finally:
            fs.release(fh)


async def test_a_failed_region_is_skipped_for_a_while_not_for_good(autojump_clock):
    files = {"big.bin": bytes(64 << 20)}
    hub = ScriptedHub({"home": set(files), "peer": set(files)})
    hub.add_repo(REPO, files)
    async with FakeData(files) as data:
        fs = Filesystem(Tree(), hub, Services(Resolver(hub, "home", ("peer",)), data))
        node = await lookup_path(fs, "acme/llm/big.bin")
        fh = await fs.open(node.inode, os.O_RDONLY)
        try:
            data.opened[-1].failures.append(TransientError("UNAVAILABLE"))
            await fs.read(fh, 10 << 20, 100)
            assert fs.source_xattr(node.inode, b"user.modelfs.region") == b"peer"
            await trio.sleep(120)
            data.opened[-1].failures.append(TransientError("UNAVAILABLE"))
            await fs.read(fh, 20 << 20, 100)
            assert fs.source_xattr(node.inode, b"user.modelfs.region") == b"home"  # again
        finally:
            fs.release(fh)
            fs.close()


# -- with the disk cache ------------------------------------------------------------


@asynccontextmanager
async def cached_filesystem(
    hub: ScriptedHub, files: dict[str, bytes], cache_dir, lifetimes: Lifetimes = Lifetimes()
) -> AsyncIterator[tuple[Filesystem, FakeData, DiskCache]]:
    disk = DiskCache(cache_dir, CacheLimits(size=1 << 30, min_free=1))
    disk.open()
    try:
        async with FakeData(files) as data, serving(disk) as cache:
            services = Services(Resolver(hub, "home"), data, cache)
            fs = Filesystem(Tree(), hub, services, lifetimes)
            try:
                yield fs, data, disk
            finally:
                fs.close()
    finally:
        disk.close()


async def test_reopening_a_file_evicted_while_closed_opens_its_entry_off_the_trio_thread(
    tmp_path, monkeypatch
):
    hub = ScriptedHub({"home": set(FILES)})
    hub.add_repo(REPO, FILES)
    async with cached_filesystem(hub, FILES, tmp_path / "cache") as (fs, data, disk):
        trio_thread = threading.get_ident()
        opened_on: list[int] = []
        open_entry = disk.open_entry

        def recorded(*args):
            opened_on.append(threading.get_ident())
            return open_entry(*args)  # may make room: walks the whole cache directory

        monkeypatch.setattr(disk, "open_entry", recorded)
        assert await read_all(fs, "acme/llm/a.bin") == FILES["a.bin"]
        entry = fs.files.get((await lookup_path(fs, "acme/llm/a.bin")).inode).cached.path
        # closed: another mount may evict it once it is stored
        await eventually(lambda: try_evict(entry) is not None)
        assert await read_all(fs, "acme/llm/a.bin") == FILES["a.bin"]  # within the linger
        assert len(opened_on) == 2 and len(data.opened) == 1
        assert trio_thread not in opened_on


async def test_cache_descriptors_are_capped_beyond_which_files_read_uncached(tmp_path):
    files = {f"f{i}.bin": bytes([i]) * 1000 for i in range(6)}
    hub = ScriptedHub({"home": set(files)})
    hub.add_repo(REPO, files)
    lifetimes = Lifetimes(linger=60, keep=10, cached=3)
    async with cached_filesystem(hub, files, tmp_path / "cache", lifetimes) as (fs, _, _):
        held, nodes = [], []
        for i in range(5):
            nodes.append(await lookup_path(fs, f"acme/llm/f{i}.bin"))
            held.append(await fs.open(nodes[-1].inode, os.O_RDONLY))
            assert bytes(await fs.read(held[-1], 0, 1000)) == files[f"f{i}.bin"]
        assert fs.files.cached == 3 and len(fs.files) == 5  # two read without the cache
        assert [fs.files.get(n.inode).cached is not None for n in nodes] == [True] * 3 + [False] * 2
        for fh in held:
            fs.release(fh)
        assert await read_all(fs, "acme/llm/f5.bin") == files["f5.bin"]
        # the new file took the cache entry of the file released longest ago
        assert fs.files.get(nodes[0].inode) is None and fs.files.cached == 3
        assert fs.files.get((await lookup_path(fs, "acme/llm/f5.bin")).inode).cached is not None


# -- the cheap open: a stream to the predicted location while the probe runs ---------


async def test_with_the_region_known_the_stream_opens_on_the_predicted_location():
    hub = ScriptedHub({"home": set(FILES)}, delay=0.01)
    hub.add_repo(REPO, FILES)
    async with filesystem(hub) as (fs, data):
        assert await read_all(fs, "acme/llm/a.bin") == FILES["a.bin"]  # learns the region
        assert data.guessed == []
        assert await read_all(fs, "acme/llm/b.bin") == FILES["b.bin"]
        (guess,) = data.guessed
        assert guess.location == "grpc://home.store:443/home/acme/llm/b.bin?generation=0"
        assert guess.confirmed == [1]  # the generation the probe named
        assert guess.submitted[0][0] == 0  # its head was asked for at open
        assert len(data.opened) == 2 and [c[1] for c in hub.calls] == ["a.bin", "b.bin"]


async def test_a_wrong_guess_is_dropped_for_the_probed_location_and_never_served():
    files = {"a.bin": FILES["a.bin"], "b.bin": FILES["b.bin"]}
    hub = ScriptedHub({"home": {"a.bin"}, "peer": {"b.bin"}}, delay=0.01)
    hub.add_repo(REPO, files)
    async with FakeData(files) as data:
        fs = Filesystem(Tree(), hub, Services(Resolver(hub, "home", ("peer",)), data))
        try:
            data.impostors.add("grpc://home.store")  # another object under b's name at home
            assert await read_all(fs, "acme/llm/a.bin") != files["a.bin"]  # (as it is there)
            assert await read_all(fs, "acme/llm/b.bin") == files["b.bin"]
            (guess,) = data.guessed
            assert guess.closed and guess.location.startswith("grpc://home.store")
            assert data.opened[-1].location.startswith("grpc://peer.store")
        finally:
            fs.close()


async def test_a_guess_at_another_generation_is_dropped(autojump_clock):
    hub = ScriptedHub({"home": set(FILES)})
    hub.add_repo(REPO, FILES)
    async with filesystem(hub) as (fs, data):
        await read_all(fs, "acme/llm/a.bin")
        data.impostors.add("grpc://home.store:443/home/acme/llm/b.bin?generation=0")
        assert await read_all(fs, "acme/llm/b.bin") == FILES["b.bin"]
        (guess,) = data.guessed
        assert guess.confirmed == [1] and guess.closed
        assert data.opened[-1].location.endswith("b.bin?generation=1")


async def test_nothing_fetched_on_a_guess_reaches_the_disk_cache_before_the_probe_confirms(
    tmp_path,
):
    files = {"a.bin": FILES["a.bin"], "big.bin": bytes(range(256)) * 4096}
    hub = ScriptedHub({"home": set(files)})
    hub.add_repo(REPO, files)
    async with cached_filesystem(hub, files, tmp_path / "cache") as (fs, data, disk):
        await read_all(fs, "acme/llm/a.bin")
        await eventually(lambda: disk.stats.written_bytes >= len(files["a.bin"]))  # stored
        before = disk.stats.written_bytes
        hub.delay = 0.2  # a slow probe: the guessed stream has its head long before
        node = await lookup_path(fs, "acme/llm/big.bin")
        handles = []

        async def open_big():
            handles.append(await fs.open(node.inode, os.O_RDONLY))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_big)
            await trio.sleep(0.1)
            (guess,) = data.guessed
            assert guess.submitted and guess.submitted[0][0] == 0  # the head came at once ...
            assert disk.stats.written_bytes == before  # ... and nothing of it was stored
        assert guess.confirmed == [1]
        await eventually(lambda: disk.stats.written_bytes > before)  # confirmed: now stored
        assert bytes(await fs.read(handles[0], 0, 1000)) == files["big.bin"][:1000]
        fs.release(handles[0])
