"""One file's data path: where its bytes come from, the reader over them, and failover.

A `DataPath` is made when a file is first opened and shared by all its handles.
Opening resolves the file's source once (or finds it whole in the disk cache and
needs no network at all) and puts a `FileReader` on it, through the disk cache
when there is one: readers chain cache → network, with an explicit fallback to the
network alone when the cache cannot be used.

When a read fails in a way its source could not recover from, the data path
decides what comes next: a file whose URL expired or moved is resolved again
(once per data path), a dead internal endpoint gives way to the next candidate
region, a sealed file that lost a block is fetched from the network. A deadline
is never retried here: the reader has already waited as long as a read may.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from fusefs.cache.entry import EntryError
from fusefs.cache.source import CachedSource, FileCache
from fusefs.data.client import DataClient
from fusefs.data.errors import DataError, DeadlineError, GoneError, TransientError
from fusefs.data.reader import FileReader
from fusefs.data.source import RangeSource
from fusefs.hub.client import HubError
from fusefs.hub.resolve import Resolution, Resolver
from fusefs.vfs.tree import FileNode

log = logging.getLogger(__name__)

# What can go wrong while setting up a source: the hub, the location, the cache's disk.
SETUP_ERRORS = (HubError, DataError, ValueError, OSError, EntryError)


@dataclass(frozen=True)
class Services:
    """The mount-wide services every file's data path draws on."""

    resolver: Resolver
    data: DataClient
    cache: FileCache | None = None


class DataPath:
    def __init__(
        self, file: FileNode, services: Services, resolution: Resolution, reader: FileReader
    ) -> None:
        self.file = file
        self.resolution = resolution
        self.reader = reader
        self.opened_at = time.monotonic()  # until the first byte is served; then 0
        self.bytes_read = 0  # across every source this file has had
        self._services = services
        self._failed_regions: frozenset[str] = frozenset()
        self._reresolved = False
        self._switching = trio.Lock()

    @classmethod
    async def open(cls, file: FileNode, services: Services) -> DataPath:
        """Resolve `file` and open its source; SETUP_ERRORS when that cannot be done."""
        reader = await _sealed_reader(file, services)
        if reader is not None:
            # Whole and verified on local disk: no hub, no network for this file.
            assert isinstance(reader.source, CachedSource)
            resolution = Resolution("cache", "", "file://" + reader.source.path)
        else:
            f = file.file
            resolution = await services.resolver.resolve(
                file.snapshot.repo, file.snapshot.commit, f.path
            )
            network = services.data.open_source(resolution.location, f.size)
            reader = await _reader(file, services, network)
        return cls(file, services, resolution, reader)

    @property
    def cached(self) -> CachedSource | None:
        source = self.reader.source
        return source if isinstance(source, CachedSource) else None

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """The bytes at [offset, offset + size); DataError when no source can serve them."""
        reader = self.reader
        try:
            data = await reader.read(offset, size)
        except DataError as e:
            if isinstance(e, DeadlineError) or not await self._switch_source(reader, e):
                raise
            data = await self.reader.read(offset, size)
        self.bytes_read += len(data)
        return data

    def first_byte(self) -> float | None:
        """Seconds from open to the first byte served, once; None afterwards."""
        if not self.opened_at:
            return None
        elapsed, self.opened_at = time.monotonic() - self.opened_at, 0.0
        return elapsed

    def close(self) -> None:
        self.reader.close()

    async def _switch_source(self, failed: FileReader, error: DataError) -> bool:
        """After a failure the source could not recover from: True when there is a new
        reader to try (see the module docstring for what is tried)."""
        async with self._switching:
            if self.reader is not failed:
                return True  # another reader already switched
            res = self.resolution
            if isinstance(error, GoneError) and res.source == "cache":
                pass  # a sealed file lost a block: fetch from the network from now on
            elif isinstance(error, GoneError) and not self._reresolved:
                self._reresolved = True
            elif isinstance(error, TransientError) and res.source != "cdn":
                self._failed_regions |= {res.region}
            else:
                return False
            f = self.file.file
            try:
                new = await self._services.resolver.resolve(
                    self.file.snapshot.repo,
                    self.file.snapshot.commit,
                    f.path,
                    exclude=self._failed_regions,
                )
                network = self._services.data.open_source(new.location, f.size)
                reader = await _reader(self.file, self._services, network)
            except SETUP_ERRORS as e:
                log.warning("%s: no other source after %s: %s", failed.name, error, e)
                return False
            log.warning(
                "%s: %s failed (%s); now %s", failed.name, describe(res), error, describe(new)
            )
            failed.close()
            self.resolution, self.reader = new, reader
            return True


def describe(res: Resolution) -> str:
    marker = f"{res.marker} " if res.marker.strip() else ""
    return f"{marker}via {res.source}" + (f" {res.region}" if res.region else "")


def _cache_key(file: FileNode, cache: FileCache) -> str:
    snap = file.snapshot
    return cache.key(file.file.sha256, snap.repo.key, snap.content_id(file.file), file.file.path)


async def _sealed_reader(file: FileNode, services: Services) -> FileReader | None:
    """A reader from the disk cache alone, when the file is sealed there."""
    cache, f = services.cache, file.file
    if cache is None or not cache.sealed(_cache_key(file, cache), f.size, f.sha256):
        return None
    try:
        return await _reader(file, services, None)
    except (OSError, EntryError) as e:
        log.warning("%s: sealed in the cache but not readable (%s)", file.path, e)
        return None


async def _reader(file: FileNode, services: Services, network: RangeSource | None) -> FileReader:
    """A reader for this file over `network`, through the disk cache when there is one.
    A cache that fails here costs the caching, never the read."""
    f, cache, data = file.file, services.cache, services.data
    if cache is None:
        assert network is not None  # a disk-only reader needs a cache
        return data.reader(network, f.size, file.path)
    try:
        # Opening an entry may have to make room (evict), which walks the directory.
        source = await trio.to_thread.run_sync(
            cache.source, _cache_key(file, cache), f.size, f.sha256, network
        )
    except (OSError, EntryError) as e:
        if network is None:
            raise
        log.warning("%s: not cached (%s)", file.path, e)
        return data.reader(network, f.size, file.path)
    except BaseException:
        if network is not None:
            network.close()
        raise
    return data.reader(source, f.size, file.path, align=source.block_size)
